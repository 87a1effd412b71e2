"""``python -m weam_ds COMMAND``: the library's commands."""
from __future__ import annotations

import argparse
import json
import logging

from weam_ds import __version__


def _env(_args) -> int:
    from weam_ds.hardware import probe

    print(json.dumps(probe().as_dict(), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds", description="WEAM pre-training harness on DeepSpeed.")
    parser.add_argument("--version", action="version", version=f"weam-ds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print the execution path this machine gets (device, backend, kernels)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"env": _env}[args.command](args)
