"""A real SLURM cluster of two nodes on the test machine, from Debian's ``slurm-wlm`` and ``munge``.

One ``munged`` with its own key and socket, one ``slurmctld`` and two ``slurmd`` daemons (``slurmd -N node1`` and
``-N node2``), each on its own port, all configured by one ``slurm.conf`` in a private directory: nothing of a
site's own SLURM or munge (``/etc/slurm``, ``/run/munge``, the default ports 6817/6818) is read or touched, and
the SLURM commands find this cluster through ``SLURM_CONF``.

``node2``'s slurmd runs in a mount namespace of its own (``unshare -m``) with a private tmpfs at
``Cluster.node_local``: the same path names another directory on each node, as node-local disks do; the tasks
node2 starts inherit that view. Everything else (the test's ``tmp_path``) is shared, like a cluster file system.
Both node names resolve to the loopback address (``/etc/hosts``, lines marked as this module's and removed
again), so a node's name reaches it as on a real cluster.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NODES = ("node1", "node2")
HOSTS_MARK = "# weam-ds test cluster"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "unshare")
POLL = 0.2
"""Seconds between two looks at a job's or the nodes' state (a look is one squeue or sinfo, a few ms)."""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be had here; the message says why."""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on, away from SLURM's defaults (6817-6819)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


SLURM_CONF = """\
ClusterName=weamtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
MinJobAge=600
KillWait=10
MessageTimeout=5
JobRequeue=1
PrologFlags=Alloc
TmpFS=/tmp
NodeName=node1 NodeHostname={host} NodeAddr=127.0.0.1 Port={node1_port} CPUs=2 RealMemory={memory} State=UNKNOWN
NodeName=node2 NodeHostname={host} NodeAddr=127.0.0.1 Port={node2_port} CPUs=2 RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


@dataclass
class Cluster:
    root: Path
    """The cluster's own directory: slurm.conf, munge key and socket, state, spool and logs."""
    node_local: Path
    """A path that is a different directory on node2 (a private tmpfs there) than on node1 and here."""
    env: dict[str, str]
    """The environment for SLURM's commands (``SLURM_CONF``), on top of this process's."""
    processes: list[subprocess.Popen]

    def command(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def job_state(self, job: str) -> str:
        """The job's state as ``squeue`` shows it, else (it has left the queue) as ``scontrol`` remembers it."""
        out = self.command("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
        if out:
            return out
        shown = self.command("scontrol", "show", "job", job, check=False).stdout
        for word in shown.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_for_state(self, job: str, states: set[str], seconds: float = 300) -> str:
        deadline = time.monotonic() + seconds
        while True:
            state = self.job_state(job)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job} is {state} after {seconds:.0f} s, not one of {sorted(states)}")
            time.sleep(POLL)

    def node_states(self) -> dict[str, str]:
        """Every node's state, from one ``sinfo``."""
        return dict(line.split() for line in self.command("sinfo", "-h", "-N", "-o", "%N %T").stdout.splitlines())

    def wait_for_nodes_idle(self, seconds: float = 60) -> None:
        """Both nodes up and free: the previous test's jobs gone, a downed node returned to service."""
        deadline = time.monotonic() + seconds
        while True:
            states = self.node_states()
            if all(states.get(node) == "idle" for node in NODES):
                return
            for node, state in states.items():
                if state.startswith(("down", "drain")):
                    self.command("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not idle after {seconds:.0f} s: {states}")
            time.sleep(POLL)

    def log(self, name: str) -> str:
        path = self.root / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env={**os.environ, **self.env}, capture_output=True,
                       timeout=30)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _edit_hosts(add=False)


def missing_programs() -> list[str]:
    return [name for name in DAEMONS + ("srun", "squeue", "scontrol", "scancel", "sinfo")
            if shutil.which(name) is None]


def _edit_hosts(add: bool) -> None:
    """Add (or remove) lines resolving the node names to the loopback address, marked as this module's."""
    hosts = Path("/etc/hosts")
    lines = [line for line in hosts.read_text().splitlines() if HOSTS_MARK not in line]
    if add:
        lines += [f"127.0.0.1 {node} {HOSTS_MARK}" for node in NODES]
    hosts.write_text("\n".join(lines) + "\n")


def _wait_for(condition, what: str, processes: list[subprocess.Popen], root: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise ClusterUnavailable(f"{process.args[0]} exited ({process.returncode}) while waiting for {what}: "
                                         + _log_tail(root))
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"timed out waiting for {what}: " + _log_tail(root))
        time.sleep(0.2)


def _log_tail(root: Path) -> str:
    tails = []
    for log in sorted((root / "log").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-3:]
        tails.append(f"{log.name}: " + " / ".join(lines))
    return "; ".join(tails) or "no logs"


def start(root: Path, memory_mb: int = 8192) -> Cluster:
    """Starts munged, slurmctld and the two slurmd daemons under ``root``; raises ClusterUnavailable with the
    reason where that cannot be done (not root, programs missing, a daemon that does not come up)."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's daemons run as root, and the tests do not")
    missing = missing_programs()
    if missing:
        raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    for sub in ("munge", "state", "log", "spool/node1", "spool/node2", "node-local"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port, node1_port, node2_port = _free_ports(3)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), root=root, ctld_port=ctld_port,
                                      node1_port=node1_port, node2_port=node2_port, memory=memory_mb))
    env = {"SLURM_CONF": str(conf)}
    full_env = {**os.environ, **env}
    processes: list[subprocess.Popen] = []
    cluster = Cluster(root, root / "node-local", env, processes)
    try:
        _edit_hosts(add=True)
        socket_path = root / "munge" / "munge.socket"
        processes.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
             f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for(socket_path.exists, "munged's socket", processes, root)
        processes.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=full_env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        processes.append(subprocess.Popen(["slurmd", "-D", "-N", "node1", "-f", str(conf)], env=full_env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))
        node2 = (f"mount -t tmpfs -o size=64m weam-node2-local {_q(cluster.node_local)} && "
                 f"exec slurmd -D -N node2 -f {_q(conf)}")
        processes.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", node2],
                                          env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True))

        def nodes_idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=full_env, capture_output=True,
                                 text=True, timeout=10).stdout.split()
            return out.count("idle") == len(NODES)

        _wait_for(nodes_idle, "both nodes idle in sinfo", processes, root, seconds=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _q(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
