"""What DeepSpeed would build or compile at start-up that training does not use, kept out of the launch.

DeepSpeed's C++ ops are compiled on first use (into ``~/.cache/torch_extensions``, or ``$TORCH_EXTENSIONS_DIR``).
A build holds ``<extension>/lock`` (torch's FileBaton: created exclusively, kept open while compiling, removed
when done), and every other process that wants the op waits for it to go, silently and without end. A build
killed mid-way (Ctrl-C during start-up) leaves it, and every later launch on the machine hung there. So:

- ``skip_unused_ops``: on CPU, DeepSpeed's process group compiles its shared-memory collectives
  (``deepspeed_shm_comm``), which serve only inference's all-reduce; training all-gathers and reduces through
  gloo. It is marked unavailable, as DeepSpeed does for an op this machine cannot build, and never compiled
  (by the training, and by the XTREME-R fine-tuner under DeepSpeed: the build takes about 75 s of CPU).
- ``take_over_stale_locks``: before an op training does build (DeepSpeedCPUAdam when offloading), a lock that
  no process holds open is removed, with a warning naming it. On a shared file system (NFS, Lustre, ...) a
  build on another node holds it where this node cannot see: there only a lock older than any build
  (``SHARED_LOCK_STALE_S``) is taken over.
- ``import_muon_uncompiled``: every ZeRO engine imports DeepSpeed's Muon optimizer to recognise it, and that
  module applies ``torch.compile`` to its kernels at import, which imports torch's inductor: about a second of
  CPU on every rank, for an optimizer weam_ds never builds (weam_ds.optimizer: AdamW). It is imported first
  with ``torch.compile`` as the identity.

``before_deepspeed`` does both: every process that starts DeepSpeed calls it first.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

UNUSED_ON_CPU = ("deepspeed_shm_comm",)
LOCK_SETTLE_S = 1.0
"""A finishing build closes its lock, then removes it: one seen unheld twice this far apart was left behind."""
SHARED_LOCK_STALE_S = 1800.0
SHARED_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "9p")


def before_deepspeed() -> None:
    """Before ``deepspeed.init_distributed`` (or a Trainer that starts DeepSpeed): nothing it would build or compile
    for what weam_ds never uses."""
    skip_unused_ops()
    import_muon_uncompiled()


def skip_unused_ops() -> None:
    """Before ``deepspeed.init_distributed``: on CPU, the ops in UNUSED_ON_CPU are never built."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__.update(dict.fromkeys(UNUSED_ON_CPU, False))


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def import_muon_uncompiled() -> None:
    """Before ``deepspeed.initialize``: DeepSpeed's Muon optimizer module imported with its kernels left as plain
    Python (never called: weam_ds trains with AdamW), so that no rank pays torch's inductor import for it."""
    if MUON_MODULE in sys.modules:
        return
    compile_ = torch.compile
    torch.compile = _uncompiled
    try:
        importlib.import_module(MUON_MODULE)
    except ImportError:
        pass  # a DeepSpeed without Muon: nothing to import
    finally:
        torch.compile = compile_


def _uncompiled(model=None, **_):
    """``torch.compile``'s signature, compiling nothing: ``@torch.compile`` and ``@torch.compile(...)`` leave
    the function as it is."""
    return model if model is not None else _uncompiled


def _extension_roots() -> list[Path]:
    """Where torch builds extensions: ``$TORCH_EXTENSIONS_DIR``, else one folder per Python and accelerator
    under the default root."""
    from torch.utils.cpp_extension import get_default_build_root

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return [Path(os.environ["TORCH_EXTENSIONS_DIR"])]
    return [p for p in Path(get_default_build_root()).glob("*") if p.is_dir()]


def _held(paths: set[Path]) -> set[Path]:
    """Those of ``paths`` that some process on this machine has open (its /proc fds, as far as visible)."""
    held = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = Path(os.readlink(fd))
                if target in paths:
                    held.add(target)
        except OSError:  # a process that ended meanwhile, or another user's
            continue
    return held


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (/proc/mounts' longest mount point above it)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fs_type, *_ = line.split()
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fs_type
    return kind


def _may_be_held_elsewhere(lock: Path) -> bool:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:  # its build just finished
        return True
    return _file_system(lock) in SHARED_FILE_SYSTEMS and age < SHARED_LOCK_STALE_S


def _unheld_locks() -> set[Path]:
    locks = {lock.resolve() for root in _extension_roots() for lock in root.glob("*/lock")}
    locks = {lock for lock in locks if not _may_be_held_elsewhere(lock)}
    return locks - _held(locks) if locks else set()


def take_over_stale_locks() -> None:
    """Removes the extension build locks that their builds left behind (see the module docstring)."""
    if not Path("/proc/self/fd").is_dir():
        return  # no way to tell a left lock from a build in progress: leave them to torch
    stale = _unheld_locks()
    if stale:
        time.sleep(LOCK_SETTLE_S)
        stale &= _unheld_locks()
    for lock in sorted(stale):
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        log.warning("%s: a build lock no process holds (a build was killed): removed, so the op can be built",
                    lock)
