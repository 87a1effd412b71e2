"""The study registry: what goes in comes out, writes are whole under concurrency and crashes, versions are
checked."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from weam_ds.registry import SCHEMA_VERSION, Registry, RegistryError, cell_name, training_totals

AXES = {"model": "tiny", "languages": "langs_2", "objective": "weam", "seed": 1}
CONFIG = {"model": "tiny", "objective": {"name": "weam"}, "train": {"steps": 100, "seed": 1}}


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    with Registry(tmp_path / "registry.sqlite") as reg:
        reg.set_study("demo-study", "ab" * 32)
        cell = reg.put_cell({**AXES, "exchange": "hard"}, CONFIG, parameters=16_130_000, pairs=["de-en", "fr-en"])
        assert cell == "model=tiny,languages=langs_2,objective=weam,seed=1,exchange=hard"
        reg.set_state(cell, "running")
        reg.put_cost(cell, steps=100, tokens=51_200, train_flops=7.9e11, wall_seconds=30.5, gpu_hours=0.0,
                     world_size=2, hardware="2x cpu")
        outcomes = rng.integers(0, 2, 50) * 100.0
        reg.put_scores(cell, "xnli", "de", 1, "dev", {"accuracy": outcomes.mean(), "f1": 12.5},
                       per_example={"accuracy": outcomes})
        reg.set_state(cell, "evaluated")

    with Registry(tmp_path / "registry.sqlite", readonly=True) as reg:
        study = reg.study()
        assert (study.schema_version, study.name, study.sha256) == (SCHEMA_VERSION, "demo-study", "ab" * 32)
        (c,) = reg.cells()
        assert (c.name, c.model, c.objective, c.language_subset, c.train_seed) == (cell, "tiny", "weam", "langs_2", 1)
        assert c.pairs == ("de-en", "fr-en") and c.languages == ("de", "fr") and c.n_languages == 2
        assert c.pretraining_languages == {"de", "fr", "en"} and c.extra_axes == {"exchange": "hard"}
        assert c.config == CONFIG and len(c.config_sha256) == 64 and c.parameters == 16_130_000
        assert c.state == "evaluated" and c.error is None and c.started_at and c.finished_at
        assert c.cost.tokens == 51_200 and c.cost.train_flops == 7.9e11 and c.cost.hardware == "2x cpu"
        scores = {(s.metric, s.split): s.value for s in reg.scores(cell, "xnli")}
        assert scores == {("accuracy", "dev"): outcomes.mean(), ("f1", "dev"): 12.5}
        assert np.array_equal(reg.per_example(cell, "xnli", "de", 1, "accuracy"), outcomes)
        assert reg.per_example(cell, "xnli", "de", 1, "f1") is None
        with pytest.raises(sqlite3.OperationalError):  # read-only: the report cannot write by mistake
            reg._conn.execute("DELETE FROM cells")


def test_cells_are_registered_once_and_replaced_only_on_request(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    cell = reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"])
    reg.set_state(cell, "failed", error="RuntimeError: out of memory")
    reg.put_scores(cell, "tatoeba", "de", 1, "test", {"accuracy": 40.0}, per_example={"accuracy": [0.0, 80.0]})
    assert reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"]) == cell  # a resumed study: nothing changes
    (c,) = reg.cells()
    assert c.state == "failed" and c.error == "RuntimeError: out of memory" and reg.scores(cell)

    changed = {**CONFIG, "train": {"steps": 200, "seed": 1}}
    with pytest.raises(RegistryError, match="registered with another config"):
        reg.put_cell(AXES, changed, parameters=10, pairs=["de-en"])
    reg.put_cell(AXES, changed, parameters=10, pairs=["de-en"], replace=True)
    (c,) = reg.cells()
    assert c.state == "pending" and c.config == changed and reg.scores() == []
    assert reg._conn.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 0


def test_state_changes_and_their_timestamps(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    cell = reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"])
    reg.set_state(cell, "running")
    reg.set_state(cell, "failed", error="boom")
    (c,) = reg.cells()
    assert c.state == "failed" and c.error == "boom" and c.started_at and c.finished_at
    reg.set_state(cell, "running")  # retried: the error and the finish are cleared
    (c,) = reg.cells()
    assert c.state == "running" and c.error is None and c.finished_at is None
    with pytest.raises(RegistryError, match="required with state 'failed'"):
        reg.set_state(cell, "failed")
    with pytest.raises(RegistryError, match="not one of"):
        reg.set_state(cell, "done")
    with pytest.raises(RegistryError, match="not registered"):
        reg.set_state("model=x", "running")


@pytest.mark.parametrize("call, message", [
    (lambda r, c: r.put_scores(c, "xnli", "de", 1, "dev", {"accuracy": float("nan")}), "not a finite number"),
    (lambda r, c: r.put_scores(c, "xnli", "de", 1, "dev", {"accuracy": 1.0}, per_example={"f1": [1.0]}),
     "not among the scores"),
    (lambda r, c: r.put_scores(c, "xnli", "de", 1, "dev", {"accuracy": 1.0}, per_example={"accuracy": []}),
     "non-empty list"),
    (lambda r, c: r.put_scores("model=x", "xnli", "de", 1, "dev", {"accuracy": 1.0}), "not registered"),
    (lambda r, c: r.put_cost(c, steps=-1, tokens=0, train_flops=0, wall_seconds=0, gpu_hours=0, world_size=1,
                             hardware="cpu"), "steps"),
    (lambda r, c: r.put_cell({"model": "tiny", "objective": "weam", "seed": 1}, {}, parameters=1, pairs=["de-en"]),
     "languages missing"),
    (lambda r, c: r.put_cell({**AXES, "objective": "bert"}, {}, parameters=1, pairs=["de-en"]), "objective"),
    (lambda r, c: r.put_cell({**AXES, "model": "/ckpt/x"}, {}, parameters=1, pairs=["de-en"]), "plain value"),
    (lambda r, c: r.put_cell({**AXES, "seed": 2}, {}, parameters=1, pairs="de-en"), "pairs"),
])
def test_bad_writes_are_refused_and_write_nothing(tmp_path, call, message):
    reg = Registry(tmp_path / "registry.sqlite")
    cell = reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"])
    with pytest.raises(RegistryError, match=message):
        call(reg, cell)
    assert reg.scores() == [] and [c.name for c in reg.cells()] == [cell] and reg.cells()[0].cost is None


def test_training_totals_from_metrics_jsonl(tmp_path):
    lines = [{"step": s, "loss": 3.0, "tokens": 1000.0 + s, "flops": 2.5e9, "samples": 8, "step_time": 0.25 * s}
             for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert training_totals(tmp_path) == {"steps": 4, "tokens": 4010, "train_flops": 1e10, "wall_seconds": 2.5}
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    with pytest.raises(RegistryError, match="metrics.jsonl:1"):
        training_totals(tmp_path)


WRITER = """
import sys, numpy as np
from weam_ds.registry import Registry
path, worker, rows, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
reg = Registry(path)
shared = reg.put_cell({"model": "tiny", "languages": "all", "objective": "mlm", "seed": 0}, {"shared": True},
                      parameters=10, pairs=["de-en"])
