"""Tatoeba retrieval as XTREME-R runs it (``scripts/run_tatoeba.sh``, ``third_party/evaluate_retrieval.py``).

Embedding: each sentence, cut to at most 512 tokens, goes through the encoder of the model fine-tuned on English
SQuAD v1.1 (the one the QA tasks train); its embedding is the mean, over the attention mask (special tokens
included), of one hidden layer's states (``official_layer``). Sentences are compared by cosine similarity.

Direction: the official code indexes the non-English sentences and searches with the English ones
(``utils_retrieve.similarity_search``: ``idx.add`` of the source language, ``idx.search`` with English), so line
j of ``tatoeba/test-<lang>.tsv`` belongs to English sentence j and holds the index of the non-English sentence
nearest to it. XTREME's download sorts the English side (``tatoeba_preprocess``), so only that direction can be
submitted. The other direction (each non-English sentence → the index of an English sentence) is written as well,
clearly apart from the scorer's folders (``xx2en/``), because it is the one a line-aligned set can also score.

``run_seed`` is that protocol for ``weam_ds.xtreme_r run`` on the download; ``evaluate_dataset`` runs the same
retrieval with a raw pre-trained model on the held-out test pairs of a data_prep dataset (the demo and the study:
it measures the pre-trained alignment directly), in both directions. Whatever departs from the official protocol
(the raw model, a shorter maximum length, another layer) is listed in the returned ``differences``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from tqdm import tqdm

from data_prep.manifest import is_monolingual, read_manifest, shard_paths
from data_prep.output_dirs import claim
from data_prep.shard_format import decode_sample
from weam_ds.run_lock import holding_enclosing
from weam_ds.xtreme_r.encoders import load_encoder, max_positions, mean_pool
from weam_ds.xtreme_r.eval_dir import RetrievalDir
from weam_ds.xtreme_r.pipeline import Outcome, Seed, write_lines
from weam_ds.xtreme_r.readers import read_sentences, tatoeba_files, tatoeba_shuffled
from weam_ds.xtreme_r.score import ScoreError, score, score_task, write_scores

log = logging.getLogger(__name__)
COMMAND = "weam_ds.xtreme_r tatoeba"
"""The marker of its output folders (data_prep.output_dirs)."""

TASK = "tatoeba"
OFFICIAL_MAX_LENGTH = 512
"""``MAXL`` of run_tatoeba.sh."""
OFFICIAL_DIRECTION, EXTRA_DIRECTION = "en2xx", "xx2en"
"""English sentences search the non-English ones (the official files); the reverse is the extra output."""


@dataclass(frozen=True)
class _ReferenceLayer:
    """The layer run_tatoeba.sh pools for one model type: ``hidden_states[index]`` of a model ``depth`` layers
    deep (``index`` = depth + 1 - NLAYER + LAYER, see ``official_layer``)."""
    index: int
    depth: int
    model: str


OFFICIAL_LAYERS = {
    "bert": _ReferenceLayer(8, 12, "bert-base-multilingual-cased (LAYER=7, NLAYER=12)"),
    "xlm-roberta": _ReferenceLayer(14, 24, "xlm-roberta-large (LAYER=13, NLAYER=24)"),
    "xlm-roberta-xl": _ReferenceLayer(14, 24, "xlm-roberta-large (LAYER=13, NLAYER=24; XL is the same family)"),
}
# Other RoBERTa-family encoders take the XLM-R reference (the script's xlmr model type covers the family).
OFFICIAL_LAYERS.update(dict.fromkeys(("roberta", "camembert"), OFFICIAL_LAYERS["xlm-roberta"]))
"""Per ``config.model_type``, the layer run_tatoeba.sh pools, with the model it was set for."""


def official_layer(config) -> int:
    """The index into ``hidden_states`` (0: the embeddings; k: the output of layer k) that XTREME-R pools.

    evaluate_retrieval.py keeps the last NLAYER entries of ``hidden_states`` (depth + 1 entries) and pools entry
    LAYER of those, i.e. ``hidden_states[depth + 1 - NLAYER + LAYER]``: for mBERT (12 layers, LAYER=7, NLAYER=12)
    the output of layer 8, for XLM-R large (24 layers, LAYER=13, NLAYER=24) that of layer 14. A model of another
    depth pools the layer at the same relative depth, ``round(depth * index / reference depth)`` and at least 1:
    XLM-R style models of 2, 4, 12 and 48 layers pool layers 1, 2, 7 and 28. (The script also gives NLAYER=24 to
    xlm-roberta-base, whose 13 states then leave entry 13 unfilled; the rule gives base layer 7.)"""
    reference = OFFICIAL_LAYERS.get(config.model_type)
    if reference is None:
        raise ValueError(f"model type {config.model_type!r}: no official Tatoeba layer (run_tatoeba.sh sets one for "
                         f"{', '.join(OFFICIAL_LAYERS)}); set `layer` in the tatoeba recipe")
    depth = config.num_hidden_layers
    return max(1, round(depth * reference.index / reference.depth))


def clip_length(requested: int, config) -> int:
    """``requested`` tokens, or fewer where the model's position embeddings stop sooner (said in the log)."""
    limit = max_positions(config)
    if requested > limit:
        log.warning("tatoeba: maximum length %d clipped to %d, the positions the model has", requested, limit)
        return limit
    return requested


