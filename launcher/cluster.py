"""The cluster description: where and how one run config is launched.

Read from a YAML file that a team keeps per cluster (``--cluster cluster.yaml``) with the command line's
flags over it, and validated strictly like every config tree of the project (data_prep.typed_config):
an unknown key, a wrong type or a setting the chosen backend would ignore is an error naming the key.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from data_prep.typed_config import ConfigError, from_dict, read_yaml
from launcher.hostfile import HOST_NAME, read_hostfile
from weam_ds.peak_flops import PEAK_TFLOPS

BACKEND_NAMES = ("local", "torchrun", "deepspeed", "slurm")
"""The backends a cluster file can name (``ClusterConfig.backend`` says what each is); launcher.backends.BACKENDS
builds each one's launch. Here, below the launches, because the config is checked before any launch exists."""
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENDPOINT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\[\]:]+)):(?P<port>\d{1,5})")
_SLURM_TIME = re.compile(r"\d+(-\d+)?(:\d+){0,2}")
_SLURM_MEMORY = re.compile(r"\d+[KMGT]?")
CREDENTIAL_NAME = r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|KEY_ID|CREDENTIALS?)$"
"""Names of credentials, which the training processes never get from the launching shell (only from ``env``):
one of these words at the end of the name (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``WANDB_API_KEY``,
``GOOGLE_APPLICATION_CREDENTIALS``) or as the whole name, in any case. A word inside a name is no credential:
``TOKENIZERS_PARALLELISM`` and ``NCCL_IB_PKEY`` travel. POSIX extended syntax, so that the sbatch script
matches it with bash's ``=~`` as this module does with ``re``."""


def is_credential(name: str) -> bool:
    return re.search(CREDENTIAL_NAME, name.upper()) is not None


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if not is_credential(key)}


