"""Mistyped and hostile inputs end at once with one line naming the file or key, through the CLIs users run:
duplicate YAML keys, alias bombs, a dataset tokenizer that changed or vanished, a model directory that does
not exist (never looked up on a model hub), repeated seeds, study axes that give identical cells, out-of-range
--stop-at and hostfile slots, and a registry locked by another process."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from data_prep.typed_config import ConfigError, from_dict
from launcher.cli import main as launcher_main
from weam_ds.config import RunConfig
from weam_ds.registry import REGISTRY_FILE, Registry
from weam_ds.report import main as report_main
from weam_ds.train import main as train_main
from weam_ds.xtreme_r.__main__ import main as xtreme_r_main

RUN_YAML = """\
output_dir: {out}
model: tiny
data: {{datasets: [{dataset}], max_length: 48, batch_size: 8, workers: 1}}
train: {{steps: 4}}
deepspeed: {{config: ds_configs/cpu.json}}
"""


def alias_bomb(levels: int = 9) -> str:
    """A "billion laughs": each level lists the one before nine times, 9**levels strings in all once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def timed(call) -> tuple[object, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def study_yaml(tmp: Path, dataset: Path, **changes) -> Path:
    """A two-cell study on the session's dataset, with ``changes`` as top-level keys."""
    study = {"name": "hostile", "study_dir": str(tmp / "study"),
             "base": yaml.safe_load(RUN_YAML.format(out="replaced", dataset=dataset)),
             "axes": {"objective.name": ["weam", "mlm"]}, "budget": {"rule": "steps", "steps": 2},
             "evaluation": {"tatoeba": {}}, "launch": {"backend": "local", "nproc_per_node": 1}, **changes}
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_duplicate_key_is_an_error_naming_both_lines_in_run_and_cluster_yaml(small_dataset, tmp_path, capsys):
    dataset, _, _ = small_dataset
    run = tmp_path / "run.yaml"
    run.write_text(RUN_YAML.format(out=tmp_path / "out", dataset=dataset) + "model: mini\n")
    assert train_main(["--config", str(run)]) == 2
    assert one_line_error(capsys).endswith(f"{run}:6: duplicate key 'model' (first at {run}:2)")
    assert not (tmp_path / "out").exists()

    run.write_text(RUN_YAML.format(out=tmp_path / "out", dataset=dataset))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("backend: local\nenv:\n  OMP_NUM_THREADS: 1\n  OMP_NUM_THREADS: 2\n")
    assert launcher_main(["run", "--config", str(run), "--cluster", str(cluster), "--dry-run"]) == 2
    assert one_line_error(capsys).endswith(f"{cluster}:4: duplicate key 'OMP_NUM_THREADS' (first at {cluster}:3)")


def test_an_alias_bomb_is_refused_at_once_in_run_cluster_and_study_yaml(small_dataset, tmp_path, capsys):
    dataset, _, _ = small_dataset
    run = tmp_path / "run.yaml"
    run.write_text(RUN_YAML.format(out=tmp_path / "out", dataset=dataset))
    bombs = {name: tmp_path / f"bomb-{name}.yaml" for name in ("run", "cluster", "study")}
    for path in bombs.values():
        path.write_text(alias_bomb())
    calls = {"run": lambda: train_main(["--config", str(bombs["run"])]),
             "cluster": lambda: launcher_main(["run", "--config", str(run), "--cluster", str(bombs["cluster"]),
                                               "--dry-run"]),
             "study": lambda: launcher_main(["study", "run", str(bombs["study"])])}
    for name, call in calls.items():
        code, seconds = timed(call)
        assert code == 2 and seconds < 2.0, (name, code, seconds)
        assert one_line_error(capsys).endswith(f"{bombs[name]}:2: alias *l0 is not allowed (write the value out)")


def test_a_config_error_shows_a_bounded_summary_of_a_huge_value():
    bomb: object = ["lol"] * 9
    for _ in range(9):  # shared references, as YAML aliases build them: 9**10 strings if printed in full
        bomb = [bomb] * 9
    with pytest.raises(ConfigError) as error:
        from_dict(RunConfig, {"output_dir": "out", "data": {"datasets": ["d"]}, "model": bomb})
    assert str(error.value).startswith("config: model: expected str, got list [[[...]") and len(str(error.value)) < 300


def dataset_copy(dataset: Path, tmp: Path) -> Path:
    """The manifest and tokenizer of ``dataset``: all that a run config's check reads of it."""
    copy = tmp / "dataset"
    copy.mkdir()
    shutil.copy(dataset / "manifest.json", copy)
    shutil.copytree(dataset / "tokenizer", copy / "tokenizer")
    return copy


def test_a_changed_dataset_tokenizer_is_refused_and_nothing_is_written(small_dataset, tmp_path, capsys):
    dataset = dataset_copy(small_dataset[0], tmp_path)
    with open(dataset / "tokenizer" / "tokenizer.json", "a", encoding="utf-8") as f:
        f.write("\n")
    run = tmp_path / "run.yaml"
    run.write_text(RUN_YAML.format(out=tmp_path / "out", dataset=dataset))
    assert train_main(["--config", str(run)]) == 2
    assert one_line_error(capsys).endswith(
        f"data.datasets[0]: {dataset / 'tokenizer'}: the tokenizer's files do not match the sha256 in "
        f"{dataset / 'manifest.json'} (changed since data_prep built the dataset)")
    assert not (tmp_path / "out").exists()


LOCAL_ONLY = textwrap.dedent("""\
    import sys, time
    from weam_ds.train import main as train
    from weam_ds.xtreme_r.__main__ import main as xtreme_r
    for name, main, argv in (("train", train, ["--config", "run.yaml"]),
                             ("tatoeba", xtreme_r, ["tatoeba", "--model", "missing-model", "--dataset", "dataset",
                                                    "--out", "eval"])):
        start = time.monotonic()
        code = main(argv)
        print(name, code, time.monotonic() - start, file=sys.stderr)
""")


def test_missing_local_tokenizer_and_model_directories_fail_at_once_without_the_network(small_dataset, tmp_path):
    """With the hub reachable in principle (no HF_HUB_OFFLINE), a missing local directory must not be taken
    for a hub id and retried for most of a minute."""
    dataset = dataset_copy(small_dataset[0], tmp_path)
    shutil.rmtree(dataset / "tokenizer")
    (tmp_path / "run.yaml").write_text(RUN_YAML.format(out=tmp_path / "out", dataset=dataset))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", LOCAL_ONLY], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    err = done.stderr.strip().splitlines()
    assert err[0].endswith(f"{dataset / 'tokenizer'}: the dataset's tokenizer is missing (rebuild the dataset with "
                           "data_prep)"), err
    assert err[2] == "weam_ds.xtreme_r: error: --model: missing-model is not a Hugging Face model directory " \
                     "(no config.json)", err
    timings = {name: (int(code), float(seconds)) for name, code, seconds in (line.split() for line in err[1::2])}
    assert all(code == 2 and seconds < 5.0 for code, seconds in timings.values()), timings
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_repeated_seeds_are_refused_on_the_command_line_and_in_a_study(small_dataset, tmp_path, capsys):
    code = xtreme_r_main(["run", "--model", str(tmp_path / "model"), "--data", str(tmp_path), "--tasks", "xnli",
                          "--out", str(tmp_path / "eval"), "--seeds", "1,1"])
    assert code == 2
    assert one_line_error(capsys) == "weam_ds.xtreme_r: error: --seeds: 1,1 names a seed twice (the spread over " \
                                     "seeds needs distinct runs)"
    path = study_yaml(tmp_path, small_dataset[0],
                      evaluation={"xtreme_r": {"data": str(tmp_path), "tasks": ["xnli"], "seeds": [1, 1]}})
    assert launcher_main(["study", "run", str(path)]) == 2
    assert one_line_error(capsys).endswith("evaluation.xtreme_r.seeds: [1, 1] names a seed twice (the spread over "
                                           "seeds needs distinct runs)")


@pytest.mark.parametrize("axes,message", [
    ({"output_dir": ["a", "b"]}, "axes.output_dir: the study sets each cell's output_dir (cells/<cell>/run), so it "
                                 "cannot be an axis"),
    ({"train.steps": [2, 3]}, "axes.train.steps: 2 and 3 give the same run config once the study resolves the cells"),
])
def test_a_study_axis_that_gives_identical_cells_is_refused(small_dataset, tmp_path, capsys, axes, message):
    path = study_yaml(tmp_path, small_dataset[0], axes=axes)
    assert launcher_main(["study", "run", str(path)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "study" / REGISTRY_FILE).exists()


def test_stop_at_must_be_a_step_and_hostfile_slots_a_sane_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--config", str(tmp_path / "run.yaml"), "--stop-at", "-1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "weam_ds.train: error: --stop-at: -1 is not a step (steps count from 1)"

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1024\nnode-b slots=100000000000000000000\n")
    assert launcher_main(["hosts", str(hostfile)]) == 2
    assert one_line_error(capsys) == f"launcher: error: {hostfile}:2: slots=100000000000000000000 is more than " \
                                     "1024 processes on one host"


def test_a_registry_locked_by_another_process_is_said_so_soon_by_report_and_study_status(
        small_dataset, tmp_path, capsys):
    path = study_yaml(tmp_path, small_dataset[0])
    (tmp_path / "study").mkdir()
    registry = tmp_path / "study" / REGISTRY_FILE
    Registry(registry).close()
    holder = sqlite3.connect(registry, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")  # as a process that holds the file, not a queued writer
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO meta VALUES ('held', ?)", (json.dumps(True),))
    try:
        for call in (lambda: report_main(["--study", str(tmp_path / "study"), "--out", str(tmp_path / "report")]),
                     lambda: launcher_main(["study", "status", str(path)])):
            code, seconds = timed(call)
            assert code == 2 and seconds < 10, seconds
            assert one_line_error(capsys).endswith(f"{registry}: locked by another process (waited 2 s); let it "
                                                   "finish, then retry")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
