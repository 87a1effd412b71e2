"""Writing a file so that a reader sees the old content or the new, never a part: every stage's markers,
manifests and results go through here (the first stage owns it, so every later one may import it)."""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

NEARLY_FULL_BYTES = 16 << 20
"""A write that failed without saying why, on a file system with less than this free, failed for space."""
_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8), through a synced temporary file beside it."""
    # The writer's own temporary file: processes on several hosts may write the same file at once (the jobs of a
    # study's evaluation each write a task's labels), and one must never rename another's half-written file.
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_failure(exc: BaseException, path: Path) -> str | None:
    """One line for a write under ``path`` that failed for space or permission (naming the file and the
    cause), or None for any other failure. Some writers report a full disk without an errno (torch.save's zip
    writer: "unexpected pos"), so a nearly full file system after the failure counts as the cause."""
    cause = _CAUSES.get(getattr(exc, "errno", None))
    where = getattr(exc, "filename", None) or path
    if cause is None and os.strerror(errno.ENOSPC) in str(exc):  # safetensors: "I/O error: No space left on device"
        cause = _CAUSES[errno.ENOSPC]
    if cause is None and isinstance(exc, (OSError, RuntimeError)):
        free = _free_bytes(Path(path))
        if free is not None and free < NEARLY_FULL_BYTES:
            cause = f"no space left on the device: {free:,} bytes free"
    return f"{where}: cannot write ({cause})" if cause else None


def _free_bytes(path: Path) -> int | None:
    """Free bytes (for unprivileged users) on the file system that holds ``path`` or its nearest ancestor."""
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None
