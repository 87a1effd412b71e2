r"""The memory planner: will a run fit its GPUs, its nodes' host memory and their NVMe?

``python -m launcher plan --config run.yaml --nnodes N --gpus-per-node P --gpu-mem 80GB [--cpu-mem 1TB]
[--nvme 2TB]`` prints a table per GPU and per node and a verdict; ``launcher run`` makes the same check. One
configuration's figures are launcher.memory's (the model states' equations, the headroom); when the run does not
fit, the planner tries what would: a shipped offload config, activation checkpointing, halvings of the micro-batch
with the accumulation doubled, more nodes.
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from data_prep.manifest import ManifestError, read_manifest
from data_prep.typed_config import ConfigError
from launcher.cluster import ClusterConfig, LaunchShape
from weam_ds.config import DeepSpeedSection, RunConfig

if TYPE_CHECKING:
    from launcher.memory import Capacity, Plan
    from launcher.model_shape import ModelShape

_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}

HEADROOM = 0.10
"""Share of GPU memory, host memory and NVMe that a plan keeps free (see launcher.memory)."""


def parse_size(text: str) -> int:
    """Bytes from a size such as ``80GB``, ``79.6GiB``, ``1TB`` or ``512M``.

    Binary units throughout, the way memory is quoted: K, M, G, T (with or without ``B``, with or without
    ``i``) are powers of 1024, so ``80GB`` = ``80GiB``. An "80 GB" H100 is 80 GiB nominal; nvidia-smi
    shows 79.6 GiB usable, and ``--gpu-mem 79.6GB`` plans against what the driver leaves. Disks are sold in
    decimal units: a "2 TB" NVMe drive holds 1.82 TiB, so give ``--nvme 1.8TB``.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGTP]?)(I?B)?\s*", text.upper())
    if not match or (match[3] and match[3].startswith("I") and not match[2]):
        raise ValueError(f"{text!r} is not a size (e.g. 80GB, 512GiB, 1TB)")
    size = int(float(match[1]) * _UNITS[match[2]])
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return size


def _dataset_vocab(cfg: RunConfig) -> int:
    try:
        return int(read_manifest(cfg.data.datasets[0])["tokenizer"]["vocab_size"])
    except (ManifestError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"data.datasets[0]: cannot read the tokenizer's vocabulary size ({exc})") from None


def plan(cfg: RunConfig, nnodes: int, gpus_per_node: int, gpu_mem: int, cpu_mem: int | None = None,
         nvme: int | None = None, *, device: str = "cuda", vocab_size: int | None = None,
         headroom: float = HEADROOM) -> Plan:
    """The memory plan of ``cfg`` on ``nnodes`` × ``gpus_per_node`` GPUs of ``gpu_mem`` bytes, with
    ``cpu_mem`` bytes of host memory and ``nvme`` bytes of NVMe per node (None: not checked). The run fits when
    every total is at most (1 - ``headroom``) of its memory.

    ``device="cpu"`` plans CPU ranks (``gpus_per_node`` counts ranks per node, ``gpu_mem`` is ignored and
    everything lives in host memory). ``vocab_size`` defaults to the dataset tokenizer's. When the run does
    not fit, ``suggestions`` name what would: a shipped offload config, activation checkpointing, a smaller
    micro-batch with more accumulation, or more nodes."""
    if min(nnodes, gpus_per_node) < 1:
        raise ValueError("nnodes and gpus_per_node must be at least 1")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, not {device!r}")
    if device == "cuda" and gpu_mem <= 0:
        raise ValueError("gpu_mem must be positive")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be at least 0 and below 1, not {headroom}")
    # Imported here: the meta build imports transformers' model code (3 to 4 s of CPU), which a launch that plans
    # nothing (CPU ranks, no gpu_mem) does not pay.
    from launcher.memory import Capacity, evaluate
    from launcher.model_shape import model_shape

    shape = model_shape(cfg.model, vocab_size or _dataset_vocab(cfg), cfg.objective)
    capacity = Capacity(gpu_mem if device == "cuda" else None, cpu_mem, nvme, headroom)
    result = evaluate(cfg, shape, nnodes, gpus_per_node, capacity, device)
    if not result.fits:
        result.suggestions = _suggestions(cfg, shape, nnodes, gpus_per_node, capacity, device)
    return result


