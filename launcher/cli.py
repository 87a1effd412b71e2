"""``python -m launcher COMMAND``: cluster-side commands."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from data_prep import PrepError
from data_prep.typed_config import ConfigError
from launcher import __version__
from launcher.backends import BACKENDS, Request
from launcher.cluster import load_cluster
from launcher.hostfile import HostfileError, read_hostfile
from launcher.launch import execute
from weam_ds.config import load_run_config
from weam_ds.peak_flops import PEAK_TFLOPS
from weam_ds.registry import RegistryError
from weam_ds.run_dir import RunDir


def _hosts(args) -> int:
    hosts = read_hostfile(args.hostfile)
    for h in hosts:
        print(f"{h.name}\t{h.slots}")
    print(f"{len(hosts)} nodes, world size {sum(h.slots for h in hosts)}")
    return 0


def _plan(args) -> int:
    from launcher.planner import HEADROOM, parse_size, plan

    try:
        sizes = [None if v is None else parse_size(v) for v in (args.gpu_mem, args.cpu_mem, args.nvme)]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if min(args.nnodes, args.gpus_per_node) < 1:
        raise ConfigError("--nnodes and --gpus-per-node must be at least 1")
    headroom = HEADROOM if args.headroom is None else args.headroom
    if not 0 <= headroom < 1:
        raise ConfigError(f"--headroom must be at least 0 and below 1, not {headroom}")
    result = plan(load_run_config(args.config), args.nnodes, args.gpus_per_node, *sizes, headroom=headroom)
    print(result.report())
    return 0 if result.fits else 1


def _plan_parser(commands) -> None:
    plan = commands.add_parser("plan", help="will a run fit: GPU, host and NVMe memory per GPU and per node "
                                            "(exit 0 fits, 1 does not)")
    plan.add_argument("--config", required=True, help="the run config (run.yaml)")
    plan.add_argument("--nnodes", type=int, required=True)
    plan.add_argument("--gpus-per-node", type=int, required=True)
    plan.add_argument("--gpu-mem", required=True, help="memory per GPU, e.g. 80GB (binary units: GB = GiB)")
    plan.add_argument("--cpu-mem", help="host memory per node, e.g. 1TB (default: not checked)")
    plan.add_argument("--nvme", help="NVMe per node, e.g. 1.8TB (default: not checked)")
    plan.add_argument("--headroom", type=float, help="share of each memory kept free: a run fits when every total "
                                                     "is within (1 - headroom) of it (default 0.10)")


_CLUSTER_FLAGS = ("backend", "nnodes", "nproc_per_node", "hostfile", "rdzv_endpoint", "local_addr", "max_restarts",
                  "gpu_mem", "cpu_mem", "nvme")
_SLURM_FLAGS = ("partition", "account", "time", "gpus_per_node", "cpus_per_task", "exclusive")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _run(args) -> int:
    from launcher.planner import plan_launch

    flags = {name: getattr(args, name) for name in _CLUSTER_FLAGS if getattr(args, name) is not None}
    if args.env:
        flags["env"] = dict(args.env)
    slurm = {name: getattr(args, name) for name in _SLURM_FLAGS if getattr(args, name) is not None}
    if slurm:
        flags["slurm"] = slurm
    cluster = load_cluster(args.cluster, flags)
    shape = cluster.shape()  # with deepspeed, the hostfile is read and checked here
    # An NVMe mount is a node's: the training checks it on every node when the processes start elsewhere.
    cfg = load_run_config(args.config, nvme_here=cluster.runs_here)
    fit = plan_launch(cfg, cluster, shape)
    if fit is None and cluster.backend != "local":
        print("launcher: memory not planned (give gpu_mem in the cluster file, or --gpu-mem)")
    if fit is not None and not fit.fits:
        print(fit.report(), file=sys.stderr)
        print("launcher: error: the run does not fit (plan above); nothing launched", file=sys.stderr)
        return 1
    host_memory = fit.host_bytes_per_node if fit is not None else None
    launch = BACKENDS[cluster.backend](Request(Path(os.path.abspath(args.config)), cfg, cluster, host_memory))
    return execute(launch, RunDir(Path(cfg.output_dir)), args.dry_run)


def _run_parser(commands) -> None:
    run = commands.add_parser("run", help="launch weam_ds.train: on this machine, with torchrun across nodes, "
                                          "with the DeepSpeed runner over a hostfile, or as a SLURM job")
    run.add_argument("--config", required=True, help="the run config (run.yaml), as weam_ds.train reads it")
    run.add_argument("--backend", choices=list(BACKENDS), help="default: the cluster file's backend")
    run.add_argument("--cluster", help="a cluster YAML (docs/launching.md); the flags below override it")
    run.add_argument("--nnodes", type=int)
    run.add_argument("--nproc-per-node", type=int, help="processes per node (default: its GPUs, or 1)")
    run.add_argument("--hostfile", help="deepspeed: '<host> slots=<n>' per line")
    run.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="torchrun: the rendezvous store, the same on "
                                                                  "every node; deepspeed: the master address")
    run.add_argument("--local-addr", metavar="ADDRESS", help="torchrun: this node's address that the others reach "
                                                             "(default: torchrun's guess from the host name)")
    run.add_argument("--max-restarts", type=int, help="torchrun's elastic restarts (default 3 on several nodes)")
    run.add_argument("--env", nargs="+", action="extend", type=_key_value, metavar="KEY=VALUE",
                     help="environment variables for the training processes on every node")
    run.add_argument("--gpu-mem", help="memory per GPU for the memory planner's check, e.g. 80GB (default: this "
                                       "machine's GPU for a local run, else not checked)")
    run.add_argument("--cpu-mem", help="host memory per node for the planner, e.g. 1TB")
    run.add_argument("--nvme", help="NVMe space per node for the planner, e.g. 1.8TB")
    run.add_argument("--dry-run", action="store_true", help="write the files and print the command; start nothing")
    slurm = run.add_argument_group("slurm")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", help="the time limit, as sbatch takes it (HH:MM:SS, D-HH:MM ...)")
    slurm.add_argument("--gpus-per-node", type=int)
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None)


def _prep(args) -> int:
    from data_prep.config import load_config
    from launcher.prep_slurm import submit

    if args.chunks_per_task is not None and args.chunks_per_task < 1:
        raise ConfigError("--chunks-per-task: must be at least 1")
    cfg = load_config(args.config)
    # One process per job: the training's processes per node (which the file may leave out) mean nothing here.
    cluster = load_cluster(args.cluster, {"backend": "slurm", "nproc_per_node": 1})
    submit(Path(args.config), cfg, cluster, args.chunks_per_task)
    return 0


def _prep_parser(commands) -> None:
    prep = commands.add_parser("prep", help="build a data_prep dataset as SLURM jobs: a prepare job, an array of "
                                            "align+encode tasks, a final job (docs/dataset.md)")
    prep.add_argument("--config", required=True, help="prep.yaml, as `python -m data_prep` reads it")
    prep.add_argument("--cluster", required=True, help="the cluster file (partition, time, nnodes ...), as "
                                                       "`launcher run --cluster` reads it")
    prep.add_argument("--chunks-per-task", type=int,
                      help="chunks per array task (default: the chunks spread over the cluster's nnodes)")


def _study(args) -> int:
    from launcher import study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.study_command == "status":
        return study.status(Path(args.study_file))
    if args.study_command == "step":
        from launcher.study_slurm import step

        return step(Path(args.study_file), args.cell, args.unit)
    if args.study_command == "plan":
        from launcher import study_plan

        mfu = study_plan.MFU if args.mfu is None else args.mfu
        return study_plan.main(Path(args.study_file), mfu, args.gpu, args.peak_tflops)
    return study.run(Path(args.study_file), retry_failed=args.retry_failed, dry_run=args.dry_run)


def _study_parser(commands) -> None:
    study = commands.add_parser("study", help="the scaling study: a grid of runs trained, exported and evaluated, "
                                              "its results in registry.sqlite")
    steps = study.add_subparsers(dest="study_command", required=True)
    run = steps.add_parser("run", help="run every cell not evaluated yet (resuming interrupted ones)")
    run.add_argument("study_file", help="study.yaml (docs/study.md)")
    run.add_argument("--retry-failed", action="store_true", help="also run the cells that failed before")
    run.add_argument("--dry-run", action="store_true", help="slurm: write the job scripts and print the sbatch "
                                                            "commands; submit nothing")
    status = steps.add_parser("status", help="every cell's state, step, cost and headline score")
    status.add_argument("study_file", help="study.yaml")
    plan = steps.add_parser("plan", help="what the study will cost, running nothing: per cell steps, tokens, "
                                         "training FLOPs and GPU-hours, the memory planner's verdict, and the "
                                         "evaluation's fine-tuning FLOPs and GPU-hours (exit 1 when a cell is "
                                         "refused)")
    plan.add_argument("study_file", help="study.yaml")
    plan.add_argument("--mfu", type=float, help="the model FLOPs utilisation the GPU-hours assume, as a share "
                                                "(default 0.4)")
    plan.add_argument("--gpu", choices=list(PEAK_TFLOPS), help="the GPU model, for its peak FLOP/s (default: "
                                                               "the study's launch.gpu)")
    plan.add_argument("--peak-tflops", type=float, help="dense peak TFLOP/s per GPU, for a GPU not listed")
    step = steps.add_parser("step", help="one unit of a cell's evaluation (export, squad-seed<k>, <task>-seed<k>), "
                                         "inside the job that `study run` submits for it; leaves units/<unit>.json")
    step.add_argument("study_file", help="study.yaml")
    step.add_argument("--cell", required=True, help="the cell's name (its directory under cells/)")
    step.add_argument("--unit", required=True, help="the evaluation unit (launcher.cells.evaluation_units)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher", description="Launch weam-ds runs on clusters.")
    parser.add_argument("--version", action="version", version=f"weam-ds launcher {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    hosts = commands.add_parser("hosts", help="check a DeepSpeed hostfile and print its nodes and world size")
    hosts.add_argument("hostfile")
    _run_parser(commands)
    _plan_parser(commands)
    _prep_parser(commands)
    _study_parser(commands)
    args = parser.parse_args(argv)
    try:
        return {"hosts": _hosts, "run": _run, "plan": _plan, "prep": _prep, "study": _study}[args.command](args)
    except (HostfileError, ConfigError, RegistryError, PrepError) as exc:
        print(f"launcher: error: {exc}", file=sys.stderr)
        return 2
