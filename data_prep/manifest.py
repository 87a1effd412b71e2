"""The dataset directory's ``manifest.json``: what was built, from what, and where every shard is.

Layout (one key per language pair, ``<src>-<tgt>``, and one per monolingual language, ``<lang>``)::

    {"format": "weam-ds-dataset", "format_version": 1, "data_prep_version": "...",
     "complete": true, "config_sha256": "...",
     "tokenizer": {"path": "tokenizer", "source": "trained" | "<dir>", "sha256": "...", "vocab_size": N},
     "aligner": {...}, "cleaning": {...}, "splits_config": {...},
     "pairs": {"de-en": {"src_lang": "de", "tgt_lang": "en", "input_records": N, "clean_pairs": N,
                         "dropped": {"<reason>": N},
                         "splits": {"train": {"samples", "src_tokens", "tgt_tokens", "links"}, "dev": ..., "test": ...},
                         "shards": [{"path", "split", "chunk", "samples", "bytes", "sha256",
                                     "src_tokens", "tgt_tokens", "links"}],
                         "chunks": N, "chunks_done": [0, 1, ...]},
               "sw": {"src_lang": "sw", "tgt_lang": null, ...the same fields...}}}

An entry whose ``tgt_lang`` is null is monolingual text (``is_monolingual``): its samples have the
source side only, so its ``clean_pairs`` counts sentences and its ``tgt_tokens`` and ``links`` are 0.
A shard is listed only after its file is complete, and ``complete`` is true only when every chunk of
every pair is done. The file is replaced atomically, so a reader never sees half of it.
"""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.files import write_atomically
from data_prep.tokenizer import tokenizer_sha256

FORMAT = "weam-ds-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
SHARD_FIELDS = ("path", "split", "chunk", "samples", "bytes", "sha256", "src_tokens", "tgt_tokens", "links")
COUNT_FIELDS = ("samples", "src_tokens", "tgt_tokens", "links")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or not of the expected format; the message names the file."""


def manifest_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "manifest.json"


def write_manifest(dataset_dir: str | Path, manifest: dict) -> None:
    write_atomically(manifest_path(dataset_dir), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def split_totals(shards: list[dict]) -> dict[str, dict[str, int]]:
    """Per-split sums of the shards' counts."""
    totals = {s: dict.fromkeys(COUNT_FIELDS, 0) for s in SPLITS}
    for shard in shards:
        for f in COUNT_FIELDS:
            totals[shard["split"]][f] += shard[f]
    return totals


def read_manifest(dataset_dir: str | Path, require_complete: bool = True) -> dict:
    """Load and check a dataset directory's manifest."""
    path = manifest_path(dataset_dir)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (is this a data_prep output directory?)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {manifest.get('format_version')}, expected {FORMAT_VERSION}")
    if require_complete and not manifest.get("complete"):
        raise ManifestError(f"{path}: the dataset is incomplete (re-run data_prep to finish it)")
    for key in ("tokenizer", "aligner", "pairs"):
        if not isinstance(manifest.get(key), dict):
            raise ManifestError(f"{path}: missing '{key}'")
    for pair, entry in manifest["pairs"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("src_lang"), str) \
                or not isinstance(entry.get("tgt_lang", 0), str | None):
            raise ManifestError(f"{path}: pairs.{pair}: needs src_lang (a language) and tgt_lang (a language, "
                                "or null for monolingual text)")
        for i, shard in enumerate(entry.get("shards", [])):
            missing = [f for f in SHARD_FIELDS if f not in shard]
            if missing:
                raise ManifestError(f"{path}: pairs.{pair}.shards[{i}]: missing {', '.join(missing)}")
            if Path(shard["path"]).is_absolute() or ".." in Path(shard["path"]).parts:
                raise ManifestError(f"{path}: pairs.{pair}.shards[{i}].path must be relative and inside the directory")
            if shard["split"] not in SPLITS:
                raise ManifestError(f"{path}: pairs.{pair}.shards[{i}].split: unknown split {shard['split']!r}")
            if is_monolingual(entry) and (shard["tgt_tokens"] or shard["links"]):
                raise ManifestError(f"{path}: pairs.{pair}.shards[{i}]: target tokens or links in monolingual text")
    return manifest


def tokenizer_dir(dataset_dir: str | Path, manifest: dict) -> Path:
    """The dataset's tokenizer directory, checked against the manifest's hash: the shards' token ids mean
    what that tokenizer says only if it is the one data_prep built them with."""
    directory = Path(dataset_dir) / manifest["tokenizer"]["path"]
    if not directory.is_dir():
        raise ManifestError(f"{directory}: the dataset's tokenizer is missing (rebuild the dataset with data_prep)")
    if tokenizer_sha256(directory) != manifest["tokenizer"]["sha256"]:
        raise ManifestError(f"{directory}: the tokenizer's files do not match the sha256 in "
                            f"{manifest_path(dataset_dir)} (changed since data_prep built the dataset)")
    return directory


def is_monolingual(entry: dict) -> bool:
    """The manifest entry is one language's text (MLM only), not a language pair."""
    return entry["tgt_lang"] is None


def shard_paths(manifest: dict, dataset_dir: str | Path, pair: str, split: str) -> list[Path]:
    """Absolute paths of one pair's shards of one split, in manifest order."""
    if pair not in manifest["pairs"]:
        raise ManifestError(f"{manifest_path(dataset_dir)}: no language pair {pair!r} "
                            f"(has: {', '.join(manifest['pairs'])})")
    return [Path(dataset_dir) / s["path"] for s in manifest["pairs"][pair]["shards"] if s["split"] == split]
