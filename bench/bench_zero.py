"""Benchmark: ZeRO-2 against the shipped, tuned ZeRO-3 on the same WEAM run (weam_ds.train, N processes).

Each stage trains the same preset from the same seed for ``--steps`` steps; tokens/s is taken from the
run's metrics.jsonl over the steps after the first ``--warmup``. On a CPU machine this uses
ds_configs/cpu.json (gloo, fp32) with the stage overridden; on GPUs pass --ds-config zero3_bf16.json.

    python bench/bench_zero.py [--dataset out/demo/dataset] [--preset base] [--procs 2] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from weam_ds.demo import demo_run


def run_stage(stage: int, args, workdir: Path) -> dict:
    cfg = demo_run(args.dataset, workdir / f"zero{stage}")
    cfg["model"] = args.preset
    cfg["data"].update(batch_size=args.batch, eval_batches=0)
    cfg["train"].update(steps=args.steps, log_interval=args.steps, checkpoint_interval=10 * args.steps)
    cfg["deepspeed"] = {"config": f"ds_configs/{args.ds_config}", "overrides": {"zero_optimization": {"stage": stage}}}
    path = workdir / f"zero{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}",
                    "-m", "weam_ds.train", "--config", str(path)], check=True, capture_output=True)
    rows = [json.loads(line) for line in (workdir / f"zero{stage}" / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup:]
    seconds = sum(r["step_time"] for r in timed)
    return {"tokens_per_s": sum(r["tokens"] for r in timed) / seconds,
            "step_ms": 1000 * statistics.median(r["step_time"] for r in timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("out/demo/dataset"))
    parser.add_argument("--preset", default="base")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="pairs per rank and step")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ds-config", default="cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {stage: run_stage(stage, args, Path(tmp)) for stage in (2, 3)}
    print(f"\nZeRO-2 vs ZeRO-3: preset {args.preset}, {args.procs} processes, {args.batch} pairs per rank, "
          f"{args.ds_config}, steps {args.warmup + 1}-{args.steps}")
    for stage, r in results.items():
        print(f"  ZeRO-{stage}  {r['tokens_per_s']:10,.0f} tokens/s   median step {r['step_ms']:8.1f} ms")
    print(f"  ZeRO-3 / ZeRO-2 throughput {results[3]['tokens_per_s'] / results[2]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
