"""After a failed job: the last lines of each rank log (``logs/rank<r>.log``) that ends with an error.

A rank that fails logs its traceback last (weam_ds.failure), and its peers log why they ended; a rank killed
outright logs nothing, which its peers' logs then tell. Only logs written since the launch are read, so an
earlier attempt's failure is not reported again. ``python -m launcher.rank_logs RUN_DIR SINCE`` prints the
same for the sbatch script (SINCE in seconds since the epoch).
"""
from __future__ import annotations

import sys
from pathlib import Path

from weam_ds.run_dir import LOG_RECORD, RunDir

LINES = 20


def _tail(path: Path, limit: int = 1 << 16) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - limit))
        return f.read().decode("utf-8", "replace").splitlines()


def _ends_with_error(lines: list[str]) -> bool:
    return next((m["level"] == "ERROR" for line in reversed(lines) if (m := LOG_RECORD.match(line))), False)


def failed_rank_report(run: RunDir, since: float) -> str:
    """The last lines of the rank logs written since ``since`` whose last record is an error, by rank."""
    ranks = sorted(int(p.name[4:-4]) for p in run.log(0).parent.glob("rank*.log") if p.name[4:-4].isdigit())
    parts = []
    for rank in ranks:
        path = run.log(rank)
        if path.stat().st_mtime < since:
            continue
        lines = _tail(path)
        if _ends_with_error(lines):
            parts.append(f"launcher: rank {rank} failed; the last lines of {path}:\n" + "\n".join(lines[-LINES:]))
    if not parts:
        return (f"launcher: no rank log ends with an error (a rank killed outright logs nothing); see "
                f"{run.log(0).parent}")
    return "\n".join(parts)


if __name__ == "__main__":
    print(failed_rank_report(RunDir(Path(sys.argv[1])), float(sys.argv[2])))
