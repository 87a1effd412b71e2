"""Nothing is deleted that a command did not write, and one writer at a time per run directory (issue 23).

One training serves every test: it is started, refused a second time while it runs, then killed; the run
directory it leaves (config, logs, TensorBoard, a complete checkpoint, a stale lock) is what the commands below
must leave alone. The first test needs it alive, so it comes first."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import small_config
from runs import run_config, write_config
from test_interrupts_and_disk import tmpfs

from data_prep.cli import main as prep_main
from data_prep.output_dirs import MARKER
from weam_ds.export import main as export_main
from weam_ds.registry import REGISTRY_FILE, Registry
from weam_ds.report import main as report_main
from weam_ds.run_dir import RunDir
from weam_ds.run_lock import LOCK_FILE
from weam_ds.train import main as train_main


def _snapshot(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` with its modification time (the lock file left out: it is the lock)."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*")
            if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def training(small_dataset, tmp_path_factory):
    """A training (one process, as ``python -m weam_ds.train`` starts it) running, with a complete checkpoint."""
    dataset, _, _ = small_dataset
    tmp = tmp_path_factory.mktemp("no-data-loss")
    cfg = run_config(dataset, tmp / "run", steps=100_000, train={"checkpoint_interval": 2, "log_interval": 2})
    config = write_config(cfg, tmp)
    proc = subprocess.Popen([sys.executable, "-m", "weam_ds.train", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = RunDir(tmp / "run")
    deadline = time.monotonic() + 300
    while run.resume_tag()[0] is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None and run.resume_tag()[0] is not None, proc.stderr.read()[-3000:] if proc.poll() else ""
    yield tmp, config, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def dead_run(training):
    """The training's run directory once the training was killed outright (its lock record left behind)."""
    tmp, _, proc = training
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return tmp / "run"


