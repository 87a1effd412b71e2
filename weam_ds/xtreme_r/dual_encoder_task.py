"""The dual-encoder retrieval tasks' pipeline (Mewsli-X, LAReQA); the encoder and its tuner are in
``dual_encoder.py``.

Mewsli-X: trained on English Wikipedia mention-entity pairs (their dev split for selection); each WikiNews
mention ranks the whole candidate set. LAReQA: trained on English SQuAD v1.1 (question → the sentence holding
the answer, with its paragraph), selected on SQuAD dev; each XQuAD-R question ranks the sentences of every
language run. Predictions map query ids to their 20 best candidate ids, labels to the relevant ids, one
``test-<lang>.json`` each.
"""
from __future__ import annotations

import logging

from weam_ds.xtreme_r.pipeline import Outcome, Seed, write_json
from weam_ds.xtreme_r.readers import (mewslix_files, read_entities, read_mention_pairs, read_squad_sentences,
                                      read_wikinews, read_xquad_r, task_file)
from weam_ds.xtreme_r.tuners import selection_record

log = logging.getLogger(__name__)

def _mewslix(seed: Seed):
    files = mewslix_files(seed.data, seed.langs)
    train, dev = read_mention_pairs(files["train"]), read_mention_pairs(files["dev"])
    tests = read_wikinews(files, "test", seed.langs)
    split = "test" if all(t.labelled() for t in tests.values()) else "dev"
    if split == "dev":  # XTREME's download blanks the test entity ids: score the dev mentions, and say so
        tests = read_wikinews(files, "dev", seed.langs)
    return train, dev, tests, split, read_entities(files["candidates"])


def _lareqa(seed: Seed):
    train = read_squad_sentences(task_file(seed.data, seed.task, "train"), "en")
    dev = read_squad_sentences(task_file(seed.data, seed.task, "dev"), "en")
    tests, pool_ids, pool = read_xquad_r(seed.data, seed.langs)
    return train, dev, tests, "test", (pool_ids, pool)


SETS = {"mewslix": _mewslix, "lareqa": _lareqa}
"""Per dual-encoder task: (English train, English dev, per-language test queries, split, candidate pool)."""


def run_seed(seed: Seed, tokenizer) -> Outcome:
    from weam_ds.xtreme_r.dual_encoder import RetrievalTuner

    recipe = seed.recipe
    train, dev, tests, split, (pool_ids, pool) = SETS[seed.task.name](seed)
    log.info("%s seed %d: fine-tuning on %d English pairs; %s split of %d languages against %d candidates",
             seed.task.name, seed.seed, len(train.query_ids), split, len(seed.langs), len(pool_ids))
    tuner = RetrievalTuner(seed.model_dir, tokenizer, recipe)
    tuner.fit(train, dev, seed.checkpoints, seed.seed, seed.deepspeed)
    embedded = tuner.embed(pool, recipe.max_length)
    for lang, queries in tests.items():
        write_json(seed.prediction(lang), tuner.retrieve(queries, embedded, pool_ids))
        write_json(seed.label(split, lang), queries.gold)
    details = {"candidates": len(pool_ids), "selection": selection_record(tuner.trainer, recipe, True)}
    return Outcome(split, list(tests), details, differences=tuner.differences, batch=tuner.split)
