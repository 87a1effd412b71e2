"""weam_ds.xtreme_r's output folders: the contract between the evaluator, which writes them, and the launcher's
study, which reads the scores and the per-example outcomes back. Every module asks these values for a path;
none rebuilds one (as weam_ds.run_dir does for a run directory).

``python -m weam_ds.xtreme_r run --out <out>`` (``EvalDir``):

    <out>/results.json                     the run's aggregate over seeds and tasks (aggregate.py), written by
                                           the unit that finishes the run
    <out>/<task>/seed<k>/result.json       the seed's recipe, protocol, selection and scores; written last, it
                                           marks the seed done
    <out>/<task>/seed<k>/predictions/      its predictions, in the benchmark's layout (``official_file``)
    <out>/<task>/seed<k>/checkpoints/      its fine-tuning checkpoints while it runs
    <out>/tatoeba/seed<k>/xx2en/           Tatoeba's other direction: predictions/ and labels/ (``ScoredDir``)
    <out>/labels/<split>/                  the gold labels of the split scored, in the benchmark's layout (the
                                           same for every seed)
    <out>/squad/seed<k>/                   the seed's English-SQuAD model, which XQuAD, MLQA and Tatoeba share
                                           (weam_ds.xtreme_r.qa.train_squad says what it holds)

``python -m weam_ds.xtreme_r tatoeba --out <out>`` (``RetrievalDir``): per direction, ``<out>/tatoeba-en2xx``
(the official one) and ``<out>/tatoeba-xx2en``, each a ``ScoredDir``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weam_ds.xtreme_r.tasks import suffix


def official_file(folder: Path, task: str, lang: str) -> Path:
    """A language's predictions or labels in the benchmark's layout, which the official scorer reads and the
    leaderboard takes: ``<folder>/<task>/test-<lang>.<suffix>``, whatever the split."""
    return folder / task / f"test-{lang}.{suffix(task)}"


@dataclass(frozen=True)
class ScoredDir:
    """A folder of predictions and labels side by side, each in the benchmark's layout, and (where the
    command scores them apart) the official scorer's scores.json of them."""

    root: Path

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    def prediction(self, task: str, lang: str) -> Path:
        return official_file(self.predictions, task, lang)

    def label(self, task: str, lang: str) -> Path:
        return official_file(self.labels, task, lang)


@dataclass(frozen=True)
class EvalDir:
    """The output folder of ``weam_ds.xtreme_r run`` (the module's docstring draws it)."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    def seed(self, task: str, seed: int) -> Path:
        """A task's fine-tuning seed: its result, predictions and checkpoints."""
        return self.root / task / f"seed{seed}"

    def result(self, task: str, seed: int) -> Path:
        return self.seed(task, seed) / "result.json"

    def checkpoints(self, task: str, seed: int) -> Path:
        return self.seed(task, seed) / "checkpoints"

    def predictions(self, task: str, seed: int) -> Path:
        """The seed's predictions folder, as the official scorer reads it (one subfolder per task)."""
        return self.seed(task, seed) / "predictions"

    def prediction(self, task: str, seed: int, lang: str) -> Path:
        return official_file(self.predictions(task, seed), task, lang)

    def direction(self, task: str, seed: int, direction: str) -> ScoredDir:
        """A retrieval seed's other direction, scored apart from the official one."""
        return ScoredDir(self.seed(task, seed) / direction)

    def labels(self, split: str) -> Path:
        """The gold labels of ``split``, as the official scorer reads them (one subfolder per task)."""
        return self.root / "labels" / split

    def label(self, split: str, task: str, lang: str) -> Path:
        return official_file(self.labels(split), task, lang)

    def squad(self, seed: int) -> Path:
        """The seed's English-SQuAD model's folder."""
        return self.root / "squad" / f"seed{seed}"


@dataclass(frozen=True)
class RetrievalDir:
    """The output folder of ``weam_ds.xtreme_r tatoeba``: retrieval on a dataset's test pairs."""

    root: Path

    def direction(self, direction: str) -> ScoredDir:
        return ScoredDir(self.root / f"tatoeba-{direction}")
