"""What a launch gives the training processes, for every backend: the shape (nodes and processes on each, from
the hostfile's slots, SLURM's GPUs or --nproc-per-node), an environment without the launching shell's
credentials, torchrun options the installed torch has, srun's CPUs, SLURM's memory per node, and NVMe offload
paths checked on the nodes that have them. Dry runs; the sbatch script's credentials and srun's CPUs are checked on
the real SLURM cluster (test_slurm_cluster.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from launcher.backends import BACKENDS, Request, shutdown_grace
from launcher.cli import main
from launcher.cluster import is_credential, load_cluster
from launcher.launch import execute
from launcher.planner import parse_size, plan
from torch.distributed.run import get_args_parser
from test_run import HOSTILE, assert_nothing_ran, last_command, launch, workdir, write_run_config  # noqa: F401
from weam_ds.config import load_run_config
from weam_ds.failure import EXIT_BAD_INPUT
from weam_ds.run_dir import RunDir
from weam_ds.train import main as train

CREDENTIALS = {"HF_TOKEN": "hf-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret", "WANDB_API_KEY": "wandb-secret",
               "GOOGLE_APPLICATION_CREDENTIALS": "/home/me/key.json", "TOKEN": "bare-secret"}
"""Credentials in the launching shell: none may reach a rank unless --env gives it."""
LOOK_ALIKES = {"TOKENIZERS_PARALLELISM": "false", "NCCL_IB_PKEY": "0x8001", "HF_HOME": "/shared/hf"}
"""Forwarded variables whose names hold TOKEN or KEY without being credentials."""


def sbatch_text(workdir: Path) -> str:
    return (RunDir(workdir / f"run {HOSTILE}").root / "slurm.sbatch").read_text()


def sbatch_options(text: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_credentials_stay_out_of_the_ranks_environment_on_every_backend(workdir, capsys, monkeypatch, tmp_path):
    for name, value in {**CREDENTIALS, **LOOK_ALIKES}.items():
        monkeypatch.setenv(name, value)
    given = ("--env", "WANDB_API_KEY=given-by-env")

    # deepspeed: .deepspeed_env is what the runner exports on every node.
    code, out, err = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile", *given)
    assert code == 0, err
    exported = dict(line.split("=", 1) for line in (workdir / ".deepspeed_env").read_text().splitlines())
    assert exported.items() >= {**LOOK_ALIKES, "WANDB_API_KEY": "given-by-env"}.items()
    assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "TOKEN"} & set(exported)

    # local and torchrun: the agent hands its own environment to the ranks. The local launch, executed with a
    # command that prints the environment it was started with in place of torchrun's.
    config = workdir / "run.yaml"
    cluster = load_cluster(None, {"backend": "local", "env": {"WANDB_API_KEY": "given-by-env"}})
    local = BACKENDS["local"](Request(config, load_run_config(config), cluster))
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    seen = tmp_path / "agent.out"
    agent = dataclasses.replace(local, argv=[sys.executable, "-c", dump])
    assert execute(agent, RunDir(tmp_path / "run"), dry_run=False, output=seen) == 0
    environment = json.loads(seen.read_text().splitlines()[-1])
    assert environment.items() >= {**LOOK_ALIKES, "WANDB_API_KEY": "given-by-env"}.items()
    assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "TOKEN"} & set(environment)
    assert_nothing_ran(workdir)


def test_deepspeed_runs_and_plans_the_hostfiles_slots(workdir, capsys):
    """A hostfile of 2 hosts x slots=8 is 16 ranks, whatever this machine's GPUs."""
    code, _, err = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile", "--gpu-mem", "80GB",
                          "--cpu-mem", "1GB")
    assert code == 1 and "cluster: 2 nodes x 8 GPUs = 16 ranks" in err  # the plan the launch was refused by

    code, out, _ = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile")
    assert code == 0 and "launcher: 2 nodes x 8 processes per node = 16 ranks" in out.splitlines()
    assert not any(word.startswith("--num_gpus") for word in last_command(out))  # each host's slots

    code, out, _ = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile", "--nproc-per-node", "4")
    assert code == 0 and "--num_gpus=4" in last_command(out) and "= 8 ranks" in out

    code, out, err = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile", "--nproc-per-node", "16")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "nproc_per_node: 16 processes per node, but hostfile gives node-a slots=8" in err

    (workdir / "hostfile").write_text("node-a slots=8\nnode-b slots=4\n")
    code, out, _ = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile")
    assert code == 0 and "2 nodes x unequal processes per node (8 + 4) = 12 ranks" in out
    assert "memory plan counts 8 processes on every node" in out
    assert not any(word.startswith("--num_gpus") for word in last_command(out))