@pytest.mark.slow
def test_one_writer_per_run_directory_and_a_dead_ones_lock_is_taken_over(training, tmp_path, capsys, caplog):
    tmp, config, proc = training
    run = tmp / "run"
    holder = f"pid {proc.pid} on host {socket.gethostname()}"
    second = subprocess.run([sys.executable, "-m", "weam_ds.train", "--config", str(config)], capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2
    assert holder in second.stderr and str(run) in second.stderr
    assert export_main([str(run / "checkpoints"), str(run / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and holder in err and not (run / "export").exists()
    assert proc.poll() is None  # the refusals did not disturb it

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="weam_ds.run_lock"):
        assert export_main([str(run / "checkpoints"), str(run / "export")]) == 0
    assert f"taking over the lock left by weam_ds.train ({holder}" in caplog.text
    assert (run / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_export_into_the_working_directory_deletes_nothing(dead_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(tmp_path)
    assert export_main([str(dead_run / "checkpoints"), "."]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "working directory" in err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no temporary sibling left either
    # Even an empty working directory is never swapped away under the shell that stands in it.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert export_main([str(dead_run / "checkpoints"), ".", "--force"]) == 2
    assert "working directory" in capsys.readouterr().err and Path.cwd() == empty and not os.listdir(empty)


@pytest.mark.slow
@pytest.mark.parametrize("into", ["run", "checkpoints"])
def test_export_into_the_run_or_its_checkpoints_deletes_nothing(dead_run, into, capsys):
    out = dead_run if into == "run" else dead_run / "checkpoints"
    before = _snapshot(dead_run)
    for force in ([], ["--force"]):  # --force replaces only an earlier export
        assert export_main([str(dead_run / "checkpoints"), str(out), *force]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{out}: exists and is not written by weam_ds.export" in err
    assert _snapshot(dead_run) == before


@pytest.mark.slow
def test_export_replaces_only_an_earlier_export_and_only_with_force(dead_run, tmp_path, capsys):
    """Another model's directory is refused; an earlier export needs --force, and a failed forced export
    leaves it whole."""
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert export_main([str(dead_run / "checkpoints"), str(other), "--force"]) == 2
    assert "not written by weam_ds.export" in capsys.readouterr().err
    assert os.listdir(other) == ["config.json"]

    earlier = dead_run / "export"  # the first test's export
    assert (earlier / MARKER).is_file()
    before = _snapshot(earlier)
    assert export_main([str(dead_run / "checkpoints"), str(earlier)]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert export_main([str(dead_run / "checkpoints"), str(earlier), "--force", "--tag", "step999999"]) == 2
    assert _snapshot(earlier) == before
    (earlier / "stray.txt").write_text("from the earlier export's time")
    assert export_main([str(dead_run / "checkpoints"), str(earlier), "--force"]) == 0
    assert (earlier / "model.safetensors").is_file() and not (earlier / "stray.txt").exists()
    assert not [p for p in dead_run.iterdir() if p.name.startswith(".export.")]  # the swap left nothing beside


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing_looking_complete(dead_run, tmp_path, capsys):
    with tmpfs(tmp_path / "small_disk", "256k") as disk:
        assert export_main([str(dead_run / "checkpoints"), str(disk / "model")]) == 2
        err = capsys.readouterr().err
        (line,) = [line for line in err.splitlines() if line.startswith("weam_ds.export: error:")]
        assert "no space left on the device" in line.lower() and str(disk) in line
        assert "Traceback" not in err and not list(disk.iterdir())  # nothing half-written left there


@pytest.mark.slow
def test_report_into_the_run_keeps_its_tensorboard_and_replaces_only_its_own(dead_run, tmp_path, capsys):
    with Registry(tmp_path / REGISTRY_FILE) as registry:
        registry.set_study("issue-23", "0" * 64)
        registry.put_cell({"model": "tiny", "languages": "ja", "objective": "weam", "seed": 1},
                          yaml.safe_load((dead_run / "config.yaml").read_text()), parameters=1, pairs=["ja-en"])
    events = _snapshot(dead_run / "tensorboard")
    assert events
    assert report_main(["--study", str(tmp_path), "--out", str(dead_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(dead_run) in err
    assert _snapshot(dead_run / "tensorboard") == events

    out = tmp_path / "report"
    assert report_main(["--study", str(tmp_path), "--out", str(out)]) == 0
    assert report_main(["--study", str(tmp_path), "--out", str(out)]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    (out / "tensorboard" / "stale-cell").mkdir()
    assert report_main(["--study", str(tmp_path), "--out", str(out), "--force"]) == 0
    assert (out / "report.md").is_file() and not (out / "tensorboard" / "stale-cell").exists()


@pytest.mark.slow
def test_data_prep_refuses_an_output_dir_it_did_not_write(dead_run, tmp_path, ja_pairs, capsys):
    before = _snapshot(dead_run)
    config = tmp_path / "prep.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path, ja_pairs[:300], output_dir=str(dead_run))))
    assert prep_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{dead_run}: exists and is not written by data_prep" in err
    assert _snapshot(dead_run) == before and not (dead_run / ".build.lock").exists()


@pytest.mark.parametrize("where", ["the dataset", "inside the dataset", "holding the dataset"])
def test_a_run_directory_overlapping_a_dataset_is_a_config_error(small_dataset, tmp_path, where, capsys):
    dataset, _, _ = small_dataset
    copy = shutil.copytree(dataset, tmp_path / "data" / "dataset")  # a run "holding" it must not write beside ours
    out = {"the dataset": dataset, "inside the dataset": dataset / "run", "holding the dataset": tmp_path / "data"}
    datasets = copy if where == "holding the dataset" else dataset
    before = _snapshot(dataset)
    config = write_config(run_config(datasets, out[where]), tmp_path)
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"output_dir: {out[where]}" in err and "data.datasets[0]" in err
    assert _snapshot(dataset) == before and not (dataset / "run").exists() and not (tmp_path / "data" / "logs").exists()
