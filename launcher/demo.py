"""``python -m launcher.demo --dataset DIR --out study.yaml``: the study ``make demo`` runs, a miniature of the
project's question on CPU: two presets (``tiny`` and ``mini``) × two language counts (one pair, and every pair of
the demo dataset) × two objectives (WEAM and MLM), each cell the demo run (weam_ds.demo: ZeRO-3 on 2 gloo
processes) and evaluated by Tatoeba-style retrieval on the held-out test pairs of every demo language, so the
one-pair cells are measured on languages they never saw.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from data_prep.manifest import read_manifest
from weam_ds.demo import demo_run


def demo_study(dataset: Path, study_dir: Path) -> dict:
    pairs = sorted(read_manifest(dataset)["pairs"])
    first = "fr-en" if "fr-en" in pairs else pairs[0]
    base = demo_run(dataset, study_dir / "base")  # each cell gets its own output_dir
    return {
        "name": "demo",
        "study_dir": str(study_dir),
        "base": base,
        "languages": {"langs_1": [first], f"langs_{len(pairs)}": pairs},
        "axes": {"model": ["tiny", "mini"], "data.pairs": ["langs_1", f"langs_{len(pairs)}"],
                 "objective.name": ["weam", "mlm"]},
        "budget": {"rule": "steps", "steps": base["train"]["steps"]},
        "evaluation": {"tatoeba": {}},
        "launch": {"backend": "local", "nproc_per_node": 2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="the demo dataset directory")
    parser.add_argument("--out", type=Path, required=True, help="the study file to write")
    args = parser.parse_args(argv)
    study = demo_study(args.dataset, args.out.parent / "study")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(study, sort_keys=False))
    print(f"study file: {args.out} (cells and registry in {study['study_dir']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
