"""The execution-path probe: CPU machines get gloo and torch AdamW, and the choice is logged."""
from __future__ import annotations

import json
import logging

import torch
from conftest import fresh_interpreter

from weam_ds.cli import main
from weam_ds.hardware import adam_implementation, apex_available, probe


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


def test_env_command_prints_the_probe(capsys):
    assert main(["env"]) == 0
    assert json.loads(capsys.readouterr().out) == probe().as_dict()


def test_the_optimizer_named_follows_the_deepspeed_config(small_dataset, tmp_path, capsys):
    """``weam_ds env --config`` names what training builds: DeepSpeedCPUAdam whenever the optimizer is
    offloaded (apex or not), apex's FusedAdam for Adam otherwise when apex imports, torch's AdamW on CPUs."""
    from weam_ds.config import deepspeed_config, load_run_config

    from runs import run_config, write_config

    dataset, _, _ = small_dataset
    resolved = {}
    for name in ("zero3_bf16", "zero3_offload_bf16", "zero2_fp16"):
        path = write_config(run_config(dataset, tmp_path / name, deepspeed={"config": f"ds_configs/{name}.json"}),
                            tmp_path)
        resolved[name] = (path, deepspeed_config(load_run_config(path)))
    for apex in (False, True):
        assert adam_implementation("cuda", apex, resolved["zero3_offload_bf16"][1]) == \
            "deepspeed.ops.adam.DeepSpeedCPUAdam"
        fused = "apex.optimizers.FusedAdam" if apex else "deepspeed.ops.adam.FusedAdam"
        assert adam_implementation("cuda", apex, resolved["zero3_bf16"][1]) == fused
        assert adam_implementation("cuda", apex, resolved["zero2_fp16"][1]) == fused
        assert adam_implementation("cpu", apex, resolved["zero3_offload_bf16"][1]) == "torch.optim.AdamW"
    path, ds = resolved["zero3_offload_bf16"]
    assert main(["env", "--config", str(path)]) == 0
    hw = probe()
    assert json.loads(capsys.readouterr().out)["optimizer"] == adam_implementation(hw.device, hw.apex, ds)


def test_deepspeeds_muon_module_is_imported_without_compiling_its_kernels():
    """extensions.import_muon_uncompiled, in a fresh interpreter (this one may have torch's inductor already):
    the module every ZeRO engine imports is there, its kernels not wrapped by torch.compile, torch's inductor
    never imported, and torch.compile itself again afterwards."""
    code = ("import sys, torch\n"
            "from weam_ds.extensions import MUON_MODULE, import_muon_uncompiled\n"
            "compile_ = torch.compile\n"
            "import_muon_uncompiled()\n"
            "from deepspeed.runtime.zero.muon import original_muon\n"
            "print(MUON_MODULE in sys.modules, hasattr(original_muon.zeropower_via_newtonschulz5, '__wrapped__'),\n"
            "      'torch._inductor' in sys.modules, torch.compile is compile_)\n")
    assert fresh_interpreter(code)[-1].split() == ["True", "False", "False", "True"]  # after DeepSpeed's own lines
