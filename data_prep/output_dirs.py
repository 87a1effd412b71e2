"""Output directories: a command deletes, replaces or adds to only what it wrote itself.

Every command that writes a directory (data_prep's dataset, weam_ds.export's model, weam_ds.report's report,
the evaluator's folders) leaves a marker file in it that names the command. An existing directory is then

- absent or empty: written;
- marked by the same command: resumed (``claim``: the commands that skip what they finished) or, with
  ``--force``, replaced (``replacing``: the commands that write the whole directory each time);
- anything else (the working directory, a run directory, a dataset, a checkpoint folder, another command's
  output, the user's files): refused, with a one-line error that names it and says what to do instead.

A replacement is built in a temporary sibling and moved into place once complete, so an interrupted command
leaves the old directory or the new one, never a half-written one that looks complete. (The first stage owns
this rule so that every later one may import it.)
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data_prep.files import write_atomically
from data_prep.typed_config import ConfigError

MARKER = ".written_by"
"""In every output directory: the name of the command that wrote it."""


class OutputDirError(ConfigError):
    """The output directory named by an argument or config key may not be written by this command."""


def claim(out: Path, command: str, earlier: str | None = None) -> None:
    """Make ``out`` this command's directory to add to: created and marked, or already marked by it.
    ``earlier``: a file that names the command's outputs from before the markers (data_prep's manifest)."""
    _check(out, command, force=False, resumable=True, earlier=earlier)
    out.mkdir(parents=True, exist_ok=True)
    if written_by(out) is None:
        write_atomically(out / MARKER, command + "\n")


@contextmanager
def replacing(out: Path, command: str, force: bool) -> Iterator[Path]:
    """A fresh temporary directory beside ``out`` to write into; when the block completes it becomes ``out``
    (marked as ``command``'s), replacing an earlier output of ``command`` only with ``force``. Checked on entry,
    before any work; on an error nothing of it is left."""
    _check(out, command, force, resumable=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text(command + "\n", encoding="utf-8")
        if out.exists():
            # Moved aside, not removed in place: until the new one is in, the old one is whole.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def written_by(directory: Path) -> str | None:
    """The command whose marker ``directory`` carries, or None."""
    try:
        return (directory / MARKER).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _check(out: Path, command: str, force: bool, resumable: bool, earlier: str | None = None) -> None:
    where = out.resolve()
    if where == Path.cwd() or where in Path.cwd().parents:
        raise OutputDirError(f"{out}: is the working directory{'' if where == Path.cwd() else ' or holds it'}; "
                             f"{command} writes a directory of its own: name a new one")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{out}: a file, not a directory; name a new directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    owner = written_by(out) or (command if earlier is not None and (out / earlier).is_file() else None)
    if owner != command:
        what = f"written by {owner}" if owner else f"not written by {command}"
        raise OutputDirError(f"{out}: exists and is {what}; {command} never replaces nor adds to such a directory: "
                             "name a new one (or an empty one)")
    if not resumable and not force:
        raise OutputDirError(f"{out}: holds an earlier output of {command}; pass --force to replace it, "
                             "or name a new directory")
