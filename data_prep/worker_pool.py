"""The process pool that every parallel stage of a build shares (data_prep.build): workers spawned once, each in a
process group of its own with its share of the cores; on a failure or an interrupt they are killed with their
children (eflomal), so a build never waits on a worker it no longer needs. One worker runs in the build's own
process instead (``_InProcess``).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from multiprocessing import active_children, get_context
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""A build's log line, in its own process and in its workers'."""
POLL_S = 0.2
"""How often a build waiting on its workers looks for a Ctrl-C that Python dropped (``ctrl_c_noted``)."""
_interrupted = threading.Event()


@contextmanager
def ctrl_c_noted() -> Iterator[None]:
    """While ``python -m data_prep`` builds: Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and is
    noted. Python drops a KeyboardInterrupt raised inside a finalizer that the garbage collector runs ("Exception
    ignored in ... __del__"; seen in a regex object's), and the tokenizer's Rust trainer can drop it too: the build
    then ran to its end as if no Ctrl-C had come. The note raises it again at the build's next look
    (``as_completed``, at least every POLL_S while it waits on its workers); the dropped one is not printed (no
    "Exception ignored" traceback beside the build's one line). Where SIGINT is ignored (a job started with ``&``)
    or handled by someone else, or off the main thread, SIGINT is left as it is."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _interrupted.clear()
    signal.signal(signal.SIGINT, _on_interrupt)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda dropped: None if isinstance(dropped.exc_value, KeyboardInterrupt) else hook(dropped)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = hook


def _on_interrupt(signum: int, frame) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def _raise_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


def _init_worker(threads: int, log_level: int) -> None:
    # A process group of its own: a terminal's Ctrl-C reaches the build alone (a worker taking it would print
    # its traceback and leave the build waiting), and ending the worker's group ends its eflomal too.
    os.setpgrp()
    # Each worker gets its share of the cores for eflomal's OpenMP samplers and the tokenizer's threads.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)


class _InProcess(Executor):
    """An executor that runs each call as it is submitted: the one-worker build, without processes."""

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor]:
    """One pool for every parallel stage (starting workers costs seconds)."""
    if workers <= 1:
        yield _InProcess()
        return
    # spawn, not fork: the parent uses thread pools (tokenizers) that a fork would copy mid-flight.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(max(1, (os.cpu_count() or 1) // workers), logging.getLogger().level))
    try:
        yield pool
    except BaseException:
        # Interrupted, or a stage failed: the workers' running chunks are not waited for (what they leave is
        # temporary files; a chunk is marked done only once complete), and they end with their children.
        # Killed first, then shut down: the pool sees its workers gone and fails their futures itself. (Cancelling
        # the futures first makes Python 3.11's pool thread fail on them, InvalidStateError, with a traceback.)
        # A worker still starting has no group of its own yet: it is killed alone (a worker left alive blocks the
        # pool's shutdown for ever on the call queue's lock, which a killed one may have held).
        for worker in active_children():  # the pool's (the build starts no other processes)
            with suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.kill()
        pool.shutdown(wait=False)
        raise
    pool.shutdown(cancel_futures=True)


def as_completed(pending: dict[Future, Any]) -> Iterator[tuple[Any, Any]]:
    """Yields ``(pending.pop(f), f.result())`` as futures finish, including futures added to
    ``pending`` meanwhile. On an error the pool's workers are killed (``worker_pool``), which ends every call."""
    while pending:
        _raise_if_interrupted()
        done, _ = wait(list(pending), timeout=POLL_S, return_when=FIRST_COMPLETED)
        for future in [f for f in pending if f in done]:  # in submission order
            yield pending.pop(future), future.result()
