"""The demo's run config: a short WEAM run of the ``tiny`` preset under ZeRO-3 on CPU processes
(ds_configs/cpu.json), on the demo dataset that data_prep built: enough steps to see the losses fall in
TensorBoard, a checkpoint midway. ``make demo``'s study (launcher.demo) runs it for each of its cells.
"""
from __future__ import annotations

from pathlib import Path


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
