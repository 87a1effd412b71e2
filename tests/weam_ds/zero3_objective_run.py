"""Run by test_objective_zero3.py in a fresh process (DeepSpeed's distributed state is global): one
gloo rank trains the WEAM objective under ZeRO-3 and prints what the test checks, as JSON."""
from __future__ import annotations

import json
import os
import sys

import deepspeed
import numpy as np
import torch
from transformers import AutoModelForMaskedLM, XLMRobertaConfig
from transformers.integrations import HfDeepSpeedConfig

from weam_ds.batch import TokenInfo, collate, mask_batch
from weam_ds.config import MaskingConfig, ObjectiveConfig
from weam_ds.extensions import before_deepspeed
from weam_ds.objective import PretrainingObjective
from weam_ds.optimizer import param_groups


def main(port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    ds = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    before_deepspeed()  # as weam_ds.train: no ~75 s C++ build on CPU of an op it never uses
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 (must stay alive while the model is built: ZeRO-3 construction)
    vocab = 100
    model = AutoModelForMaskedLM.from_config(XLMRobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40))
    emb, decoder = model.base_model.embeddings.word_embeddings.weight, model.lm_head.decoder.weight
    obj = PretrainingObjective(model, ObjectiveConfig(exchange="prior_attention"))
    decay, no_decay = param_groups(obj, 0.01)  # the trainer's weight-decay split, on partitioned parameters
    engine, *_ = deepspeed.initialize(model=obj, model_parameters=list(obj.parameters()), config=ds)
    watched = [obj.exchange.query.weight, emb]
    with deepspeed.zero.GatheredParameters(watched):
        before = [p.detach().clone() for p in watched]

    info = TokenInfo(vocab, 1, 0, 2, 4, torch.arange(vocab) < 5, torch.ones(vocab, dtype=torch.bool))
    rng = np.random.default_rng(0)
    samples = [{"src_ids": np.r_[0, rng.integers(5, vocab, 10), 2], "tgt_ids": np.r_[0, rng.integers(5, vocab, 9), 2],
                "align": np.array([[k, k] for k in range(1, 10)])} for _ in range(4)]
    batch = mask_batch(collate(samples, info, 16), info, MaskingConfig(rate=0.4), torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        out = engine(batch)
        engine.backward(out.loss)
        engine.step()
        losses.append([out.loss.item(), out.xpred.item()])
    with deepspeed.zero.GatheredParameters(watched):
        changed = [float((p - b).abs().max()) for p, b in zip(watched, before)]
    print(json.dumps({"partitioned": hasattr(emb, "ds_id"), "tied": decoder is emb, "losses": losses,
                      "changed": changed, "decayed_matrices": sum(len(p.ds_shape) == 2 for p in decay["params"]),
                      "decayed_vectors": sum(len(p.ds_shape) < 2 for p in decay["params"]),
                      "undecayed_matrices": sum(len(p.ds_shape) == 2 for p in no_decay["params"])}))


if __name__ == "__main__":
    main(sys.argv[1])
