"""What a resumed run may change: the run directory's ``config.yaml`` (what the checkpoints were trained with)
against the config it is resumed with.

A checkpoint holds weights of one model under one objective, and data-stream positions in one dataset, cut at
one length, drawn in one order by one seed on ``world`` ranks: a change to any of these is refused, naming the
keys, since loading would either fail deep in DeepSpeed or silently continue another run. The rest (learning
rate, schedule, steps, intervals, loader workers, DeepSpeed's settings) apply from the resumed step on: the
LR schedule is rebuilt from the new values (DeepSpeed restores the old one), and the run's log lists what
changed. ``RESUME_RULES`` is the table; the longest prefix of a key decides.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from data_prep.typed_config import ConfigError, to_dict
from weam_ds.config import RunConfig
from weam_ds.run_dir import COMMIT_FILE, RunDir

REFUSED = "refused"
APPLIES = "applies"
RESUME_RULES = {
    "model": REFUSED,                  # the weights' shapes
    "model_vocab": REFUSED,
    "objective": REFUSED,              # its parameters (prior attention) and what the loss means
    "data": REFUSED,                   # datasets, pairs, mixture, max_length, batching: the streams' positions
    "data.workers": APPLIES,
    "data.eval_batches": APPLIES,
    "optimizer": REFUSED,              # betas, eps, weight decay: DeepSpeed restores them with the moments
    "optimizer.lr": APPLIES,
    "schedule": APPLIES,
    "train": APPLIES,                  # steps, intervals, accumulation, clipping, timeouts
    "train.seed": REFUSED,             # the streams' draw order
    "deepspeed": APPLIES,              # e.g. checkpoint.load_universal, to resume on another world size
    "monitor": APPLIES,
    "output_dir": APPLIES,             # the same run directory by definition (a moved one)
}


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted keys to leaf values (lists are leaves)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(_flat(value, path + ".") if isinstance(value, dict) and value else {path: value})
    return out


def _rule(key: str) -> str:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        rule = RESUME_RULES.get(".".join(parts[:n]))
        if rule is not None:
            return rule
    return REFUSED  # a key this table does not know yet: safe until someone decides


def config_changes(run: RunDir, cfg: RunConfig) -> list[tuple[str, object, object]]:
    """``(key, saved, new)`` for every key ``cfg`` changes from the run directory's ``config.yaml``; none
    when the run has no checkpoint to resume. ConfigError naming the keys when one of them is refused."""
    if not run.step_tags() or not run.config.is_file():
        return []
    try:
        saved = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{run.config}: unreadable ({exc.__class__.__name__}); it records what the "
                          "checkpoints were trained with") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{run.config}: not a run config")
    old, new = _flat(saved), _flat(to_dict(cfg))
    changes = [(key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
               if old.get(key) != new.get(key)]
    refused = [f"{key} ({old!r} -> {new!r})" for key, old, new in changes if _rule(key) == REFUSED]
    if refused:
        raise ConfigError(f"{run.checkpoints}: these keys change what the checkpoints mean and cannot change on "
                          f"resume: {'; '.join(refused)} (use a new output_dir, or --no-resume there)")
    return changes


def check_world(tag_dir: Path, world: int) -> None:
    """A checkpoint's optimizer partitions and stream positions are per rank: loading it on another number
    of ranks needs DeepSpeed's universal checkpoint (``checkpoint.load_universal``)."""
    saved = json.loads((tag_dir / COMMIT_FILE).read_text(encoding="utf-8"))["world"]
    if saved != world:
        raise ConfigError(f"{tag_dir}: written by {saved} ranks, this run has {world}: launch {saved}, or convert "
                          "it with deepspeed.checkpoint.ds_to_universal and set "
                          "deepspeed.overrides.checkpoint.load_universal")


def rebuild_schedule(engine, make: Callable, lr: float):
    """The LR schedule from this config's values at the restored step: DeepSpeed restored the checkpoint's
    (its base learning rate included). Returns the new scheduler, which the engine steps from now on."""
    restored = engine.lr_scheduler
    for group in restored.optimizer.param_groups:
        group["initial_lr"] = lr
    # A scheduler built at last_epoch k takes its first step to k + 1.
    engine.lr_scheduler = make(restored.optimizer, last_epoch=restored.last_epoch - 1)
    return engine.lr_scheduler