@dataclass
class SlurmConfig:
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    """The job's time limit in sbatch's format: ``MM``, ``HH:MM:SS``, ``D-HH:MM`` ..."""
    gpus_per_node: int | None = None
    """GPUs requested per node; also the processes per node unless ``nproc_per_node`` says otherwise."""
    cpus_per_task: int | None = None
    """CPUs per task; there is one task per node (its torchrun agent starts the node's processes)."""
    exclusive: bool = False
    mem: str | int | None = None
    """Memory per node as sbatch's ``--mem`` takes it (``500G``; ``0``: all of the node's). Default: the memory
    plan's host memory per node rounded up to GiB (when ``gpu_mem`` is given), else ``0`` with ``exclusive``,
    else the site's default."""
    signal_seconds: int = 300
    """This long before the time limit the job is told to stop: the training processes get SIGTERM,
    checkpoint at their next step boundary, and the job requeues itself to continue."""
    rdzv_port: int | None = None
    """The rendezvous port on the head node; default 29500 + the job id modulo 1000, so that jobs sharing
    a node do not collide."""
    job_name: str | None = None
    """Default: ``weam-`` and the name of the run directory."""
    directives: list[str] = field(default_factory=list)
    """Further sbatch options, one per entry, as written after ``#SBATCH``: ``--qos=high``, ``--constraint=a100``."""

    def __post_init__(self):
        for name in ("gpus_per_node", "cpus_per_task"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if self.mem is not None:
            self.mem = str(self.mem)
            if not _SLURM_MEMORY.fullmatch(self.mem):
                raise ConfigError(f"mem: {self.mem!r} is not sbatch's --mem (a number of MB, or with K, M, G or T)")
        if self.time is not None and not _SLURM_TIME.fullmatch(self.time):
            raise ConfigError(f"time: {self.time!r} is not a SLURM time limit (MM, HH:MM:SS, D-HH:MM ...)")
        if self.signal_seconds < 1:
            raise ConfigError("signal_seconds: must be at least 1")
        if self.rdzv_port is not None and not 0 < self.rdzv_port < 65536:
            raise ConfigError(f"rdzv_port: {self.rdzv_port} is not a port number")
        for i, directive in enumerate(self.directives):
            if not directive.startswith("--"):
                raise ConfigError(f"directives[{i}]: {directive!r} is not an sbatch option (--name=value)")
        one_line = {"partition": self.partition, "account": self.account, "job_name": self.job_name,
                    **{f"directives[{i}]": d for i, d in enumerate(self.directives)}}
        for name, value in one_line.items():
            if value is not None and any(c in value for c in "\r\n\0"):
                raise ConfigError(f"{name}: must be one line")


@dataclass
class ClusterConfig:
    backend: str | None = None
    """local (torchrun --standalone on this machine), torchrun (c10d rendezvous across nodes), deepspeed (the
    DeepSpeed runner over a hostfile) or slurm (an sbatch script)."""
    nnodes: int | None = None
    """Nodes; default 1, and with deepspeed every host of the hostfile."""
    nproc_per_node: int | None = None
    """Training processes per node; default the node's GPUs (1 on a machine without), under SLURM
    ``slurm.gpus_per_node``."""
    hostfile: str | None = None
    """deepspeed: the hostfile (``<host> slots=<n>`` per line); required, never guessed."""
    rdzv_endpoint: str | None = None
    """torchrun: HOST:PORT of the rendezvous store, the same on every node; required for more than one node.
    deepspeed: the master address and port (default: the hostfile's first host, port 29500)."""
    local_addr: str | None = None
    """torchrun: this node's address that the others reach (torchrun's ``--local-addr``), where its host name
    does not resolve to it (several interfaces, several agents on one machine); default torchrun's guess."""
    max_restarts: int | None = None
    """torchrun's elastic restarts of a failed worker group (each resumes from the newest checkpoint);
    default 3 with more than one node, else 0."""
    shutdown_timeout: int = 120
    """Seconds torchrun gives the training processes after SIGTERM (they checkpoint) before SIGKILL."""
    env: dict[str, str | int | float] = field(default_factory=dict)
    """Environment variables the training processes get on every node."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    gpu_mem: str | None = None
    """Memory per GPU ("80GB"), for the memory planner."""
    cpu_mem: str | None = None
    """CPU memory per node ("1TB"), for the memory planner."""
    nvme: str | None = None
    """NVMe space per node for ZeRO offload ("3.5TB"), for the memory planner."""
    gpu: str | None = None
    """The GPU model (one of weam_ds.peak_flops.PEAK_TFLOPS: H100, A100 ...), for the study plan's GPU-hours at
    its peak FLOP/s."""

    def __post_init__(self):
        if self.backend is None:
            raise ConfigError(f"backend: required (--backend or backend:), one of {', '.join(BACKEND_NAMES)}")
        if self.backend not in BACKEND_NAMES:
            raise ConfigError(f"backend: {self.backend!r} is not one of {', '.join(BACKEND_NAMES)}")
        for name in ("nnodes", "nproc_per_node", "shutdown_timeout"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if self.max_restarts is not None and self.max_restarts < 0:
            raise ConfigError("max_restarts: must not be negative")
        for key, value in self.env.items():
            if not ENV_NAME.fullmatch(key):
                raise ConfigError(f"env.{key}: not an environment variable name")
            if "\0" in str(value):
                raise ConfigError(f"env.{key}: an environment value cannot hold a NUL character")
        self.env = {key: str(value) for key, value in self.env.items()}
        if self.rdzv_endpoint is not None:
            parse_endpoint(self.rdzv_endpoint)
        if self.gpu is not None and self.gpu not in PEAK_TFLOPS:
            raise ConfigError(f"gpu: {self.gpu!r} is not one of {', '.join(PEAK_TFLOPS)} (their peak FLOP/s are known)")
        if self.local_addr is not None and not _is_host(self.local_addr):
            raise ConfigError(f"local_addr: {self.local_addr!r} is not a host name or an address")
        self._check_backend_settings()

    def _check_backend_settings(self) -> None:
        """A setting the chosen backend would not use is an error, not silently dropped."""
        backend = self.backend
        if self.hostfile is not None and backend != "deepspeed":
            raise ConfigError(f"hostfile: only the deepspeed backend reads a hostfile (backend is {backend})")
        if backend == "deepspeed" and self.hostfile is None:
            raise ConfigError("hostfile: the deepspeed backend needs one (--hostfile); it never falls back to "
                              "this machine")
        if backend == "deepspeed" and self.max_restarts is not None:
            raise ConfigError("max_restarts: the DeepSpeed runner does not restart workers; use torchrun or slurm")
        if backend == "local" and (self.nnodes or 1) > 1:
            raise ConfigError(f"nnodes: local runs on this machine only (got {self.nnodes}); use torchrun, "
                              "deepspeed or slurm")
        if self.local_addr is not None and backend != "torchrun":
            raise ConfigError(f"local_addr: only the torchrun backend takes this node's address (backend is {backend})")
        if backend == "local" and self.rdzv_endpoint is not None:
            raise ConfigError("rdzv_endpoint: local picks a free port on this machine; use torchrun for an endpoint")
        if backend == "slurm" and self.rdzv_endpoint is not None:
            raise ConfigError("rdzv_endpoint: under SLURM the head node's address is found inside the job; "
                              "set slurm.rdzv_port to choose the port")
        if backend == "torchrun" and (self.nnodes or 1) > 1 and self.rdzv_endpoint is None:
            raise ConfigError(f"rdzv_endpoint: torchrun on {self.nnodes} nodes needs HOST:PORT of the rendezvous "
                              "(--rdzv-endpoint), the same on every node; it is never guessed")
        if backend == "slurm" and self.nproc_per_node is None and self.slurm.gpus_per_node is None:
            raise ConfigError("nproc_per_node: set --nproc-per-node, or --gpus-per-node (slurm.gpus_per_node)")
        if backend != "slurm" and self.slurm != SlurmConfig():
            default = SlurmConfig()
            name = next(f.name for f in fields(default) if getattr(self.slurm, f.name) != getattr(default, f.name))
            raise ConfigError(f"slurm.{name}: a setting of the slurm backend (backend is {backend})")
        if backend == "slurm" and self.slurm.time is not None:
            limit = _slurm_seconds(self.slurm.time)
            if limit <= self.slurm.signal_seconds:
                raise ConfigError(f"slurm.signal_seconds: {self.slurm.signal_seconds} s is not less than the time "
                                  f"limit {self.slurm.time}")
        if backend == "slurm" and self.slurm.signal_seconds <= self.shutdown_timeout:
            raise ConfigError(f"slurm.signal_seconds: must exceed shutdown_timeout ({self.shutdown_timeout} s), the "
                              "time the processes get to checkpoint before the time limit")

    def shape(self) -> LaunchShape:
        """The nodes of this launch and the training processes on each: with deepspeed, the slots of the
        hostfile's first ``nnodes`` hosts (``nproc_per_node`` on each when given, never more than its slots);
        otherwise ``nproc_per_node``, else (SLURM) ``slurm.gpus_per_node``, else this machine's GPUs (1 on a
        machine without), on each of ``nnodes``."""
        if self.backend != "deepspeed":
            return LaunchShape((self.nproc_per_node or self.slurm.gpus_per_node or gpus_here(),) * (self.nnodes or 1))
        hosts = read_hostfile(self.hostfile)  # a missing or malformed hostfile is an error, never a local run
        if (self.nnodes or 1) > len(hosts):
            raise ConfigError(f"nnodes: {self.nnodes} nodes, but {self.hostfile} lists {len(hosts)}")
        hosts = hosts[:self.nnodes or len(hosts)]
        if self.nproc_per_node is None:
            return LaunchShape(tuple(host.slots for host in hosts))
        for host in hosts:
            if host.slots < self.nproc_per_node:
                raise ConfigError(f"nproc_per_node: {self.nproc_per_node} processes per node, but {self.hostfile} "
                                  f"gives {host.name} slots={host.slots}")
        return LaunchShape((self.nproc_per_node,) * len(hosts))

    @property
    def runs_here(self) -> bool:
        """Whether every training process starts on this machine, so that what a node must have (an NVMe
        mount) can be checked before the launch; elsewhere the training checks it on each node."""
        return self.backend == "local" or (self.backend == "torchrun" and (self.nnodes or 1) == 1)

    @property
    def restarts(self) -> int:
        """torchrun's --max-restarts: 3 by default across nodes, where one crashed worker should not end the
        job (torchrun's own default, 0, does)."""
        if self.max_restarts is not None:
            return self.max_restarts
        return 3 if (self.nnodes or 1) > 1 else 0


@dataclass(frozen=True)
class LaunchShape:
    """Where a launch's training processes run: how many start on each of its nodes. Only the DeepSpeed
    runner starts unequal numbers (a hostfile's unequal slots)."""

    per_node: tuple[int, ...]

    @property
    def nodes(self) -> int:
        return len(self.per_node)

    @property
    def processes_per_node(self) -> int:
        """The most on one node: what a node's memory must hold, so what the memory planner plans for."""
        return max(self.per_node)

    @property
    def world_size(self) -> int:
        return sum(self.per_node)

    @property
    def equal(self) -> bool:
        return len(set(self.per_node)) == 1

    def describe(self) -> str:
        nodes = f"{self.nodes} node{'s' * (self.nodes > 1)}"
        if self.equal:
            per_node = f"{self.processes_per_node} process{'es' * (self.processes_per_node > 1)} per node"
        else:
            per_node = "unequal processes per node (" + " + ".join(map(str, self.per_node)) + ")"
        return f"{nodes} x {per_node} = {self.world_size} rank{'s' * (self.world_size > 1)}"


def gpus_here() -> int:
    import torch

    return torch.cuda.device_count() or 1


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT; the host must be a host name or an address, so it is data wherever it goes."""
    m = _ENDPOINT.fullmatch(endpoint)
    problem = f"rdzv_endpoint: {endpoint!r} is not HOST:PORT (a host name or address, and a port)"
    if not m or not 0 < int(m["port"]) < 65536 or (m["v6"] and not _is_address(m["v6"])):
        raise ConfigError(problem)
    host = m["v6"] or m["host"]
    if not _is_host(host):
        raise ConfigError(problem)
    return host, int(m["port"])


def _is_host(host: str) -> bool:
    """A host name or an address: never anything a shell or torchrun could read as more."""
    return _is_address(host) or HOST_NAME.fullmatch(host) is not None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _slurm_seconds(limit: str) -> int:
    """sbatch's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def load_cluster(path: str | Path | None, overrides: dict[str, Any]) -> ClusterConfig:
    """The cluster YAML (if any) with ``overrides`` (the command line's flags) over it: top-level keys replace
    the file's, ``env`` and ``slurm`` are merged key by key."""
    raw: Any = {}
    where = "command line"
    if path is not None:
        where = str(path)
        raw = read_yaml(path, "cluster file")
        if raw is None:
            raw = {}
    if isinstance(raw, dict):
        raw = dict(raw)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
    return from_dict(ClusterConfig, raw, where=where)
