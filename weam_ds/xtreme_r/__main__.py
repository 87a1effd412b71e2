"""``python -m weam_ds.xtreme_r {score,tatoeba} ...``"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from weam_ds.xtreme_r.metrics import MetricError
from weam_ds.xtreme_r.score import ScoreError, score, write_scores
from weam_ds.xtreme_r.tasks import LANGUAGES


def _score(args) -> int:
    scores = score(args.predictions, args.labels, args.version)
    write_scores(scores, args.output)
    for key, value in scores.items():
        if isinstance(value, dict):
            print(f"{key:<10} avg_metric {value['avg_metric']:.2f}  ({len(next(iter(value.values())))} languages)")
        else:
            print(f"{key:<10} {value:.2f}")
    print(f"scores: {args.output}")
    return 0


def _tatoeba(args) -> int:
    from weam_ds.xtreme_r.tatoeba import evaluate_dataset

    evaluate_dataset(args.model, args.dataset, args.out, layer=args.layer, batch_size=args.batch_size)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds.xtreme_r", description="Zero-shot XTREME / XTREME-R evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score", help="score predictions against labels, as the official scorer does")
    s.add_argument("--predictions", type=Path, required=True, help="folder with one subfolder per task")
    s.add_argument("--labels", type=Path, required=True, help="folder with one subfolder per task")
    s.add_argument("--version", choices=sorted(LANGUAGES), default="xtreme-r")
    s.add_argument("--output", type=Path, required=True, help="scores.json to write")
    t = commands.add_parser("tatoeba", help="Tatoeba-style retrieval on a data_prep dataset's test pairs")
    t.add_argument("--model", type=Path, required=True, help="a Hugging Face encoder directory")
    t.add_argument("--dataset", type=Path, required=True, help="a data_prep dataset directory")
    t.add_argument("--out", type=Path, required=True, help="run directory: predictions/, labels/, scores.json")
    t.add_argument("--layer", type=int, help="hidden layer to mean-pool (default: the middle one)")
    t.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return {"score": _score, "tatoeba": _tatoeba}[args.command](args)
    except (ScoreError, MetricError, OSError) as exc:
        print(f"weam_ds.xtreme_r: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