def embed(encoder, tokenizer, sentences: list[str], layer: int, batch_size: int, max_length: int,
          desc: str = "embed") -> torch.Tensor:
    """[N, H] unit-length embeddings on the CPU: the mean-pooled states of ``hidden_states[layer]``. Sentences go
    in batches of similar length, on the encoder's device."""
    device = next(encoder.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = torch.empty(len(sentences), encoder.config.hidden_size)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False, disable=None):
            rows = order[start:start + batch_size]
            enc = tokenizer([sentences[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            states = encoder(**enc, output_hidden_states=True).hidden_states[layer]
            out[rows] = torch.nn.functional.normalize(mean_pool(states, enc["attention_mask"]).float(), dim=-1).cpu()
    return out


def _lines(indices) -> list[str]:
    """Sentence indices as the lines of a Tatoeba file (the official layout: one index per line)."""
    return [str(i) for i in indices]


def retrieve(queries: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Index of each query's nearest target by cosine similarity (of unit-length embeddings)."""
    return (queries @ targets.T).argmax(dim=1).tolist()


@dataclass
class _Embedder:
    """An encoder set up for Tatoeba: its tokenizer, the layer it pools, its maximum length, and how these depart
    from the official protocol."""
    encoder: object
    tokenizer: object
    layer: int
    max_length: int
    batch_size: int
    differences: list[str]

    @classmethod
    def load(cls, model_dir: Path, tokenizer, layer: int | None, max_length: int, batch_size: int) -> _Embedder:
        encoder = load_encoder(model_dir)
        if torch.cuda.is_available():
            encoder = encoder.cuda()
        config, differences = encoder.config, []
        reference = OFFICIAL_LAYERS.get(config.model_type)
        official = official_layer(config) if reference else None
        if layer is None:
            layer = official_layer(config)  # an error naming the model type when it has none
            if config.num_hidden_layers != reference.depth:
                differences.append(f"layer: hidden_states[{layer}] of a {config.num_hidden_layers}-layer model, at "
                                   f"the relative depth of the official hidden_states[{reference.index}] of "
                                   f"{reference.model}")
        elif layer != official:
            differences.append(f"layer: hidden_states[{layer}] (set in the recipe), not the official "
                               + (f"hidden_states[{official}]" if official is not None else "choice"))
        if not 0 <= layer <= config.num_hidden_layers:
            raise ValueError(f"layer {layer}: the model has hidden states 0-{config.num_hidden_layers}")
        used = clip_length(max_length, config)
        if used < OFFICIAL_MAX_LENGTH:
            why = (f"the model's positions end there (asked {max_length})" if used < max_length
                   else "set in the recipe")
            differences.append(f"maximum length: {used} tokens, not the official {OFFICIAL_MAX_LENGTH} ({why})")
        return cls(encoder, tokenizer, layer, used, batch_size, differences)

    def both_directions(self, foreign: list[str], english: list[str], lang: str) -> dict[str, list[int]]:
        """Each side embedded once, then searched from both: ``en2xx`` (line j: English sentence j's nearest
        non-English index, the official file) and ``xx2en``."""
        f = embed(self.encoder, self.tokenizer, foreign, self.layer, self.batch_size, self.max_length, lang)
        e = embed(self.encoder, self.tokenizer, english, self.layer, self.batch_size, self.max_length, f"{lang} (en)")
        return {OFFICIAL_DIRECTION: retrieve(e, f), EXTRA_DIRECTION: retrieve(f, e)}


SQUAD_EPOCHS = ("English-SQuAD model: the one XQuAD and MLQA use (train_qa.sh's recipe: 3 epochs, batch 4 x 8); "
                "run_tatoeba.sh embeds with a 2-epoch model (its MODEL: ..._LR3e-5_EPOCH2.0_maxlen384_batchsize2_"
                "gradacc16), which no official script trains")
"""The departure of every Tatoeba run that embeds with the run's English-SQuAD model."""

ENCODERS = {
    "squad": "the English-SQuAD v1.1 fine-tuned model, as XTREME-R's run_tatoeba.sh",
    "raw": "the raw pre-trained model",
}
"""What Tatoeba may embed with, in words for the results."""


def run_seed(seed: Seed, tokenizer, why_raw: str | None = None) -> Outcome:
    """Tatoeba for one seed of ``weam_ds.xtreme_r run``, on the download's ``tatoeba/<lang>-en.{<lang>,en}``.

    Embeds with ``seed.squad_model``, the English-SQuAD fine-tuned QA model (checked: its architecture must be a
    question-answering one); without one, with the raw ``seed.model_dir``, which the outcome lists as a protocol
    difference (``why_raw`` says why). ``tokenizer``: the model's. The recipe's ``layer`` (None:
    ``official_layer``), ``max_length`` and ``batch_size`` are read.

    Writes ``seed.prediction(lang)`` in the official direction and ``seed.work/xx2en/predictions/tatoeba/...``
    in the other. Files aligned by line also get their labels (line i's gold is i, in both directions):
    ``seed.label("test", lang)`` for the official scorer and ``seed.work/xx2en/labels/...``; the extra direction
    is scored here, into the details. When the English side is sorted, as XTREME's download writes it, the gold
    is hidden: nothing is labelled, and the outcome says why it is unscored."""
    data, langs, recipe = seed.data, seed.langs, seed.recipe
    pairs = {lang: [read_sentences(f) for f in tatoeba_files(data, lang)] for lang in langs}
    for lang, (foreign, english) in pairs.items():
        if len(foreign) != len(english):
            raise ScoreError(f"{tatoeba_files(data, lang)[0]}: {len(foreign)} lines but its English side has "
                             f"{len(english)}")
    if seed.squad_model is not None:
        encoder, encoder_dir, differences = "squad", seed.squad_model, [SQUAD_EPOCHS]
        _require_qa_model(encoder_dir)
    else:
        encoder, encoder_dir = "raw", seed.model_dir
        differences = [f"encoder: {ENCODERS['raw']}, not {ENCODERS['squad']} "
                       f"({why_raw or 'the run trained no English-SQuAD model'})"]
    embedder = _Embedder.load(encoder_dir, tokenizer, recipe.layer, recipe.max_length, recipe.batch_size)
    differences += embedder.differences
    for line in differences:
        log.warning("tatoeba: protocol difference: %s", line)
    shuffled = [lang for lang, (_, english) in pairs.items() if tatoeba_shuffled(english)]
    unscored = None
    if shuffled:
        unscored = (f"the English side is sorted, as XTREME's download writes it, hiding the gold alignment "
                    f"({len(shuffled)} of {len(langs)} languages, {tatoeba_files(data, shuffled[0])[1]} among them)")
        log.warning("tatoeba: NOT SCORED: %s; the predictions (for each line of the sorted English file, the index "
                    "of a non-English sentence) are written", unscored)
    extra = seed.eval_dir.direction(TASK, seed.seed, EXTRA_DIRECTION)
    for lang, (foreign, english) in pairs.items():
        found = embedder.both_directions(foreign, english, lang)
        write_lines(seed.prediction(lang), _lines(found[OFFICIAL_DIRECTION]))
        write_lines(extra.prediction(TASK, lang), _lines(found[EXTRA_DIRECTION]))
        if not unscored:
            for path in (seed.label("test", lang), extra.label(TASK, lang)):
                write_lines(path, _lines(range(len(english))))
    details = {"encoder": encoder, "encoder_dir": str(encoder_dir), "layer": embedder.layer,
               "max_length": embedder.max_length,
               EXTRA_DIRECTION: None if unscored else score_task(TASK, langs, extra.predictions, extra.labels)}
    return Outcome("test", langs, details, unscored, differences)


def _require_qa_model(model_dir: Path) -> None:
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(str(model_dir), local_files_only=True).architectures or []
    if not any(a.endswith("ForQuestionAnswering") for a in architectures):
        raise ValueError(f"{model_dir}: Tatoeba embeds with the English-SQuAD fine-tuned QA model; this one was "
                         f"saved as {', '.join(architectures) or 'an unknown architecture'}")


def held_out_pairs(dataset: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """Per language pair of a data_prep dataset: (non-English language, its sentences, English sentences)."""
    manifest = read_manifest(dataset)
    pairs = {}
    for key, entry in manifest["pairs"].items():
        if is_monolingual(entry):  # monolingual text: nothing to retrieve
            continue
        urls = [str(p) for p in shard_paths(manifest, dataset, key, "test")]
        samples = [decode_sample(s)["meta"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
        if entry["tgt_lang"] == "en":
            pairs[key] = (entry["src_lang"], [m["src_text"] for m in samples], [m["tgt_text"] for m in samples])
        elif entry["src_lang"] == "en":
            pairs[key] = (entry["tgt_lang"], [m["tgt_text"] for m in samples], [m["src_text"] for m in samples])
    return pairs


def evaluate_dataset(model_dir: Path, dataset: Path, out: Path, layer: int | None = None, batch_size: int = 64,
                     max_length: int = OFFICIAL_MAX_LENGTH) -> dict[str, dict]:
    """Raw-model retrieval on a data_prep dataset's held-out test pairs (aligned by construction), in both
    directions, each in its own folder with predictions, labels and scores.json: ``out/tatoeba-en2xx`` (the
    official direction) and ``out/tatoeba-xx2en``. Returns the scores per direction. ``out`` is a new folder or
    an earlier one of this command's, rewritten (data_prep.output_dirs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    embedder = _Embedder.load(model_dir, tokenizer, layer, max_length, batch_size)
    log.info("Tatoeba-style retrieval with %s, mean-pooled hidden_states[%d], at most %d tokens", model_dir,
             embedder.layer, embedder.max_length)
    pairs = held_out_pairs(dataset)
    folders = {direction: RetrievalDir(out).direction(direction) for direction in (OFFICIAL_DIRECTION, EXTRA_DIRECTION)}
    with holding_enclosing(out, COMMAND):
        claim(out, COMMAND)
        for lang, foreign, english in pairs.values():
            for direction, found in embedder.both_directions(foreign, english, lang).items():
                write_lines(folders[direction].prediction(TASK, lang), _lines(found))
                write_lines(folders[direction].label(TASK, lang), _lines(range(len(found))))
        results = {}
        for direction, folder in folders.items():
            scores = score(folder.predictions, folder.labels, "xtreme-r",
                           languages=[lang for lang, _, _ in pairs.values()])
            write_scores(scores, folder.scores)
            results[direction] = scores
            accuracy = scores[TASK]["accuracy"]
            print(f"Tatoeba-style retrieval {direction}: " + ", ".join(f"{k} {v:.1f}" for k, v in accuracy.items())
                  + f"; mean {scores[TASK]['avg_accuracy']:.1f} ({folder.scores})")
    return results
