"""``python -m data_prep --config prep.yaml``: build a dataset directory (see data_prep.build)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep import PrepError, __version__
from data_prep.files import write_failure
from data_prep.manifest import ManifestError, is_monolingual
from data_prep.typed_config import ConfigError


def summarize(manifest: dict) -> str:
    """A table of the manifest: one row per language pair, and per monolingual language (no target: "-")."""
    head = ("pair", "records", "clean", "dropped", "train", "dev", "test", "src tok", "tgt tok", "links/pair", "shards")
    rows = []
    for key, p in manifest["pairs"].items():
        splits = p["splits"]
        samples = sum(s["samples"] for s in splits.values())
        links = sum(s["links"] for s in splits.values())
        target = ("-", "-") if is_monolingual(p) else (sum(s["tgt_tokens"] for s in splits.values()),
                                                        f"{links / max(samples, 1):.1f}")
        rows.append((key, p["input_records"], p["clean_pairs"], sum(p["dropped"].values()),
                     splits["train"]["samples"], splits["dev"]["samples"], splits["test"]["samples"],
                     sum(s["src_tokens"] for s in splits.values()), *target, len(p["shards"])))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    tok = manifest["tokenizer"]
    lines.append(f"tokenizer: {tok['path']} ({tok['source']}, {tok['vocab_size']} pieces); "
                 f"aligner: {manifest['aligner']['method']} + {manifest['aligner']['symmetrize']}")
    return "\n".join(lines)


STAGES = ("prepare", "chunks", "finish")
"""The stages of a build spread over jobs (data_prep.build), each run by one job: what the SLURM jobs run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_prep", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--config", required=True, help="prep.yaml (see docs/dataset.md)")
    parser.add_argument("--workers", type=int, help="worker processes (overrides the config; 0 = one per core)")
    parser.add_argument("--stage", choices=STAGES, help="one stage of a build spread over SLURM jobs (what the jobs "
                                                        "that `python -m launcher prep` submits run)")
    parser.add_argument("--nodes", type=int, default=1, help="--stage prepare: nodes to spread the chunks over")
    parser.add_argument("--chunks-per-task", type=int,
                        help="--stage prepare: chunks per group (default: the chunks spread over --nodes)")
    parser.add_argument("--task", type=int, help="--stage chunks: the group of chunks to do (the array task)")
    parser.add_argument("--version", action="version", version=f"weam-ds data_prep {__version__}")
    args = parser.parse_args(argv)
    from data_prep.build import build
    from data_prep.config import load_config
    from data_prep.worker_pool import LOG_FORMAT, ctrl_c_noted

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        _check_arguments(args)
        cfg = load_config(args.config)
        if args.workers is not None:
            cfg.workers = args.workers
        with ctrl_c_noted():
            if args.stage is not None:
                return _run_stage(args, cfg)
            report = build(cfg)
    except KeyboardInterrupt:
        print("data_prep: interrupted; the same command continues the build (finished chunks are kept)",
              file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk or a read-only output_dir, named with its cause
        print(f"data_prep: error: {write_failure(exc, Path(exc.filename or '.')) or exc}", file=sys.stderr)
        return 2
    except (PrepError, ConfigError, ManifestError) as exc:
        print(f"data_prep: error: {exc}", file=sys.stderr)
        return 2
    print(summarize(report.manifest))
    print(f"manifest: {cfg.output_dir}/manifest.json")
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers: must not be negative")
    for name in ("chunks_per_task", "nodes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
    if args.chunks_per_task is not None and args.stage != "prepare":
        raise ConfigError("--chunks-per-task: with --stage prepare (a spread build: `python -m launcher prep`)")
    if (args.stage == "chunks") != (args.task is not None):
        raise ConfigError("--task: with --stage chunks, and only there")


def _run_stage(args: argparse.Namespace, cfg) -> int:
    """One stage of a spread build; prepare prints the number of chunk groups (array tasks) on stdout, alone."""
    from data_prep.build import finish, prepare, run_chunk_group

    if args.stage == "prepare":
        print(prepare(cfg, args.nodes, args.chunks_per_task))
    elif args.stage == "chunks":
        run_chunk_group(cfg, args.task)
    else:
        manifest = finish(cfg)
        print(summarize(manifest))
        print(f"manifest: {cfg.output_dir}/manifest.json")
    return 0
