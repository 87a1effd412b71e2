"""The execution-path probe: CPU machines get gloo and torch AdamW, and the choice is logged."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import torch

from weam_ds.hardware import apex_available, probe


def test_probe_matches_this_machine(caplog):
    with caplog.at_level(logging.INFO, logger="weam_ds.hardware"):
        hw = probe()
    if torch.cuda.is_available():
        assert (hw.device, hw.dist_backend) == ("cuda", "nccl")
        assert hw.optimizer == ("apex.optimizers.FusedAdam" if apex_available() else "deepspeed.ops.adam.FusedAdam")
    else:
        assert (hw.device, hw.dist_backend, hw.bf16, hw.apex) == ("cpu", "gloo", False, False)
        assert hw.optimizer == "torch.optim.AdamW"
    assert f"with {hw.dist_backend}" in caplog.text and "apex fused kernels" in caplog.text


def test_env_command_prints_the_probe():
    out = subprocess.run([sys.executable, "-m", "weam_ds", "env"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == probe().as_dict()
