"""Tatoeba-style retrieval without fine-tuning: sentence embeddings are mean-pooled hidden states of one
layer (a middle one by default, as XTREME did), and each source sentence retrieves the target sentence
with the highest cosine similarity. Predictions and labels are written in the official layout
(``tatoeba/test-<lang>.tsv``: one target index per line) and scored by the official scorer.

``evaluate_dataset`` runs it on the held-out test pairs of a data_prep dataset, in both directions
(xx→en, the benchmark's direction, and en→xx), one folder each.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import webdataset as wds
from tqdm import tqdm

from data_prep.manifest import read_manifest, shard_paths
from data_prep.shard_format import decode_sample
from weam_ds.xtreme_r.score import score, write_scores

log = logging.getLogger(__name__)


def embed(model, tokenizer, sentences: list[str], layer: int, batch_size: int = 64, max_length: int = 128,
          desc: str = "embed") -> torch.Tensor:
    """[N, H] unit-length mean-pooled states of ``layer`` (0: the embeddings; k: the output of layer k)."""
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(sentences), batch_size), desc=desc, unit="batch", leave=False, disable=None):
            enc = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            states = model(**enc, output_hidden_states=True).hidden_states[layer]
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def retrieve(queries: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Index of each query's nearest target by cosine similarity."""
    return (queries @ targets.T).argmax(dim=1).tolist()


def held_out_pairs(dataset: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """Per language pair of a data_prep dataset: (non-English language, its sentences, English sentences)."""
    manifest = read_manifest(dataset)
    pairs = {}
    for key, entry in manifest["pairs"].items():
        urls = [str(p) for p in shard_paths(manifest, dataset, key, "test")]
        samples = [decode_sample(s)["meta"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
        if entry["tgt_lang"] == "en":
            pairs[key] = (entry["src_lang"], [m["src_text"] for m in samples], [m["tgt_text"] for m in samples])
        elif entry["src_lang"] == "en":
            pairs[key] = (entry["tgt_lang"], [m["tgt_text"] for m in samples], [m["src_text"] for m in samples])
    return pairs


def load_encoder(model_dir: Path, layer: int | None):
    """(encoder, tokenizer, layer): the encoder of a masked-LM directory (AutoModel would add an untrained
    pooler) and the layer to pool, a middle one by default."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = AutoModelForMaskedLM.from_pretrained(str(model_dir)).base_model.eval()
    layers = encoder.config.num_hidden_layers
    layer = layers // 2 + 1 if layer is None else layer
    if not 0 <= layer <= layers:
        raise ValueError(f"layer {layer}: the model has layers 0-{layers}")
    return encoder, tokenizer, layer


def write_retrieval(found: list[int], predictions: Path, labels: Path) -> None:
    """Retrieved indices and the gold ones (query i's translation is target i), one per line."""
    for path, rows in ((predictions, found), (labels, range(len(found)))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in rows), encoding="utf-8")


def evaluate_dataset(model_dir: Path, dataset: Path, out: Path, layer: int | None = None,
                     batch_size: int = 64) -> dict[str, dict]:
    model, tokenizer, layer = load_encoder(model_dir, layer)
    log.info("Tatoeba-style retrieval with %s, mean-pooled layer %d", model_dir, layer)
    pairs = held_out_pairs(dataset)
    folders = {direction: out / f"tatoeba-{direction}" for direction in ("xx2en", "en2xx")}
    for lang, foreign, english in pairs.values():
        # Each side is embedded once and serves as queries in one direction, targets in the other.
        f = embed(model, tokenizer, foreign, layer, batch_size, desc=lang)
        e = embed(model, tokenizer, english, layer, batch_size, desc=f"{lang} (en)")
        for direction, (queries, targets) in (("xx2en", (f, e)), ("en2xx", (e, f))):
            folder = folders[direction]
            write_retrieval(retrieve(queries, targets), folder / "predictions" / "tatoeba" / f"test-{lang}.tsv",
                            folder / "labels" / "tatoeba" / f"test-{lang}.tsv")
    results = {}
    for direction, folder in folders.items():
        scores = score(folder / "predictions", folder / "labels", "xtreme-r",
                       languages=[lang for lang, _, _ in pairs.values()])
        write_scores(scores, folder / "scores.json")
        results[direction] = scores
        accuracy = scores["tatoeba"]["accuracy"]
        print(f"Tatoeba-style retrieval {direction}: " + ", ".join(f"{k} {v:.1f}" for k, v in accuracy.items())
              + f"; mean {scores['tatoeba']['avg_accuracy']:.1f} ({folder / 'scores.json'})")
    return results
