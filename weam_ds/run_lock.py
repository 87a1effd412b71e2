"""One writer per run directory: training, and an export or evaluation that writes inside a run directory, hold
its lock while they write, and a second one is refused at once, naming the holder's host and pid.

The lock is the kernel's ``flock`` on ``<run>/.run.lock``, held for the writer's life: a writer that dies, even
killed outright, releases it, so a lock left by a dead process is simply taken over (logged, naming it). The
file also holds the holder's host, pid and command, for the refusal's message; a clean release empties it.

Across nodes flock holds where the file system carries it: NFS (Linux sends flock to the server as a lock on
the whole file), Lustre mounted with ``-o flock``, GPFS, BeeGFS. Where flock is refused outright (Lustre
without it: ENOSYS/EOPNOTSUPP), the file's contents decide: a holder recorded on this host whose pid is alive,
or on another host (which cannot be asked), refuses the run, and the message says to delete the file if that
holder is gone. Lustre's ``-o localflock`` makes flock node-local without saying so; nothing here detects it.
Multi-node training takes the lock on rank 0 only and tells every rank the outcome, so all refuse together.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO

from data_prep.typed_config import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
"""In the run directory (training creates it before anything else there)."""


class RunDirBusy(ConfigError):
    """Another process is writing the run directory."""


def acquire(run_root: Path, command: str) -> IO[str]:
    """The run's lock, held until the returned file is closed (``release``); RunDirBusy if another holds it."""
    run_root.mkdir(parents=True, exist_ok=True)
    lock = open(run_root / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shared = True
    except BlockingIOError:
        holder = _holder(lock)
        lock.close()
        raise RunDirBusy(f"{run_root}: {_describe(holder)} is writing this run directory; wait for it to end, "
                         "or use another directory") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
            lock.close()
            raise
        log.warning("%s: the file system refuses flock; the lock file's contents alone keep a second writer out",
                    lock.name)
        shared = False
    holder = _holder(lock)
    if holder and not shared and (holder.get("host") != socket.gethostname() or _alive(holder.get("pid"))):
        lock.close()
        raise RunDirBusy(f"{run_root}: {_describe(holder)} is writing this run directory (flock is unavailable "
                         f"here: if it has ended, delete {run_root / LOCK_FILE})")
    if holder:
        log.warning("%s: taking over the lock left by %s, which no longer holds it", run_root, _describe(holder))
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    lock.flush()
    # A forked child (a DataLoader worker) shares the lock; one outliving a killed holder would keep it held.
    os.register_at_fork(after_in_child=lock.close)
    return lock


def release(lock: IO[str]) -> None:
    """Empties the holder record (a clean end leaves nothing to take over), then lets the lock go."""
    if lock.closed:
        return
    lock.seek(0)
    lock.truncate()
    lock.close()


@contextmanager
def holding(run_root: Path, command: str) -> Iterator[None]:
    lock = acquire(run_root, command)
    try:
        yield
    finally:
        release(lock)


def enclosing_run(path: Path) -> Path | None:
    """The run directory that ``path`` is or lies in (the nearest one with a lock file), or None."""
    path = path.resolve()
    return next((p for p in (path, *path.parents) if (p / LOCK_FILE).is_file()), None)


def holding_enclosing(path: Path, command: str):
    """The lock of the run directory that ``path`` is or lies in, held for a ``with`` block; nothing otherwise."""
    run_root = enclosing_run(path)
    return nullcontext() if run_root is None else holding(run_root, command)


def hold_for_training(run_root: Path, rank: int) -> IO[str] | None:
    """Rank 0 takes the run's lock for the training's life (returned: keep it); every rank learns the outcome
    from rank 0, so that a refused run ends on all of them with rank 0's reason."""
    import torch.distributed as dist

    lock, refusal = None, None
    if rank == 0:
        try:
            lock = acquire(run_root, "weam_ds.train")
        except RunDirBusy as exc:
            refusal = str(exc)
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)  # from rank 0 of this job: a peer, not untrusted input
        refusal = shared[0]
    if refusal is not None:
        raise RunDirBusy(refusal)
    if lock is not None:
        atexit.register(release, lock)  # a clean end empties the record; a crash leaves it to be taken over
    return lock


def _holder(lock: IO[str]) -> dict:
    lock.seek(0)
    try:
        holder = json.loads(lock.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"{holder.get('command', 'a process')} (pid {holder.get('pid')} on host {holder.get('host')}, "
            f"since {holder.get('since')})")


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
