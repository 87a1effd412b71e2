"""Retrieval with a fine-tuned dual encoder, for Mewsli-X and LAReQA.

One shared encoder embeds queries and candidates: the final hidden state of the first token (``<s>``/[CLS]) or
the mean of the final states (``pooling: mean``), scaled to unit length. The official baselines take BERT's
pooler output over the first token; a masked-LM checkpoint has no trained pooler, so weam-ds keeps the state
itself, and each pooling in ``encoders.POOLINGS`` carries the sentence that result.json lists as a protocol
difference.
Fine-tuning uses in-batch negatives: each query's candidate is the right answer among all candidates of its
batch, under a softmax over cosine similarities times a learned scale (initialised to 100, as the official
baselines do); a batch's candidates that are the same item (one entity mentioned twice, one sentence answering
two questions) are not counted as each other's negatives. Training goes through the Hugging Face Trainer with
the arguments every tuner gets (``tuners``), so a DeepSpeed config applies as for the other tasks; where the
recipe selects on English dev (``selection: {every_steps: N}``) the dev set is scored by retrieval (mAP@20 of
its queries against its own candidates) at that cadence and the best checkpoint is kept, otherwise the last
weights. Prediction ranks a whole pool by cosine similarity.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer

from weam_ds.xtreme_r import metrics
from weam_ds.xtreme_r.encoders import POOLINGS, load_encoder
from weam_ds.xtreme_r.readers import RetrievalSet
from weam_ds.xtreme_r.tasks import EverySteps
from weam_ds.xtreme_r.tuners import batch_split, device_count, training_arguments

TOP_K = 20
"""Predictions kept per query: the metric reads the first 20."""


DUPLICATES_MASKED = ("in-batch negatives: a batch's candidates that are the same item (one entity mentioned twice, "
                     "one sentence answering two questions) are masked out of each other's negatives; the official "
                     "loss (third_party/bert.py: cross-entropy over every candidate of the batch) counts them")
"""``DualEncoder.forward``'s ``a_key`` mask, a departure result.json lists."""


class DualEncoder(torch.nn.Module):
    def __init__(self, encoder, pooling: str = "cls", scale: float = 100.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected {' or '.join(POOLINGS)}")
        self.encoder, self.pool = encoder, POOLINGS[pooling].pool
        self.config = encoder.config  # DeepSpeed's "auto" bucket sizes read hidden_size from it
        self.logit_scale = torch.nn.Parameter(torch.tensor([scale]))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.pool(states, attention_mask), dim=-1)

    def forward(self, q_input_ids, q_attention_mask, a_input_ids, a_attention_mask, a_key=None) -> dict:
        queries, answers = self.embed(q_input_ids, q_attention_mask), self.embed(a_input_ids, a_attention_mask)
        logits = (queries @ answers.T).float() * self.logit_scale.float()
        if a_key is not None:
            same = a_key[:, None] == a_key[None, :]
            same &= ~torch.eye(len(a_key), dtype=torch.bool, device=same.device)
            logits = logits.masked_fill(same, float("-inf"))
        return {"loss": F.cross_entropy(logits, torch.arange(len(queries), device=logits.device))}


