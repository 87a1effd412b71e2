"""Building a dataset directory, stage by stage; each stage skips what an earlier run finished.

1. clean:     read every source (in parallel across sources), normalise, filter, de-duplicate, and spool
              the clean pairs (or monolingual sentences) into chunk files under ``.work/``;
2. split:     draw the held-out dev/test samples of each source;
3. align:     per chunk of pairs (in parallel across chunks and pairs): word-split, align with eflomal
              in both directions, symmetrise; needing no subwords, this runs while
4. tokenizer: one is trained on the train samples, or the configured one is copied;
5. encode:    per aligned chunk (and per monolingual chunk, which has nothing to align): tokenize,
              project links onto subwords, write shards; the manifest lists a chunk's shards once they
              are all complete.

A build spread over jobs (``python -m launcher prep``, launcher.prep_slurm) runs the same stages in three steps:
``prepare`` (1, 2, 4 and a plan of chunk groups), ``run_chunk_group`` per group at once (3 and 5; each chunk
leaves its shard records in a result file of its own, since groups share no manifest) and ``finish`` (the
results merged into the manifest, every shard checked against its record). A local build takes over what
such jobs left, and the reverse.
"""
from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep import PrepError, __version__
from data_prep.chunks import ChunkResult, ChunkTask, align_chunk, encode_chunk, read_spool
from data_prep.cleaning import Cleaner
from data_prep.config import MonolingualConfig, PairConfig, PrepConfig
from data_prep.files import write_atomically
from data_prep.manifest import (FORMAT, FORMAT_VERSION, SPLITS, ManifestError, read_manifest, split_totals,
                                write_manifest)
from data_prep.output_dirs import claim
from data_prep.readers import read_pairs
from data_prep.shards import file_sha256, read_samples
from data_prep.tokenizer import copy_tokenizer, tokenizer_sha256, train_tokenizer
from data_prep.typed_config import to_dict
from data_prep.worker_pool import as_completed, worker_pool

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    manifest: dict
    wall: dict[str, float] = field(default_factory=dict)
    """Seconds per stage as the user waits for them."""
    worker: Counter = field(default_factory=Counter)
    """Seconds per step inside the chunk workers, summed over workers."""


def build(cfg: PrepConfig) -> BuildReport:
    out = Path(cfg.output_dir)
    claim(out, "data_prep", earlier="manifest.json")  # never into a directory of other files (a run, the cwd)
    with _exclusive(out):
        manifest = _open_manifest(out, cfg)
        report = BuildReport(manifest)
        if manifest["complete"]:
            log.info("%s is complete; nothing to do", out)
            return report
        with worker_pool(cfg.n_workers) as pool:
            _run_stages(cfg, manifest, report, pool)
    return report


# --- A build spread over jobs (launcher.prep_slurm submits them) -------------------------------------------
# prepare (one job): clean, split, tokenizer, and a plan of chunk groups; chunks (one job per group, at once):
# align and encode, each chunk leaving its own result file; finish (one job): merge, verify, complete.


def is_complete(cfg: PrepConfig) -> bool:
    """Whether ``cfg``'s dataset is built already; a complete dataset of another config is an error, as for build."""
    out = Path(cfg.output_dir)
    try:
        manifest = read_manifest(out, require_complete=False)
    except ManifestError:
        if (out / "manifest.json").exists():
            raise
        return False
    if manifest["complete"] and manifest["config_sha256"] != cfg.fingerprint():
        raise PrepError(f"{out}: was built from another config or other input files; "
                        "use a new output_dir or delete this one")
    return bool(manifest["complete"])


