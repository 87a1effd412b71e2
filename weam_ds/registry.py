"""The study registry, ``registry.sqlite`` in a study directory: the contract between the study runner
(``launcher study``, which writes it) and ``weam_ds.report`` (which reads nothing else). The schema and every
read and write live here; neither side writes SQL of its own.

Schema, version 1 (``SCHEMA_VERSION``):

- ``meta(key, value)``: ``schema_version``, ``created_at``, and once the runner sets them ``study_name`` and
  ``study_sha256`` (the study file's hash).
- ``cells``: one row per cell of the grid. ``cell`` is the name ``cell_name`` builds from the axis values;
  ``axes`` (JSON object) the cell's value on every axis; ``config`` (JSON) the resolved run config and
  ``config_sha256`` its hash; the facts the report needs: ``model`` (preset name, or what the study calls a
  checkpoint), ``parameters`` (the encoder backbone, as ``weam_ds.presets.parameter_counts`` counts ``total``),
  ``objective``, ``language_subset`` (the subset's name, e.g. ``langs_5``), ``pairs`` (JSON list of the
  pre-training pairs, ``de-en``), ``languages`` (JSON list: the languages those pairs cover besides English)
  and ``n_languages``, ``train_seed``; ``state`` (``STATES``), ``error`` (why it failed, while ``failed``),
  ``created_at``, ``updated_at`` (last state change), ``started_at`` (last entered ``running``),
  ``finished_at`` (reached ``evaluated`` or ``failed``).
- ``costs``: per cell, once trained: ``steps``, ``tokens`` and ``train_flops`` (the run's own figures from
  metrics.jsonl: see ``training_totals``), ``wall_seconds``, ``gpu_hours``, ``world_size``, ``hardware``,
  ``recorded_at``.
- ``scores``: per cell × task × language × evaluation seed × metric: ``split`` (``test``, or ``dev`` where the
  test labels are withheld) and ``value``, on the official scorer's scale (×100). Missing is absence: no row.
- ``outcomes``: per score, optionally, the per-example scores whose mean is that score (accuracy: 0 or 100 per
  example; QA: each question's F1), ``n`` float64 little-endian values in a blob (read with
  ``numpy.frombuffer``, never pickle). The report's paired bootstrap resamples them.

Timestamps are UTC, ISO 8601. Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back
on any error), so a crash or a killed process never leaves part of a write. The database runs in WAL mode with
a busy timeout, so several processes on one host can write at once (they queue for the write lock). WAL
coordinates through shared memory on that host: all writers must run on the same machine (under SLURM, the
study runner on the submitting host writes the registry, not the jobs on compute nodes).

A registry of a newer schema version is refused (upgrade weam-ds); one of an older version is refused too,
until a migration for it is written here.

Writing (the study runner)::

    reg = Registry(study_dir / REGISTRY_FILE)
    reg.set_study(name, sha256)
    cell = reg.put_cell(axes, config, parameters=..., pairs=[...])    # a new cell is pending
    reg.set_state(cell, "running")
    reg.put_cost(cell, **training_totals(run_dir), gpu_hours=..., world_size=..., hardware=...)
    reg.put_scores(cell, "xnli", "de", 1, "dev", {"accuracy": 71.3}, per_example={"accuracy": [...]})
    reg.set_state(cell, "evaluated")          # or set_state(cell, "failed", error="...")

Reading (the report): ``Registry(path, readonly=True)``, then ``study()``, ``cells()``, ``scores()`` and
``per_example()``, which return the dataclasses of ``weam_ds.registry_rows`` (``Study``, ``Cell`` with its
``Cost``, ``Score``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from weam_ds.objectives import OBJECTIVES
from weam_ds.run_dir import RunDir
from weam_ds.registry_rows import NAMED_AXES, Cell, Cost, Score, Study, cell_languages

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""2: the cells' states include ``interrupted`` (a study stopped by Ctrl-C). A version-1 registry is migrated when
a writer opens it (``_migrate_v1``); readers read it as it is."""
REGISTRY_FILE = "registry.sqlite"
STATES = ("pending", "running", "interrupted", "trained", "exported", "evaluated", "failed")
BUSY_TIMEOUT_S = 120.0
"""How long a write waits for another process's transaction before giving up."""
LOCK_NOTICE_S = 2.0
"""How long a process waits for another's lock in silence. A reader then gives up: under WAL a reader never
waits for writers, so only a process holding the file exclusively blocks it. A writer says it is waiting
and waits up to ``BUSY_TIMEOUT_S`` (other writers' transactions are short)."""

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE cells (
        cell TEXT PRIMARY KEY,
        axes TEXT NOT NULL,
        config TEXT NOT NULL,
        config_sha256 TEXT NOT NULL,
        model TEXT NOT NULL,
        parameters INTEGER NOT NULL CHECK (parameters > 0),
        objective TEXT NOT NULL,
        language_subset TEXT NOT NULL,
        pairs TEXT NOT NULL,
        languages TEXT NOT NULL,
        n_languages INTEGER NOT NULL,
        train_seed INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
        error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT)""",
    """CREATE TABLE costs (
        cell TEXT PRIMARY KEY REFERENCES cells (cell) ON DELETE CASCADE,
        steps INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        train_flops REAL NOT NULL,
        wall_seconds REAL NOT NULL,
        gpu_hours REAL NOT NULL,
        world_size INTEGER NOT NULL,
        hardware TEXT NOT NULL,
        recorded_at TEXT NOT NULL)""",
    """CREATE TABLE scores (
        cell TEXT NOT NULL REFERENCES cells (cell) ON DELETE CASCADE,
        task TEXT NOT NULL,
        language TEXT NOT NULL,
        eval_seed INTEGER NOT NULL,
        split TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL NOT NULL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (cell, task, language, eval_seed, metric))""",
    """CREATE TABLE outcomes (
        cell TEXT NOT NULL,
        task TEXT NOT NULL,
        language TEXT NOT NULL,
        eval_seed INTEGER NOT NULL,
        metric TEXT NOT NULL,
        n INTEGER NOT NULL,
        scores BLOB NOT NULL CHECK (length(scores) = 8 * n),
        PRIMARY KEY (cell, task, language, eval_seed, metric),
        FOREIGN KEY (cell, task, language, eval_seed, metric)
            REFERENCES scores (cell, task, language, eval_seed, metric) ON DELETE CASCADE)""",
)
_PLAIN = re.compile(r"[A-Za-z0-9._+-]+")
_PAIR = re.compile(r"[A-Za-z][A-Za-z0-9_]*-[A-Za-z][A-Za-z0-9_]*")


class RegistryError(RuntimeError):
    """The registry file cannot be used, or a write breaks its contract; the message says which."""


def cell_name(axes: Mapping[str, str | int | float | bool]) -> str:
    """The cell's name: ``model=tiny,languages=langs_5,objective=weam,seed=1`` (the named axes, then any others
    in alphabetical order). Names and values must be plain (letters, digits, ``._+-``), so the name is a
    path-safe directory name and reads back unambiguously."""
    missing = [a for a in NAMED_AXES if a not in axes]
    if missing:
        raise RegistryError(f"axes: {', '.join(missing)} missing (every cell has {', '.join(NAMED_AXES)})")
    parts = []
    for key in [*NAMED_AXES, *sorted(k for k in axes if k not in NAMED_AXES)]:
        value = axes[key]
        if not isinstance(value, (str, int, float, bool)) or not _PLAIN.fullmatch(str(key)) \
                or not _PLAIN.fullmatch(str(value)):
            raise RegistryError(f"axes.{key}: {value!r} is not a plain value (letters, digits, ._+-)")
        parts.append(f"{key}={value}")
    return ",".join(parts)


def training_totals(run_dir: Path) -> dict[str, int | float]:
    """A run's own figures from its metrics.jsonl (one line per step, each step once): ``steps`` (the last),
    ``tokens`` and ``train_flops`` (summed over steps; each line holds the totals over ranks), and
    ``wall_seconds`` (the steps' own durations summed: training time, across resumes, without start-up)."""
    path = RunDir(Path(run_dir)).metrics
    steps, tokens, flops, seconds = 0, 0.0, 0.0, 0.0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read ({exc.strerror})") from None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            steps, tokens, flops = max(steps, int(row["step"])), tokens + row["tokens"], flops + row["flops"]
            seconds += row.get("step_time", 0.0)
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"{path}:{number}: not a metrics line with step, tokens and flops") from None
    return {"steps": steps, "tokens": round(tokens), "train_flops": flops, "wall_seconds": seconds}


