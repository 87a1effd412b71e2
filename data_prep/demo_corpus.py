"""The embedded demo corpus: real human translations that installed packages already carry.

Django and Sphinx ship their user-interface messages translated by their communities as gettext
catalogs; msgid (English) → msgstr is a parallel corpus. ``python -m data_prep.demo_corpus --out DIR``
writes ``DIR/prep.yaml`` pointing data_prep at those catalogs in site-packages: nothing is downloaded
and no text is copied into this repository.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import yaml

from data_prep import PrepError

PACKAGES = ("django", "sphinx")
# Pair language → the catalog folder names the packages use for it.
LANGUAGES = {"fr": ("fr",), "es": ("es",), "ru": ("ru",), "ja": ("ja",), "ko": ("ko",)}


def catalogs(lang: str) -> list[str]:
    """Every .po catalog for ``lang`` in the demo packages, sorted."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise PrepError(f"the demo corpus needs the '{package}' package: pip install -e '.[demo]'")
        root = Path(spec.origin).parent
        for folder in LANGUAGES[lang]:
            found += root.glob(f"**/locale/{folder}/LC_MESSAGES/*.po")
    return sorted(str(p) for p in found)


def demo_config(out_dir: Path) -> dict:
    return {
        "output_dir": str(out_dir / "dataset"),
        "tokenizer": {"train": {"vocab_size": 4000}},
        "aligner": {"method": "eflomal", "symmetrize": "grow-diag-final-and"},
        "splits": {"dev": 100, "test": 300},
        "pairs": [{"src_lang": lang, "tgt_lang": "en", "format": "po", "path": catalogs(lang)} for lang in LANGUAGES],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write prep.yaml for the embedded demo corpus.")
    parser.add_argument("--out", required=True, type=Path, help="directory for prep.yaml and the dataset")
    args = parser.parse_args(argv)
    try:
        cfg = demo_config(args.out)
    except PrepError as exc:
        print(f"demo_corpus: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prep.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    for pair in cfg["pairs"]:
        print(f"{pair['src_lang']}-en: {len(pair['path'])} catalogs")
    print(f"wrote {args.out / 'prep.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