def prepare(cfg: PrepConfig, nodes: int, chunks_per_task: int | None = None) -> int:
    """Stages 1-3 (clean, split, tokenizer) and the plan of the chunks still to do, in groups of
    ``chunks_per_task`` (default: as many as spread them over ``nodes``); returns the number of groups."""
    out = Path(cfg.output_dir)
    claim(out, "data_prep", earlier="manifest.json")
    with _exclusive(out):
        manifest = _open_manifest(out, cfg)
        if manifest["complete"]:
            log.info("%s is complete; nothing to do", out)
            return 0
        with worker_pool(cfg.n_workers) as pool:
            cleaned = _clean(cfg, manifest, pool)
        heldout = _heldout(cfg, cleaned)
        _prepare_tokenizer(cfg, manifest, cleaned, heldout, out)
        write_manifest(out, manifest)
        chunks = [(t.pair, t.chunk) for t in _chunk_tasks(cfg, manifest, cleaned, heldout)]
        per_task = chunks_per_task or max(1, -(-len(chunks) // nodes))
        groups = [chunks[i:i + per_task] for i in range(0, len(chunks), per_task)]
        write_atomically(out / _PLAN, json.dumps({"config_sha256": manifest["config_sha256"], "groups": groups}))
    log.info("%d chunks to align and encode, in %d groups of up to %d", len(chunks), len(groups), per_task)
    return len(groups)


def run_chunk_group(cfg: PrepConfig, group: int) -> None:
    """Aligns and encodes the chunks of one group of the plan that are not done yet; each finished chunk leaves
    its shard records in a result file of its own (groups run at once, so none writes the manifest)."""
    out = Path(cfg.output_dir)
    with _exclusive(out, shared=True):  # groups run side by side; a local build or a prepare waits its turn
        manifest = _prepared_manifest(out, cfg)
        plan = json.loads((out / _PLAN).read_text())
        if plan["config_sha256"] != manifest["config_sha256"] or not 0 <= group < len(plan["groups"]):
            raise PrepError(f"{out / _PLAN}: has no group {group} of this build; submit the build again")
        mine = {tuple(chunk) for chunk in plan["groups"][group]}
        with worker_pool(cfg.n_workers) as pool:
            cleaned = [_cleaned(out, p) for p in cfg.sources]
            tasks = [t for t in _chunk_tasks(cfg, manifest, cleaned, _heldout(cfg, cleaned))
                     # A task SLURM requeued (its node failed) skips the chunks it finished before.
                     if (t.pair, t.chunk) in mine and not _chunk_result(out, t.pair, t.chunk).exists()]
            log.info("group %d: aligning and encoding %d of its %d chunks", group, len(tasks), len(mine))
            # One worker runs each call as it is submitted, every alignment before any encoding: there the chunks
            # go one by one instead, so that a task killed in its n-th chunk has finished those before it.
            for batch in [tasks] if cfg.n_workers > 1 else [[t] for t in tasks]:
                pending, ready = _start_aligning(batch, pool)
                _encode(batch, pending, ready, pool, BuildReport(manifest), lambda r: write_atomically(
                    _chunk_result(out, r.pair, r.chunk),
                    json.dumps({"pair": r.pair, "chunk": r.chunk, "shards": r.shards})))


def finish(cfg: PrepConfig) -> dict:
    """Lists every group's chunks in the manifest, checks each shard against its record (sha256 and samples),
    and marks the dataset complete; a chunk not done or a shard that fails is an error naming it."""
    out = Path(cfg.output_dir)
    with _exclusive(out):
        manifest = _prepared_manifest(out, cfg)
        if manifest["complete"]:
            return manifest
        _merge_chunk_results(out, manifest)
        write_manifest(out, manifest)
        missing = [f"{key} chunk {i}" for key, entry in manifest["pairs"].items()
                   for i in range(entry["chunks"]) if i not in entry["chunks_done"]]
        if missing:
            raise PrepError(f"{out}: not done: {', '.join(missing)}; the same command does them")
        shards = [shard for entry in manifest["pairs"].values() for shard in entry["shards"]]
        with worker_pool(cfg.n_workers) as pool:
            pending = {pool.submit(_shard_problem, out, shard): shard["path"] for shard in shards}
            problems = [f"{path}: {problem}" for path, problem in as_completed(pending) if problem]
        if problems:
            raise PrepError(f"{out}: {len(problems)} of {len(shards)} shards fail their check: {problems[0]}"
                            + (" ..." if len(problems) > 1 else ""))
        log.info("%d shards verified (sha256 and samples)", len(shards))
        _complete(out, manifest)
    return manifest


_PLAN = Path(".work") / "plan.json"
"""The chunk groups of the last prepare, ``{"config_sha256": ..., "groups": [[[pair, chunk], ...], ...]}``."""


def _chunk_result(out: Path, pair: str, chunk: int) -> Path:
    """A finished chunk's shard records, written whole (then renamed) by the group that did it."""
    return out / ".work" / pair / f"chunk-{chunk:05d}.json"


def _merge_chunk_results(out: Path, manifest: dict) -> None:
    """Lists in the manifest the chunks whose result files groups left (and it does not list yet)."""
    for path in sorted((out / ".work").glob("*/chunk-*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        entry = manifest["pairs"].get(result["pair"])
        if entry is not None and result["chunk"] not in entry["chunks_done"]:
            _add_chunk(manifest, result["pair"], result["chunk"], result["shards"])


def _cleaned(out: Path, pair: PairConfig | MonolingualConfig) -> dict:
    """Stage 1's result for a source, which the prepare job left (groups never clean: they would race)."""
    marker = out / ".work" / pair.key / "clean.json"
    if not marker.is_file():
        raise PrepError(f"{marker}: missing, so {pair.key} was not cleaned by a prepare; submit the build again")
    return json.loads(marker.read_text(encoding="utf-8"))


def _prepared_manifest(out: Path, cfg: PrepConfig) -> dict:
    """The manifest a prepare of this config wrote; anything else is an error (the config or inputs changed
    since the build was submitted)."""
    manifest = read_manifest(out, require_complete=False)
    if manifest["config_sha256"] != cfg.fingerprint() or not manifest["tokenizer"]:
        raise PrepError(f"{out}: not prepared from this config and these input files (changed since the build "
                        "was submitted?); submit the build again")
    return manifest


def _shard_problem(out: Path, shard: dict) -> str | None:
    """What is wrong with a shard file against its manifest record, or None."""
    path = out / shard["path"]
    if not path.is_file():
        return "missing"
    if file_sha256(path) != shard["sha256"]:
        return "sha256 differs from the record"
    samples = sum(1 for _ in read_samples(path))
    return None if samples == shard["samples"] else f"{samples} samples, the record says {shard['samples']}"


@contextmanager
def _exclusive(out: Path, shared: bool = False) -> Iterator[None]:
    """One build per output directory at a time: a second one would resume, or remove, the first's work.
    ``shared``: one of a build's groups, which run side by side. The lock is the kernel's (flock), so a killed
    build never leaves it held."""
    with open(out / ".build.lock", "a") as lock:  # "a": a re-run of a complete build changes nothing
        try:
            fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepError(f"{out}: another data_prep build is running there") from None
        yield


def _run_stages(cfg: PrepConfig, manifest: dict, report: BuildReport, pool: Executor) -> None:
    out = Path(cfg.output_dir)
    clock = time.perf_counter()
    cleaned = _clean(cfg, manifest, pool)
    report.wall["clean"] = time.perf_counter() - clock

    heldout = _heldout(cfg, cleaned)
    tasks = _chunk_tasks(cfg, manifest, cleaned, heldout)
    # Largest chunks first, so that the last task to finish is a short one (the final chunk of a pair
    # is usually partial).
    sizes = {p.key: c["clean_pairs"] for p, c in zip(cfg.sources, cleaned)}
    tasks.sort(key=lambda t: -min(cfg.chunk_size, sizes[t.pair] - t.first))
    log.info("aligning and encoding %d chunks with %d workers", len(tasks), cfg.n_workers)

    # Alignment works on words, not subwords: the workers align while this process makes the tokenizer.
    clock = time.perf_counter()
    pending, ready = _start_aligning(tasks, pool)
    _prepare_tokenizer(cfg, manifest, cleaned, heldout, out)
    write_manifest(out, manifest)
    report.wall["tokenizer"] = time.perf_counter() - clock

    def listed(result: ChunkResult) -> None:  # this chunk's shards are complete: list them
        _add_chunk(manifest, result.pair, result.chunk, result.shards)
        write_manifest(out, manifest)

    _encode(tasks, pending, ready, pool, report, listed)
    report.wall["align+encode"] = time.perf_counter() - clock
    _complete(out, manifest)


def _clean(cfg: PrepConfig, manifest: dict, pool: Executor) -> list[dict]:
    """Stage 1 for every source, in parallel; their counts go into the manifest, with the chunks that jobs
    of a spread build finished (``_merge_chunk_results``)."""
    out = Path(cfg.output_dir)
    sources = cfg.sources
    pending = {pool.submit(_clean_pair, p, cfg, out / ".work"): i for i, p in enumerate(sources)}
    by_index = dict(tqdm(as_completed(pending), total=len(sources), desc="clean", unit="source", disable=None))
    cleaned = [by_index[i] for i in range(len(sources))]
    for pair, result in zip(sources, cleaned):
        entry = manifest["pairs"].setdefault(pair.key, {"shards": [], "chunks_done": []})
        entry.update(src_lang=pair.src_lang, tgt_lang=pair.tgt_lang, input_records=result["input_records"],
                     clean_pairs=result["clean_pairs"], dropped=result["dropped"], chunks=len(result["chunks"]))
    _merge_chunk_results(out, manifest)
    write_manifest(out, manifest)
    return cleaned


def _heldout(cfg: PrepConfig, cleaned: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {p.key: _choose_heldout(p.key, c["clean_pairs"], cfg) for p, c in zip(cfg.sources, cleaned)}


def _chunk_tasks(cfg: PrepConfig, manifest: dict, cleaned: list[dict],
                 heldout: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[ChunkTask]:
    """The chunks still to align and encode (none the manifest lists as done), source by source, in order."""
    out = Path(cfg.output_dir)
    tasks = []
    for pair, result in zip(cfg.sources, cleaned):
        done = set(manifest["pairs"][pair.key]["chunks_done"])
        dev, test = heldout[pair.key]
        tasks += [ChunkTask(pair.key, pair.src_lang, pair.tgt_lang, i, chunk["path"], chunk["first"], dev, test,
                            str(out), str(out / "tokenizer"), cfg.aligner, cfg.shards)
                  for i, chunk in enumerate(result["chunks"]) if i not in done]
    return tasks


def _start_aligning(tasks: list[ChunkTask], pool: Executor) -> tuple[dict[Future, Any], list[ChunkTask]]:
    """The alignments submitted (``{future: ("align", task)}``), and the chunks ready to encode: monolingual
    ones, and those an interrupted run aligned."""
    ready, to_align = [], []
    for t in tasks:
        (to_align if t.parallel and not t.aligned.exists() else ready).append(t)
    if any(t.parallel for t in ready):
        log.info("%d chunks were aligned by an earlier run", sum(t.parallel for t in ready))
    return {pool.submit(align_chunk, t): ("align", t) for t in to_align}, ready


def _encode(tasks: list[ChunkTask], pending: dict[Future, Any], ready: list[ChunkTask], pool: Executor,
            report: BuildReport, done: Callable[[ChunkResult], None]) -> None:
    """Encodes the ``ready`` chunks, and each one of ``pending`` once aligned; ``done`` gets each chunk's
    result once all its shards are whole."""
    to_align = len(pending)
    pending.update({pool.submit(encode_chunk, t): ("encode", t) for t in ready})
    steps = len(tasks) + sum(t.parallel for t in tasks)  # an align step per chunk of pairs, an encode step each
    with tqdm(total=steps, initial=steps - to_align - len(pending), desc="align+encode", unit="step",
              disable=None) as bar:
        for (step, task), result in as_completed(pending):
            bar.update()
            report.worker.update(result.seconds)
            if step == "align":
                pending[pool.submit(encode_chunk, task)] = ("encode", task)
                continue
            done(result)


def _add_chunk(manifest: dict, pair: str, chunk: int, shards: list[dict]) -> None:
    entry = manifest["pairs"][pair]
    entry["shards"] = sorted(entry["shards"] + shards, key=lambda s: s["path"])
    entry["chunks_done"] = sorted(entry["chunks_done"] + [chunk])


def _complete(out: Path, manifest: dict) -> None:
    for entry in manifest["pairs"].values():
        entry["splits"] = split_totals(entry["shards"])
    manifest["complete"] = True
    write_manifest(out, manifest)
    shutil.rmtree(out / ".work", ignore_errors=True)
    log.info("dataset complete: %s", out / "manifest.json")


def _open_manifest(out: Path, cfg: PrepConfig) -> dict:
    fingerprint = cfg.fingerprint()
    try:
        manifest = read_manifest(out, require_complete=False)
    except ManifestError:
        if (out / "manifest.json").exists():
            raise
        manifest = None
    if manifest is not None and manifest["config_sha256"] == fingerprint:
        log.info("resuming %s", out)
        return manifest
    if manifest is not None:
        if manifest["complete"]:
            raise PrepError(f"{out}: was built from another config or other input files; "
                            "use a new output_dir or delete this one")
        # A failed build must not lock its config: the fixed config starts afresh.
        log.warning("%s: the unfinished build there came from another config or other input files; "
                    "removing what it wrote and starting afresh", out)
        _remove_unfinished(out, [*manifest["pairs"], *(p.key for p in cfg.sources)])
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "data_prep_version": __version__,
        "complete": False, "config_sha256": fingerprint,
        "tokenizer": {}, "aligner": to_dict(cfg.aligner), "cleaning": to_dict(cfg.cleaning),
        "splits_config": to_dict(cfg.splits), "shard_limits": to_dict(cfg.shards), "pairs": {},
    }
    write_manifest(out, manifest)
    return manifest


def _remove_unfinished(out: Path, pair_keys: list[str]) -> None:
    """Remove what data_prep writes into ``out``, and nothing else: the directory may hold the user's
    files. The manifest stays until the new one replaces it, so a run killed meanwhile does this again."""
    # Keys from an old manifest become paths: only plain names (as PairConfig makes them) are used.
    pair_dirs = [out / key for key in pair_keys if re.fullmatch(r"[\w-]+", key)]
    for path in [out / ".work", out / "tokenizer", *(d / split for d in pair_dirs for split in SPLITS)]:
        if path.exists():
            shutil.rmtree(path)  # a failure stops here: old files must not mix into the new build
    for d in pair_dirs:
        with suppress(OSError):
            d.rmdir()  # only if empty


def _clean_pair(pair: PairConfig | MonolingualConfig, cfg: PrepConfig, work: Path) -> dict:
    """Stage 1 for one source (a language pair or a language); its ``clean.json`` marks the spool complete."""
    spool = work / pair.key
    marker = spool / "clean.json"
    if marker.exists():
        return json.loads(marker.read_text())
    spool.mkdir(parents=True, exist_ok=True)
    cleaner = Cleaner(cfg.cleaning)
    n_records = 0

    def counted(stream: Iterable) -> Iterator:
        nonlocal n_records
        for record in tqdm(stream, desc=f"read {pair.key}", unit=" records", leave=False, disable=None):
            n_records += 1
            yield record

    chunks, f = [], None
    n = 0
    for record in cleaner.clean(counted(read_pairs(pair))):
        if n % cfg.chunk_size == 0:
            if f:
                f.close()
            chunks.append({"path": str(spool / f"clean-{len(chunks):05d}.tsv"), "first": n})
            f = open(chunks[-1]["path"], "w", encoding="utf-8")
        f.write("\t".join(record) + "\n")  # cleaning turned tabs into spaces
        n += 1
    if f:
        f.close()
    if n == 0:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(cleaner.dropped.items())) or "no input records"
        what = "sentences" if pair.tgt_lang is None else "sentence pairs"
        raise PrepError(f"{pair.key}: no {what} left after cleaning ({drops}) in {', '.join(pair.files)}")
    result = {"input_records": n_records, "clean_pairs": n, "dropped": dict(sorted(cleaner.dropped.items())),
              "chunks": chunks}
    write_atomically(marker, json.dumps(result))
    log.info("%s: %d records read, %d clean, dropped %s", pair.key, n_records, n, result["dropped"])
    return result


def _choose_heldout(key: str, n: int, cfg: PrepConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted dev and test indices: a seeded random draw, the same on every run."""
    n_dev, n_test = cfg.splits.dev, cfg.splits.test
    if n_dev + n_test >= n:
        raise PrepError(f"splits: dev + test = {n_dev + n_test} pairs, but {key} has only {n} clean pairs")
    rng = np.random.default_rng([cfg.splits.seed, zlib.crc32(key.encode())])
    drawn = rng.choice(n, n_dev + n_test, replace=False)
    return np.sort(drawn[:n_dev]), np.sort(drawn[n_dev:])


def _prepare_tokenizer(cfg: PrepConfig, manifest: dict, cleaned: list[dict],
                       heldout: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> None:
    tok_dir = out / "tokenizer"
    recorded = manifest["tokenizer"]
    if recorded and tok_dir.is_dir() and tokenizer_sha256(tok_dir) == recorded["sha256"]:
        log.info("tokenizer already in %s", tok_dir)
        return
    if any(entry.get("chunks_done") for entry in manifest["pairs"].values()):
        raise PrepError(f"{tok_dir}: changed or missing, but shards were already written with it; "
                        "restore it or delete the output directory")
    shutil.rmtree(tok_dir, ignore_errors=True)
    if cfg.tokenizer.path:
        log.info("copying tokenizer from %s", cfg.tokenizer.path)
        copy_tokenizer(cfg.tokenizer.path, tok_dir)
        source = str(Path(cfg.tokenizer.path).resolve())
    else:
        log.info("training a %d-piece unigram tokenizer on the train pairs", cfg.tokenizer.train.vocab_size)
        texts = _tokenizer_texts(cfg, cleaned, heldout)
        train_tokenizer(texts, cfg.tokenizer.train.vocab_size, tok_dir)
        source = "trained"
    vocab = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    manifest["tokenizer"] = {"path": "tokenizer", "source": source, "sha256": tokenizer_sha256(tok_dir),
                             "vocab_size": len(vocab)}


def _tokenizer_texts(cfg: PrepConfig, cleaned: list[dict], heldout) -> Iterator[list[str]]:
    """Every side of a seeded sample of each source's train samples (held-out ones never), in batches:
    both sides of pairs, and monolingual sentences."""
    cap = cfg.tokenizer.train.max_sentences_per_pair
    for pair, result in zip(cfg.sources, cleaned):
        n = result["clean_pairs"]
        train = np.setdiff1d(np.arange(n), np.concatenate(heldout[pair.key]), assume_unique=True)
        if len(train) > cap:
            rng = np.random.default_rng([cfg.splits.seed, zlib.crc32(pair.key.encode()), 1])
            train = np.sort(rng.choice(train, cap, replace=False))
        for chunk in result["chunks"]:
            columns = read_spool(chunk["path"])
            picked = train[(train >= chunk["first"]) & (train < chunk["first"] + len(columns[0]))] - chunk["first"]
            yield [column[k] for column in columns for k in picked]
