"""Run by test_planner.py, one process per rank (DeepSpeed's distributed state is global): builds presets the
way weam_ds.train does under ZeRO-3 (ds_configs/cpu.json, HfDeepSpeedConfig, gloo, DeepSpeed's unused
shared-memory op not built, the garbage collector off) and prints, as JSON, one line
per build: the rank's peak resident memory (VmHWM) and the parameters it holds.

    RANK=r WORLD_SIZE=w MASTER_ADDR=127.0.0.1 python partitioned_build_run.py PRESET:VOCAB:PORT ...

Each build runs in a child forked once torch, DeepSpeed and transformers are imported (what every rank imports
before its model exists), with its own process group on PORT: a fresh rank as far as the build goes, without
paying the imports again. Two things make the child's peak a fresh rank's: it reads the pages of the libraries
its parent had resident (fork copies the parent's own pages, not those of its file mappings), and the peak printed
is the larger of its own and its parent's, as a fresh rank's peak covers its imports too (a forked child's VmHWM
starts at its resident memory).
"""
from __future__ import annotations

import gc

gc.disable()  # as in a rank until its trainer is built (weam_ds.train)

import ctypes
import json
import mmap
import os
import struct
import sys
import traceback
from pathlib import Path

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from data_prep.typed_config import from_dict
from weam_ds.config import RunConfig, deepspeed_config
from weam_ds.extensions import before_deepspeed
from weam_ds.presets import PRESETS, build_model


def peak_rss() -> int:
    """The process's peak resident memory in bytes. Not ru_maxrss: Linux carries that across fork and exec, so a
    process started by a large one (pytest with models loaded) would report its parent's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def resident_file_pages() -> list[int]:
    """The addresses of this process's resident pages in readable file mappings (/proc/self/pagemap's bit 63)."""
    pages = []
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/") or not fields[1].startswith("r"):
                continue
            start, end = (int(address, 16) for address in fields[0].split("-"))
            pagemap.seek(start // mmap.PAGESIZE * 8)
            entries = pagemap.read((end - start) // mmap.PAGESIZE * 8)
            pages += [start + i * mmap.PAGESIZE for i, (entry,) in enumerate(struct.iter_unpack("Q", entries))
                      if entry >> 63]
    return pages


def build(preset: str, vocab: int, port: str, imports_peak: int, library_pages: list[int]) -> None:
    for address in library_pages:
        ctypes.c_char.from_address(address).value  # noqa: B018 (mapped into this process's resident memory)
    os.environ["MASTER_PORT"] = port
    before_deepspeed()
    deepspeed.init_distributed(dist_backend="gloo")
    world = torch.distributed.get_world_size()
    cfg = from_dict(RunConfig, {"output_dir": "unused", "model": preset, "data": {"datasets": ["unused"]},
                                "deepspeed": {"config": "ds_configs/cpu.json"}})
    ds = deepspeed_config(cfg, world_size=world, hidden_size=PRESETS[preset].hidden, cpu=True)
    baseline = max(imports_peak, peak_rss())
    torch.manual_seed(0)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 (alive while the model is built: ZeRO-3 construction)
    model = build_model(preset, vocab)
    peak = max(imports_peak, peak_rss())
    print(json.dumps({"preset": preset, "vocab": vocab, "rank": torch.distributed.get_rank(), "baseline": baseline,
                      "peak": peak, "local": sum(p.ds_tensor.numel() for p in model.parameters()),
                      "total": sum(p.ds_numel for p in model.parameters())}), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # gloo's threads, left running at exit, may abort the process


def main(builds: list[str]) -> int:
    imports_peak, library_pages = peak_rss(), resident_file_pages()
    for spec in builds:
        preset, vocab, port = spec.split(":")
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            try:
                build(preset, int(vocab), port, imports_peak, library_pages)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            sys.stdout.flush()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"the build of {spec} failed: {os.waitstatus_to_exitcode(status)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
