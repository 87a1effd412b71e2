"""One function per backend: a run config and a cluster description in, the launch out: the command as an
argv list (run without a shell), the environment it adds, and the files it needs first.

Where text is written for a shell (the sbatch script, and ``.deepspeed_env``, which the DeepSpeed runner
pastes into a remote shell command), every value is quoted for that shell; values that cannot be quoted
there are refused. Host names are checked where they are read (launcher.hostfile, launcher.cluster).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from data_prep.typed_config import ConfigError
from launcher.cluster import ClusterConfig, is_credential, parse_endpoint
from launcher.hostfile import read_hostfile
from launcher.slurm import sbatch_script
from weam_ds.run_dir import RunDir

if TYPE_CHECKING:
    from weam_ds.config import RunConfig

FORWARDED_PREFIXES = ("NCCL_", "GLOO_", "TORCH_", "PYTORCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "UCX_", "FI_")
FORWARDED_NAMES = ("PYTHONPATH", "OMP_NUM_THREADS")
"""Variables of the launching shell that every node's training processes get (the usual ones that go missing
on other nodes). Credentials are left out (launcher.cluster.CREDENTIAL_NAME): pass those with --env if a run
needs them."""
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""For every torchrun agent. By default the workers' process group lives in the agent's rendezvous store, which
outlives a restart: the restarted workers then read the last attempt's addresses and wait forever (gloo), or
fail to connect (NCCL; pytorch/pytorch#135712). With this, each attempt gets a fresh store."""
DEEPSPEED_PORT = 29500
# What the DeepSpeed runner passes to a remote shell unquoted (pdsh: ``cd <cwd>; ... --config <path>``).
_DEEPSPEED_SAFE = re.compile(r"[\w@%+=:,./-]+")
_DOUBLE_QUOTE_SPECIAL = re.compile(r'([\\$`"])')


@dataclass(frozen=True)
class Request:
    config: Path
    """The run config, as an absolute path (every node and the sbatch script read it from there)."""
    run: RunConfig
    cluster: ClusterConfig
    host_memory: int | None = None
    """The memory plan's host memory per node in bytes (launcher.memory's ``Plan.host_bytes_per_node``: the need
    with the headroom on top); None where no plan was made. SLURM requests it (--mem)."""


@dataclass(frozen=True)
class LaunchFile:
    path: Path
    text: str
    mode: int = 0o600
    """Private by default: the file may hold the environment's values."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Added to this machine's environment for ``argv``."""
    files: list[LaunchFile] = field(default_factory=list)
    """Written before ``argv`` runs, on a dry run too."""
    waits: bool = True
    """False when ``argv`` only submits the job (sbatch) and returns."""
    notes: list[str] = field(default_factory=list)
    shows: Path | None = None
    """A file that a dry run prints whole (the sbatch script)."""
    stops_its_ranks: bool = False
    """``argv`` itself, given SIGTERM, stops the ranks on every node (the DeepSpeed runner: its kill command
    through pdsh); otherwise the launcher stops the ranks below the agent (torchrun)."""


def run_environment(cluster: ClusterConfig) -> dict[str, str]:
    """What the training processes get on every node: the forwarded variables of this shell, then the
    cluster's ``env`` (``--env`` included) over them."""
    env = {k: v for k, v in os.environ.items()
           if (k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES) and not is_credential(k)}
    env.update(cluster.env)
    return env


def _trainer(req: Request) -> list[str]:
    """The module every rank runs, and its arguments."""
    return ["weam_ds.train", "--config", str(req.config)]


def shutdown_grace(torchrun: argparse.ArgumentParser, seconds: int) -> tuple[list[str], list[str]]:
    """torchrun's arguments that give the training processes ``seconds`` between SIGTERM and SIGKILL, and the
    launch's notes. ``--shutdown-timeout`` is recent (pytorch#172596; the TORCH_ELASTIC_SHUTDOWN_TIMEOUT
    variable came with it), so a torch without it is told nothing and keeps its own grace period."""
    # argparse lists a parser's options nowhere public; this mapping is what parse_args itself reads.
    if "--shutdown-timeout" in torchrun._option_string_actions:
        return [f"--shutdown-timeout={seconds}"], []
    return [], [f"this torch's torchrun has no --shutdown-timeout: the training processes get torch's default grace "
                f"period after SIGTERM (30 s), not shutdown_timeout ({seconds} s), to checkpoint"]