def test_torchrun_gets_shutdown_timeout_only_where_its_parser_has_it(workdir, capsys):
    code, out, _ = launch(capsys, "--backend", "local")
    words = last_command(out)
    torchrun_args = words[words.index("torch.distributed.run") + 1:]
    # The installed torchrun takes what it is given (an older one would refuse an option it lacks).
    assert code == 0 and get_args_parser().parse_args(torchrun_args).shutdown_timeout == 120

    older = argparse.ArgumentParser()  # torchrun's options before pytorch#172596
    older.add_argument("--max-restarts", "--max_restarts", type=int)
    older.add_argument("--nproc-per-node", "--nproc_per_node")
    assert shutdown_grace(get_args_parser(), 120) == (["--shutdown-timeout=120"], [])
    arguments, notes = shutdown_grace(older, 120)
    assert arguments == [] and len(notes) == 1 and "torch's default grace period" in notes[0] and "120 s" in notes[0]


def test_nvme_offload_is_checked_on_the_nodes_not_where_the_job_is_submitted(small_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    """The shipped NVMe config points at /local_nvme, which this machine lacks, as a login node would."""
    dataset, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    config = write_run_config(tmp_path, dataset, tmp_path / "nvme", steps=4)
    config.write_text(config.read_text().replace("ds_configs/cpu.json", "ds_configs/zero3_nvme_bf16.json"))
    assert not Path("/local_nvme").exists()
    args = ["run", "--config", str(config), "--dry-run", "--gpu-mem", "80GB"]
    assert main([*args, "--backend", "slurm", "--nnodes", "2", "--gpus-per-node", "8"]) == 0  # planned, written
    (tmp_path / "hostfile").write_text("node-a slots=8\n")
    assert main([*args, "--backend", "deepspeed", "--hostfile", "hostfile"]) == 0
    capsys.readouterr()
    # Where the processes start here, and on each node as its training starts: one line naming node and path.
    node = f"'/local_nvme' is not a directory on node {socket.gethostname()}"
    assert main([*args, "--backend", "local"]) == 2
    assert node in capsys.readouterr().err
    assert train(["--config", str(config)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "nvme_path" in err and node in err


def test_slurm_requests_the_planned_host_memory_per_node(workdir, capsys):
    """--mem: slurm.mem, else the memory plan's host memory per node (its headroom included) rounded up to GiB,
    else 0 (all) with --exclusive, else nothing (the site's default)."""
    base = ["--backend", "slurm", "--nnodes", "2", "--gpus-per-node", "8"]
    code, _, err = launch(capsys, *base, "--gpu-mem", "80GB", "--cpu-mem", "1TB", "--exclusive")
    assert code == 0, err
    text = sbatch_text(workdir)
    planned = plan(load_run_config(workdir / "run.yaml"), 2, 8, parse_size("80GB"), parse_size("1TB"))
    assert planned.host_bytes_per_node > planned.totals["host"]
    assert f"--mem={math.ceil(planned.host_bytes_per_node / 2**30)}G" in sbatch_options(text)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0

    (workdir / "cluster.yaml").write_text(yaml.safe_dump({"backend": "slurm", "slurm": {"mem": "500G"}}))
    assert launch(capsys, "--cluster", "cluster.yaml", *base, "--gpu-mem", "80GB")[0] == 0
    assert "--mem=500G" in sbatch_options(sbatch_text(workdir))
    assert launch(capsys, *base, "--exclusive")[0] == 0
    assert "--mem=0" in sbatch_options(sbatch_text(workdir))
    assert launch(capsys, *base)[0] == 0
    assert not any(option.startswith("--mem") for option in sbatch_options(sbatch_text(workdir)))

    (workdir / "cluster.yaml").write_text(yaml.safe_dump({"backend": "slurm", "slurm": {"mem": "lots"}}))
    code, _, err = launch(capsys, "--cluster", "cluster.yaml", *base)
    assert code == 2 and "cluster.yaml: slurm.mem: 'lots' is not sbatch's --mem" in err


def test_credential_names_are_whole_words_at_the_end():
    credentials = ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "DB_PASSWORD",
                   "GOOGLE_APPLICATION_CREDENTIALS", "token"]
    others = ["TOKENIZERS_PARALLELISM", "NCCL_IB_PKEY", "HF_TOKEN_PATH", "KEYBOARD", "NCCL_SOCKET_IFNAME"]
    assert [name for name in credentials + others if is_credential(name)] == credentials
