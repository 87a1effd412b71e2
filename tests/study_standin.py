"""A stand-in for a study cell's training: the launcher backend ``copy``, registered by the tests, which "trains" a
cell by copying a run that really trained (its metrics, model, logs and checkpoints) into the cell's run directory.
Everything after the training then runs for real on a real run: the study's bookkeeping (states, idempotence,
refusals, a rerun after a kill or Ctrl-C), the export, the evaluation, the registry and the report. One real cell per
backend still trains (tests/launcher/test_study.py's local cell, test_study_slurm.py's SLURM cell).

The launch has torchrun's shape, so that launcher.launch.execute treats it as it treats a training: an agent process
(in a session of its own) and one rank below it. The rank writes the copied run's metrics.jsonl a line (a step) at a
time, ``step_seconds`` apart, continuing after the lines the cell's run directory already holds, as a resumed training
continues after its checkpoint; the checkpoints come last, as the training's last save. SIGTERM stops the rank after
its step, as it stops a training (the agent then ends as after a finished run). The rank's log says where each start
began (``started at step N``), so a test sees a rerun continue the cell's run instead of starting it afresh.

Which run a cell copies: ``WEAM_TEST_COPIED_RUNS``, JSON ``{"runs": {objective name: run directory or null},
"step_seconds": s}``; a cell whose objective maps to null (or is missing) fails as a training does: its rank logs why
and exits with status 1. ``copy_backend`` sets it and registers the backend in this process; a study runner in a
process of its own is ``python tests/study_standin.py launcher study run ...`` (``launcher_command``), which
registers it there.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BACKEND = "copy"
RUNS_ENV = "WEAM_TEST_COPIED_RUNS"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOG = Path("logs") / "rank0.log"


def launcher_command(*args: str) -> list[str]:
    """``python -m launcher ARGS`` with the ``copy`` backend registered, for a runner started as a process."""
    return [sys.executable, __file__, "launcher", *args]


def _launch(req):
    """The ``copy`` backend: an agent and its rank copying the run that ``RUNS_ENV`` names for the cell's objective."""
    from launcher.backends import Launch

    table = json.loads(os.environ[RUNS_ENV])
    source = table["runs"].get(req.run.objective.name) or ""
    rank = [__file__, "rank", source, os.path.abspath(req.run.output_dir), str(table.get("step_seconds", 0))]
    return Launch([sys.executable, __file__, "agent", *rank], notes=[f"copy backend: {source or 'no run to copy'}"])


def register() -> None:
    """The ``copy`` backend in launcher.backends.BACKENDS and launcher.cluster.BACKEND_NAMES, for this process."""
    import launcher.cluster
    from launcher.backends import BACKENDS

    BACKENDS[BACKEND] = _launch
    if BACKEND not in launcher.cluster.BACKEND_NAMES:
        launcher.cluster.BACKEND_NAMES = (*launcher.cluster.BACKEND_NAMES, BACKEND)


@contextlib.contextmanager
def copy_backend(runs: dict[str, Path | None], step_seconds: float = 0.0):
    """The ``copy`` backend registered in this process, and ``RUNS_ENV`` set for it and for runner processes."""
    import pytest

    import launcher.cluster
    from launcher.backends import BACKENDS

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, BACKEND, _launch)
        patch.setattr(launcher.cluster, "BACKEND_NAMES", (*launcher.cluster.BACKEND_NAMES, BACKEND))
        patch.setenv(RUNS_ENV, json.dumps({"runs": {k: str(v) if v else None for k, v in runs.items()},
                                           "step_seconds": step_seconds}))
        yield


def starts(run_dir: Path) -> list[int]:
    """The step each start of the stand-in on this run began after (0: afresh), from the rank's log."""
    lines = (run_dir / LOG).read_text(encoding="utf-8").splitlines()
    return [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("copy backend: started at step ")]


def _agent(rank: list[str]) -> int:
    """torchrun's part: starts the rank, hands it SIGTERM and SIGINT, ends with its status."""
    child = subprocess.Popen([sys.executable, *rank])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signal.SIGTERM))
    return child.wait()


def _rank(source: str, destination: Path, step_seconds: float) -> int:
    stopped = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    (destination / LOG).parent.mkdir(parents=True, exist_ok=True)
    metrics = destination / METRICS
    done = len(metrics.read_text(encoding="utf-8").splitlines()) if metrics.exists() else 0
    with open(destination / LOG, "a", encoding="utf-8") as log:
        print(f"copy backend: started at step {done}", file=log, flush=True)
        if not source:
            print("copy backend: no run to copy for this cell's objective: failing as a training does", file=log)
            return 1
        src = Path(source)
        for item in src.iterdir():  # all but the steps and the checkpoints: the run's start
            target = destination / item.name
            if item.name in (METRICS, CHECKPOINTS) or target.exists():
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
        lines = (src / METRICS).read_text(encoding="utf-8").splitlines()
        with open(metrics, "a", encoding="utf-8") as out:
            for line in lines[done:]:
                if stopped:
                    print(f"copy backend: stopped by SIGTERM after step {done}", file=log)
                    return 0
                time.sleep(step_seconds)
                out.write(line + "\n")
                out.flush()
                done += 1
        shutil.copytree(src / CHECKPOINTS, destination / CHECKPOINTS, dirs_exist_ok=True)
        print(f"copy backend: copied {src} through step {done}", file=log)
    return 0


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the project's packages, not tests/data_prep and the like
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "launcher":
        register()
        from launcher.cli import main

        sys.exit(main(args))
    if mode == "agent":
        sys.exit(_agent(args))
    sys.exit(_rank(args[0], Path(args[1]), float(args[2])))
