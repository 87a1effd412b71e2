"""Training tried as a hostile or unlucky user would, on 2 CPU ranks under torchrun: a failure on any rank
ends the whole job promptly with its reason; a kill during a save leaves ``latest`` on a complete
checkpoint; a resumed run logs each step once; damaged shards are counted, once; a bad config is a one-line
error that writes nothing.

One launch per way a job can end that only processes show (an error on one rank, a hung rank; a run killed three
ways and resumed; an error on every rank: tests/launcher/test_run.py, through the launcher); what decides the rest
(which checkpoint a resume takes, which pair a stream names, whether a rank prints a config error) is tested on its
own, without a launch."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import traceback
from pathlib import Path

import pytest
import torch
from conftest import free_port
from transformers import AutoTokenizer

from data_prep.typed_config import from_dict
from weam_ds import checkpoint, failure
from weam_ds.batch import TokenInfo
from weam_ds.config import DataConfig, MaskingConfig
from weam_ds.data import Corpus, NoData, TrainStream
from weam_ds.export import main as export_main
from weam_ds.run_dir import COMMIT_FILE, PROBE_FILE, RunDir
from weam_ds.train import main as train_main

from runs import metric_rows, run_config, scalar_steps, torchrun_command, train, write_config

FAULTY = Path(__file__).with_name("faulty_train.py")
BOUND = 60  # seconds from an error to the end of the job (train.failure_timeout's default)


def _damage_shards(dataset: Path, copy: Path, pairs: list[str], split: str = "train") -> None:
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for pair in pairs:
        for shard in manifest["pairs"][pair]["shards"]:
            if shard["split"] == split:
                path = copy / shard["path"]
                path.write_bytes(path.read_bytes()[:1000] + b"\xff" * 4000)


def _run_to_failure(cmd: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    return run, time.monotonic() - started


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "weam_ds.train: error:" in line]


@pytest.mark.parametrize("bad,workers,expected", [
    (["fr-en"], 1, "every train shard of fr-en ("),
    (["fr-en", "ja-en"], 2, "every train shard of every pair is bad: fr-en ("),
])
def test_a_pair_without_readable_shards_is_named_through_the_loader_workers(small_dataset, tmp_path, bad, workers,
                                                                            expected):
    """The training's stream in DataLoader workers, as the trainer reads it: the error a worker raises reaches the
    training process as a NoData (train.main ends the job with status 2 for it) whose one-line reason
    (failure.describe, what the job prints) names the pairs. (The trainer's workers ignore SIGTERM, and a failing
    rank SIGKILLs them, failure._leave; these are left as the DataLoader makes them, so that it can end them.)"""
    dataset, _, _ = small_dataset
    _damage_shards(dataset, tmp_path / "damaged", bad)
    cfg = from_dict(DataConfig, {"datasets": [str(tmp_path / "damaged")], "max_length": 48, "batch_size": 8,
                                 "workers": workers, "shuffle_buffer": 64})
    corpus = Corpus.open(cfg)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    stream = TrainStream(corpus, cfg, MaskingConfig(), info, seed=7, rank=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=2)
    with pytest.raises(NoData) as raised:
        for taken, _ in enumerate(loader):
            assert taken < 1000, "the stream never said that a pair has no data"
    reason = failure.describe(raised.value)
    # The traceback's frames hold the loader's iterator in a cycle (torch's reraise frame holds the exception):
    # freed by the garbage collector, it waits 5 s per worker for workers it can no longer tell to stop.
    traceback.clear_frames(raised.tb)
    assert "\n" not in reason and reason.startswith("NoData: ") and expected in reason, reason
    if len(bad) == 2:
        assert "ja-en (" in reason


@pytest.mark.slow
def test_an_error_on_one_rank_ends_the_rank_waiting_in_a_collective(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    cfg = run_config(dataset, tmp_path / "run", steps=1000, train={"checkpoint_interval": 1000})
    run, seconds = _run_to_failure(torchrun_command(write_config(cfg, tmp_path), script=FAULTY),
                                   {"RAISE_RANK": "1", "RAISE_STEP": "3"})
    assert run.returncode != 0 and seconds < BOUND
    errors = _errors(run.stderr)
    assert len(errors) == 1 and "rank 1: OSError: injected failure on rank 1 at step 3" in errors[0]
    # Rank 0 was told why it ended, and says so in its log (and on the console, which rank 0 owns).
    assert "injected failure on rank 1" in RunDir(tmp_path / "run").log(0).read_text()


def test_rank_0_keeps_the_job_store_until_every_rank_has_told_it(monkeypatch):
    """failure.end_rank on rank 0, which may host the job's store (the launcher's torchrun attempts, DeepSpeed's
    runner): it leaves once every rank has announced its failure or acknowledged the job's (FailureWatch), or after
    ``wait`` seconds. It left at once before, and a peer failing at the same moment, its store gone, printed its
    own failure as well (the launcher's every-rank test saw the reason twice on a loaded machine)."""
    store = torch.distributed.HashStore()
    monkeypatch.setattr(failure, "_store", lambda: store)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    _, count = failure._keys()
    assert failure._announce("rank 0: OSError: disk full", wait=5) == ("rank 0: OSError: disk full", True)
    left = []
    monkeypatch.setattr(failure, "_leave", left.append)
    watch = failure.FailureWatch(interval=0.2)  # rank 1's: reads the failure, acknowledges it, leaves
    started = time.monotonic()
    watch.start()
    failure._await_peers(wait=60)
    assert time.monotonic() - started < 30 and store.add(count, 0) == 2
    watch.join(10)
    assert left == [failure.EXIT_FAILED]
    monkeypatch.setenv("WORLD_SIZE", "3")  # a rank that never answers (stopped): rank 0 leaves after ``wait``
    started = time.monotonic()
    failure._await_peers(wait=0.5)
    assert 0.5 <= time.monotonic() - started < 10


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_at_the_collective_timeout(small_dataset, tmp_path):
    """Rank 1 stops (SIGSTOP: alive, silent, its watch thread frozen too); rank 0's next collective fails at
    train.collective_timeout, rank 0 ends, and torchrun kills the stopped rank."""
    import psutil

    dataset, _, _ = small_dataset
    cfg = run_config(dataset, tmp_path / "run", steps=1000,
                     train={"checkpoint_interval": 1000, "log_interval": 1, "collective_timeout": 10})
    job = subprocess.Popen(torchrun_command(write_config(cfg, tmp_path)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = next(p for p in psutil.Process(job.pid).children(recursive=True) if p.environ().get("RANK") == "1")
    rank1.suspend()
    stopped = time.monotonic()
    _, stderr = job.communicate(timeout=BOUND + 60)
    assert job.returncode != 0
    assert time.monotonic() - stopped < 10 + BOUND  # the timeout, then torchrun's grace period for SIGTERM
    assert len(_errors(stderr)) == 1 and "rank 0:" in _errors(stderr)[0]


def _optimizer_file(tag_dir: Path) -> Path:
    return next(tag_dir.glob("*optim_states.pt"))


@pytest.mark.slow
def test_kills_at_several_points_even_mid_save_leave_latest_complete_and_a_resume_logs_each_step_once(
        small_dataset, tmp_path):
    """One ZeRO-2 run on 2 ranks (ZeRO-3's resumes: test_train), killed two ways, then resumed to its end:

    1. rank 1 killed while writing its optimizer partition of step16 (step8 complete): the job ends within the
       bound and ``latest`` stays on step8, whose commit record lists every file each rank wrote (ZeRO-3's:
       test_train), so a save that lost a rank is never named by ``latest``;
    2. ``latest`` pointed at the incomplete step16, as DeepSpeed's own save would have left it (rank 0 writes it
       as soon as rank 0 is done): the resume falls back to step8 (the choice itself:
       test_resume_falls_back_to_the_newest_complete_checkpoint); two steps later its torchrun agent alone is
       killed, and the ranks, told by SIGTERM (failure.end_with_parent), save a complete checkpoint together and
       exit rather than run on unsupervised;
    3. resumed from there to the end: each step logged once, the last step evaluated off the interval, the
       newest 3 checkpoints kept, and the export matches the probe.

    A job killed whole before its first checkpoint, as a node failure would, leaves only logs, which the next
    start drops: test_a_start_drops_what_a_killed_attempt_logged_after_its_step."""
    import psutil

    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    cfg = run_config(dataset, out, steps=26, data={"workers": 2},
                     train={"checkpoint_interval": 8, "keep_checkpoints": 3, "log_interval": 2, "eval_interval": 4},
                     deepspeed={"config": "ds_configs/cpu.json", "overrides": {"zero_optimization": {"stage": 2}}})
    config = write_config(cfg, tmp_path)
    run = RunDir(out)
    mark = tmp_path / "saving"
    env = {**os.environ, "SLOW_RANK": "1", "SLOW_TAG": "step16", "SLOW_MARK": str(mark), "SLOW_SECONDS": "30"}
    job = subprocess.Popen(torchrun_command(config, script=FAULTY), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not mark.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), job.communicate()[1][-3000:]
    killed = time.monotonic()
    os.kill(int(mark.read_text()), signal.SIGKILL)  # 1. rank 1, in the middle of writing step16
    _, stderr = job.communicate(timeout=BOUND + 30)
    assert job.returncode != 0 and time.monotonic() - killed < BOUND, stderr[-3000:]
    assert run.latest_tag() == "step8"
    assert not (run.checkpoints / "step16" / COMMIT_FILE).exists()
    files = json.loads((run.checkpoints / "step8" / COMMIT_FILE).read_text())["files"]
    assert PROBE_FILE in files
    assert sorted(files) == sorted(p.name for p in (run.checkpoints / "step8").iterdir() if p.name != COMMIT_FILE)
    assert sum("optim_states" in name for name in files) == 2

    (run.checkpoints / "latest").write_text("step16")
    job = subprocess.Popen(torchrun_command(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(_steps_logged_since_the_resume(run)) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, job.communicate()[1][-3000:]  # the resumed job runs: its end would say why
    ranks = psutil.Process(job.pid).children(recursive=True)
    job.kill()  # 2. the agent alone
    _, stderr = job.communicate(timeout=BOUND + 30)  # the ranks hold the agent's stderr until they leave
    _, alive = psutil.wait_procs(ranks, timeout=BOUND)
    assert not alive, "ranks outlived their agent"
    assert "latest names step16, which is incomplete" in stderr
    assert "falling back to step8, the newest complete checkpoint" in stderr
    assert f"resumed from {run.checkpoints / 'step8'}/" in stderr and "at step 8" in stderr
    stopped = metric_rows(out)[-1]["step"]
    assert stopped > 8 and run.latest_tag() == f"step{stopped}" and run.resume_tag()[1] == []
    assert "(SIGTERM): saving a checkpoint" in run.log(0).read_text()

    resumed = train(cfg, tmp_path).stderr  # 3.
    assert f"at step {stopped}" in resumed
    assert run.latest_tag() == "step26" and run.step_tags()[-2:] == ["step24", "step26"]
    assert len(run.step_tags()) == 3  # of at least 4 complete ones: step8, step{stopped}, step24, step26
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 27))
    assert scalar_steps(out, "loss/total") == list(range(2, 27, 2))
    assert scalar_steps(out, "eval/loss") == [4, 8, 12, 16, 20, 24, 26]
    assert export_main([str(run.checkpoints), str(tmp_path / "hf")]) == 0  # checked against the probe


def test_a_start_drops_what_a_killed_attempt_logged_after_its_step(tmp_path):
    """weam_ds.monitor.Monitor, as Trainer.train builds it at the step it starts from: an attempt killed before
    its first checkpoint left steps 1-4 in metrics.jsonl and TensorBoard, the fresh start (step 0) logs 1-6, an
    attempt resumed from step 4 logs 5-8. Each step is shown once, with the values of the attempt that went on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from weam_ds.monitor import Monitor

    run = RunDir(tmp_path / "run")
    run.tensorboard.mkdir(parents=True)
    for attempt, (start, end) in enumerate([(0, 4), (0, 6), (4, 8)]):
        monitor = Monitor(run.tensorboard, run.metrics, ["fr-en"], None, 1, resumed_at=start)
        for step in range(start + 1, end + 1):
            monitor.step(step, {"loss": float(attempt), "positions": 1.0, "padded": 0.0})
            if step % 2 == 0:
                monitor.report(step)
        monitor.close()
        # Attempts are processes started seconds apart. TensorBoard orders event files by the second in their
        # names, then by a counter per process, which in one process can pass from 9 to 10 and sort out of order.
        time.sleep(1.01 - time.time() % 1)
    assert [(r["step"], r["loss"]) for r in metric_rows(run.root)] == [(s, 1.0 if s <= 4 else 2.0)
                                                                       for s in range(1, 9)]
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [(2, 1.0), (4, 1.0), (6, 2.0), (8, 2.0)]


def _steps_logged_since_the_resume(run: RunDir) -> list[str]:
    """The steps rank 0's log reports after its last "resumed from"."""
    text = run.log(0).read_text() if run.log(0).exists() else ""
    _, resumed, after = text.rpartition("resumed from")
    return re.findall(r"weam_ds\.monitor: step (\d+) \|", after) if resumed else []


@contextlib.contextmanager
def _one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("damage,note", [
    ("empty", "latest is empty"),
    ("dangling", "latest names step99, which does not exist"),
    ("missing", "latest is missing"),
    ("truncated", "latest names step16, which is incomplete: "),
])
def test_resume_falls_back_to_the_newest_complete_checkpoint(trained_run, tmp_path, caplog, damage, note):
    """RunDir.resume_tag chooses, checkpoint.choose_resume_tag logs what it passed over and hands every rank the
    choice; a resume that falls back, end to end, is the killed run's above."""
    run = RunDir(trained_run.copy(tmp_path / "run"))
    assert run.step_tags() == ["step8", "step16"] and run.latest_tag() == "step16"
    if damage == "empty":
        (run.checkpoints / "latest").write_text("")
    elif damage == "dangling":
        (run.checkpoints / "latest").write_text("step99")
    elif damage == "missing":
        (run.checkpoints / "latest").unlink()
    else:
        optimizer = _optimizer_file(run.checkpoints / "step16")
        optimizer.write_bytes(optimizer.read_bytes()[:4096])
    resumes_at = "step8" if damage == "truncated" else "step16"
    tag, notes = run.resume_tag()
    assert tag == resumes_at and len(notes) == 2 and notes[0].startswith(note), notes
    assert notes[1] == f"falling back to {resumes_at}, the newest complete checkpoint"
    with _one_rank_group(), caplog.at_level(logging.WARNING, logger="weam_ds.checkpoint"):
        assert checkpoint.choose_resume_tag(run) == resumes_at
    assert [r.getMessage() for r in caplog.records if r.name == "weam_ds.checkpoint"] == [
        f"{run.checkpoints}: {n}" for n in notes]


def test_export_refuses_a_damaged_checkpoint_naming_the_file(trained_run, tmp_path, capsys):
    out = trained_run.copy(tmp_path / "run")
    optimizer = _optimizer_file(out / "checkpoints" / "step16")
    optimizer.write_bytes(optimizer.read_bytes()[:4096])
    assert export_main([str(out / "checkpoints"), str(tmp_path / "hf"), "--tag", "step16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and optimizer.name in err and "4096 bytes" in err
    assert not (tmp_path / "hf").exists()
    # Same size, damaged content (the commit record cannot see it): the archive check names the file.
    shutil.copytree(trained_run.out / "checkpoints" / "step16", out / "checkpoints" / "step16", dirs_exist_ok=True)
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\0" * 64
    optimizer.write_bytes(bytes(data))
    assert export_main([str(out / "checkpoints"), str(tmp_path / "hf"), "--tag", "step16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and optimizer.name in err
    # Without --tag the export takes the newest complete checkpoint.
    (out / "checkpoints" / "step16" / COMMIT_FILE).unlink()
    assert export_main([str(out / "checkpoints"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def _shorten(path: Path, keep: int, how: str) -> None:
    """Damages a shard after its first ``keep`` samples so that tar readers stop there without an error:
    cut at that member (a truncated copy) or with a broken header checksum there (flipped bytes)."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[4 * keep].offset  # four members per sample
    data = bytearray(path.read_bytes())
    if how == "truncate":
        del data[offset:]
    else:
        data[offset + 148:offset + 156] = b"0000000\0"
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_shards_that_end_early_are_counted_once_across_ranks_and_resumes(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    copy = tmp_path / "damaged"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    damaged = []
    for pair, how in (("fr-en", "truncate"), ("ja-en", "flip")):
        # One train shard per pair, damaged after 100 samples: every rank reads both, and the run needs fewer.
        entry = manifest["pairs"][pair]
        shard = next(s for s in entry["shards"] if s["split"] == "train" and s["samples"] >= 120)
        entry["shards"] = [s for s in entry["shards"] if s["split"] != "train"] + [shard]
        _shorten(copy / shard["path"], 100, how)
        damaged.append(shard["path"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    # Length-bucketing pools of 2 batches: the stream draws at most 16 samples ahead of the run. The MLM baseline
    # with activation checkpointing (what the shards show does not depend on the objective): it trains, through
    # a resume, and predicts no XPRED positions.
    cfg = run_config(copy, out, data={"verify_sha256": False, "shuffle_buffer": 1000, "bucket_pool": 2},
                     objective={"name": "mlm"}, train={"activation_checkpointing": True})
    # Stopped between checkpoints (checkpoint_interval 8), as on preemption: a checkpoint of step 5.
    assert "stopping at step 5" in train(cfg, tmp_path, 2, "--stop-at", "5").stderr
    assert RunDir(out).latest_tag() == "step5"
    train(cfg, tmp_path, 2)
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["counters/bad_shards"] == 2
    assert all(math.isfinite(r["loss"]) and r["xpred"] == 0 and r["samples"] == 2 * 8 for r in rows)  # 2 ranks
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("counters/bad_shards")][-1] == 2
    logs = RunDir(out).log(0).read_text() + RunDir(out).log(1).read_text()
    assert all(f"{path}: ends after 100 of its" in logs for path in damaged)


# --- bad input -----------------------------------------------------------------------------------------

def _bad_config(small_dataset, tmp_path, **sections) -> tuple[Path, dict]:
    dataset, _, _ = small_dataset
    cfg = run_config(dataset, tmp_path / "out", **sections)
    return write_config(cfg, tmp_path), cfg


BAD_CONFIGS = {
    "batch_size 0": (lambda tmp: {"data": {"batch_size": 0}}, "data.batch_size: must be at least 1"),
    "output_dir a file": (lambda tmp: {"output_dir": str(tmp / "a-file")}, "output_dir: {tmp}/a-file is a file"),
    "output_dir under a file": (lambda tmp: {"output_dir": str(tmp / "a-file" / "run")},
                                "output_dir: {tmp}/a-file/run lies under {tmp}/a-file, which is a file"),
    "deepspeed json a list": (lambda tmp: {"deepspeed": {"config": str(tmp / "list.json")}},
                              "deepspeed.config: {tmp}/list.json must hold a JSON object, not a list"),
    "unknown pair": (lambda tmp: {"data": {"pairs": ["fr-en", "de-en"]}}, "data.pairs: de-en not in any dataset"),
    "missing model": (lambda tmp: {"model": str(tmp / "xlm-roberta-base")}, "model: '{tmp}/xlm-roberta-base' is "
                      "neither a preset"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_run_config_is_a_one_line_error_and_writes_nothing(small_dataset, tmp_path, capsys, case):
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    sections, message = BAD_CONFIGS[case]
    path, _ = _bad_config(small_dataset, tmp_path, **sections(tmp_path))
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"weam_ds.train: error: {path}: "), err
    assert message.format(tmp=tmp_path) in err[0]
    assert not (tmp_path / "out").exists()


def test_under_torchrun_a_config_error_is_printed_once(small_dataset, tmp_path, capsys, monkeypatch):
    """Every rank reads the same config: train.main prints its error on rank 0 alone (RANK, as torchrun sets it),
    with no traceback, and each rank hands the reason to torchrun's summary through torchelastic's error file."""
    path, _ = _bad_config(small_dataset, tmp_path, data={"batch_size": 0})
    printed = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / f"error{rank}.json"))
        assert train_main(["--config", str(path)]) == 2
        printed.append(capsys.readouterr().err)
    assert printed[1] == ""
    errors = _errors(printed[0])
    assert len(errors) == 1 and "data.batch_size" in errors[0] and "Traceback" not in printed[0]
    for rank in ("0", "1"):
        assert "data.batch_size" in json.loads((tmp_path / f"error{rank}.json").read_text())["message"]
