"""Training tried as a hostile or unlucky user would, on 2 CPU ranks under torchrun: a failure on any rank
ends the whole job promptly with its reason; a kill during a save leaves ``latest`` on a complete
checkpoint; a resumed run logs each step once; damaged shards are counted, once; a bad config is a one-line
error that writes nothing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import kill_tree

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


@pytest.mark.parametrize("case,workers", [("nonfinite", 1), ("nonfinite", 2), ("one_pair_bad", 1),
                                          ("every_pair_bad", 2)])
def test_an_error_ends_every_rank_promptly_with_its_reason(small_dataset, tmp_path, case, workers):
    dataset, _, _ = small_dataset
    sections = {"data": {"workers": workers}, "train": {"steps": 1000, "checkpoint_interval": 1000}}
    if case == "nonfinite":
        sections.update(optimizer={"lr": 1.0e8}, train={**sections["train"], "max_nonfinite_in_row": 2})
        expected = "2 non-finite losses in a row"
    else:
        pairs = ["fr-en"] if case == "one_pair_bad" else ["fr-en", "ja-en"]
        _damage_shards(dataset, tmp_path / "damaged", pairs)
        dataset = tmp_path / "damaged"
        expected = ("every train shard of fr-en (" if case == "one_pair_bad"
                    else "every train shard of every pair is bad: fr-en (")
    cfg = run_config(dataset, tmp_path / "run", **sections)
    run, seconds = _run_to_failure(torchrun_command(write_config(cfg, tmp_path)))
    assert run.returncode != 0
    assert seconds < BOUND, f"the job took {seconds:.0f} s to end"
    errors = _errors(run.stderr)
    assert len(errors) == 1 and expected in errors[0], run.stderr[-3000:]
    if case == "every_pair_bad":
        assert "ja-en (" in errors[0]


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


def test_ranks_whose_torchrun_agent_is_killed_checkpoint_and_stop(small_dataset, tmp_path):
    """SIGKILL to the agent alone: its ranks get SIGTERM (failure.end_with_parent), save a complete checkpoint
    together and exit, rather than running on unsupervised."""
    import psutil

    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    cfg = run_config(dataset, out, steps=1000, train={"checkpoint_interval": 1000, "log_interval": 1})
    job = subprocess.Popen(torchrun_command(write_config(cfg, tmp_path)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = psutil.Process(job.pid).children(recursive=True)
    job.kill()
    job.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=BOUND)
    assert not alive, "ranks outlived their agent"
    run = RunDir(out)
    assert run.latest_tag() == f"step{metric_rows(out)[-1]['step']}" and run.resume_tag()[1] == []
    assert "(SIGTERM): saving a checkpoint" in run.log(0).read_text()


@pytest.mark.parametrize("stage", [2, 3])
def test_a_rank_killed_while_saving_leaves_latest_on_a_complete_checkpoint(small_dataset, tmp_path, stage):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    cfg = run_config(dataset, out, steps=24, data={"workers": 2},
                     train={"checkpoint_interval": 8, "keep_checkpoints": 3, "log_interval": 1},
                     deepspeed={"config": "ds_configs/cpu.json", "overrides": {"zero_optimization": {"stage": stage}}})
    mark = tmp_path / "saving"
    env = {**os.environ, "SLOW_RANK": "1", "SLOW_TAG": "step16", "SLOW_MARK": str(mark), "SLOW_SECONDS": "30"}
    job = subprocess.Popen(torchrun_command(write_config(cfg, tmp_path), script=FAULTY), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not mark.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), job.communicate()[1][-3000:]
    killed = time.monotonic()
    os.kill(int(mark.read_text()), signal.SIGKILL)  # rank 1, in the middle of writing step16
    _, stderr = job.communicate(timeout=BOUND + 30)
    assert job.returncode != 0 and time.monotonic() - killed < BOUND, stderr[-3000:]

    run = RunDir(out)
    assert run.latest_tag() == "step8"
    assert not (run.checkpoints / "step16" / COMMIT_FILE).exists()
    assert PROBE_FILE in json.loads((run.checkpoints / "step8" / COMMIT_FILE).read_text())["files"]
    rerun = train(cfg, tmp_path)
    assert "resumed from" in rerun.stderr and "at step 8" in rerun.stderr
    assert run.latest_tag() == "step24" and [r["step"] for r in metric_rows(out)] == list(range(1, 25))
    assert export_main([str(run.checkpoints), str(tmp_path / "hf")]) == 0  # checked against the probe


def test_runs_killed_at_several_points_then_resumed_log_each_step_once(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    cfg = run_config(dataset, out, steps=30, train={"checkpoint_interval": 6, "log_interval": 2, "eval_interval": 4})
    cmd = torchrun_command(write_config(cfg, tmp_path))
    metrics = out / "metrics.jsonl"
    for kill_after in (4, 17):  # before the first checkpoint, and between later ones
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
                break
            time.sleep(0.02)
        kill_tree(job.pid)  # torchrun and every rank at once, as a node failure would
        job.wait()
    train(cfg, tmp_path)
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 31))
    assert scalar_steps(out, "loss/total") == list(range(2, 31, 2))
    assert scalar_steps(out, "eval/loss") == [4, 8, 12, 16, 20, 24, 28, 30]


def _resumable_run(small_dataset, tmp_path_factory) -> tuple[Path, dict]:
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("resumable")
    cfg = run_config(dataset, tmp / "run", steps=12, train={"checkpoint_interval": 4, "keep_checkpoints": 3})
    train(cfg, tmp, 1)
    return tmp, cfg


@pytest.fixture(scope="module")
def resumable(small_dataset, tmp_path_factory):
    return _resumable_run(small_dataset, tmp_path_factory)


def _optimizer_file(tag_dir: Path) -> Path:
    return next(tag_dir.glob("*optim_states.pt"))


@pytest.mark.parametrize("damage,resumes_at,note", [
    ("empty", "step12", "latest is empty"),
    ("dangling", "step12", "latest names step99, which does not exist"),
    ("missing", "step12", "latest is missing"),
    ("truncated", "step8", "latest names step12, which is incomplete"),
])
def test_resume_falls_back_to_the_newest_complete_checkpoint(resumable, tmp_path, damage, resumes_at, note):
    tmp, cfg = resumable
    out = tmp_path / "run"
    shutil.copytree(Path(cfg["output_dir"]), out)
    checkpoints = out / "checkpoints"
    if damage == "empty":
        (checkpoints / "latest").write_text("")
    elif damage == "dangling":
        (checkpoints / "latest").write_text("step99")
    elif damage == "missing":
        (checkpoints / "latest").unlink()
    else:
        optimizer = _optimizer_file(checkpoints / "step12")
        optimizer.write_bytes(optimizer.read_bytes()[:4096])
    resumed = {**cfg, "output_dir": str(out), "train": {**cfg["train"], "steps": 14}}
    run = train(resumed, tmp_path, 1)
    assert note in run.stderr and f"falling back to {resumes_at}, the newest complete checkpoint" in run.stderr
    assert f"resumed from {checkpoints / resumes_at}/" in run.stderr and f"at step {resumes_at[4:]}" in run.stderr
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 15))


def test_export_refuses_a_damaged_checkpoint_naming_the_file(resumable, tmp_path, capsys):
    _, cfg = resumable
    out = tmp_path / "run"
    shutil.copytree(Path(cfg["output_dir"]), out)
    optimizer = _optimizer_file(out / "checkpoints" / "step12")
    optimizer.write_bytes(optimizer.read_bytes()[:4096])
    assert export_main([str(out / "checkpoints"), str(tmp_path / "hf"), "--tag", "step12"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and optimizer.name in err and "4096 bytes" in err
    assert not (tmp_path / "hf").exists()
    # Same size, damaged content (the commit record cannot see it): the archive check names the file.
    shutil.copytree(Path(cfg["output_dir"]) / "checkpoints" / "step12", out / "checkpoints" / "step12",
                    dirs_exist_ok=True)
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\0" * 64
    optimizer.write_bytes(bytes(data))
    assert export_main([str(out / "checkpoints"), str(tmp_path / "hf"), "--tag", "step12"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and optimizer.name in err
    # Without --tag the export takes the newest complete checkpoint.
    (out / "checkpoints" / "step12" / COMMIT_FILE).unlink()
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
    # Length-bucketing pools of 2 batches: the stream draws at most 16 samples ahead of the run.
    cfg = run_config(copy, out, data={"verify_sha256": False, "shuffle_buffer": 1000, "bucket_pool": 2})
    train(cfg, tmp_path, 2, "--stop-at", "8")
    train(cfg, tmp_path, 2)
    rows = metric_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["counters/bad_shards"] == 2
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


def test_under_torchrun_a_config_error_is_printed_once(small_dataset, tmp_path):
    path, _ = _bad_config(small_dataset, tmp_path, data={"batch_size": 0})
    run = subprocess.run(torchrun_command(path), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    errors = _errors(run.stderr)
    assert len(errors) == 1 and "data.batch_size" in errors[0]
    assert "weam_ds/train.py" not in run.stderr  # no traceback of ours (torchrun's own report follows)
