"""Writing a file so that a reader sees the old content or the new, never a part: every stage's markers,
manifests and results go through here (the first stage owns it, so every later one may import it)."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8), through a synced temporary file beside it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
