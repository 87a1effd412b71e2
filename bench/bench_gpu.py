"""GPU benchmark: MFU, tokens/s and peak memory of WEAM training steps beside the memory planner's estimate.

On one GPU, one process: ``base`` and ``large`` at sequence length 128 and 512 in bf16 under ZeRO-3
(ds_configs/zero3_bf16.json), XLM-R's 250,002-piece vocabulary; then the largest preset that trains on this GPU
with ZeRO-3 offload (ds_configs/zero3_offload_bf16.json), trying the largest the planner accepts first. Each
case runs in its own process (DeepSpeed's state is global) and builds the model and optimizer as weam_ds.train
does. Batches are synthetic full-length pairs (every sentence at the sequence length, aligned word for word),
the planner's worst case, masked by weam_ds's own masking. Without a CUDA GPU it prints one line and exits 0.

    python bench/bench_gpu.py [--micro-batch 16] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

VOCAB = 250002
CASES = [("base", 128), ("base", 512), ("large", 128), ("large", 512)]


def _batch(pairs: int, length: int, seed: int) -> dict:
    from weam_ds.batch import TokenInfo, collate, mask_batch
    from weam_ds.config import MaskingConfig

    special = torch.arange(VOCAB) < 5  # <s> <pad> </s> <unk> <mask>, as XLM-R numbers them
    info = TokenInfo(VOCAB, 1, 0, 2, 4, special, torch.ones(VOCAB, dtype=torch.bool))
    rng = np.random.default_rng(seed)
    words = np.arange(1, length - 1)
    samples = [{"src_ids": np.r_[0, rng.integers(5, VOCAB, length - 2), 2],
                "tgt_ids": np.r_[0, rng.integers(5, VOCAB, length - 2), 2],
                "align": np.stack([words, words], axis=1)} for _ in range(pairs)]
    return mask_batch(collate(samples, info, length), info, MaskingConfig(), torch.Generator().manual_seed(seed))


def run_case(preset: str, length: int, pairs: int, ds_name: str, steps: int) -> dict:
    """Train ``steps`` + 2 steps of ``preset`` and return the figures (this process only)."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from data_prep.typed_config import from_dict
    from launcher.planner import plan
    from weam_ds.config import RunConfig, deepspeed_config
    from weam_ds.hardware import probe
    from weam_ds.monitor import peak_tflops
    from weam_ds.objective import PretrainingObjective
    from weam_ds.optimizer import optimizer_for, param_groups
    from weam_ds.presets import PRESETS, build_model, count_parameters, train_flops

    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517"), ("RANK", "0"), ("WORLD_SIZE", "1"),
                       ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl")
    torch.cuda.set_device(0)
    cfg = from_dict(RunConfig, {"output_dir": "unused", "model": preset,
                                "deepspeed": {"config": f"ds_configs/{ds_name}"},
                                "data": {"datasets": ["unused"], "max_length": length, "batch_size": pairs}})
    ds = deepspeed_config(cfg, world_size=1, hidden_size=PRESETS[preset].hidden)
    hw = probe(ds)
    # Planned first: the planner builds on the meta device, which must happen outside ZeRO-3 construction.
    planned = plan(cfg, 1, 1, torch.cuda.get_device_properties(0).total_memory, vocab_size=VOCAB)
    torch.manual_seed(0)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 (alive while the model is built: partitioned from the start)
    model = build_model(preset, VOCAB)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        objective = PretrainingObjective(model, cfg.objective)
    optimizer = optimizer_for(ds, hw, objective, cfg)
    params = param_groups(objective, cfg.optimizer.weight_decay) if optimizer is None else None
    engine, *_ = deepspeed.initialize(model=objective, model_parameters=params, optimizer=optimizer, config=ds)
    non_embedding = count_parameters(model)["non_embedding"]
    times, flops = [], []
    torch.cuda.reset_peak_memory_stats()
    for k in range(steps + 2):
        batch = {key: v.cuda(non_blocking=True) if torch.is_tensor(v) else v
                 for key, v in _batch(pairs, length, k).items()}
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = engine(batch)
        engine.backward(out.loss)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        lengths = torch.full((2 * pairs,), length)
        flops.append(train_flops(model.config, non_embedding, lengths, out.tokens["mlm"] + out.tokens["xpred"]))
    step = statistics.median(times[2:])
    peak = peak_tflops(None)
    return {"preset": preset, "length": length, "pairs": pairs, "config": ds_name, "step_s": step,
            "tokens_per_s": 2 * pairs * length / step,
            "mfu": statistics.mean(flops[2:]) / step / 1e12 / peak if peak else None,
            "peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
            "planned": planned.totals["device"]}


def _child(preset: str, length: int, pairs: int, ds_name: str, steps: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--case", preset, str(length), str(pairs), ds_name, str(steps)]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=16, help="sentence pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    parser.add_argument("--case", nargs=5, metavar=("PRESET", "LENGTH", "PAIRS", "CONFIG", "STEPS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine; nothing measured")
        return 0
    if args.case:
        preset, length, pairs, ds_name, steps = args.case
        print(json.dumps(run_case(preset, int(length), int(pairs), ds_name, int(steps))))
        return 0

    from data_prep.typed_config import from_dict
    from launcher.memory import GiB
    from launcher.planner import plan
    from weam_ds.config import RunConfig
    from weam_ds.monitor import peak_tflops
    from weam_ds.presets import PRESETS

    gpu = torch.cuda.get_device_properties(0)
    print(f"bench_gpu: {gpu.name} ({gpu.total_memory / GiB:.1f} GiB), peak {peak_tflops(None)} TFLOP/s bf16, "
          f"vocabulary {VOCAB:,}, {args.micro_batch} pairs per step, ZeRO-3 bf16, median of {args.steps} steps")
    print(f"{'preset':7}{'length':>7}{'tokens/s':>11}{'MFU':>7}{'peak allocated':>16}{'peak reserved':>15}"
          f"{'planned':>10}  (GiB)")
    for preset, length in CASES:
        r = _child(preset, length, args.micro_batch, "zero3_bf16.json", args.steps, args.timeout)
        if "error" in r:
            print(f"{preset:7}{length:>7}  failed: {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{preset:7}{length:>7}{r['tokens_per_s']:>11,.0f}{mfu:>7}{r['peak_allocated'] / GiB:>16.2f}"
              f"{r['peak_reserved'] / GiB:>15.2f}{r['planned'] / GiB:>10.2f}")

    host = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    for preset in reversed(PRESETS):
        cfg = from_dict(RunConfig, {"output_dir": "unused", "model": preset,
                                    "deepspeed": {"config": "ds_configs/zero3_offload_bf16.json"},
                                    "data": {"datasets": ["unused"], "max_length": 128, "batch_size": 8}})
        planned = plan(cfg, 1, 1, gpu.total_memory, host, vocab_size=VOCAB)
        if not planned.fits:
            print(f"offload: {preset} skipped, the planner says it does not fit: {planned.reasons[0]}")
            continue
        r = _child(preset, 128, 8, "zero3_offload_bf16.json", 2, args.timeout)
        if "error" not in r:
            print(f"largest preset that trains on this GPU with ZeRO-3 offload (8 pairs x 128 tokens): {preset}, "
                  f"{r['step_s']:.1f} s per step, peak {r['peak_allocated'] / GiB:.1f} GiB "
                  f"(planned {r['planned'] / GiB:.1f})")
            return 0
        print(f"offload: {preset} failed: {r['error']}")
    print("offload: no preset trained")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
