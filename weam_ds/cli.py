"""``python -m weam_ds COMMAND``: the library's commands."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from weam_ds import __version__


def _env(args) -> int:
    """The execution path; with ``--config``, the optimizer is the one training would build for that run."""
    from weam_ds.hardware import probe

    ds = None
    if args.config:
        import torch

        from data_prep.typed_config import ConfigError
        from weam_ds.config import deepspeed_config, load_run_config

        try:
            ds = deepspeed_config(load_run_config(args.config), cpu=not torch.cuda.is_available())
        except ConfigError as exc:
            print(f"weam_ds env: error: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(probe(ds).as_dict(), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds", description="WEAM pre-training harness on DeepSpeed.")
    parser.add_argument("--version", action="version", version=f"weam-ds {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print the execution path this machine gets (device, backend, kernels)")
    env.add_argument("--config", help="a run config: name the optimizer training would build for it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"env": _env}[args.command](args)
