"""Saving a checkpoint so that ``latest`` only ever names a complete one.

DeepSpeed's own ``save_checkpoint`` lets rank 0 write ``latest`` as soon as rank 0 is done: under ZeRO-1/2 a
rank that is slower to write its optimizer partition, and is then killed, leaves ``latest`` naming a
checkpoint that cannot be loaded. Here a save is a commit:

1. every rank writes its files (DeepSpeed, ``save_latest=False``), and rank 0 the probe;
2. every rank checks that the files DeepSpeed made it responsible for exist, syncs them to disk, and the
   ranks exchange the list; a missing file on any rank fails the save everywhere;
3. rank 0 writes the commit record (every file and its size) and then replaces ``latest``, each atomically;
4. rank 0 deletes checkpoints beyond ``keep``; a barrier ends the save.

A kill anywhere before step 3 leaves the previous ``latest`` in place, naming a complete checkpoint.

Rank 0 alone judges, writes and prunes checkpoints by the files it sees, so before any of that a job checks that
every node sees one ``checkpoints/`` (``check_shared``): with ``output_dir`` on node-local storage each node has a
directory of its own, rank 0 would find the other nodes' files missing from every checkpoint, and the run would
start again from step 0. Pruning deletes only what rank 0 has proof of (see ``prune``).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from data_prep.files import write_atomically, write_failure
from data_prep.typed_config import ConfigError
from weam_ds.run_dir import COMMIT_FILE, PROBE_FILE, SHARED_MARKER_PREFIX, RunDir, checkpoint_problem

log = logging.getLogger(__name__)

SHARED_WAIT = 10.0
"""Seconds a rank looks for a peer's marker (check_shared) before it concludes it cannot see it: room for a
shared file system that shows another node's new file late."""


class CheckpointError(RuntimeError):
    pass


def _own_files(engine, checkpoints: Path, tag: str) -> list[Path]:
    """The files DeepSpeed's save makes this rank write: the model states (rank 0 under ZeRO-0/1/2, every
    rank under ZeRO-3) and the rank's optimizer partition (ZeRO-1 and up). DeepSpeed's loader finds them
    by the same names."""
    files = []
    if engine.save_non_zero_checkpoint:
        files.append(Path(engine._get_ckpt_name(str(checkpoints), tag)))
    if engine.save_zero_checkpoint:
        files.append(Path(engine._get_zero_ckpt_name(str(checkpoints), tag)))
    return files


def _synced_sizes(files: list[Path]) -> dict[str, int | None]:
    """Each file's size once it is on disk (None: missing), so the commit record outlives a node crash."""
    sizes = {}
    for path in files:
        try:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:
            sizes[path.name] = None
    return sizes


def save(engine, run: RunDir, tag: str, client_state: dict, write_probe: Callable[[Path], None],
         keep: int) -> None:
    """Save and commit checkpoint ``tag`` on every rank (a collective), keeping the newest ``keep``."""
    checkpoints = run.checkpoints
    tag_dir = checkpoints / tag
    with _disk_problems(tag_dir):
        engine.save_checkpoint(str(checkpoints), tag=tag, client_state=client_state, save_latest=False)
        write_probe(tag_dir)
        mine = _synced_sizes(_own_files(engine, checkpoints, tag))
    everyone: list[dict] = [{}] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    files = {name: size for sizes in everyone for name, size in sizes.items()}
    missing = sorted(name for name, size in files.items() if size is None)
    if missing:
        raise CheckpointError(f"{tag_dir}: not every rank wrote its part ({', '.join(missing)} missing); "
                              f"latest still names the previous checkpoint")
    if dist.get_rank() == 0:
        if (tag_dir / PROBE_FILE).is_file():  # there is none without dev data
            files.update(_synced_sizes([tag_dir / PROBE_FILE]))
        record = {"tag": tag, "world": dist.get_world_size(), "files": files}
        with _disk_problems(tag_dir):
            write_atomically(tag_dir / COMMIT_FILE, json.dumps(record, indent=1) + "\n")
            write_atomically(checkpoints / "latest", tag)
        prune(run, keep)
    dist.barrier()


