"""The data_prep config tree (``prep.yaml``), validated before any work starts."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import PrepError
from data_prep.readers import MONOLINGUAL_FORMATS, PARALLEL_FORMATS, READERS, TEXT_FORMATS, Source, encoding_problem
from data_prep.symmetrize import SYMMETRIZERS
# Importing data_prep.tabular registers its readers (parquet, jsonl, arrow): every source is checked here first.
from data_prep.tabular import TABULAR_FORMATS, arrow_data_files, column_problem
from data_prep.typed_config import ConfigError, from_dict, load_yaml, to_dict


@dataclass
class TokenizerTraining:
    vocab_size: int = 8000
    """Size of the trained SentencePiece-style unigram vocabulary, special tokens included."""
    max_sentences_per_pair: int = 1_000_000
    """Training text cap: a random sample of at most this many train pairs per language pair."""

    def __post_init__(self):
        if self.vocab_size < 64:
            raise ConfigError("vocab_size: must be at least 64")
        if self.max_sentences_per_pair < 1:
            raise ConfigError("max_sentences_per_pair: must be positive")


@dataclass
class TokenizerConfig:
    """Exactly one of ``train`` (a new tokenizer on the corpus) or ``path`` (a local HF tokenizer)."""
    train: TokenizerTraining | None = None
    path: str | None = None

    def __post_init__(self):
        if (self.train is None) == (self.path is None):
            raise ConfigError("train/path: give exactly one of 'train' (a new tokenizer) or 'path' (an existing one)")
        if self.path is not None and not Path(self.path).is_dir():
            raise ConfigError(f"path: tokenizer directory not found: {self.path}")


@dataclass
class AlignerConfig:
    method: str = "eflomal"
    """Only eflomal is supported: a Bayesian HMM+fertility aligner, fast and accurate."""
    symmetrize: str = "grow-diag-final-and"
    """How forward and reverse links are combined: intersection, union or grow-diag-final-and."""
    model: int = 3
    """eflomal model: 1 = IBM1, 2 = +HMM, 3 = +fertility."""
    samplers: int = 3
    """Independent Gibbs samplers whose counts eflomal averages (more = steadier, slower)."""

    def __post_init__(self):
        if self.method != "eflomal":
            raise ConfigError(f"method: unknown aligner {self.method!r} (supported: eflomal)")
        if self.symmetrize not in SYMMETRIZERS:
            raise ConfigError(f"symmetrize: unknown heuristic {self.symmetrize!r} "
                              f"(known: {', '.join(SYMMETRIZERS)})")
        if self.model not in (1, 2, 3):
            raise ConfigError("model: must be 1, 2 or 3")
        if self.samplers < 1:
            raise ConfigError("samplers: must be positive")


@dataclass
class CleaningConfig:
    normalization: str = "NFKC"
    """Unicode normal form applied to both sides before anything else."""
    min_words: int = 1
    max_words: int = 200
    """Per-side length bounds in words (characters for scripts written without spaces)."""
    max_length_ratio: float = 9.0
    """Longer side / shorter side in words; 9 is the Moses clean-corpus default."""
    drop_identical: bool = True
    """Drop pairs whose two sides are the same string (usually untranslated copies)."""
    dedup: bool = True
    """Drop exact duplicate pairs; keeps 8 bytes of hash per unique pair in memory."""

    def __post_init__(self):
        if self.normalization not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ConfigError("normalization: must be one of NFC, NFKC, NFD, NFKD")
        if not 1 <= self.min_words <= self.max_words:
            raise ConfigError("min_words: must be at least 1 and at most max_words")
        if self.max_length_ratio < 1:
            raise ConfigError("max_length_ratio: must be at least 1")


@dataclass
class SplitConfig:
    """Held-out pairs per language pair, drawn at random; everything else is train."""
    dev: int = 500
    test: int = 500
    seed: int = 1234

    def __post_init__(self):
        if self.dev < 0 or self.test < 0:
            raise ConfigError("dev/test: sizes must not be negative")


@dataclass
class ShardConfig:
    max_samples: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    """A shard is closed before it would pass either bound."""

    def __post_init__(self):
        if self.max_samples < 1 or self.max_bytes < 4096:
            raise ConfigError("max_samples/max_bytes: must be at least 1 sample and 4096 bytes")


@dataclass
class PairConfig(Source):
    src_lang: str
    tgt_lang: str
    format: str
    """One of the parallel input formats in data_prep.readers and data_prep.tabular: moses, opus_moses, tsv,
    tmx, po, mo, parquet, jsonl, arrow (text formats may come compressed: data_prep.compression)."""
    src: str | None = None
    tgt: str | None = None
    """moses: the two line-aligned files."""
    path: str | list[str] | None = None
    """Every format but moses: one file, a list of files, or glob patterns (``*``, ``?``, ``[...]``, and ``**``
    across folders), expanded in sorted order; a pattern matching nothing is an error. arrow: a Hugging Face
    ``save_to_disk`` folder (one split) or ``.arrow`` stream files."""
    msgid_side: str = "tgt"
    """po/mo: which side of the pair the msgid (the catalog's source text) is."""
    src_column: str | None = None
    tgt_column: str | None = None
    """parquet, jsonl, arrow (required there, refused elsewhere): the columns of the two sides, dotted into
    struct columns or nested objects (``translation.en``). A null or non-string value drops the row as
    malformed."""
    score_column: str | int | None = None
    """Optional. parquet, jsonl, arrow: the (dotted) column of a score per pair, such as a mined pair's margin
    score. tsv: the score's field index, the other two fields being src and tgt (0 for WikiMatrix's
    ``score<TAB>src<TAB>tgt``). A score that is no number drops the pair as malformed; without ``min_score``
    every other pair is kept."""
    min_score: float | None = None
    """Pairs scored under this are dropped and counted as ``low_score``; needs ``score_column``."""

    def __post_init__(self):
        for key in ("src_lang", "tgt_lang"):
            _check_language(key, getattr(self, key))
        if self.src_lang == self.tgt_lang:
            raise ConfigError("tgt_lang: must differ from src_lang")
        _check_format(self.format, monolingual=False)
        if self.msgid_side not in ("src", "tgt"):
            raise ConfigError("msgid_side: must be 'src' or 'tgt'")
        _check_columns(self, ("src_column", "tgt_column"))
        if self.format == "moses":
            if self.src is None or self.tgt is None or self.path is not None:
                raise ConfigError("src: format 'moses' takes 'src' and 'tgt' files (and no 'path')")
            for key in ("src", "tgt"):
                _check_files(key, [getattr(self, key)], self.format)
        else:
            if self.path is None or self.src is not None or self.tgt is not None:
                raise ConfigError(f"path: format {self.format!r} takes 'path' (a file, a list of files, or a glob)")
            self.path = _expand_paths(self.path)
            _check_inputs(self, ("src_column", "tgt_column"))

    @property
    def key(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    @property
    def text_columns(self) -> list[str | None]:
        return [self.src_column, self.tgt_column]

    @property
    def files(self) -> list[str]:
        """The input files, as read: a glob's matches, an arrow folder's data files."""
        return [self.src, self.tgt] if self.format == "moses" else _input_files(self.format, self.path)


@dataclass
class MonolingualConfig(Source):
    """One language's text: MLM-only samples (source side only, no target, no links) in the same dataset."""
    lang: str
    format: str
    """A monolingual input format of data_prep.readers and data_prep.tabular: text, parquet, jsonl, arrow."""
    path: str | list[str]
    """One file, a list of files, or glob patterns, as for pairs (arrow: a ``save_to_disk`` folder)."""
    documents: bool = False
    """text: false, one sentence per line; true, documents separated by blank lines, split into sentences
    (data_prep.sentences)."""
    text_column: str | None = None
    """parquet, jsonl, arrow (required there, refused elsewhere): the (dotted) column of the text, one
    sentence per row. A null or non-string value drops the row as malformed."""
    score_column: str | None = None
    """Optional, parquet, jsonl, arrow: the (dotted) column of a score per row (e.g. a language-identification
    score). A score that is no number drops the row as malformed."""
    min_score: float | None = None
    """Rows scored under this are dropped and counted as ``low_score``; needs ``score_column``."""

    def __post_init__(self):
        _check_language("lang", self.lang)
        _check_format(self.format, monolingual=True)
        if self.documents and self.format != "text":
            raise ConfigError(f"documents: format {self.format!r} reads one sentence per row; "
                              "only format 'text' splits documents")
        _check_columns(self, ("text_column",))
        self.path = _expand_paths(self.path)
        _check_inputs(self, ("text_column",))

    @property
    def key(self) -> str:
        """The language: the dataset's entry, shard directory and data.pairs name of this text."""
        return self.lang

    @property
    def src_lang(self) -> str:
        """Monolingual text is written as the source side of its samples."""
        return self.lang

    @property
    def tgt_lang(self) -> None:
        return None

    @property
    def text_columns(self) -> list[str | None]:
        return [self.text_column]

    @property
    def files(self) -> list[str]:
        """The input files, as read: a glob's matches, an arrow folder's data files."""
        return _input_files(self.format, self.path)


def _check_language(key: str, lang: str) -> None:
    if not lang or not lang.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{key}: not a language code: {lang!r}")


def _check_format(name: str, monolingual: bool) -> None:
    """``name`` must be a reader of the source's kind (a format may serve both); one of the other kind only
    says where it belongs."""
    here, there = (MONOLINGUAL_FORMATS, PARALLEL_FORMATS) if monolingual else (PARALLEL_FORMATS, MONOLINGUAL_FORMATS)
    known = [f for f in READERS if f in here]
    if name in known:
        return
    if name in there:
        kind, section = ("parallel", "pairs") if monolingual else ("monolingual", "monolingual")
        raise ConfigError(f"format: {name!r} is a {kind} format: list this source under {section} "
                          f"(formats here: {', '.join(known)})")
    raise ConfigError(f"format: unknown input format {name!r} (known: {', '.join(known)})")


def _check_columns(source: PairConfig | MonolingualConfig, text_keys: tuple[str, ...]) -> None:
    """The column keys a source's format takes: tabular formats name their text columns and may name a
    score column; tsv may give its score's field index; the others take none."""
    fmt, score_column = source.format, source.score_column
    if fmt in TABULAR_FORMATS:
        missing = [k for k in text_keys if not getattr(source, k)]
        if missing:
            raise ConfigError(f"{missing[0]}: format {fmt!r} needs {' and '.join(text_keys)}, the columns to read "
                              "(dotted into struct columns, e.g. translation.en)")
        if score_column is not None and not isinstance(score_column, str):
            raise ConfigError(f"score_column: format {fmt!r} takes a column name, not {score_column!r}")
    else:
        given = [k for k in text_keys if getattr(source, k) is not None]
        if given:
            raise ConfigError(f"{given[0]}: format {fmt!r} has no columns to name "
                              f"(formats with columns: {', '.join(TABULAR_FORMATS)})")
        if fmt == "tsv":
            if score_column is not None and (isinstance(score_column, str) or score_column not in (0, 1, 2)):
                raise ConfigError(f"score_column: format 'tsv' takes the score's field index: 0, 1 or 2, "
                                  f"not {score_column!r}")
        elif score_column is not None:
            raise ConfigError(f"score_column: format {fmt!r} has no scores "
                              f"(formats with scores: tsv, {', '.join(TABULAR_FORMATS)})")
    if source.min_score is not None and score_column is None:
        raise ConfigError("min_score: needs score_column, the column that holds the scores")


def _expand_paths(path: str | list[str]) -> list[str]:
    """``path`` as a list: a file (or folder), a list, glob patterns expanded in sorted order."""
    paths = []
    for p in [path] if isinstance(path, str) else path:
        if glob.escape(p) == p or Path(p).exists():  # no pattern, or a file whose name holds [ or *
            paths.append(p)
            continue
        matches = sorted(glob.glob(p, recursive=True))
        if not matches:
            raise ConfigError(f"path: no file matches {p!r}")
        paths += matches
    if not paths:
        raise ConfigError("path: the list of files is empty")
    return paths


def _check_inputs(source: PairConfig | MonolingualConfig, text_keys: tuple[str, ...]) -> None:
    """A source's ``path`` entries exist and hold what its format reads: UTF-8 text, or the named columns."""
    if source.format != "arrow":
        _check_files("path", source.path, source.format)
    elif missing := next((p for p in source.path if not Path(p).exists()), None):
        raise ConfigError(f"path: not found: {missing}")
    if source.format not in TABULAR_FORMATS:
        return
    try:
        files = source.files
    except PrepError as exc:  # an arrow folder that is not one split's save_to_disk
        raise ConfigError(f"path: {exc}") from None
    columns = {k: getattr(source, k) for k in (*text_keys, "score_column") if getattr(source, k) is not None}
    for f in files:
        if problem := column_problem(source.format, f, columns):
            raise ConfigError(problem)


def _input_files(fmt: str, paths: list[str]) -> list[str]:
    return [f for p in paths for f in arrow_data_files(p)] if fmt == "arrow" else list(paths)


def _check_files(key: str, paths: list[str], fmt: str) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise ConfigError(f"{key}: file not found: {p}")
        if fmt in TEXT_FORMATS and (problem := encoding_problem(p)):
            raise ConfigError(f"{key}: {p}: {problem}")


_COLUMN_KEYS = ("src_column", "tgt_column", "text_column", "score_column", "min_score")
"""Source keys added after datasets were first built: left out of the fingerprint while unset."""


@dataclass
class PrepConfig:
    output_dir: str
    tokenizer: TokenizerConfig
    pairs: list[PairConfig] = field(default_factory=list)
    """Parallel sources, one per language pair."""
    monolingual: list[MonolingualConfig] = field(default_factory=list)
    """Monolingual sources, one per language (trained with MLM only)."""
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    chunk_size: int = 50_000
    """Clean pairs per work unit: the unit of alignment, parallelism, resume and memory."""
    workers: int = 0
    """Worker processes; 0 means one per CPU core."""

    def __post_init__(self):
        # Checked here, before anything is written: a file in the way would fail only at mkdir, unnamed.
        out = Path(self.output_dir)
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"output_dir: {out} is not a directory" if existing == out
                              else f"output_dir: cannot create {out}: {existing} is not a directory")
        if not self.pairs and not self.monolingual:
            raise ConfigError("pairs: at least one language pair (or a monolingual source) is needed")
        keys = [p.key for p in self.sources]
        names = [*(f"pairs[{i}]" for i in range(len(self.pairs))),
                 *(f"monolingual[{i}]" for i in range(len(self.monolingual)))]
        for i, k in enumerate(keys):
            if k in keys[:i]:
                raise ConfigError(f"{names[i]}: {'language pair' if '-' in k else 'language'} {k} is listed twice "
                                  f"(also as {names[keys.index(k)]})")
        if not 1 <= self.chunk_size <= 1 << 22:
            # Link projection packs (sentence, src token, tgt token) into one int64 key per link.
            raise ConfigError("chunk_size: must be between 1 and 4194304")
        if self.workers < 0:
            raise ConfigError("workers: must not be negative")

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def sources(self) -> list[PairConfig | MonolingualConfig]:
        """Every source, pairs first; each is one manifest entry (its ``key``)."""
        return [*self.pairs, *self.monolingual]

    def fingerprint(self) -> str:
        """Hash of everything that decides the output; ``workers`` only decides speed."""
        content = to_dict(self)
        content.pop("workers")
        for source in [*content["pairs"], *content["monolingual"]]:
            for key in _COLUMN_KEYS:  # datasets built before these keys existed keep their hash
                if source.get(key, "") is None:
                    del source[key]
        if not self.monolingual:
            content.pop("monolingual")  # datasets built before monolingual sources existed keep their hash
        # Input files are identified by path, size and modification time, so an edited corpus rebuilds.
        content["inputs"] = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for p in self.sources for f in p.files]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path) -> PrepConfig:
    return load_yaml(PrepConfig, path)


def config_from_dict(data: dict, where: str = "config") -> PrepConfig:
    return from_dict(PrepConfig, data, where)
