"""Benchmark: data_prep on >= 200k sentence pairs against eflomal's own alignment time on the same data.

The corpus is the demo corpus (real translations from gettext catalogs) replicated to the target size
and written as Moses files; de-duplication is off so the copies survive cleaning. Prints a stage
breakdown, pairs/second, and the ratio the project targets: whole pipeline <= 1.3 x eflomal alone.

    python bench/bench_data_prep.py [--pairs 200000] [--workdir out/bench] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import eflomal

from data_prep.build import build
from data_prep.cleaning import Cleaner
from data_prep.config import AlignerConfig, config_from_dict
from data_prep.demo_corpus import demo_config
from data_prep.readers import read_pairs
from data_prep.words import split_words


def write_corpus(workdir: Path, total: int) -> list[dict]:
    """Moses files per demo language pair, the clean demo pairs repeated up to total / n_pairs each."""
    demo = config_from_dict(demo_config(workdir))
    per_pair = math.ceil(total / len(demo.pairs))
    pairs = []
    for pair in demo.pairs:
        clean = list(Cleaner(demo.cleaning).clean(read_pairs(pair)))
        rows = (clean * math.ceil(per_pair / len(clean)))[:per_pair]
        src, tgt = workdir / f"corpus.{pair.key}.{pair.src_lang}", workdir / f"corpus.{pair.key}.en"
        src.write_text("".join(f"{s}\n" for s, _ in rows), encoding="utf-8")
        tgt.write_text("".join(f"{t}\n" for _, t in rows), encoding="utf-8")
        pairs.append({"src_lang": pair.src_lang, "tgt_lang": "en", "format": "moses", "src": str(src), "tgt": str(tgt)})
    return pairs


def eflomal_alone(pairs: list[dict], aligner: AlignerConfig) -> float:
    """Seconds eflomal takes to align every pair in both directions, words prepared beforehand."""
    seconds = 0.0
    for pair in pairs:
        src = [" ".join(split_words(line.rstrip("\n"))) for line in open(pair["src"], encoding="utf-8")]
        tgt = [" ".join(split_words(line.rstrip("\n"))) for line in open(pair["tgt"], encoding="utf-8")]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            eflomal.Aligner(model=aligner.model, n_samplers=aligner.samplers).align(
                src, tgt, links_filename_fwd=f"{tmp}/fwd", links_filename_rev=f"{tmp}/rev", quiet=True)
            seconds += time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="total sentence pairs")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench"))
    parser.add_argument("--chunk-size", type=int, help="override data_prep's chunk_size")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline/eflomal runs, alternating (medians)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)

    pairs = write_corpus(args.workdir, args.pairs)
    overrides = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    cfg = config_from_dict({"output_dir": str(args.workdir / "dataset"), "pairs": pairs,
                            "tokenizer": {"train": {"vocab_size": 8000}}, "cleaning": {"dedup": False},
                            **overrides})
    # Pipeline and eflomal alone alternate, so that drifts of the machine hit both; medians over repeats.
    pipelines, baselines = [], []
    for repeat in range(args.repeats):
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        start = time.perf_counter()
        report = build(cfg)
        pipelines.append(time.perf_counter() - start)
        baselines.append(eflomal_alone(pairs, cfg.aligner))
        print(f"run {repeat + 1}: pipeline {pipelines[-1]:.1f} s, eflomal alone {baselines[-1]:.1f} s, "
              f"ratio {pipelines[-1] / baselines[-1]:.2f}")
    pipeline, baseline = statistics.median(pipelines), statistics.median(baselines)
    n = sum(p["clean_pairs"] for p in report.manifest["pairs"].values())

    print(f"\ndata_prep benchmark: {n} sentence pairs, {len(pairs)} language pairs, "
          f"{cfg.n_workers} workers, chunk_size {cfg.chunk_size}, {os.cpu_count()} CPU cores")
    print("pipeline stages of the last run (wall seconds):")
    for stage, seconds in report.wall.items():
        print(f"  {stage:<12}{seconds:8.1f}")
    print("inside align+encode (worker seconds, summed over workers; the tokenizer is made meanwhile):")
    for step in ("words", "align", "symmetrize", "save", "tokenize", "project", "write"):
        print(f"  {step:<12}{report.worker[step]:8.1f}")
    print(f"whole pipeline      {pipeline:8.1f} s  ({n / pipeline:,.0f} pairs/s; median of {args.repeats})")
    print(f"eflomal alone       {baseline:8.1f} s  ({n / baseline:,.0f} pairs/s; median of {args.repeats})")
    print(f"pipeline / eflomal  {pipeline / baseline:8.2f}  (medians; target <= 1.30)")


if __name__ == "__main__":
    main()
