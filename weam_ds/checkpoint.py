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
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from data_prep.files import write_atomically
from weam_ds.run_dir import COMMIT_FILE, PROBE_FILE, RunDir, checkpoint_problem

log = logging.getLogger(__name__)


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
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state=client_state, save_latest=False)
    tag_dir = checkpoints / tag
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
        write_atomically(tag_dir / COMMIT_FILE, json.dumps(record, indent=1) + "\n")
        write_atomically(checkpoints / "latest", tag)
        _prune(run, keep)
    dist.barrier()


def _prune(run: RunDir, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; delete the rest, and incomplete ones left by a kill."""
    complete = [t for t in run.step_tags() if checkpoint_problem(run.checkpoints / t) is None]
    kept = set(complete[-keep:])
    for tag in run.step_tags():
        if tag not in kept:
            shutil.rmtree(run.checkpoints / tag, ignore_errors=True)


def choose_resume_tag(run: RunDir) -> str | None:
    """Rank 0 picks the checkpoint to continue from (RunDir.resume_tag) and logs what it passed over; every
    rank gets its choice, so that all load the same one."""
    choice = [None]
    if dist.get_rank() == 0:
        tag, notes = run.resume_tag()
        for note in notes:
            log.warning("%s: %s", run.checkpoints, note)
        choice = [tag]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]
