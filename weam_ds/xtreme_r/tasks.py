"""One description per benchmark task: what it is (family, languages per version, files, metrics) and the
official protocol it is fine-tuned under (selection rule, the script the values come from, the recipe).

The scorer (``score.py``), the readers (``readers.check_layout``) and ``run`` dispatch on a task's
``family`` and read its fields; adding or fixing a task touches this registry and its recipe file. Languages
and categories are the official scorer's (see ../shared/xtreme_r_spec.md).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from data_prep.typed_config import ConfigError

Family = Literal["classification", "multiple_choice", "tagging", "qa", "retrieval", "dual_encoder"]
"""How a task is fine-tuned and predicted: sentence-pair classification, multiple choice, word tagging,
extractive QA, sentence retrieval without fine-tuning (Tatoeba; BUCC is scored but not run), and retrieval
with a fine-tuned dual encoder (Mewsli-X, LAReQA)."""

_PANX = ("ar he vi id jv ms tl eu ml ta te af nl en de el bn hi mr ur fa fr it pt es bg ru ja ka ko th sw yo my zh kk "
         "tr et fi hu qu pl uk az lt pa gu ro").split()
_UDPOS = ("af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur vi yo zh lt pl uk "
          "wo ro").split()
_TATOEBA = ("ar he vi id jv tl eu ml ta te af nl de el bn hi mr ur fa fr it pt es bg ru ja ka ko th sw zh kk tr et fi "
            "hu az lt pl uk ro").split()
_XNLI = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
_XQUAD = "en es de el ru tr ar vi th zh hi ro".split()
_MLQA = "en es de ar hi vi zh".split()
_TYDIQA = "en ar bn fi id ko ru sw te".split()
# XQuAD-R's languages (google-research-datasets/lareqa): what weam-ds runs LAReQA on, per question language,
# against the pool of all of them. The official scorer lists none.
LAREQA_LANGUAGES = "ar de el en es hi ru th tr vi zh".split()


def besides_english(languages: Iterable[str]) -> list[str]:
    """``languages`` without English, in their order. Every task fine-tunes on English, so these are the languages
    reached by cross-lingual transfer (the transfer gap is English minus their mean); for a study's pre-training
    pairs (``de-en``), the languages a cell adds to English."""
    return [lang for lang in languages if lang != "en"]


@dataclass(frozen=True)
class EverySteps:
    """Evaluate on the English dev set every ``every_steps`` optimizer steps and keep the best (the official
    scripts' ``--save_steps`` with ``--save_only_best_checkpoint`` or a checkpoint chosen on dev)."""
    every_steps: int

    def __post_init__(self):
        if self.every_steps < 1:
            raise ConfigError(f"selection.every_steps: {self.every_steps} (expected at least 1)")


Selection = EverySteps | Literal["last"]
"""The checkpoint kept: the best on English dev at a step cadence, or the last weights."""


@dataclass(frozen=True)
class Task:
    name: str
    family: Family
    languages: dict[str, list[str]]
    """Per benchmark version (``xtreme``, ``xtreme-r``), the official scorer's languages, in its order."""
    scorer: str
    """The scorer's entry for this task's files and metric (``score.SCORERS``)."""
    suffix: str
    """Of the prediction and label files, ``test-<lang>.<suffix>``."""
    metrics: tuple[str, ...]
    """The metrics whose language averages make ``avg_metric`` (their mean): (exact_match, f1) for QA."""
    main_metric: str
    """The per-language metric run reports means, spreads and transfer gaps of."""
    selection: Selection | None = None
    """The official checkpoint rule; None: nothing is fine-tuned (or the task is not run)."""
    script: str | None = None
    """The official script the protocol values come from (google-research/xtreme ``scripts/``)."""
    files: dict[str, str] = field(default_factory=dict)
    """Where the task's data sits in the download, as templates relative to it (``{lang}`` per language); a
    role with several places lists them separated by ``|``, the first that exists is read."""
    run_languages: list[str] | None = None
    """The languages ``run`` predicts when they differ from the scorer's (LAReQA: XQuAD-R's)."""
    test_split: str = "test"
    """The split the ``test`` files are (TyDiQA-GoldP publishes no test set: its dev sets are scored)."""

    @property
    def runnable(self) -> bool:
        return self.script is not None

    @property
    def avg_metric_is(self) -> str:
        """What ``avg_metric`` is, in words for results and the command line."""
        return self.metrics[0] if len(self.metrics) == 1 else f"({' + '.join(self.metrics)}) / {len(self.metrics)}"

    def languages_to_run(self) -> list[str]:
        return self.run_languages or self.languages.get("xtreme-r") or self.languages["xtreme"]


_SQUAD = {"train": "squad/train-v1.1.json", "dev": "squad/dev-v1.1.json"}
_TYDIQA_DEV = ("tydiqa/tydiqa-goldp-v1.1-dev/tydiqa.goldp.{lang}.dev.json|"
               "tydiqa/tydiqa-goldp-v1.1-train/tydiqa.goldp.{lang}.dev.json|tydiqa/tydiqa.goldp.{lang}.dev.json")


def _split_tsv(task: str) -> dict[str, str]:
    return {split: f"{task}/{split}-{{lang}}.tsv" for split in ("train", "dev", "test")}


def _pairs(name: str, languages: dict[str, list[str]], every: int, script: str) -> Task:
    return Task(name, "classification", languages, "accuracy", "tsv", ("accuracy",), "accuracy", EverySteps(every),
                script, _split_tsv(name))


def _tags(name: str, languages: dict[str, list[str]], every: int, script: str) -> Task:
    return Task(name, "tagging", languages, "tags", "tsv", ("f1",), "f1", EverySteps(every), script, _split_tsv(name))


def _qa(name: str, languages: dict[str, list[str]], scorer: str, files: dict[str, str], test_split="test") -> Task:
    return Task(name, "qa", languages, scorer, "json", ("exact_match", "f1"), "f1", "last", "train_qa.sh", files,
                test_split=test_split)


TASKS: dict[str, Task] = {t.name: t for t in (
    _pairs("xnli", {"xtreme": _XNLI, "xtreme-r": _XNLI}, 100, "train_xnli.sh"),
    _pairs("pawsx", {"xtreme": "de en es fr ja ko zh".split()}, 200, "train_pawsx.sh"),
    Task("xcopa", "multiple_choice", {"xtreme-r": "et ht id it qu sw ta th tr vi zh".split()}, "xcopa", "jsonl",
         ("accuracy",), "accuracy", "last", "train_xcopa.sh",
         {"train": "xcopa/train-{lang}.jsonl", "dev": "xcopa/val-{lang}.jsonl", "test": "xcopa/test-{lang}.jsonl"}),
    _tags("udpos", {"xtreme": _UDPOS[:_UDPOS.index("zh") + 1], "xtreme-r": _UDPOS}, 500, "train_udpos.sh"),
    _tags("panx", {"xtreme": _PANX[:_PANX.index("hu") + 1], "xtreme-r": _PANX}, 1000, "train_panx.sh"),
    _qa("xquad", {"xtreme": _XQUAD[:-1], "xtreme-r": _XQUAD}, "squad", {**_SQUAD, "test": "xquad/xquad.{lang}.json"}),
    _qa("mlqa", {"xtreme": _MLQA, "xtreme-r": _MLQA}, "mlqa",
        {**_SQUAD, "test": "mlqa/MLQA_V1/test/test-context-{lang}-question-{lang}.json",
         "labelled_dev": "mlqa/MLQA_V1/dev/dev-context-{lang}-question-{lang}.json"}),
    _qa("tydiqa", {"xtreme": _TYDIQA, "xtreme-r": _TYDIQA}, "squad",
        {"train": "tydiqa/tydiqa-goldp-v1.1-train/tydiqa.goldp.en.train.json", "dev": _TYDIQA_DEV.replace(
            "{lang}", "en"), "test": _TYDIQA_DEV}, test_split="dev"),
    Task("bucc2018", "retrieval", {"xtreme": "de fr ru zh".split()}, "bucc", "tsv", ("f1",), "f1"),
    Task("tatoeba", "retrieval", {"xtreme": _TATOEBA[:_TATOEBA.index("hu") + 1], "xtreme-r": _TATOEBA}, "accuracy",
         "tsv", ("accuracy",), "accuracy", None, "run_tatoeba.sh",
         {"source": "tatoeba/{lang}-en.{lang}", "english": "tatoeba/{lang}-en.en"}),
    Task("mewslix", "dual_encoder", {"xtreme-r": "ar de en es fa ja pl ro ta tr uk".split()}, "mewslix", "json",
         ("map@20",), "map@20", "last", "train_mewslix.sh",
         {"candidates": "mewslix/candidate_set_entities.jsonl", "train": "mewslix/wikipedia_pairs-train.jsonl",
          "dev": "mewslix/wikipedia_pairs-dev.jsonl"}),
    Task("lareqa", "dual_encoder", {"xtreme-r": []}, "lareqa", "json", ("map@20",), "map@20", EverySteps(1000),
         "train_lareqa.sh", {**_SQUAD, "test": "lareqa/xquad-r/{lang}.json"}, LAREQA_LANGUAGES),
)}

VERSIONS: dict[str, list[str]] = {
    "xtreme": ["pawsx", "xnli", "panx", "udpos", "bucc2018", "tatoeba", "xquad", "mlqa", "tydiqa"],
    "xtreme-r": ["xnli", "panx", "udpos", "tatoeba", "xcopa", "lareqa", "mewslix", "xquad", "mlqa", "tydiqa"],
}
"""Each version's tasks in the official scorer's order (evaluate.py's XTREME_TASK2LANGS, XTREME_R_TASK2LANGS)."""

LANGUAGES: dict[str, dict[str, list[str]]] = {
    version: {name: TASKS[name].languages[version] for name in names} for version, names in VERSIONS.items()}

CATEGORIES: dict[str, dict[str, list[str]]] = {
    "xtreme": {"classification": ["pawsx", "xnli"], "tagging": ["udpos", "panx"], "qa": ["xquad", "mlqa", "tydiqa"],
               "retrieval": ["bucc2018", "tatoeba"]},
    "xtreme-r": {"classification": ["xnli", "xcopa"], "tagging": ["udpos", "panx"], "qa": ["xquad", "mlqa", "tydiqa"],
                 "retrieval": ["tatoeba", "mewslix"], "multi_choice": ["xcopa"]},
}


def of_family(*families: str) -> tuple[str, ...]:
    """The names of the tasks of these families, in registry order."""
    return tuple(name for name, task in TASKS.items() if task.family in families)


QA_TASKS = of_family("qa")


def suffix(task: str) -> str:
    return TASKS[task].suffix
