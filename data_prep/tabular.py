"""Tabular corpora: Parquet files, JSON Lines, and Arrow stream files (a Hugging Face ``save_to_disk``
folder, or the ``.arrow`` files of a ``load_dataset`` cache), as dataset hubs ship OPUS-100, NLLB or CCMatrix.

A source names its columns: ``src_column`` and ``tgt_column`` for pairs, ``text_column`` for monolingual text,
and optionally ``score_column`` (with ``min_score``, see ``Source`` in data_prep.readers). A name is
dotted into struct columns or nested objects: ``translation.ko`` is field ``ko`` of column ``translation``.

Everything is read a record batch at a time, never a whole file: Parquet by ``ParquetFile.iter_batches``
with only the named columns, Arrow streams batch by batch (as ``save_to_disk`` wrote them, about a
thousand rows each), JSON Lines line by line through data_prep.compression (so ``.jsonl.gz`` works). A row
whose text is null, missing or not a string, or whose score is no number, is dropped as ``malformed``; a
pair scored under ``min_score`` as ``low_score``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep import PrepError
from data_prep.compression import open_input
from data_prep.readers import Record, Source, reader

TABULAR_FORMATS = ("parquet", "jsonl", "arrow")
"""The formats whose sources name their columns (and whose ``path`` may be a Hugging Face folder: arrow)."""
BATCH_ROWS = 8192
"""Rows per Parquet record batch: what the reader holds at a time, with only the named columns."""
_SHOWN_COLUMNS = 20


@reader("parquet", monolingual=True, parallel=True)
def read_parquet(source: Source) -> Iterator[Record]:
    """Parquet files, one record batch at a time, reading only the named columns."""
    for path in source.path:
        yield from _batch_records(source, _parquet_batches(path, _column_names(source)))


@reader("jsonl", monolingual=True, parallel=True)
def read_jsonl(source: Source) -> Iterator[Record]:
    """JSON Lines, one object per line, compressed or not; a line that is no JSON object is malformed."""
    names = _column_names(source)
    for path in source.path:
        for obj in _json_objects(path):
            values = tuple(_lookup(obj, name) for name in names)
            yield _record(source, values[:len(source.text_columns)], values[len(source.text_columns):])


@reader("arrow", monolingual=True, parallel=True)
def read_arrow(source: Source) -> Iterator[Record]:
    """Arrow IPC stream files: each ``path`` is a ``save_to_disk`` folder or one ``.arrow`` file."""
    for path in source.files:
        yield from _batch_records(source, _arrow_batches(path))


def arrow_data_files(path: str) -> list[str]:
    """The Arrow stream files of ``path``: the data files a ``save_to_disk`` folder's ``state.json`` names,
    or ``path`` itself when it is a file. A ``DatasetDict`` folder is refused, naming its splits."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise PrepError(f"{path}: a DatasetDict folder (several splits); give one split's folder as path: "
                        f"{', '.join(str(folder / s) for s in splits) or '(it holds none)'}")
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise PrepError(f"{path}: not a Hugging Face save_to_disk folder (no state.json)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PrepError(f"{state_path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    entries = state.get("_data_files") if isinstance(state, dict) else None
    names = [e.get("filename") if isinstance(e, dict) else None for e in entries or []] \
        if isinstance(entries, list) else []
    # File names from the folder, not paths: a state.json naming "../x" reads nothing outside it.
    if not names or not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        raise PrepError(f"{state_path}: _data_files must list the folder's .arrow files by name")
    files = [str(folder / n) for n in names]
    missing = next((f for f in files if not Path(f).is_file()), None)
    if missing:
        raise PrepError(f"{state_path}: names {missing}, which does not exist")
    return files


def column_problem(fmt: str, path: str, columns: dict[str, str]) -> str | None:
    """Why the input file ``path`` cannot give ``columns`` (config key → dotted name), or None: a missing
    column, named with the columns the file has, or one that is not text. Costs a schema read (Parquet's
    footer, an Arrow stream's first message) or a JSON Lines file's first line."""
    try:
        available = _available_columns(fmt, path)
    except PrepError as exc:
        return f"path: {exc}"
    for key, name in columns.items():
        if name not in available:
            leaves = [c for c in available if not any(other.startswith(f"{c}.") for other in available)]
            shown = ", ".join(leaves[:_SHOWN_COLUMNS]) + (", ..." if len(leaves) > _SHOWN_COLUMNS else "")
            return f"{key}: {path} has no column {name!r} (its columns: {shown or 'none'})"
        kind = available[name]
        if kind is not None and key != "score_column" and not _is_text(kind):
            return f"{key}: {path}: column {name!r} is {kind}, not text"
    return None


def _available_columns(fmt: str, path: str) -> dict[str, pa.DataType | None]:
    """Every dotted column name of the file, struct columns and their fields, with its type (None for JSON,
    whose first line shows names but not the types of later lines)."""
    if fmt == "jsonl":
        first = next(_json_objects(path), None)
        if not isinstance(first, dict):
            raise PrepError(f"{path}: {'is empty' if first is None else 'its first line is no JSON object'}")
        return {name: None for name in _object_names(first)}
    try:
        schema = pq.read_schema(path) if fmt == "parquet" else _arrow_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise PrepError(f"{path}: cannot read {fmt} ({_first_line(exc)})") from None
    return _schema_names(list(schema))


def _schema_names(fields: list[pa.Field], prefix: str = "") -> dict[str, pa.DataType]:
    names = {}
    for f in fields:
        names[prefix + f.name] = f.type
        if pa.types.is_struct(f.type):
            names.update(_schema_names([f.type.field(i) for i in range(f.type.num_fields)], f"{prefix}{f.name}."))
    return names


def _object_names(obj: dict, prefix: str = "") -> list[str]:
    names = []
    for key, value in obj.items():
        names.append(prefix + key)
        if isinstance(value, dict):
            names += _object_names(value, f"{prefix}{key}.")
    return names


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _column_names(source: Source) -> list[str]:
    """The columns a source reads: its text columns, then its score column if it has one."""
    return [*source.text_columns, *([source.score_column] if source.score_column is not None else [])]


def _parquet_batches(path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    try:
        with pq.ParquetFile(path) as parquet:
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise PrepError(f"{path}: cannot read Parquet ({_first_line(exc)})") from None


def _arrow_schema(path: str) -> pa.Schema:
    with pa.memory_map(path) as stream:
        return pa.ipc.open_stream(stream).schema


def _arrow_batches(path: str) -> Iterator[pa.RecordBatch]:
    try:
        # Memory-mapped: a batch's columns are views of the page cache, not copies.
        with pa.memory_map(path) as stream:
            yield from pa.ipc.open_stream(stream)
    except (pa.ArrowException, OSError) as exc:
        raise PrepError(f"{path}: cannot read an Arrow stream ({_first_line(exc)})") from None


def _batch_records(source: Source, batches: Iterator[pa.RecordBatch]) -> Iterator[Record]:
    n_text = len(source.text_columns)
    for batch in batches:
        columns = [_column(batch, name).to_pylist() for name in _column_names(source)]
        for values in zip(*columns):
            yield _record(source, values[:n_text], values[n_text:])


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """Column ``name`` of ``batch``, dotted into struct fields; a null struct gives null fields."""
    top, *fields = name.split(".")
    column = batch.column(top)
    for field in fields:
        column = pc.struct_field(column, field)
    return column


def _record(source: Source, texts: tuple, score: tuple) -> Record:
    """One row's record: its texts, or why it is dropped; ``score`` is () or (the row's score,)."""
    if not all(isinstance(text, str) for text in texts):
        return "malformed"
    return (source.score_drop(score[0]) if score else None) or texts


def _json_objects(path: str) -> Iterator[Any]:
    """The parsed lines of a JSON Lines file (None for a line that is no JSON), decompressed if need be."""
    try:
        with open_input(path) as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:  # not JSON, or not UTF-8
                    yield None
    except OSError as exc:
        raise PrepError(f"{path}: cannot read ({exc.strerror})") from None


def _lookup(obj: Any, name: str) -> Any:
    """Field ``name`` (dotted into nested objects) of a JSON value, or None where it has none."""
    for key in name.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