def plan_launch(cfg: RunConfig, cluster: ClusterConfig, shape: LaunchShape) -> Plan | None:
    """The memory plan of launching ``cfg`` on ``cluster`` in ``shape``, against the cluster's ``gpu_mem``,
    ``cpu_mem`` and ``nvme`` (ConfigError naming the key that is no size); for a local run without ``gpu_mem``
    this machine's GPU. None where no GPU memory is known (CPU processes, or a cluster without ``gpu_mem``)."""
    sizes = {}
    for key in ("gpu_mem", "cpu_mem", "nvme"):
        try:
            sizes[key] = None if getattr(cluster, key) is None else parse_size(getattr(cluster, key))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if sizes["gpu_mem"] is None and cluster.backend == "local":
        import torch

        if torch.cuda.is_available():
            sizes["gpu_mem"] = torch.cuda.get_device_properties(0).total_memory
    if sizes["gpu_mem"] is None:
        return None
    return plan(cfg, shape.nodes, shape.processes_per_node, sizes["gpu_mem"], sizes["cpu_mem"], sizes["nvme"])


def _micro_batches(cfg: RunConfig) -> list[RunConfig]:
    """Halvings of the micro-batch, with the accumulation doubled so that the batch per step stays."""
    out, d, t = [], cfg.data, cfg.train
    for k in range(1, 12):
        micro = d.micro_batch.halved(k, d.max_length)
        if micro is None:
            break
        data = dataclasses.replace(d, batch_size=micro.pairs, batch_tokens=micro.tokens)
        out.append(dataclasses.replace(cfg, data=data, train=dataclasses.replace(
            t, gradient_accumulation=t.gradient_accumulation << k)))
    return out


def _suggestions(cfg: RunConfig, shape: ModelShape, nnodes: int, gpn: int, capacity: Capacity,
                 device: str) -> list[str]:
    from launcher.memory import deepspeed_setup, evaluate

    precision = "fp16" if deepspeed_setup(cfg, shape, nnodes * gpn, device).precision == "fp16" else "bf16"
    configs: list[tuple[str | None, DeepSpeedSection | None]] = [(None, None)]
    if device == "cuda":
        for kind in ("offload", "nvme"):
            name = f"ds_configs/zero3_{kind}_{precision}.json"
            if name != cfg.deepspeed.config:
                # Only sizes are read here: any existing directory stands in for the NVMe path.
                paths = {"zero_optimization": {k: {"nvme_path": "/"} for k in ("offload_optimizer", "offload_param")}}
                configs.append((name, DeepSpeedSection(name, paths if kind == "nvme" else {})))
    found, failed = [], []
    for name, section in configs:
        base = cfg if section is None else dataclasses.replace(cfg, deepspeed=section)
        result = None
        for checkpointing in sorted({cfg.train.activation_checkpointing, True}):
            variant = dataclasses.replace(base, train=dataclasses.replace(base.train,
                                                                          activation_checkpointing=checkpointing))
            # The largest micro-batch that fits with this config and checkpointing choice.
            for k, smaller in enumerate([variant] + _micro_batches(variant)):
                if name is None and k == 0 and checkpointing == cfg.train.activation_checkpointing:
                    continue
                result = evaluate(smaller, shape, nnodes, gpn, capacity, device)
                if result.fits:
                    found.append(((name, checkpointing != cfg.train.activation_checkpointing, k), smaller, result))
                    break
        if name is not None and not any(f[0][0] == name for f in found) and result is not None:
            failed.append(f"{name}: does not fit, even with activation checkpointing and the smallest micro-batch: "
                          f"{result.reasons[0]}")

    def dominated(a, b) -> bool:  # b needs every change a needs, and a smaller micro-batch
        return a is not b and a[0][0] in (None, b[0][0]) and a[0][1] <= b[0][1] and a[0][2] <= b[0][2]

    found = [f for f in found if not any(dominated(g, f) for g in found)]
    lines = []
    for (name, checkpointing, k), variant, result in sorted(found, key=lambda f: (sum(map(bool, f[0])), f[0][2])):
        what = [name] * (name is not None) + ["activation checkpointing"] * checkpointing
        if k:
            what.append(f"micro-batch {variant.data.micro_batch.describe()} x {variant.train.gradient_accumulation} "
                        "accumulation")
        nvme_path = " (set nvme_path)" if "nvme" in (name or "") else ""
        lines.append(f"{' + '.join(what)}{nvme_path}: {'; '.join(result.reasons)}")
    for nodes in (2 ** k for k in range(13)):
        if nodes > nnodes and evaluate(cfg, shape, nodes, gpn, capacity, device).fits:
            lines.append(f"{nodes} nodes of {gpn} {'GPU' if device == 'cuda' else 'rank'}{'s' * (gpn > 1)} "
                         "with the run as configured")
            break
    if not lines:
        lines.append("nothing tried fits (offload to CPU or NVMe, activation checkpointing, smaller micro-batches, "
                     "up to 4096 nodes)")
    return lines + failed
