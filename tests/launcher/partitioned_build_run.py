"""Run by test_planner.py, one process per rank (DeepSpeed's distributed state is global): builds a preset the
way weam_ds.train does under ZeRO-3 (ds_configs/cpu.json, HfDeepSpeedConfig, gloo) and prints, as JSON, the
rank's peak resident memory (VmHWM) and the parameters it holds.

    RANK=r WORLD_SIZE=w MASTER_ADDR=127.0.0.1 MASTER_PORT=p python partitioned_build_run.py PRESET VOCAB
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from data_prep.typed_config import from_dict
from weam_ds.config import RunConfig, deepspeed_config
from weam_ds.presets import PRESETS, build_model


def peak_rss() -> int:
    """The process's peak resident memory in bytes. Not ru_maxrss: Linux carries that across fork and exec, so a
    process started by a large one (pytest with models loaded) would report its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def main(preset: str, vocab: int) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    world = torch.distributed.get_world_size()
    cfg = from_dict(RunConfig, {"output_dir": "unused", "model": preset, "data": {"datasets": ["unused"]},
                                "deepspeed": {"config": "ds_configs/cpu.json"}})
    ds = deepspeed_config(cfg, world_size=world, hidden_size=PRESETS[preset].hidden, cpu=True)
    baseline = peak_rss()
    torch.manual_seed(0)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 (alive while the model is built: ZeRO-3 construction)
    model = build_model(preset, vocab)
    peak = peak_rss()
    print(json.dumps({"rank": torch.distributed.get_rank(), "baseline": baseline, "peak": peak,
                      "local": sum(p.ds_tensor.numel() for p in model.parameters()),
                      "total": sum(p.ds_numel for p in model.parameters())}), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # gloo's threads, left running at exit, may abort the process


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
