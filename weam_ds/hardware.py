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


def probe() -> Hardware:
    cuda = torch.cuda.is_available()
    apex = cuda and apex_available()
    if not cuda:
        optimizer = "torch.optim.AdamW"
    elif apex:
        optimizer = "apex.optimizers.FusedAdam"
    else:
        optimizer = "deepspeed.ops.adam.FusedAdam"
    hw = Hardware(device="cuda" if cuda else "cpu", dist_backend="nccl" if cuda else "gloo",
                  bf16=cuda and torch.cuda.is_bf16_supported(), optimizer=optimizer, apex=apex)
    log.info("execution path: %s with %s, Adam: %s, apex fused kernels: %s",
             hw.device, hw.dist_backend, hw.optimizer, "used" if apex else "not available, using PyTorch/DeepSpeed")
    return hw
