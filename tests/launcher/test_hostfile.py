"""DeepSpeed hostfile checking."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from launcher.hostfile import Host, HostfileError, read_hostfile


def test_hostfile_is_read_with_comments(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# two nodes\nnode-a slots=8\n\nnode-b slots=4  # smaller\n")
    assert read_hostfile(path) == [Host("node-a", 8), Host("node-b", 4)]
    out = subprocess.run([sys.executable, "-m", "launcher", "hosts", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "2 nodes, world size 12" in out.stdout


@pytest.mark.parametrize("text, message", [
    ("node-a slots=8\nnode-b 4\n", ":2: expected '<host> slots=<n>'"),
    ("node-a slots=0\n", ":1: expected"),
    ("node-a slots=2\nnode-a slots=2\n", ":2: host node-a is listed twice"),
    ("# nothing\n", ": no hosts"),
])
def test_bad_hostfiles_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(HostfileError, match="^" + re.escape(f"{path}{message}")):
        read_hostfile(path)
    out = subprocess.run([sys.executable, "-m", "launcher", "hosts", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("launcher: error:")
