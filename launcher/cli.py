"""``python -m launcher COMMAND``: cluster-side commands."""
from __future__ import annotations

import argparse
import sys

from launcher import __version__
from launcher.hostfile import HostfileError, read_hostfile


def _hosts(args) -> int:
    hosts = read_hostfile(args.hostfile)
    for h in hosts:
        print(f"{h.name}\t{h.slots}")
    print(f"{len(hosts)} nodes, world size {sum(h.slots for h in hosts)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher", description="Launch weam-ds runs on clusters.")
    parser.add_argument("--version", action="version", version=f"weam-ds launcher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    hosts = commands.add_parser("hosts", help="check a DeepSpeed hostfile and print its nodes and world size")
    hosts.add_argument("hostfile")
    args = parser.parse_args(argv)
    try:
        return {"hosts": _hosts}[args.command](args)
    except HostfileError as exc:
        print(f"launcher: error: {exc}", file=sys.stderr)
        return 2
