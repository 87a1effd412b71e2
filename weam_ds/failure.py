"""How a failing training job ends: promptly, on every rank, with its reason.

An exception on one rank used to leave the job running: the failing process waited at exit for its
DataLoader workers (which ignore SIGTERM, so that preemption can checkpoint) and its peers waited in their
next collective. Now:

- ``end_rank``: a rank that fails tells the others through the process group's store, writes torchelastic's
  error file (torchrun's summary then shows the reason), logs the traceback to its own log, prints one line
  (once per job), kills its DataLoader workers and leaves with ``os._exit``, so that neither interpreter
  shutdown nor a collective that will never complete can hold it. The whole path is cut off after
  ``train.failure_timeout`` seconds.
- ``FailureWatch``: a thread on every rank that polls the store and ends its rank when a peer has failed,
  even while the main thread is blocked in a collective; so every rank ends within ``failure_timeout``.
- A rank killed outright tells nobody: its peers' collectives then fail (gloo sees the closed connection at
  once; NCCL at ``train.collective_timeout``), and torchrun or the DeepSpeed runner tear down the rest.
"""
from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import NoReturn

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
FILE_ONLY = {"file_only": True}
"""``extra=`` for log records that belong in the rank's log file but not on the console (tracebacks)."""


def _keys() -> tuple[str, str]:
    # torchrun keeps its store across elastic restarts: a restarted job must not see the last one's failure.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"weam_ds/failed/{attempt}", f"weam_ds/failures/{attempt}"


def _store():
    """The store every rank of the process group already reaches (torchrun's, or rank 0's TCPStore)."""
    import torch.distributed as dist  # here: the launcher imports this module for end_with_parent, without torch

    if dist.is_available() and dist.is_initialized():
        return dist.distributed_c10d._get_default_store()
    return None


def end_with_parent() -> None:
    """This process gets SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing). A rank
    whose torchrun agent or DeepSpeed runner was killed outright then checkpoints with its peers and stops,
    instead of outliving it unsupervised (or waiting out the rendezvous timeout when it was still starting)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def env_rank() -> int:
    """This process's rank as the launcher set it, before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def describe(exc: BaseException) -> str:
    """One line: the exception's type and message. The DataLoader re-raises a worker's exception with the
    worker's traceback as its message, whose last line is the original ``module.Type: message``."""
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and ": " in lines[-1]:
        kind, message = lines[-1].split(": ", 1)
        return f"{kind.rsplit('.', 1)[-1]}: {message}"
    return f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"


def record_for_torchrun(message: str) -> None:
    """torchelastic's error file: torchrun prints its message as the failure's root cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"message": message, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def _announce(message: str, wait: float) -> tuple[str, bool] | None:
    """Tells the peers. Returns the failure that came first in the job and whether it is this rank's, or None
    when the store could not be reached within ``wait`` seconds."""
    store = _store()
    if store is None:
        return None
    failed, count = _keys()
    first: list[tuple[str, bool]] = []

    def tell():
        if store.add(count, 1) == 1:
            store.set(failed, message)
            first.append((message, True))
        else:
            first.append((store.get(failed).decode("utf-8", "replace"), False))

    thread = threading.Thread(target=tell, daemon=True)  # a store whose host died would block
    thread.start()
    thread.join(wait)
    return first[0] if first else None


def _leave(code: int) -> NoReturn:
    for child in multiprocessing.active_children():  # DataLoader workers: they ignore SIGTERM
        child.kill()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def end_rank(message: str, code: int, traceback_text: str | None, timeout: float, prog: str) -> NoReturn:
    """This rank failed: tell the peers, say why (console once per job, the traceback to the rank log), exit."""
    threading.Timer(timeout, os._exit, (code,)).start()  # whatever hangs below, the rank still ends
    if traceback_text:
        log.error("%s", traceback_text.rstrip(), extra=FILE_ONLY)
    announced = _announce(message, wait=min(5.0, timeout / 4))
    record_for_torchrun(message)
    if announced is None:  # no store: every rank says its own failure, a bad input (the same on all) rank 0
        if code != EXIT_BAD_INPUT or env_rank() == 0:
            print(f"{prog}: error: {message}", file=sys.stderr)
    elif announced[1]:  # the job's first failure says why, on whichever rank: rank 0 may be stopped first
        print(f"{prog}: error: {message}", file=sys.stderr)
    elif announced[0] != message:  # the job failed before, elsewhere: that rank has said so
        log.error("%s; it failed first: %s", message, announced[0], extra=FILE_ONLY)
    if env_rank() == 0:
        _await_peers(wait=min(10.0, timeout / 2))
    _leave(code)


def _await_peers(wait: float) -> None:
    """Rank 0 may host the job's store (the launcher gives each torchrun attempt a store of its own, in rank 0;
    DeepSpeed's runner too): it stays until every rank has announced its failure or acknowledged the job's
    (FailureWatch), at most ``wait`` seconds. Leaving at once took the store away from a peer failing at the same
    moment, which then printed its own failure: the reason twice."""
    store = _store()
    if store is None:
        return
    _, count = _keys()
    world, deadline = int(os.environ.get("WORLD_SIZE", "1")), time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if store.add(count, 0) >= world:
                return
        except Exception:  # noqa: BLE001 - the store is gone (hosted elsewhere): nobody to wait for
            return
        time.sleep(0.05)


class FailureWatch(threading.Thread):
    """Ends this rank within ``interval`` seconds of a peer's failure (see the module docstring)."""

    def __init__(self, interval: float):
        super().__init__(name="weam_ds-failure-watch", daemon=True)
        self.interval = interval
        self._done = threading.Event()

    def run(self) -> None:
        store, (failed, _) = _store(), _keys()
        if store is None:
            return
        misses = 0
        while not self._done.wait(self.interval):
            try:
                if store.check([failed]):
                    reason = store.get(failed).decode("utf-8", "replace")
                    break
                misses = 0
            except Exception as exc:  # noqa: BLE001 - any store error: its host may be gone
                misses += 1
                if misses >= 3:
                    reason = f"lost the job's store ({type(exc).__name__}): its host (rank 0 or the launcher) is gone"
                    break
        else:
            return
        log.error("ending this rank: %s", reason)
        try:
            store.add(_keys()[1], 1)  # acknowledged: rank 0 waits for every rank before it takes the store away
        except Exception:  # noqa: BLE001 - its host is gone
            pass
        _leave(EXIT_FAILED)

    def stop(self) -> None:
        """The job ends normally from here (its last collectives follow): stop watching. Idempotent."""
        self._done.set()
        if self.is_alive():
            self.join()