@contextmanager
def _disk_problems(tag_dir: Path) -> Iterator[None]:
    """A full disk or a read-only directory as one line (DeepSpeed's torch.save says "unexpected pos"); the
    commit record is never written after it, so the tag stays incomplete and ``latest`` where it was."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        problem = write_failure(exc, tag_dir)
        if problem is None:
            raise
        raise CheckpointError(f"{problem}; {tag_dir.name} is incomplete, latest names the previous "
                              "checkpoint") from None


def prune(run: RunDir, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; delete older complete ones and those whose save never
    committed (no commit record: a save killed before its end; rank 0 writes that record itself, so its absence
    is proof). A committed checkpoint whose files differ from the record is never deleted: a missing file may be
    one a peer wrote where rank 0 cannot see it, or damage a person should look at; it is named instead."""
    tags = run.step_tags()
    problems = {tag: checkpoint_problem(run.checkpoints / tag) for tag in tags}
    kept = set([tag for tag in tags if problems[tag] is None][-keep:])
    for tag in tags:
        tag_dir = run.checkpoints / tag
        if tag in kept:
            continue
        if problems[tag] is None or not (tag_dir / COMMIT_FILE).exists():
            shutil.rmtree(tag_dir, ignore_errors=True)
        else:
            log.warning("%s: not deleted although its files differ from its commit record (%s): a file this node "
                        "cannot see, or one damaged since; it is not resumed from: look, then delete it by hand",
                        tag_dir, problems[tag])


def choose_resume_tag(run: RunDir) -> str | None:
    """Rank 0 picks the checkpoint to continue from (RunDir.resume_tag) and logs what it passed over; every
    rank gets its choice, so that all load the same one."""
    choice = [None]
    if dist.get_rank() == 0:
        tag, notes = run.resume_tag()
        for note in notes:
            log.warning("%s: %s", run.checkpoints, note)
        if tag is None and notes:
            log.warning("%s: no complete checkpoint: training starts from step 0", run.checkpoints)
        choice = [tag]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def check_shared(run: RunDir) -> None:
    """Every rank shows that it sees the ``checkpoints/`` rank 0 sees (a collective), before any checkpoint is
    read: each writes a marker named by a token rank 0 draws for this attempt; rank 0 looks for every marker
    and every rank for rank 0's. A ConfigError on every rank, naming the nodes that do not share it, otherwise.
    The markers are removed either way."""
    rank, world, host = dist.get_rank(), dist.get_world_size(), socket.gethostname()
    token = [secrets.token_hex(8) if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    mine = run.shared_marker(token[0], rank)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    mine.write_text(host + "\n", encoding="utf-8")
    dist.barrier()
    look_for = range(world) if rank == 0 else [0]
    seen = _visible([run.shared_marker(token[0], r) for r in look_for], SHARED_WAIT)
    views: list[dict] = [{}] * world
    dist.all_gather_object(views, {"host": host, "sees": [r for r, ok in zip(look_for, seen) if ok]})
    mine.unlink(missing_ok=True)  # every rank has looked: the gather is past
    apart = [r for r in range(1, world) if 0 not in views[r]["sees"] or r not in views[0]["sees"]]
    if apart:
        nodes: dict[str, list[int]] = {}
        for r in apart:
            nodes.setdefault(views[r]["host"], []).append(r)
        named = "; ".join(f"{node} ({_ranks(rs)})" for node, rs in nodes.items())
        raise ConfigError(f"output_dir: {run.checkpoints} is not one directory shared by every node: {named} and "
                          f"rank 0 on {views[0]['host']} do not see each other's files there; put output_dir on "
                          "storage every node mounts (a node-local path gives each node a directory of its own)")
    if rank == 0:  # markers of attempts that were killed while checking
        for stale in run.checkpoints.glob(f"{SHARED_MARKER_PREFIX}*"):
            if f"{SHARED_MARKER_PREFIX}{token[0]}." not in stale.name:
                stale.unlink(missing_ok=True)


def _ranks(ranks: list[int]) -> str:
    """``rank 3``, ``ranks 8-15`` (a node's ranks, as launchers number them), or ``ranks 2, 5``."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks[-1] - ranks[0] == len(ranks) - 1:
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return f"ranks {', '.join(map(str, ranks))}"


def _visible(paths: list[Path], wait: float) -> list[bool]:
    """Which of ``paths`` exist, looking again for up to ``wait`` seconds while some do not."""
    deadline = time.monotonic() + wait
    while True:
        seen = [path.exists() for path in paths]
        if all(seen) or time.monotonic() >= deadline:
            return seen
        time.sleep(0.2)
