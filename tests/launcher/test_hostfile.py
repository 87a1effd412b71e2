"""DeepSpeed hostfile checking."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from launcher.cli import main
from launcher.hostfile import Host, HostfileError, read_hostfile


def test_hostfile_is_read_with_comments(tmp_path, capsys):
    path = tmp_path / "hostfile"
    path.write_text("# two nodes\nnode-a slots=8\n\nnode-b slots=4  # smaller\n")
    assert read_hostfile(path) == [Host("node-a", 8), Host("node-b", 4)]
    assert main(["hosts", str(path)]) == 0 and "2 nodes, world size 12" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("node-a slots=8\nnode-b 4\n", ":2: expected '<host> slots=<n>'"),
    ("node-a slots=0\n", ":1: expected"),
    ("node-a slots=2\nnode-a slots=2\n", ":2: host node-a is listed twice"),
    ("# nothing\n", ": no hosts"),
])
def test_bad_hostfiles_name_file_and_line(tmp_path, capsys, text, message):
    path = tmp_path / "hostfile"
    path.write_text(text)
    with pytest.raises(HostfileError, match="^" + re.escape(f"{path}{message}")):
        read_hostfile(path)
    assert main(["hosts", str(path)]) == 2 and capsys.readouterr().err.startswith("launcher: error:")


def test_the_command_exits_with_mains_status_and_one_line(tmp_path):
    """``python -m launcher`` exits with what its main returns (the other tests call main in this process)."""
    path = tmp_path / "hostfile"
    path.write_text("node-a slots=0\n")
    out = subprocess.run([sys.executable, "-m", "launcher", "hosts", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"launcher: error: {path}:1: expected '<host> slots=<n>' with n >= 1, got 'node-a slots=0'"], out.stderr
