"""Which execution paths this machine supports: device, collective backend, precision, fused kernels.

The same code runs on a CPU laptop (gloo, fp32, torch AdamW) and on GPU clusters (NCCL, bf16, fused
Adam). NVIDIA apex is optional: its fused kernels are used only when ``apex`` imports with them, and
the chosen path is logged. (The PyPI package named ``apex`` is an unrelated project, hence the check
for apex's own submodules rather than the bare import.)
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import asdict, dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    device: str
    """'cuda' or 'cpu'."""
    dist_backend: str
    """torch.distributed backend: 'nccl' on GPUs, 'gloo' on CPUs."""
    bf16: bool
    """The device has native bf16 matrix kernels."""
    optimizer: str
    """The Adam implementation training will use."""
    apex: bool
    """NVIDIA apex's fused kernels are importable."""

    def as_dict(self) -> dict:
        return asdict(self)


def apex_available() -> bool:
    try:
        importlib.import_module("apex.normalization")
        importlib.import_module("apex.optimizers")
    except ImportError:
        return False
    return True


def adam_implementation(device: str, apex: bool, ds: dict | None = None) -> str:
    """The optimizer training builds for DeepSpeed config ``ds`` (default: a shipped one, Adam without
    offload): torch's AdamW on CPUs; DeepSpeedCPUAdam when the optimizer is offloaded; apex's FusedAdam for
    Adam when apex is importable; DeepSpeed's FusedAdam otherwise (or its implementation of another type)."""
    if device == "cpu":
        return "torch.optim.AdamW"
    ds = ds if ds is not None else {"optimizer": {"type": "AdamW"}}
    if ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") in ("cpu", "nvme"):
        return "deepspeed.ops.adam.DeepSpeedCPUAdam"
    kind = str(ds.get("optimizer", {}).get("type", "")).lower()
    if kind not in ("adam", "adamw"):
        return f"deepspeed: {kind or 'no optimizer section'}"
    return "apex.optimizers.FusedAdam" if apex else "deepspeed.ops.adam.FusedAdam"


def probe(ds: dict | None = None) -> Hardware:
    """This machine's path; ``ds`` (a resolved DeepSpeed config) decides the optimizer as training will."""
    cuda = torch.cuda.is_available()
    apex = cuda and apex_available()
    device = "cuda" if cuda else "cpu"
    hw = Hardware(device=device, dist_backend="nccl" if cuda else "gloo",
                  bf16=cuda and torch.cuda.is_bf16_supported(), optimizer=adam_implementation(device, apex, ds),
                  apex=apex)
    log.info("execution path: %s with %s, Adam: %s, apex fused kernels: %s",
             hw.device, hw.dist_backend, hw.optimizer, "used" if apex else "not available, using PyTorch/DeepSpeed")
    return hw
