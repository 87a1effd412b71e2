"""Benchmark: how fast one training-stream process delivers masked batches, and how many DataLoader workers a GPU needs.

One ``TrainStream`` is iterated in this process (``data.workers: 0``), with the run config's default data and
masking settings (32 pairs per batch, max length 128, sha256 checks on), on the demo dataset (built first if it is
missing). Real tokens are the encoded positions that are not padding, source and target sides together. A GPU
training ``base`` or ``large`` at a given MFU consumes peak × MFU / (training FLOPs per token) real tokens per
second (``weam_ds.presets.train_flops_per_token`` at the stream's max length); the workers it needs are that rate
over one process's. The project's goal: one process delivers >= 350,000 real tokens/s, i.e. at most 2 workers per
H100 for ``base`` at 50% MFU.

    python bench/bench_stream.py [--dataset out/demo/dataset] [--seconds 10] [--data batch_size=64] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer

from data_prep.typed_config import ConfigError, from_dict
from weam_ds.batch import TokenInfo
from weam_ds.config import DataConfig, MaskingConfig
from weam_ds.data import Corpus, TrainStream, padding_counts
from weam_ds.peak_flops import PEAK_TFLOPS
from weam_ds.presets import build_model, count_parameters, train_flops_per_token

GOAL_TOKENS_PER_S = 350_000


def demo_dataset(dataset: Path) -> Path:
    """The demo dataset, built as ``make demo`` builds it unless ``dataset`` already holds a manifest."""
    if not (dataset / "manifest.json").is_file():
        root = dataset.parent
        subprocess.run([sys.executable, "-m", "data_prep.demo_corpus", "--out", str(root)], check=True)
        subprocess.run([sys.executable, "-m", "data_prep", "--config", str(root / "prep.yaml")], check=True)
    return dataset


def batches(stream):
    """The stream's batches, whether it yields a batch or (batch, position)."""
    for item in stream:
        yield item[0] if isinstance(item, tuple) else item


def measure(stream, seconds: float, warmup: int) -> dict:
    """Iterates for ``seconds`` after ``warmup`` batches (first shard opens and sha256 checks then amortised)."""
    it = batches(stream)
    for _ in range(warmup):
        next(it)
    pairs = tokens = padded = count = 0
    start, cpu = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch = next(it)
        encoded, padding = padding_counts(batch, "weam")  # as the default objective encodes it (packed rows)
        pairs += len(batch["src_ids"])
        tokens += encoded - padding
        padded += encoded
        count += 1
    return {"seconds": elapsed, "cpu_seconds": time.process_time() - cpu, "batches": count, "pairs": pairs, "tokens": tokens, "positions": padded}


def tokens_per_s_needed(preset: str, vocab_size: int, seq_len: int, mask_rate: float, peak_tflops: float,
                        mfu: float) -> tuple[float, float]:
    """(training FLOPs per token, real tokens/s one GPU consumes) for ``preset`` at ``mfu``."""
    model = build_model(preset, vocab_size, meta=True)
    flops = train_flops_per_token(model.config, count_parameters(model)["non_embedding"], seq_len=seq_len,
                                  mask_rate=mask_rate)
    return flops, peak_tflops * 1e12 * mfu / flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("out/demo/dataset"))
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds (after the warm-up batches)")
    parser.add_argument("--warmup", type=int, default=50, help="batches read before timing")
    parser.add_argument("--vocab-size", type=int, default=250002,
                        help="model vocabulary for the FLOPs per token (default: XLM-R's)")
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAK_TFLOPS))
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="a data config setting other than its default, e.g. batch_size=64 (repeatable)")
    parser.add_argument("--profile", action="store_true", help="also print where the stream's time goes (cProfile)")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed")
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"), help="profile order")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker process

    overrides = {}
    for setting in args.data:
        key, sep, value = setting.partition("=")
        if not sep:
            parser.error(f"--data {setting}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    try:
        data = from_dict(DataConfig, {"datasets": [str(demo_dataset(args.dataset))], "workers": 0, **overrides})
    except ConfigError as exc:
        parser.error(f"--data: {exc}")
    masking = MaskingConfig()
    corpus = Corpus.open(data)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    stream = TrainStream(corpus, data, masking, info, seed=1234, rank=0)
    print(f"stream: {', '.join(corpus.pairs)}; {data.batch_size} pairs per batch, max length {data.max_length}, "
          f"shuffle buffer {data.shuffle_buffer}, sha256 checks {'on' if data.verify_sha256 else 'off'}, one process")

    got = measure(stream, args.seconds, args.warmup)
    rate = got["tokens"] / got["seconds"]
    print(f"{got['batches']} batches in {got['seconds']:.1f} s: {got['pairs'] / got['seconds']:,.0f} pairs/s, "
          f"{rate:,.0f} real tokens/s per process ({got['tokens'] / got['pairs']:.1f} per pair; "
          f"padding {1 - got['tokens'] / got['positions']:.0%} of encoded positions)")
    # On a shared machine the wall-clock rate drops when other processes take the CPU; per CPU second it does not.
    print(f"per CPU second of this process ({got['cpu_seconds']:.1f} s): "
          f"{got['tokens'] / got['cpu_seconds']:,.0f} real tokens/s")
    print(f"goal: >= {GOAL_TOKENS_PER_S:,} real tokens/s per process: "
          f"{'met' if rate >= GOAL_TOKENS_PER_S else 'NOT met'} ({rate / GOAL_TOKENS_PER_S:.2f}x)")
    peak = PEAK_TFLOPS[args.gpu]
    for preset in ("base", "large"):
        flops, needed = tokens_per_s_needed(preset, args.vocab_size, data.max_length, masking.rate, peak, args.mfu)
        print(f"{preset:>5} at {args.mfu:.0%} MFU on one {args.gpu} ({peak:g} TFLOP/s, {flops / 1e6:,.0f} MFLOP per "
              f"token, vocab {args.vocab_size}, seq {data.max_length}): {needed:,.0f} real tokens/s, "
              f"{math.ceil(needed / rate)} DataLoader workers per GPU ({needed / rate:.2f} processes)")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        measure(TrainStream(corpus, data, masking, info, seed=4321, rank=0), args.seconds, args.warmup)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
