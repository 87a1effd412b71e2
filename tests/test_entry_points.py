"""Each package runs with ``python -m`` and as its installed console script."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("module, script", [("data_prep", "weam-data-prep"), ("weam_ds", "weam-ds"),
                                            ("launcher", "weam-launch")])
def test_module_and_console_script(module, script):
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "0.1.0" in out.stdout
    exe = shutil.which(script, path=str(Path(sys.executable).parent))
    assert exe, f"console script {script} is not installed"
    assert subprocess.run([exe, "--help"], capture_output=True).returncode == 0
