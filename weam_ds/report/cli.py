"""``python -m weam_ds.report --study STUDY_DIR --out REPORT_DIR``: builds the report beside REPORT_DIR and moves it
in whole, then prints its Answer and Summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.output_dirs import OutputDirError, replacing
from weam_ds.registry import REGISTRY_FILE, Registry, RegistryError
from weam_ds.report.document import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weam_ds.report",
                                     description="The scaling study's report, from its registry.sqlite alone.")
    parser.add_argument("--study", type=Path, required=True, help="the study directory (holds registry.sqlite)")
    parser.add_argument("--out", type=Path, required=True, help="where the report goes: a new or empty directory")
    parser.add_argument("--force", action="store_true", help="replace --out when it holds an earlier report")
    args = parser.parse_args(argv)
    try:
        with Registry(args.study / REGISTRY_FILE, readonly=True) as registry:
            if not registry.cells():
                raise RegistryError(f"{registry.path}: no cells registered yet")
            # Built beside --out and moved in whole: a rerun leaves no plot or hparams entry of the last one.
            with replacing(args.out, "weam_ds.report", args.force) as tmp:
                blocks = build(registry, tmp)
    except (RegistryError, OutputDirError) as exc:
        print(f"weam_ds.report: error: {exc}", file=sys.stderr)
        return 2
    for heading in ("Answer", "Summary"):
        print(f"{heading}:\n{_section(blocks, heading)}")
    print(f"report: {args.out / 'report.html'} (and report.md, results.csv, the plots); TensorBoard hparams: "
          f"tensorboard --logdir {args.out / 'tensorboard'}")
    return 0


def _section(blocks: list[tuple], heading: str) -> str:
    """The paragraphs under the ``h2`` ``heading``, one a line."""
    start = blocks.index(("h2", heading)) + 1
    end = next(i for i, block in enumerate(blocks) if i >= start and block[0] == "h2")
    return "\n".join(text for _, text in blocks[start:end])
