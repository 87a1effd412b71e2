"""``python -m weam_ds.xtreme_r {score,run,tatoeba} ...``"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_prep.typed_config import ConfigError
from weam_ds.xtreme_r.eval_dir import EvalDir
from weam_ds.xtreme_r.metrics import MetricError
from weam_ds.xtreme_r.score import ScoreError, score, write_scores
from weam_ds.xtreme_r.tasks import LANGUAGES, TASKS


def _score(args) -> int:
    scores = score(args.predictions, args.labels, args.version)
    write_scores(scores, args.output)
    for key, value in scores.items():
        if isinstance(value, dict):
            print(f"{key:<10} avg_metric {value['avg_metric']:.2f} = avg {TASKS[key].avg_metric_is}  "
                  f"({len(next(iter(value.values())))} languages)")
        else:
            print(f"{key:<10} {value:.2f}")
    print(f"scores: {args.output}")
    return 0


def _model_dir(path: Path) -> Path:
    """--model is a local directory: a missing one is an error here, never a name looked up on a model hub."""
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model: {path} is not a Hugging Face model directory (no config.json)")
    return path


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: {text} names a seed twice (the spread over seeds needs distinct runs)")
    return seeds


def _tatoeba(args) -> int:
    from weam_ds.xtreme_r.tatoeba import evaluate_dataset

    evaluate_dataset(_model_dir(args.model), args.dataset, args.out, layer=args.layer, batch_size=args.batch_size)
    return 0


def _run(args) -> int:
    from weam_ds.xtreme_r.recipe import RECIPES
    from weam_ds.xtreme_r.run import run

    seeds = _seeds(args.seeds)
    results = run(_model_dir(args.model), args.data, args.tasks.split(","), args.out, seeds,
                  args.recipes or RECIPES, args.languages.split(",") if args.languages else None, args.deepspeed,
                  args.tatoeba_encoder)
    for task, value in results.items():
        if task not in TASKS:
            continue
        if not value["scored"]:
            print(f"{task:<8} {value['split']} not scored: {value['reason']}")
            continue
        print(f"{task:<8} {value['split']} {value['avg_metric_is']}: avg {value['avg_metric']:.2f} "
              f"± {value['avg_metric_std']:.2f} over seeds {value['seeds']}"
              + (f", transfer gap in {value['metric']} {value['transfer_gap']:.2f}" if "transfer_gap" in value else ""))
    if "mean_of_scored_tasks" in results:
        print(f"mean of the scored tasks' avg_metric (not an official aggregate): {results['mean_of_scored_tasks']:.2f}")
    for version, found in results.get("official_aggregates", {}).items():
        caveats = found.get("caveats", [])
        print(f"{version} official aggregates: " + ", ".join(f"{k} {v:.2f}" for k, v in found.items() if k != "caveats")
              + (f" (not comparable: {'; '.join(caveats)})" if caveats else ""))
    print(f"results: {EvalDir(args.out).results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds.xtreme_r", description="Zero-shot XTREME / XTREME-R evaluation.")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("score", help="score predictions against labels, as the official scorer does")
    s.add_argument("--predictions", type=Path, required=True, help="folder with one subfolder per task")
    s.add_argument("--labels", type=Path, required=True, help="folder with one subfolder per task")
    s.add_argument("--version", choices=sorted(LANGUAGES), default="xtreme-r")
    s.add_argument("--output", type=Path, required=True, help="scores.json to write")
    r = commands.add_parser("run", help="zero-shot fine-tune on English, predict every language, score")
    r.add_argument("--model", type=Path, required=True, help="a Hugging Face encoder directory")
    r.add_argument("--data", type=Path, required=True, help="the official download folder (one subfolder per task)")
    r.add_argument("--tasks", required=True, help="comma-separated, of: "
                   + " ".join(name for name, task in TASKS.items() if task.runnable))
    r.add_argument("--out", type=Path, required=True, help="run directory")
    r.add_argument("--seeds", default="1,2,3", help="comma-separated fine-tuning seeds (default 1,2,3)")
    r.add_argument("--recipes", type=Path, help="folder of <task>.yaml recipes (default: the shipped ones)")
    r.add_argument("--languages", help="comma-separated subset of each task's languages")
    r.add_argument("--deepspeed", help="a DeepSpeed config for fine-tuning large encoders (ds_configs/...)")
    r.add_argument("--tatoeba-encoder", choices=("squad", "raw"), default="squad",
                   help="Tatoeba embeds with the English-SQuAD fine-tuned model (XTREME-R's protocol; the raw model "
                   "when the download has no SQuAD) or, asked for, with the raw pre-trained model")
    t = commands.add_parser("tatoeba", help="Tatoeba-style retrieval on a data_prep dataset's test pairs")
    t.add_argument("--model", type=Path, required=True, help="a Hugging Face encoder directory")
    t.add_argument("--dataset", type=Path, required=True, help="a data_prep dataset directory")
    t.add_argument("--out", type=Path, required=True, help="run directory: tatoeba-en2xx/ (the official "
                   "direction) and tatoeba-xx2en/, each with predictions/, labels/, scores.json")
    t.add_argument("--layer", type=int, help="hidden layer to mean-pool (default: the one XTREME-R pools for "
                   "the model type, at the same relative depth)")
    t.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return {"score": _score, "tatoeba": _tatoeba, "run": _run}[args.command](args)
    except (ScoreError, MetricError, ConfigError, OSError) as exc:
        print(f"weam_ds.xtreme_r: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
