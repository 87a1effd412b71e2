"""Helpers for tests that run weam_ds.train as users do: a run config on a dataset the project built
(tests/fixtures/run_config.py, the one builder), and torchrun launches of CPU (gloo) ranks (one rank: one process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import free_port
from fixtures.run_config import run_config  # noqa: F401 - the tests' builder, imported from here


def write_config(cfg: dict, tmp: Path) -> Path:
    path = tmp / f"{Path(cfg['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun_command(config: Path, ranks: int = 2, *extra: str, script: Path | None = None) -> list[str]:
    """torchrun (its elastic agent, as users launch) on ``weam_ds.train``, or on a script that wraps it."""
    target = [str(script)] if script else ["-m", "weam_ds.train"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", f"--master-port={free_port()}",
            *target, "--config", str(config), *extra]


def train(cfg: dict, tmp: Path, ranks: int = 2, *extra: str) -> subprocess.CompletedProcess:
    """``ranks`` ranks under torchrun; one rank is one process without a launcher, as docs/run_config.md shows it
    (torchrun's agent would add 1.5 s of CPU; the launcher's local backend runs one rank under torchrun: test_study)."""
    config = write_config(cfg, tmp)
    cmd = torchrun_command(config, ranks, *extra) if ranks > 1 else [
        sys.executable, "-m", "weam_ds.train", "--config", str(config), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def scalar_steps(out: Path, tag: str) -> list[int]:
    """The steps TensorBoard shows for ``tag`` (purged events left out, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]
