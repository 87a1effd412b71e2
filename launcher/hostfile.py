"""DeepSpeed hostfiles: one ``<host> slots=<gpus>`` line per node, ``#`` comments allowed.

A host must be a host name (letters, digits, ``.``, ``-``, ``_``): the DeepSpeed runner hands host names
to pdsh and to a remote shell, so anything else is refused here rather than passed on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import regex


class HostfileError(ValueError):
    """A hostfile line is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int


MAX_SLOTS = 1024
"""More slots than any node has GPUs: a larger count is a typo (and would size the job by it)."""
HOST_NAME = regex.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LINE = regex.compile(r"(?P<name>[^\s#=]+)\s+slots\s*=\s*(?P<slots>\d+)")


def read_hostfile(path: str | Path) -> list[Host]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HostfileError(f"{path}: cannot read hostfile ({exc})") from None
    hosts: list[Host] = []
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if not m or int(m["slots"]) < 1:
            raise HostfileError(f"{path}:{lineno}: expected '<host> slots=<n>' with n >= 1, got {line!r}")
        if int(m["slots"]) > MAX_SLOTS:
            raise HostfileError(f"{path}:{lineno}: slots={m['slots']} is more than {MAX_SLOTS} processes on one host")
        if not HOST_NAME.fullmatch(m["name"]):
            raise HostfileError(f"{path}:{lineno}: {m['name']!r} is not a host name (letters, digits, '.', '-', '_')")
        if any(h.name == m["name"] for h in hosts):
            raise HostfileError(f"{path}:{lineno}: host {m['name']} is listed twice")
        hosts.append(Host(m["name"], int(m["slots"])))
    if not hosts:
        raise HostfileError(f"{path}: no hosts")
    return hosts
