"""The run directory: the contract between training, export, the evaluator and the launcher.

    <output_dir>/config.yaml        the resolved run config (what was trained)
    <output_dir>/ds_config.json     the resolved DeepSpeed config
    <output_dir>/model/             the model's Hugging Face config, and the tokenizer
    <output_dir>/checkpoints/       DeepSpeed checkpoints, one directory per tag (step<N>), and ``latest``,
                                    which names a checkpoint only once it is complete (see COMMIT_FILE);
                                    while a job starts, its ranks' markers (``shared_marker``)
    <output_dir>/tensorboard/       TensorBoard event files
    <output_dir>/metrics.jsonl      one line per optimizer step (rank 0): losses, lr, grad norm
    <output_dir>/logs/rank<r>.log   each rank's log
    <output_dir>/slurm.sbatch       the SLURM job script (``launcher run --backend slurm``), with its output in
                                    logs/slurm-<job>.out and logs/slurm-<job>-<node>.out
    <output_dir>/export/            the Hugging Face model, once exported
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s"
"""The records of ``logs/rank<r>.log`` (logging's default time format); lines between records (a traceback)
belong to the record before."""
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) rank(?P<rank>\d+) ")
"""The start of a record in LOG_FORMAT."""

PROBE_FILE = "probe.pt"
"""In each checkpoint tag directory: input ids and the engine's MLM logits on them, to verify exports."""
COMMIT_FILE = "commit.json"
"""In each checkpoint tag directory, written last: ``{"tag", "world", "files": {name: bytes}}``, every file of
the checkpoint (all ranks' and the probe) with its size. A tag without it, or whose files differ from it,
is incomplete: a save that was killed, or a file damaged since."""
SHARED_MARKER_PREFIX = ".shared-"
"""The start of a shared-directory marker's name (RunDir.shared_marker); never a checkpoint tag."""


def checkpoint_problem(tag_dir: Path) -> str | None:
    """Why the checkpoint in ``tag_dir`` cannot be used, or None when it is complete."""
    try:
        files = json.loads((tag_dir / COMMIT_FILE).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"no {COMMIT_FILE} (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{COMMIT_FILE} is unreadable"
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was saved"
    return None


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ds_config(self) -> Path:
        return self.root / "ds_config.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def sbatch_script(self) -> Path:
        return self.root / "slurm.sbatch"

    def log(self, rank: int) -> Path:
        return self.root / "logs" / f"rank{rank}.log"

    def shared_marker(self, token: str, rank: int) -> Path:
        """The file rank ``rank`` of the job attempt ``token`` writes at its start to show that every node sees
        one ``checkpoints/`` (weam_ds.checkpoint.check_shared); removed once checked."""
        return self.checkpoints / f"{SHARED_MARKER_PREFIX}{token}.rank{rank}"

    def step_tags(self) -> list[str]:
        """The ``step<N>`` checkpoint directories, oldest first, complete or not."""
        tags = [p.name for p in self.checkpoints.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
        return sorted(tags, key=lambda t: int(t[4:]))

    def latest_tag(self, universal: bool = False) -> str | None:
        """What ``latest`` names (weam_ds commits it after a checkpoint is complete), or ``latest_universal``
        (written by DeepSpeed's ``ds_to_universal``), if that directory exists."""
        latest = self.checkpoints / ("latest_universal" if universal else "latest")
        try:
            tag = latest.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return tag if tag and (self.checkpoints / tag).is_dir() else None

    def resume_tag(self) -> tuple[str | None, list[str]]:
        """The checkpoint to continue from: the one ``latest`` names when it is complete, else the newest
        complete one. Also returns what was passed over and why, to be logged."""
        notes = []
        latest = self.checkpoints / "latest"
        named = self.latest_tag()
        if named is not None:
            problem = checkpoint_problem(self.checkpoints / named)
            if problem is None:
                return named, notes
            notes.append(f"latest names {named}, which is incomplete: {problem}")
        elif not latest.is_file():
            notes.append("latest is missing")
        else:
            text = latest.read_text(encoding="utf-8", errors="replace").strip()
            notes.append(f"latest names {text}, which does not exist" if text else "latest is empty")
        for tag in reversed([t for t in self.step_tags() if t != named]):
            problem = checkpoint_problem(self.checkpoints / tag)
            if problem is None:
                if notes:
                    notes.append(f"falling back to {tag}, the newest complete checkpoint")
                return tag, notes
            notes.append(f"{tag} is incomplete: {problem}")
        # A run whose checkpoints are gone but whose ``latest`` is not starts afresh: that must not go unsaid.
        return None, notes if self.step_tags() or latest.exists() else []
