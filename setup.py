"""weam-ds: a DeepSpeed scaling harness for WEAM pre-training (arXiv 2106.01732)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("data_prep/__init__.py").read_text()).group(1)

# Ranges are the ones this project is tested with; the upper bounds stop an untested major release.
# NVIDIA apex is optional and deliberately absent: the PyPI package called `apex` is an unrelated project.
# torch is listed without an index: install the build for your hardware first (the Makefile does).
INSTALL_REQUIRES = [
    "torch>=2.4,<2.15",
    "deepspeed>=0.16,<0.20",
    "transformers>=4.46,<6",
    "accelerate>=1.1,<2",  # transformers needs it for DeepSpeed ZeRO-3 construction (HfDeepSpeedConfig)
    "tokenizers>=0.20,<0.24",
    "webdataset>=0.2.100,<1.1",
    "tensorboard>=2.15,<3",
    "pyyaml>=6.0,<7",
    "eflomal>=2.0,<3",
    "tqdm>=4.66,<5",
    "psutil>=5.9,<8",  # the launcher stops and inspects the job's process tree
    "numpy>=1.26,<3",
    "regex>=2023.0",
    "polib>=1.2,<2",
    "pyarrow>=15,<27",  # Parquet, JSON Lines and Hugging Face Arrow corpora, read batch by batch
    "zstandard>=0.22,<1",  # .zst corpora (gzip, xz and bzip2 are in the standard library)
    "defusedxml>=0.7,<1",
    "seqeval>=1.2.2,<1.3",  # the official XTREME scorer's span F1 (its chunking rules are part of the numbers)
    "matplotlib>=3.8,<4",  # the study report's plots
]

EXTRAS = {
    # Real human translations for the demo corpus: the gettext catalogs these packages ship.
    "demo": ["django>=4.2,<6", "sphinx>=7,<10"],
    # pytest-xdist runs the suite on every core (pytest.ini); filelock lets its workers share one build of the
    # dataset and the trained run (tests/fixtures/shared.py).
    "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "filelock>=3.12,<5"],
}

setup(
    name="weam-ds",
    version=VERSION,
    description=__doc__,
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["data_prep*", "weam_ds*", "launcher*"]),
    package_data={"weam_ds.xtreme_r": ["recipes/*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "weam-data-prep=data_prep.cli:main",
            "weam-ds=weam_ds.cli:main",
            "weam-ds-train=weam_ds.train:main",
            "weam-ds-export=weam_ds.export:main",
            "weam-launch=launcher.cli:main",
        ]
    },
)