own = reg.put_cell({"model": "tiny", "languages": "all", "objective": "weam", "seed": worker}, {"w": worker},
                   parameters=10, pairs=["de-en"])
reg.set_state(own, "running")
for i in range(rows):
    values = np.full(n, worker * 1000 + i, dtype=float)
    for cell in (own, shared):
        reg.put_scores(cell, "xnli", f"l{worker}", i, "test", {"accuracy": float(values[0]), "f1": -float(i)},
                       per_example={"accuracy": values, "f1": -values})
reg.set_state(own, "evaluated")
"""


def _check_whole(reg: Registry, n: int) -> set[tuple[str, str, int]]:
    """Every stored (cell, language, seed) has both metrics and both per-example arrays, consistent."""
    assert reg._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    keys = {(s.cell, s.language, s.eval_seed) for s in reg.scores()}
    for cell, lang, seed in keys:
        scores = {s.metric: s.value for s in reg.scores(cell) if (s.language, s.eval_seed) == (lang, seed)}
        assert scores == {"accuracy": int(lang[1:]) * 1000 + seed, "f1": -float(seed)}
        accuracy = reg.per_example(cell, "xnli", lang, seed, "accuracy")
        assert accuracy.shape == (n,) and (accuracy == scores["accuracy"]).all()
        assert (reg.per_example(cell, "xnli", lang, seed, "f1") == -accuracy).all()
    return keys


def test_concurrent_writers_leave_every_row_whole(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "registry.sqlite"  # not created yet: the writers race to create the schema too
    workers, rows = 4, 25
    procs = [subprocess.Popen([sys.executable, str(script), str(path), str(w), str(rows), "2000"],
                              stderr=subprocess.PIPE, text=True) for w in range(1, workers + 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    with Registry(path, readonly=True) as reg:
        keys = _check_whole(reg, 2000)
        shared = "model=tiny,languages=all,objective=mlm,seed=0"
        assert len(keys) == 2 * workers * rows
        assert {(lang, s) for c, lang, s in keys if c == shared} == {(f"l{w}", i) for w in range(1, workers + 1)
                                                                     for i in range(rows)}
        assert sorted(c.state for c in reg.cells()) == ["evaluated"] * workers + ["pending"]


def test_a_killed_writer_leaves_no_half_write(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "registry.sqlite"
    # 1.6 MB per array: the kill is likely to land inside a transaction
    proc = subprocess.Popen([sys.executable, str(script), str(path), "1", "1000", "200000"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if path.is_file():
            probe = sqlite3.connect(path, timeout=30)
            try:
                if probe.execute("SELECT count(*) FROM scores").fetchone()[0] >= 6:
                    break
            except sqlite3.OperationalError:  # the schema is still being made
                pass
            finally:
                probe.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Registry(path) as reg:
        keys = _check_whole(reg, 200_000)
        assert len(keys) >= 3


def test_an_error_inside_a_write_rolls_it_back(tmp_path):
    reg = Registry(tmp_path / "registry.sqlite")
    cell = reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"])
    reg.put_scores(cell, "xnli", "de", 1, "dev", {"accuracy": 50.0, "f1": 40.0})
    # The replacement fails after its scores are in (at its per-example insert): none of it may stay.
    injector = sqlite3.connect(tmp_path / "registry.sqlite")
    injector.execute("CREATE TRIGGER fail BEFORE INSERT ON outcomes BEGIN SELECT RAISE(ABORT, 'injected'); END")
    injector.commit()
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        reg.put_scores(cell, "xnli", "de", 1, "dev", {"accuracy": 60.0}, per_example={"accuracy": [60.0]})
    assert [(s.metric, s.value) for s in reg.scores()] == [("accuracy", 50.0), ("f1", 40.0)]
    reg.put_scores(cell, "xnli", "fr", 1, "dev", {"accuracy": 70.0})  # the connection is usable afterwards
    assert len(reg.scores()) == 3


def test_a_version_1_registry_is_read_as_it_is_and_migrated_by_a_writer_keeping_every_row(tmp_path):
    """Version 1 (before the ``interrupted`` state): its cells table checks states without it. Made here as
    version 1 wrote it: the same tables, the cells table rebuilt with version 1's CHECK."""
    path = tmp_path / "registry.sqlite"
    with Registry(path) as reg:
        cell = reg.put_cell(AXES, CONFIG, parameters=10, pairs=["de-en"])
        reg.put_cost(cell, steps=100, tokens=51_200, train_flops=7.9e11, wall_seconds=30.5, gpu_hours=0.0,
                     world_size=2, hardware="2x cpu")
        reg.put_scores(cell, "xnli", "de", 1, "dev", {"accuracy": 50.0}, per_example={"accuracy": [0.0, 100.0]})
        reg.set_state(cell, "running")
    raw = sqlite3.connect(path, isolation_level=None)
    (cells_sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'cells'").fetchone()
    assert "'interrupted', " in cells_sql
    raw.executescript("BEGIN; " + cells_sql.replace("CREATE TABLE cells (", "CREATE TABLE v1 (").replace(
        "'interrupted', ", "") + "; INSERT INTO v1 SELECT * FROM cells; DROP TABLE cells; "
        "ALTER TABLE v1 RENAME TO cells; UPDATE meta SET value = '1' WHERE key = 'schema_version'; COMMIT;")
    with pytest.raises(sqlite3.IntegrityError):  # what version 1 refuses
        raw.execute("UPDATE cells SET state = 'interrupted'")
    raw.close()

    with Registry(path, readonly=True) as reg:  # a reader leaves it as it is
        assert reg.study().schema_version == 1 and [c.state for c in reg.cells()] == ["running"]
    with Registry(path) as reg:
        reg.set_state(cell, "interrupted")
        (c,) = reg.cells()
        assert reg.study().schema_version == SCHEMA_VERSION == 2 and c.state == "interrupted"
        assert c.cost.tokens == 51_200 and np.array_equal(reg.per_example(cell, "xnli", "de", 1, "accuracy"),
                                                           [0.0, 100.0])
    Registry(path).close()  # opened again: nothing more to migrate


def test_schema_versions_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    for readonly in (False, True):
        with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1} is newer.*upgrade weam-ds"):
            Registry(path, readonly=readonly)
    raw.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    raw.commit()
    with pytest.raises(RegistryError, match="version 0 is older.*no migration"):
        Registry(path)
    raw.close()

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(RegistryError, match="not a weam-ds registry"):
        Registry(other)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(RegistryError, match="not a usable SQLite registry"):
        Registry(tmp_path / "junk.sqlite")
    with pytest.raises(RegistryError, match="no registry"):
        Registry(tmp_path / "absent.sqlite", readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_cell_names_are_canonical():
    assert cell_name({"seed": 3, "extra": 0.5, "objective": "mlm", "languages": "langs_1", "model": "mini"}) \
        == "model=mini,languages=langs_1,objective=mlm,seed=3,extra=0.5"