@functools.cache
def _installed_torchrun() -> argparse.ArgumentParser:
    """The installed torch's torchrun parser; every node runs the same Python (sys.executable)."""
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def _torchrun_tail(req: Request) -> tuple[list[str], list[str]]:
    """torchrun's arguments after where the processes run (restarts, shutdown, and the trainer), and notes."""
    c = req.cluster
    shutdown, notes = shutdown_grace(_installed_torchrun(), c.shutdown_timeout)
    return [f"--max-restarts={c.restarts}", *shutdown, "-m", *_trainer(req)], notes


def _torchrun(req: Request, placement: list[str], notes: list[str]) -> Launch:
    """A torchrun agent on this machine: ``placement`` says where its processes run."""
    tail, tail_notes = _torchrun_tail(req)
    return Launch([sys.executable, "-m", "torch.distributed.run", *placement, *tail],
                  env={**TORCHRUN_ENV, **req.cluster.env}, notes=[req.cluster.shape().describe(), *notes, *tail_notes])


def _local(req: Request) -> Launch:
    per_node = req.cluster.shape().processes_per_node
    return _torchrun(req, ["--standalone", "--nnodes=1", f"--nproc-per-node={per_node}"], [])


def _addresses(host: str, key: str = "rdzv_endpoint") -> set[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConfigError(f"{key}: {host} does not resolve on this machine ({exc.strerror})") from None
    return {info[4][0] for info in infos}


def _hosts_store(host: str) -> bool | None:
    """Whether the rendezvous store belongs on this machine: its address is one of this machine's. None for a
    loopback endpoint, where torchrun decides (several agents on one machine share it)."""
    addresses = _addresses(host)
    if all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return None
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as s:
            try:
                s.bind((address, 0))
                return True
            except OSError:
                continue
    return False


def _torchrun_nodes(req: Request) -> Launch:
    c = req.cluster
    if c.rdzv_endpoint is None:  # one node (more need an endpoint: ClusterConfig says so)
        return _local(req)
    host, _ = parse_endpoint(c.rdzv_endpoint)
    # The same id on every node (they read the same run config), another for another run.
    run_id = "weam-" + hashlib.sha256(req.run.output_dir.encode()).hexdigest()[:12]
    shape = c.shape()
    placement = [f"--nnodes={shape.nodes}", f"--nproc-per-node={shape.processes_per_node}",
                 "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={c.rdzv_endpoint}", f"--rdzv-id={run_id}"]
    notes = []
    if c.local_addr is not None:
        placement.append(f"--local-addr={c.local_addr}")
    hosts_store = _hosts_store(host)
    if hosts_store is None and c.local_addr is not None:
        # Agents on one machine, each with its own address: the one whose address is the endpoint's holds it.
        placement.append(f"--rdzv-conf=is_host={int(_addresses(c.local_addr, 'local_addr') <= _addresses(host))}")
    elif hosts_store is None:
        notes.append(f"the rendezvous endpoint {host} is a loopback address: only agents on this machine can join")
    else:
        # torchrun guesses this from host names, and every node waits forever when the endpoint's address is
        # on another interface than the one the head's name resolves to.
        placement.append(f"--rdzv-conf=is_host={int(hosts_store)}")
    return _torchrun(req, placement, notes)


def deepspeed_env_text(env: dict[str, str]) -> str:
    """``.deepspeed_env``: ``KEY=VALUE`` lines, which the runner strips and, when a value has a character
    outside ``[\\w@%+=:,./-]``, wraps in double quotes for the remote shell (``export KEY="VALUE"; ...``).
    Inside double quotes only ``\\ $ ` "`` are special, so they are escaped: an escaped value always gets
    wrapped, and arrives intact."""
    lines = []
    for key, value in env.items():
        if value != value.strip() or "\n" in value or "\r" in value:
            raise ConfigError(f"env.{key}: {value!r} cannot pass through .deepspeed_env (the DeepSpeed runner "
                              "reads one line per variable and strips it)")
        lines.append(key + "=" + _DOUBLE_QUOTE_SPECIAL.sub(r"\\\1", value) + "\n")
    return "".join(lines)


def _deepspeed(req: Request) -> Launch:
    c = req.cluster
    shape = c.shape()  # reads the hostfile
    if c.rdzv_endpoint is not None:
        master, port = parse_endpoint(c.rdzv_endpoint)
    else:  # not the runner's guess: it takes the first address `hostname -I` prints on that host
        master, port = read_hostfile(c.hostfile)[0].name, DEEPSPEED_PORT
    workdir = os.getcwd()
    for what, text in (("config", str(req.config)), ("working directory", workdir)):
        if not _DEEPSPEED_SAFE.fullmatch(text):
            raise ConfigError(f"{what}: {text!r}: the DeepSpeed runner passes it to a remote shell unquoted; use a "
                              "path of letters, digits and @%+=:,./-_ only")
    argv = [sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={os.path.abspath(c.hostfile)}",
            "--force_multi", f"--master_addr={master}", f"--master_port={port}", f"--num_nodes={shape.nodes}"]
    if c.nproc_per_node is not None:  # the runner starts this many on every host, whatever its slots say
        argv.append(f"--num_gpus={shape.processes_per_node}")
    argv += ["--module", *_trainer(req)]
    # The runner reads .deepspeed_env (or $DS_ENV_FILE) from the directory it starts in, and ~ (runner.py).
    env_file = Path(workdir, os.environ.get("DS_ENV_FILE", ".deepspeed_env"))
    env = run_environment(c)
    text = deepspeed_env_text(env)
    replaced = env_file.exists() and env_file.read_text(encoding="utf-8", errors="replace") != text
    note = (f"{env_file}: {len(env)} environment variables for every node (the DeepSpeed runner reads "
            f"this file from the directory it starts in){'; it replaces the file that was there' if replaced else ''}")
    where = f"master {master}:{port}" + ("" if c.rdzv_endpoint else " (the hostfile's first host; --rdzv-endpoint "
                                                                      "chooses another address)")
    notes = [shape.describe(), note, where]
    if not shape.equal:
        notes.insert(1, f"the hosts have unequal slots: the DeepSpeed runner starts each host's slots, and the "
                        f"memory plan counts {shape.processes_per_node} processes on every node (the most on one)")
    return Launch(argv, files=[LaunchFile(env_file, text)], notes=notes, stops_its_ranks=True)


def _slurm(req: Request) -> Launch:
    c = req.cluster
    run = RunDir(Path(os.path.abspath(req.run.output_dir)))
    script = run.sbatch_script
    shape = c.shape()
    tail, notes = _torchrun_tail(req)
    text = sbatch_script(torchrun=[f"--nnodes={shape.nodes}", f"--nproc-per-node={shape.processes_per_node}", *tail],
                         workdir=Path(os.getcwd()), run=run, cluster=c, env={**TORCHRUN_ENV, **run_environment(c)},
                         host_memory=req.host_memory)
    return Launch(["sbatch", str(script)], files=[LaunchFile(script, text, 0o700)], waits=False, shows=script,
                  notes=[shape.describe(), f"{script}: the job script; logs in {run.log(0).parent}", *notes])


BACKENDS: dict[str, Callable[[Request], Launch]] = {
    "local": _local,
    "torchrun": _torchrun_nodes,
    "deepspeed": _deepspeed,
    "slurm": _slurm,
}
"""Per backend of launcher.cluster.BACKEND_NAMES (in its order), the function that builds its launch."""
