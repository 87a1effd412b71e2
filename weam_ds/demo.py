"""``python -m weam_ds.demo --dataset DIR --out run.yaml``: the run config ``make demo`` trains with.

A short WEAM run of the ``tiny`` preset under ZeRO-3 on CPU processes (ds_configs/cpu.json), on the demo
dataset that data_prep built: enough steps to see the losses fall in TensorBoard, a checkpoint midway.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml


def demo_run(dataset: Path, output_dir: Path) -> dict:
    return {
        "output_dir": str(output_dir),
        "model": "tiny",
        "data": {"datasets": [str(dataset)], "max_length": 64, "batch_size": 16, "workers": 1,
                 "eval_batches": 4},
        "objective": {"name": "weam", "exchange": "hard"},
        "optimizer": {"lr": 2.0e-3},
        "schedule": {"warmup_steps": 20, "decay": "linear"},
        "train": {"steps": 120, "log_interval": 20, "eval_interval": 60, "checkpoint_interval": 60,
                  "keep_checkpoints": 2},
        "deepspeed": {"config": "ds_configs/cpu.json"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="the demo dataset directory")
    parser.add_argument("--out", type=Path, required=True, help="the run config to write")
    args = parser.parse_args(argv)
    cfg = demo_run(args.dataset, args.out.parent / "run")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"run config: {args.out} (outputs in {cfg['output_dir']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
