"""Benchmark: one WEAM training step against two plain Hugging Face MLM steps on the same tokens (CPU).

WEAM encodes both sides of each pair and adds the exchange; the baseline is what a user would run
without it: ``XLMRobertaForMaskedLM(input_ids, labels=...)`` once on the source sentences and once on the
target sentences, same geometry, same masked tokens. Both take a full AdamW step. The target: a WEAM
step costs at most 1.15x the two MLM steps. Batches are real: masked pairs from a data_prep dataset
(the demo dataset by default).

    python bench/bench_train_step.py [--dataset out/demo/dataset] [--preset mini] [--batch 32] [--steps 20]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from data_prep.typed_config import from_dict
from weam_ds.batch import IGNORE, TokenInfo
from weam_ds.config import DataConfig, MaskingConfig, ObjectiveConfig
from weam_ds.data import Corpus, TrainStream
from weam_ds.objective import PretrainingObjective
from weam_ds.presets import build_model


def timed(step, batches) -> list[float]:
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("out/demo/dataset"))
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--batch", type=int, default=32, help="sentence pairs per step")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--vocab-size", type=int, help="model vocabulary (default: the dataset tokenizer's)")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = from_dict(DataConfig, {"datasets": [str(args.dataset)], "max_length": args.max_length,
                                  "batch_size": args.batch, "workers": 0, "verify_sha256": False})
    corpus = Corpus.open(data)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    stream = iter(TrainStream(corpus, data, MaskingConfig(), info, seed=0, rank=0))
    batches = [next(stream)[0] for _ in range(args.steps + 3)]
    vocab = args.vocab_size or info.vocab_size

    def objective_step(name: str):
        """A training step of weam_ds's own objective ``name`` on a fresh model."""
        objective = PretrainingObjective(build_model(args.preset, vocab, pad_token_id=info.pad_id).train(),
                                         ObjectiveConfig(name=name))
        optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)

        def step(batch):
            out = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

        return step

    mlm_model = build_model(args.preset, vocab, pad_token_id=info.pad_id).train()
    mlm_opt = torch.optim.AdamW(mlm_model.parameters(), lr=1e-4)

    def mlm_steps(batch):
        for side in ("src", "tgt"):
            out = mlm_model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"],
                            labels=batch[f"{side}_labels"])
            mlm_opt.zero_grad(set_to_none=True)
            out.loss.backward()
            mlm_opt.step()

    def stacked_mlm_step(batch):
        """Both sides as one batch: the same tokens in a single HF MLM step (one optimizer update)."""
        width = max(batch["src_input_ids"].shape[1], batch["tgt_input_ids"].shape[1])

        def both(key, fill):
            parts = [batch[f"{side}_{key}"] for side in ("src", "tgt")]
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in parts])

        out = mlm_model(input_ids=both("input_ids", info.pad_id), attention_mask=both("attention_mask", 0),
                        labels=both("labels", IGNORE))
        mlm_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        mlm_opt.step()

    # Interleave them, so that machine noise hits all alike; the first 3 of each are warm-up.
    steps = {"weam": objective_step("weam"), "two_mlm": mlm_steps, "stacked_mlm": stacked_mlm_step,
             "own_mlm": objective_step("mlm")}
    times = {name: [] for name in steps}
    for batch in batches:
        for name, step in steps.items():
            times[name] += timed(step, [batch])
    median = {name: statistics.median(t[3:]) for name, t in times.items()}
    weam_s, mlm_s = median["weam"], median["two_mlm"]
    tokens = statistics.mean(float(b["src_attention_mask"].sum() + b["tgt_attention_mask"].sum())
                             for b in batches[3:])
    masked = statistics.mean(float((b["src_labels"] != IGNORE).sum() + (b["tgt_labels"] != IGNORE).sum())
                             for b in batches[3:])
    print(f"\ntraining-step benchmark: preset {args.preset}, vocabulary {vocab}, {args.batch} pairs per step, "
          f"max length {args.max_length}, {torch.get_num_threads()} CPU threads, median of {args.steps} steps")
    print(f"  tokens per step (both sides)  {tokens:8.0f}   predicted tokens {masked:.0f}")
    print(f"  WEAM step (both sides + exchange)   {weam_s * 1000:8.1f} ms  {tokens / weam_s:10,.0f} tokens/s")
    print(f"  two HF MLM steps (src, then tgt)    {mlm_s * 1000:8.1f} ms  {tokens / mlm_s:10,.0f} tokens/s")
    print(f"  one HF MLM step, both sides stacked {median['stacked_mlm'] * 1000:8.1f} ms  "
          f"{tokens / median['stacked_mlm']:10,.0f} tokens/s")
    print(f"  weam_ds objective 'mlm' (same path) {median['own_mlm'] * 1000:8.1f} ms  "
          f"{tokens / median['own_mlm']:10,.0f} tokens/s")
    print(f"  WEAM / two MLM steps                {weam_s / mlm_s:8.2f}   (target <= 1.15)")
    print(f"  WEAM / one stacked MLM step         {weam_s / median['stacked_mlm']:8.2f}")
    print(f"  WEAM / weam_ds 'mlm' (the exchange) {weam_s / median['own_mlm']:8.2f}")


if __name__ == "__main__":
    main()
