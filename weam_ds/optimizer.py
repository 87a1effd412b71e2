"""The optimizer and its learning-rate schedule: AdamW from the implementation the hardware calls for, weight decay
on the weight matrices only, linear warm-up then linear or cosine decay."""
from __future__ import annotations

import math

import torch

from weam_ds.config import RunConfig
from weam_ds.hardware import Hardware


def lr_lambda(step: int, cfg: RunConfig) -> float:
    """Linear warm-up to the peak, then linear or cosine decay to ``min_lr_ratio`` at the last step."""
    warmup, total, floor = cfg.schedule.warmup_steps, cfg.train.steps, cfg.schedule.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1 - progress if cfg.schedule.decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * shape


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the BERT/RoBERTa convention)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions leave a flat shard: ask for the real shape
        (no_decay if ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_for(ds: dict, hw: Hardware, module: torch.nn.Module, cfg: RunConfig):
    """The optimizer hardware.adam_implementation names: DeepSpeed builds its own from ``ds`` (FusedAdam,
    DeepSpeedCPUAdam when offloading; torch's AdamW on CPUs), apex's FusedAdam is built here."""
    if hw.optimizer == "torch.optim.AdamW":
        ds.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["torch_adam"] = True
    elif hw.optimizer == "apex.optimizers.FusedAdam":
        from apex.optimizers import FusedAdam

        ds.pop("optimizer")
        o = cfg.optimizer
        return FusedAdam(param_groups(module, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                         adam_w_mode=True)
    return None