class _Pairs:
    """Pads the query and candidate sides of a batch separately."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        batch = {"a_key": torch.tensor([r["a_key"] for r in rows])}
        for side in ("q", "a"):
            width = max(len(r[f"{side}_input_ids"]) for r in rows)
            batch[f"{side}_input_ids"] = torch.tensor(
                [r[f"{side}_input_ids"] + [self.pad_id] * (width - len(r[f"{side}_input_ids"])) for r in rows])
            batch[f"{side}_attention_mask"] = torch.tensor(
                [[1] * len(r[f"{side}_input_ids"]) + [0] * (width - len(r[f"{side}_input_ids"])) for r in rows])
        return batch


class _DevRetrievalTrainer(Trainer):
    """Evaluation is retrieval on the English dev set, not a loss (``training_arguments`` keeps the best
    ``score``)."""

    tuner: RetrievalTuner

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        scores = {f"{metric_key_prefix}_score": self.tuner.score(self.tuner.dev)}
        self.log(scores)
        return scores


class RetrievalTuner:
    def __init__(self, model_dir: Path, tokenizer, recipe):
        self.model_dir, self.tokenizer, self.recipe = model_dir, tokenizer, recipe
        self.query_length = recipe.query_length or recipe.max_length
        self.split = batch_split(recipe, device_count())
        self.differences = [POOLINGS[recipe.pooling].difference, DUPLICATES_MASKED]
        """Where this tuner departs from the official protocol, for result.json."""

    def fit(self, train: RetrievalSet, dev: RetrievalSet, checkpoints: Path, seed: int, deepspeed: str | None) -> None:
        """Trains; with ``selection: {every_steps: N}`` scores ``dev`` every N steps and keeps the best
        checkpoint, else keeps the last weights."""
        from transformers import set_seed

        set_seed(seed)
        select = isinstance(self.recipe.selection, EverySteps)
        args = training_arguments(self.recipe, self.split, checkpoints, seed, deepspeed, select,
                                  remove_unused_columns=False)
        self.dev = dev
        self.trainer = _DevRetrievalTrainer(
            model=DualEncoder(load_encoder(self.model_dir), self.recipe.pooling), args=args,
            train_dataset=self.encode(train.training_pairs()), eval_dataset=[{}] if select else None,
            data_collator=_Pairs(self.tokenizer.pad_token_id))
        self.trainer.tuner = self
        self.trainer.train()

    def encode(self, pairs: list[tuple[str, str, str]]) -> list[dict]:
        queries = self.tokenizer([q for q, _, _ in pairs], truncation=True, max_length=self.query_length)
        answers = self.tokenizer([a for _, a, _ in pairs], truncation=True, max_length=self.recipe.max_length)
        keys: dict[str, int] = {}
        return [{"q_input_ids": q, "a_input_ids": a, "a_key": keys.setdefault(key, len(keys))}
                for q, a, (_, _, key) in zip(queries["input_ids"], answers["input_ids"], pairs)]

    def embed(self, texts: list[str], max_length: int) -> torch.Tensor:
        """[N, H] unit-length embeddings on the CPU; texts go in batches of similar length."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        batch = max(64, self.recipe.batch_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = None
        with torch.no_grad():
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                enc = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length,
                                     padding=True, return_tensors="pt")
                vectors = model.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu()
                if out is None:
                    out = torch.empty(len(texts), vectors.shape[1])
                out[rows] = vectors
        model.train(was_training)
        return out if out is not None else torch.empty(0, 0)

    def rank(self, queries: torch.Tensor, pool: torch.Tensor, pool_ids: list[str], k: int = TOP_K) -> list[list[str]]:
        """The ids of each query's k nearest candidates by cosine similarity, nearest first."""
        device = next(self.trainer.model.parameters()).device
        pool = pool.to(device)
        ranked = []
        for start in range(0, len(queries), 256):
            scores = queries[start:start + 256].to(device) @ pool.T
            for row in scores.topk(min(k, len(pool_ids)), dim=1).indices.tolist():
                ranked.append([pool_ids[i] for i in row])
        return ranked

    def retrieve(self, queries: RetrievalSet, pool: torch.Tensor, pool_ids: list[str]) -> dict[str, list[str]]:
        ranked = self.rank(self.embed(queries.queries, self.query_length), pool, pool_ids)
        return dict(zip(queries.query_ids, ranked))

    def score(self, queries: RetrievalSet) -> float:
        """mAP@20 of a set that carries its own pool."""
        found = self.retrieve(queries, self.embed(queries.candidates, self.recipe.max_length), queries.candidate_ids)
        return metrics.lareqa_map20(queries.gold, found)["map@20"]
