"""The run directory: the contract between training, export, the evaluator and the launcher.

    <output_dir>/config.yaml        the resolved run config (what was trained)
    <output_dir>/ds_config.json     the resolved DeepSpeed config
    <output_dir>/model/             the model's Hugging Face config, and the tokenizer
    <output_dir>/checkpoints/       DeepSpeed checkpoints, one directory per tag (step<N>), and ``latest``
    <output_dir>/tensorboard/       TensorBoard event files
    <output_dir>/metrics.jsonl      one line per optimizer step (rank 0): losses, lr, grad norm
    <output_dir>/logs/rank<r>.log   each rank's log
    <output_dir>/export/            the Hugging Face model, once exported
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROBE_FILE = "probe.pt"
"""In each checkpoint tag directory: input ids and the engine's MLM logits on them, to verify exports."""


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

    def log(self, rank: int) -> Path:
        return self.root / "logs" / f"rank{rank}.log"

    def latest_tag(self, universal: bool = False) -> str | None:
        """The newest complete checkpoint (DeepSpeed writes ``latest`` after a checkpoint is saved), or the
        newest universal one (``ds_to_universal`` writes ``latest_universal``)."""
        latest = self.checkpoints / ("latest_universal" if universal else "latest")
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        return tag if (self.checkpoints / tag).is_dir() else None