def _config_json(config: Mapping) -> str:
    """A resolved run config as the registry stores it: canonical JSON (sorted keys, no blanks)."""
    try:
        return json.dumps(config, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"config: not JSON-serialisable ({exc})") from None


def config_sha256(config: Mapping) -> str:
    """The hash a cell's resolved run config is registered under (``cells.config_sha256``)."""
    return hashlib.sha256(_config_json(config).encode("utf-8")).hexdigest()


class Registry:
    """One connection to a study's registry. ``readonly`` opens an existing registry without writing
    anything (the report); otherwise the file and its schema are created on first use."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.is_file():
            raise RegistryError(f"{self.path}: no registry (the study runner creates it)")
        try:
            if readonly:
                target = self.path.resolve().as_uri() + "?mode=ro"
                self._conn = sqlite3.connect(target, uri=True, timeout=LOCK_NOTICE_S, isolation_level=None)
            else:
                self._conn = sqlite3.connect(self.path, timeout=LOCK_NOTICE_S, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            if _busy(exc):
                raise RegistryError(self._locked(LOCK_NOTICE_S)) from None
            raise RegistryError(f"{self.path}: not a usable SQLite registry ({exc})") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._begin()
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _begin(self) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads first and writes
        # later can fail at once under WAL when another writer committed in between, instead of waiting.
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        log.warning("%s is locked by another process: waiting up to %.0f s for it", self.path, BUSY_TIMEOUT_S)
        self._conn.execute(f"PRAGMA busy_timeout = {round((BUSY_TIMEOUT_S - LOCK_NOTICE_S) * 1000)}")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise RegistryError(self._locked(BUSY_TIMEOUT_S)) from None
            raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {round(LOCK_NOTICE_S * 1000)}")

    def _locked(self, waited: float) -> str:
        return f"{self.path}: locked by another process (waited {waited:.0f} s); let it finish, then retry"

    def _check_schema(self) -> None:
        if self.readonly:
            return self._check_version()
        with self._transaction() as conn:  # several processes may open a fresh registry at once
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [("schema_version", str(SCHEMA_VERSION)), ("created_at", _now())])
        if self._check_version() == 1:
            self._migrate_v1()

    def _migrate_v1(self) -> None:
        """Version 1's cells table allows no ``interrupted`` state, and SQLite cannot change a CHECK in place: the
        table is rebuilt (SQLite's documented procedure), with foreign keys off so that dropping the old table
        cascades to no cost or score, and checked before the commit."""
        conn = self._conn
        conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before it
        try:
            with self._transaction():
                if int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]) != 1:
                    return  # another process migrated it meanwhile
                conn.execute(_SCHEMA[1].replace("CREATE TABLE cells (", "CREATE TABLE cells_v2 (", 1))
                conn.execute("INSERT INTO cells_v2 SELECT * FROM cells")
                conn.execute("DROP TABLE cells")
                conn.execute("ALTER TABLE cells_v2 RENAME TO cells")
                if conn.execute("PRAGMA foreign_key_check").fetchall():
                    raise RegistryError(f"{self.path}: migrating schema version 1 would break its references")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            log.info("%s: registry migrated from schema version 1 to %d", self.path, SCHEMA_VERSION)
        finally:
            conn.execute("PRAGMA foreign_keys=ON")

    def _check_version(self) -> int:
        """The registry's schema version, one this weam-ds reads (1 or 2)."""
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise
            row = None
        if row is None:
            raise RegistryError(f"{self.path}: an SQLite file, but not a weam-ds registry (no schema_version)")
        try:
            version = int(row[0])
        except ValueError:
            raise RegistryError(f"{self.path}: schema_version {row[0]!r} is not a number: not a registry this "
                                "weam-ds wrote") from None
        if version > SCHEMA_VERSION:
            raise RegistryError(f"{self.path}: registry schema version {version} is newer than this weam-ds reads "
                                f"({SCHEMA_VERSION}): upgrade weam-ds")
        if version < 1:
            raise RegistryError(f"{self.path}: registry schema version {version} is older than this weam-ds's "
                                f"({SCHEMA_VERSION}) and no migration from it exists")
        return version

    # Writes: each one transaction.

    def set_study(self, name: str, sha256: str) -> None:
        """Records the study's name and its study file's hash (replacing earlier ones)."""
        with self._transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             [("study_name", name), ("study_sha256", sha256)])

    def put_cell(self, axes: Mapping[str, str | int | float | bool], config: Mapping, *, parameters: int,
                 pairs: Sequence[str], replace: bool = False) -> str:
        """Registers a cell as ``pending`` and returns its name (``cell_name(axes)``). ``axes`` has every
        ``NAMED_AXES`` entry: ``model``, ``languages`` (the subset's name), ``objective`` and ``seed`` (the
        train seed), which fill those columns; ``config`` is the resolved run config (JSON-serialisable);
        ``parameters`` the backbone's parameter count; ``pairs`` the pre-training pairs (``de-en``).

        A cell registered before with the same config is left as it is (state, cost and scores kept). With
        another config it is an error, unless ``replace``: then the cell starts afresh as ``pending`` and its
        cost and scores are deleted."""
        name = cell_name(axes)
        if axes["objective"] not in OBJECTIVES:
            raise RegistryError(f"axes.objective: {axes['objective']!r} is not one of {', '.join(OBJECTIVES)}")
        if not isinstance(axes["seed"], int) or isinstance(axes["seed"], bool):
            raise RegistryError(f"axes.seed: {axes['seed']!r} is not an integer")
        if not isinstance(parameters, int) or parameters <= 0:
            raise RegistryError(f"parameters: {parameters!r} is not a positive integer")
        if isinstance(pairs, str) or not pairs or not all(isinstance(p, str) and _PAIR.fullmatch(p) for p in pairs):
            raise RegistryError(f"pairs: {pairs!r} is not a non-empty list of language pairs like 'de-en'")
        config_json = _config_json(config)
        digest = hashlib.sha256(config_json.encode("utf-8")).hexdigest()
        languages = cell_languages(pairs)
        now = _now()
        with self._transaction() as conn:
            row = conn.execute("SELECT config_sha256 FROM cells WHERE cell = ?", (name,)).fetchone()
            if row is not None:
                if row[0] == digest:
                    return name
                if not replace:
                    raise RegistryError(f"cell {name}: registered with another config (sha256 {row[0][:12]}, now "
                                        f"{digest[:12]}); pass replace=True to start it afresh")
                conn.execute("DELETE FROM cells WHERE cell = ?", (name,))
            conn.execute(
                "INSERT INTO cells (cell, axes, config, config_sha256, model, parameters, objective, language_subset, "
                "pairs, languages, n_languages, train_seed, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (name, json.dumps(dict(axes)), config_json, digest, str(axes["model"]), parameters,
                 axes["objective"], str(axes["languages"]), json.dumps(list(pairs)), json.dumps(languages),
                 len(languages), axes["seed"], now, now))
        return name

    def set_state(self, cell: str, state: str, error: str | None = None) -> None:
        """Moves a cell to ``state``; ``error`` (required with ``failed``, refused otherwise) says why it
        failed. Entering ``running`` stamps ``started_at`` and clears ``finished_at``; ``evaluated`` and
        ``failed`` stamp ``finished_at``."""
        if state not in STATES:
            raise RegistryError(f"state: {state!r} is not one of {', '.join(STATES)}")
        if (state == "failed") != bool(error):
            raise RegistryError("error: required with state 'failed' and only with it")
        now = _now()
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE cells SET state = ?, error = ?, updated_at = ?, "
                "started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END, "
                "finished_at = CASE WHEN ? IN ('evaluated', 'failed') THEN ? "
                "WHEN ? = 'running' THEN NULL ELSE finished_at END WHERE cell = ?",
                (state, error, now, state, now, state, now, state, cell)).rowcount
            if not updated:
                raise RegistryError(f"cell {cell}: not registered")

    def put_cost(self, cell: str, *, steps: int, tokens: int, train_flops: float, wall_seconds: float,
                 gpu_hours: float, world_size: int, hardware: str) -> None:
        """Records (or replaces) what training the cell cost: ``steps``, ``tokens`` and ``train_flops`` as
        the run counted them (``training_totals``), ``wall_seconds`` of training, ``gpu_hours`` held (0 on
        CPUs), ``world_size`` (ranks), ``hardware`` (e.g. ``4x NVIDIA H100 80GB HBM3``)."""
        figures = {"steps": steps, "tokens": tokens, "world_size": world_size}
        for key, value in figures.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RegistryError(f"{key}: {value!r} is not a non-negative integer")
        for key, value in {"train_flops": train_flops, "wall_seconds": wall_seconds, "gpu_hours": gpu_hours}.items():
            _check_number(key, value)
        with self._transaction() as conn:
            self._require_cell(conn, cell)
            conn.execute("INSERT OR REPLACE INTO costs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (cell, steps, tokens, float(train_flops), float(wall_seconds), float(gpu_hours),
                          world_size, hardware, _now()))

    def put_scores(self, cell: str, task: str, language: str, eval_seed: int, split: str,
                   scores: Mapping[str, float], per_example: Mapping[str, Sequence[float]] | None = None) -> None:
        """Records one evaluation of ``cell`` on ``task`` in ``language`` with fine-tuning seed ``eval_seed``:
        ``scores`` maps metric names (as weam_ds.xtreme_r names them: ``accuracy``, ``f1``, ``map@20`` ...) to
        values on the official scale (×100); ``per_example`` maps some of those metrics to the per-example
        scores whose mean is the value, in the evaluation set's order, for the paired bootstrap. It replaces
        every metric stored before for this cell, task, language and seed."""
        if not scores:
            raise RegistryError("scores: no metric given")
        for metric, value in scores.items():
            _check_number(f"scores.{metric}", value, signed=True)
        blobs = {}
        for metric, values in (per_example or {}).items():
            if metric not in scores:
                raise RegistryError(f"per_example.{metric}: not among the scores given ({', '.join(scores)})")
            array = np.asarray(values, dtype="<f8")
            if array.ndim != 1 or not array.size or not np.isfinite(array).all():
                raise RegistryError(f"per_example.{metric}: expected a non-empty list of finite numbers")
            blobs[metric] = (array.size, array.tobytes())
        now = _now()
        key = (cell, task, language, eval_seed)
        with self._transaction() as conn:
            self._require_cell(conn, cell)
            conn.execute("DELETE FROM scores WHERE cell = ? AND task = ? AND language = ? AND eval_seed = ?", key)
            conn.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [(*key, split, metric, float(value), now) for metric, value in scores.items()])
            conn.executemany("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(*key, metric, n, blob) for metric, (n, blob) in blobs.items()])

    @staticmethod
    def _require_cell(conn: sqlite3.Connection, cell: str) -> None:
        if conn.execute("SELECT 1 FROM cells WHERE cell = ?", (cell,)).fetchone() is None:
            raise RegistryError(f"cell {cell}: not registered")

    # Reads.

    def study(self) -> Study:
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        return Study(int(meta["schema_version"]), meta["created_at"], meta.get("study_name"),
                     meta.get("study_sha256"))

    def cells(self) -> list[Cell]:
        """Every cell with its cost (None before training recorded one), by name."""
        rows = self._conn.execute(
            "SELECT c.cell, c.axes, c.config, c.config_sha256, c.model, c.parameters, c.objective, c.language_subset, "
            "c.pairs, c.languages, c.n_languages, c.train_seed, c.state, c.error, c.created_at, c.updated_at, "
            "c.started_at, c.finished_at, k.steps, k.tokens, k.train_flops, k.wall_seconds, k.gpu_hours, "
            "k.world_size, k.hardware, k.recorded_at FROM cells c LEFT JOIN costs k ON k.cell = c.cell "
            "ORDER BY c.cell").fetchall()
        return [Cell(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])),
                     tuple(json.loads(r[9])), r[10], r[11], r[12], r[13], r[14], r[15], r[16], r[17],
                     None if r[18] is None else Cost(*r[18:26])) for r in rows]

    def scores(self, cell: str | None = None, task: str | None = None) -> list[Score]:
        """Stored scores, all or those of one cell and/or task, in key order."""
        query, args = "SELECT cell, task, language, eval_seed, split, metric, value FROM scores", []
        filters = [(column, value) for column, value in (("cell", cell), ("task", task)) if value is not None]
        if filters:
            query += " WHERE " + " AND ".join(f"{column} = ?" for column, _ in filters)
            args = [value for _, value in filters]
        query += " ORDER BY cell, task, language, eval_seed, metric"
        return [Score(*row) for row in self._conn.execute(query, args).fetchall()]

    def per_example(self, cell: str, task: str, language: str, eval_seed: int, metric: str) -> np.ndarray | None:
        """The per-example scores stored with that score, or None when none were."""
        row = self._conn.execute(
            "SELECT scores FROM outcomes WHERE cell = ? AND task = ? AND language = ? AND eval_seed = ? AND metric = ?",
            (cell, task, language, eval_seed, metric)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype="<f8")


def _check_number(key: str, value, signed: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (not signed and value < 0):
        kind = "finite number" if signed else "finite non-negative number"
        raise RegistryError(f"{key}: {value!r} is not a {kind}")


def _busy(exc: sqlite3.DatabaseError) -> bool:
    """Another connection holds a lock that this one waited for in vain."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
