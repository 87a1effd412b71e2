"""Benchmark: data_prep on >= 200k sentence pairs against eflomal's own alignment time on the same data.

The corpus is the demo corpus (real translations from gettext catalogs) replicated to the target size
and written as Moses files; de-duplication is off so the copies survive cleaning. Prints a stage
breakdown, pairs/second, and the ratio the project targets: whole pipeline <= 1.3 x eflomal alone.

It also builds the same corpus from gzip and xz copies of its files (goal: at most 5% more wall time than
the plain files), and projects the wall time of a 100M-pair build on 1, 8 and 64 nodes of 64 cores from the
measured rates (see ``project``).

    python bench/bench_data_prep.py [--pairs 200000] [--workdir out/bench] [--repeats 3] [--compressed gzip,xz]
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import logging
import lzma
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


COMPRESSORS = {"gzip": (gzip.open, ".gz"), "xz": (lzma.open, ".xz"), "bzip2": (bz2.open, ".bz2")}


def compressed_copies(pairs: list[dict], method: str) -> list[dict]:
    """The Moses pairs with each file compressed by ``method`` (its default level), as downloads come."""
    opener, suffix = COMPRESSORS[method]
    copies = []
    for pair in pairs:
        copy = dict(pair)
        for side in ("src", "tgt"):
            packed = pair[side] + suffix
            with open(pair[side], "rb") as plain, opener(packed, "wb") as out:
                shutil.copyfileobj(plain, out, 1 << 20)
            copy[side] = packed
        copies.append(copy)
    return copies


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


PROJECTED_PAIRS, NODE_CORES, NODE_COUNTS = 100_000_000, 64, (1, 8, 64)
PROJECTED_SOURCES = 50
"""The projection's build: 50 language pairs of 2M pairs each, on nodes of 64 cores."""


def project(report, n_pairs: int, n_sources: int, workers: int, max_sample: int) -> list[str]:
    """Projected wall time of PROJECTED_PAIRS on NODE_COUNTS nodes, from this build's measured rates, as the SLURM
    backend runs it: cleaning and tokenizer training in one job on one node (a source is cleaned by one core), then
    align+encode as an array over every core, scaling linearly (no queue waits, no shared-disk limit)."""
    clean_per_pair = report.wall["clean"] * min(workers, n_sources) / n_pairs  # core-seconds per pair
    chunk_per_pair = sum(report.worker.values()) / n_pairs  # worker-seconds of align+encode per pair
    per_source = PROJECTED_PAIRS / PROJECTED_SOURCES
    # Tokenizer training grows with its sample (at most max_sentences_per_pair a source; here every train pair),
    # taken at this machine's speed: its threads gain little from a larger node.
    tokenizer = report.wall["tokenizer"] / n_pairs * min(per_source, max_sample) * PROJECTED_SOURCES
    first_job = math.ceil(PROJECTED_SOURCES / NODE_CORES) * per_source * clean_per_pair + tokenizer
    lines = [f"projected wall time of {PROJECTED_PAIRS:,} pairs ({PROJECTED_SOURCES} sources, nodes of {NODE_CORES}"
             f" cores; align+encode {1 / chunk_per_pair:,.0f} pairs/s/core, cleaning {1 / clean_per_pair:,.0f}):"]
    for nodes in NODE_COUNTS:
        array = PROJECTED_PAIRS * chunk_per_pair / (nodes * NODE_CORES)
        lines.append(f"  {nodes:>3} node{'s' if nodes > 1 else ' '}  clean+tokenizer {first_job / 3600:6.2f} h"
                     f"  align+encode {array / 3600:6.2f} h  total {(first_job + array) / 3600:6.2f} h")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000, help="total sentence pairs")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench"))
    parser.add_argument("--chunk-size", type=int, help="override data_prep's chunk_size")
    parser.add_argument("--repeats", type=int, default=3, help="pipeline/eflomal runs, alternating (medians)")
    parser.add_argument("--compressed", default="gzip,xz",
                        help=f"also build from compressed copies: a comma-separated list of {', '.join(COMPRESSORS)}"
                             " ('' for none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)

    methods = [m for m in args.compressed.split(",") if m]
    if unknown := set(methods) - set(COMPRESSORS):
        parser.error(f"--compressed: unknown {', '.join(sorted(unknown))} (known: {', '.join(COMPRESSORS)})")
    pairs = write_corpus(args.workdir, args.pairs)
    overrides = {"chunk_size": args.chunk_size} if args.chunk_size else {}

    def config(name: str, sources: list[dict]):
        return config_from_dict({"output_dir": str(args.workdir / name), "pairs": sources,
                                 "tokenizer": {"train": {"vocab_size": 8000}}, "cleaning": {"dedup": False},
                                 **overrides})

    cfg = config("dataset", pairs)
    variants = {m: config(f"dataset-{m}", compressed_copies(pairs, m)) for m in methods}
    # Pipeline, eflomal alone and the compressed builds alternate, so that drifts of the machine hit all of them;
    # medians over repeats.
    pipelines, baselines, packed = [], [], {m: [] for m in methods}
    for repeat in range(args.repeats):
        shutil.rmtree(cfg.output_dir, ignore_errors=True)
        start = time.perf_counter()
        report = build(cfg)
        pipelines.append(time.perf_counter() - start)
        baselines.append(eflomal_alone(pairs, cfg.aligner))
        line = (f"run {repeat + 1}: pipeline {pipelines[-1]:.1f} s, eflomal alone {baselines[-1]:.1f} s, "
                f"ratio {pipelines[-1] / baselines[-1]:.2f}")
        for method, variant in variants.items():
            shutil.rmtree(variant.output_dir, ignore_errors=True)
            start = time.perf_counter()
            build(variant)
            packed[method].append(time.perf_counter() - start)
            line += f", {method} input {packed[method][-1]:.1f} s"
        print(line)  # whole, once the run's builds are done (the tokenizer trainer writes to the console too)
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
    for method, seconds in packed.items():
        median = statistics.median(seconds)
        print(f"{method + ' input':<20}{median:8.1f} s  ({median / pipeline - 1:+.1%} against the plain files; "
              f"goal <= +5%)")
    print(f"{n / pipeline / cfg.n_workers:,.0f} pairs/s per core (whole pipeline, {cfg.n_workers} workers)")
    cap = cfg.tokenizer.train.max_sentences_per_pair
    print("\n".join(project(report, n, len(pairs), cfg.n_workers, cap)))


if __name__ == "__main__":
    main()
