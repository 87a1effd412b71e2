"""Ctrl-C, full disks, read-only directories and resumes with another config, through the commands a user runs:
each ends within seconds with one line, leaves nothing that blocks or fools the next run, and says what it
refused. Ctrl-C is SIGINT to the command's process group, as a terminal sends it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import launched_run, small_config
from study_standin import copy_backend, launcher_command, starts

from data_prep.manifest import read_manifest
from data_prep.worker_pool import as_completed, ctrl_c_noted
from launcher.cli import main as launcher_main
from weam_ds.config import load_run_config
from weam_ds.optimizer import lr_lambda
from weam_ds.registry import REGISTRY_FILE, Registry
from weam_ds.run_dir import RunDir, checkpoint_problem
from weam_ds.train import main as train_main

TRAIN = [sys.executable, "-m", "weam_ds.train", "--config"]
LAUNCH = [sys.executable, "-m", "launcher", "run", "--backend", "local", "--config"]
STOP_S = 60
"""Ctrl-C to exit: the checkpoint, then torchrun's and Python's exits on 2 shared cores."""


def run_config(tmp: Path, dataset: Path, out: Path, name: str, **sections) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(launched_run(dataset, out, 200, **sections)))
    return path


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """A command as a terminal's job: a process group of its own, which Ctrl-C reaches whole, and Ctrl-C's default
    action (a suite started in the background, `make test &`, hands its children SIGINT ignored, and Python then
    installs no KeyboardInterrupt)."""
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def ctrl_c_when(job: subprocess.Popen, ready, seconds: float = 300) -> tuple[int, str, float]:
    """Waits for ``ready()``, sends SIGINT to the job's process group; (exit status, stderr, seconds to exit).
    Whatever is left of the job after it is killed, and must not be."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert job.poll() is None, f"the job ended early ({job.returncode}): {job.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    family = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    os.killpg(job.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=STOP_S)
    finally:
        # A moment for processes already on their way out (a worker mid-exit shows no command line yet).
        _, alive = psutil.wait_procs(family, timeout=5)
        left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in left:
            p.kill()
    assert not left, f"left running: {[p.cmdline() for p in left]}"
    return job.returncode, stderr, time.monotonic() - sent


def lines_of(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small file system of its own at ``path`` (root only: skipped elsewhere, except on CI)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mount.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mount: {mount.stderr.decode()}")
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        if readonly:  # root ignores mode bits: a read-only mount is read-only to root too
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.slow
def test_ctrl_c_to_a_launched_run_and_resuming_it_with_another_config(small_dataset, tmp_path, capsys):
    """Ctrl-C in start-up and in training: one line, status 130, nothing left running, a complete checkpoint;
    DeepSpeed's shared-memory op (no use in CPU training) never built, a build lock left by a killed build
    taken over. Resuming: a new lr applies from the resumed step (logged), another model is refused."""
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = run_config(tmp_path, dataset, out, "run")
    extensions = tmp_path / "torch_extensions"
    left_lock = extensions / "cpu_adam" / "lock"
    left_lock.parent.mkdir(parents=True)
    left_lock.touch()  # as a build killed mid-way leaves it (no process holds it)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}
    run = RunDir(out)

    code, stderr, seconds = ctrl_c_when(start([*LAUNCH, str(config)], env=env), run.log(0).exists)
    assert code == 130 and seconds < STOP_S and "Traceback" not in stderr, stderr[-3000:]
    assert lines_of(stderr, "launcher:")[-1].startswith("launcher: stopped by SIGINT")

    code, stderr, seconds = ctrl_c_when(
        start([*LAUNCH, str(config)], env=env),
        lambda: run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 3)
    assert code == 130 and seconds < STOP_S, stderr[-3000:]
    assert "Traceback" not in stderr and "no rank log ends with an error" not in stderr
    assert lines_of(stderr, "launcher:") == [
        "launcher: stopped by SIGINT; launched again, the run resumes from its newest checkpoint"]
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None
    stopped = int(tag[4:])
    assert not left_lock.exists() and "a build lock no process holds" in run.log(0).read_text()
    assert not (extensions / "deepspeed_shm_comm").exists()

    # Resumed with half the learning rate and a shorter run: the schedule is the new one from there on.
    steps = stopped + 3
    resumed = run_config(tmp_path, dataset, out, "resumed", optimizer={"lr": 1e-3}, train={"steps": steps})
    job = subprocess.run([*TRAIN, str(resumed)], capture_output=True, text=True, env=env, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "changed since the checkpoint: optimizer.lr 0.002 -> 0.001" in run.log(0).read_text()
    cfg = load_run_config(resumed)
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()][stopped:]
    assert [r["step"] for r in rows] == list(range(stopped + 1, steps + 1))
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * lr_lambda(r["step"], cfg) for r in rows])

    # Another model: refused before anything starts (in this process: the check comes first).
    other_model = run_config(tmp_path, dataset, out, "other", model="mini", train={"steps": steps})
    assert train_main(["--config", str(other_model)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "model ('tiny' -> 'mini')" in stderr


def test_ctrl_c_to_study_run_leaves_the_cell_interrupted_and_a_plain_rerun_continues_it(small_dataset, trained_run,
                                                                                      tmp_path):
    """The cell "trains" through the copy backend (tests/study_standin.py: a launch of torchrun's shape, an agent and
    its rank, copying trained_run step by step), so Ctrl-C reaches the runner mid-training. A training's own
    checkpoint on the runner's SIGTERM and its resume are test_ctrl_c_to_a_launched_run's (the same
    launcher.launch.execute)."""
    dataset, _, _ = small_dataset
    base = yaml.safe_load(run_config(tmp_path, dataset, tmp_path / "unused", "base").read_text())
    steps = len(trained_run.out.joinpath("metrics.jsonl").read_text().splitlines())
    study = {"name": "ctrlc", "study_dir": str(tmp_path / "ctrlc"), "base": base,
             "languages": {"langs_1": ["fr-en"]}, "axes": {"data.pairs": ["langs_1"], "objective.name": ["weam"]},
             "budget": {"rule": "steps", "steps": steps}, "evaluation": {"tatoeba": {"batch_size": 32}},
             "launch": {"backend": "copy", "nproc_per_node": 1}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cells = tmp_path / "ctrlc" / "cells"

    def training() -> bool:
        metrics = list(cells.glob("*/run/metrics.jsonl"))
        return bool(metrics) and len(metrics[0].read_text().splitlines()) >= 2

    with copy_backend({"weam": trained_run.out}, step_seconds=0.2):
        code, stderr, _ = ctrl_c_when(start(launcher_command("study", "run", str(path))), training)
        assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
        assert lines_of(stderr, "launcher:")[-1].endswith("`study run` again continues it")
        with Registry(tmp_path / "ctrlc" / REGISTRY_FILE, readonly=True) as registry:
            (cell,) = registry.cells()
        assert cell.state == "interrupted"
        assert launcher_main(["study", "run", str(path)]) == 0
    with Registry(tmp_path / "ctrlc" / REGISTRY_FILE, readonly=True) as registry:
        (cell,) = registry.cells()
    assert cell.state == "evaluated" and cell.cost.steps == steps
    run = RunDir(cells / cell.name / "run")
    assert "copy backend: stopped by SIGTERM" in run.log(0).read_text()  # the runner stopped the rank, not killed it
    stopped_at = starts(run.root)[1]  # the rerun continued the interrupted training, each step once
    assert starts(run.root) == [0, stopped_at] and 2 <= stopped_at < steps
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == list(range(1, steps + 1))


@pytest.mark.slow
def test_ctrl_c_to_data_prep_ends_it_and_its_workers_at_once(tmp_path, ja_pairs):
    cfg = small_config(tmp_path, ja_pairs)
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = Path(cfg["output_dir"])
    job = start([sys.executable, "-m", "data_prep", "--config", str(config)])
    # Aligning: the workers and their eflomal processes are busy.
    code, stderr, seconds = ctrl_c_when(job, lambda: any(".aligned" in p.name or "tmp" in p.name
                                                         for p in out.glob(".work/*/*")))
    # Status 130 as a shell reports it: the exit status, or the process ended by SIGINT itself (seen once in a
    # loaded run, after the line below: a second KeyboardInterrupt at exit; not reproduced with one Ctrl-C).
    assert code in (130, -signal.SIGINT) and seconds < 10 and "Traceback" not in stderr, stderr[-3000:]
    assert lines_of(stderr, "data_prep:") == [
        "data_prep: interrupted; the same command continues the build (finished chunks are kept)"]
    manifest = read_manifest(out, require_complete=False)
    assert not manifest["complete"]
    for entry in manifest["pairs"].values():  # what is listed is whole
        assert all((out / shard["path"]).is_file() for shard in entry["shards"])


@pytest.mark.slow
def test_a_full_disk_in_training_is_one_line_and_leaves_latest_alone(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    with tmpfs(tmp_path / "small_disk", "1m") as disk:
        config = run_config(tmp_path, dataset, disk / "run", "full", train={"steps": 4, "checkpoint_interval": 2})
        job = subprocess.run([*TRAIN, str(config)], capture_output=True, text=True, timeout=600)
        assert job.returncode == 1, job.stderr[-3000:]
        (line,) = lines_of(job.stderr, "weam_ds.train: error:")
        assert "Traceback" not in job.stderr and "unexpected pos" not in job.stderr
        assert f"{disk / 'run' / 'checkpoints' / 'step2'}" in line and "no space left on the device" in line
        run = RunDir(disk / "run")
        assert run.latest_tag() is None and checkpoint_problem(run.checkpoints / "step2") is not None


@pytest.mark.slow
def test_read_only_dirs_and_bad_inputs_are_one_line_errors_with_status_2(small_dataset, tmp_path, ja_pairs):
    dataset, _, _ = small_dataset
    with tmpfs(tmp_path / "readonly", "1m", readonly=True) as readonly:
        config = run_config(tmp_path, dataset, readonly / "run", "readonly")
        job = subprocess.run([*LAUNCH, str(config)], capture_output=True, text=True, timeout=600)
        assert job.returncode == 2 and "Traceback" not in job.stderr, job.stderr[-3000:]
        assert lines_of(job.stderr, "launcher: error:") == [
            f"launcher: error: {readonly / 'run'}: cannot write (read-only file system)"]
        prep = tmp_path / "prep.yaml"
        prep.write_text(yaml.safe_dump(small_config(tmp_path, ja_pairs, output_dir=str(readonly / "dataset"))))
        job = subprocess.run([sys.executable, "-m", "data_prep", "--config", str(prep)], capture_output=True,
                             text=True, timeout=600)
        assert job.returncode == 2 and "Traceback" not in job.stderr, job.stderr[-3000:]
        assert lines_of(job.stderr, "data_prep: error:") == [
            f"data_prep: error: {readonly / 'dataset'}: cannot write (read-only file system)"]

    # A dataset whose fr-en train shards are all gone: training says so, as a bad dataset, with status 2.
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    manifest = read_manifest(broken)
    for shard in manifest["pairs"]["fr-en"]["shards"]:
        if shard["split"] == "train":
            (broken / shard["path"]).unlink()
    config = run_config(tmp_path, broken, tmp_path / "broken-run", "broken")
    job = subprocess.run([*TRAIN, str(config)], capture_output=True, text=True, timeout=600)
    assert job.returncode == 2 and "Traceback" not in job.stderr, job.stderr[-3000:]
    (line,) = lines_of(job.stderr, "weam_ds.train: error:")
    assert "fr-en" in line and "every train shard" in line

    # A registry whose schema_version is not a number.
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    Registry(study_dir / REGISTRY_FILE).close()
    with sqlite3.connect(study_dir / REGISTRY_FILE) as raw:
        raw.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    job = subprocess.run([sys.executable, "-m", "weam_ds.report", "--study", str(study_dir), "--out",
                          str(tmp_path / "report")], capture_output=True, text=True, timeout=600)
    assert job.returncode == 2 and "Traceback" not in job.stderr, job.stderr[-3000:]
    assert "schema_version 'one' is not a number" in job.stderr and job.stderr.count("\n") == 1


def test_a_ctrl_c_that_python_drops_in_a_finalizer_still_ends_the_build():
    """data_prep.worker_pool.ctrl_c_noted (python -m data_prep builds under it): a Ctrl-C whose KeyboardInterrupt
    lands in a finalizer the garbage collector runs (Python prints "Exception ignored" and goes on: a build once ran
    to its end so) is raised at the build's next look, ``as_completed``."""
    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs here, inside the finalizer, which drops its exception
                pass

    chunk = Future()
    chunk.set_result("aligned")
    # Python's own handler first, as in a terminal: a suite started in the background (`make test &`) inherits
    # SIGINT ignored, and ctrl_c_noted then leaves it so.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ctrl_c_noted():
            Finalized()  # its KeyboardInterrupt goes to sys.unraisablehook, not here
            with pytest.raises(KeyboardInterrupt):
                list(as_completed({chunk: "chunk 0"}))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
