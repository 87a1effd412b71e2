"""The sbatch script of a SLURM launch: one task per node, each a torchrun agent.

What the script does, and why:

- The head node is the first of ``scontrol show hostnames "$SLURM_JOB_NODELIST"``, and its address is
  found on the head node itself (an srun step there), skipping loopback addresses: a node's own name often
  resolves to 127.0.x.1 there, and a store bound to it would leave the other nodes waiting.
- Everything that depends on the job (node list, job id, the head's address) is computed when the script
  runs, never when it is written; what differs per node (its name, its address, whether it hosts the
  rendezvous store) is computed inside each srun task, in single-quoted code the batch shell does not expand.
- ``--signal=B:USR1@<s>`` tells the batch shell that the time limit is near. It then sends SIGTERM to the
  job's steps (``scancel --signal=TERM``; srun itself answers SIGTERM by killing its tasks at once), the
  training processes checkpoint at their next step boundary, and the job requeues itself. A SIGTERM that
  reaches the batch shell (preemption, scancel, kill) is passed on the same way, without the requeue; with
  ``--requeue`` SLURM requeues a preempted job itself. A requeued job resumes from the newest checkpoint.
- Every value written into the script is quoted with shlex.quote (``#SBATCH`` lines too: sbatch reads them
  with shell-like quoting), and the environment the run needs is exported in it, so it reaches every node
  (``--export=ALL``) and a requeue. The job inherits the submitting shell's environment too, so the script
  first unsets its credentials (launcher.cluster.CREDENTIAL_NAME); the run's ``env`` exports those it needs.
- ``srun`` gets ``--cpus-per-task`` itself (the job's ``$SLURM_CPUS_PER_TASK``, else ``slurm.cpus_per_task``):
  SLURM 22.05 to 23.02 do not pass sbatch's value on to the step, and torchrun, the ranks and their loader
  workers would share one CPU.
- ``--mem``: ``slurm.mem``, else the memory plan's host memory per node, else (``--exclusive``) all of the
  node's; without it the site's default memory per node or per CPU applies, however much the run needs.
"""
from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from data_prep.typed_config import ConfigError
from launcher.cluster import CREDENTIAL_NAME, ClusterConfig
from weam_ds.run_dir import RunDir

NODE_ADDRESS = ('for a in $(hostname --ip-address) $(hostname -I); do case "$a" in 127.*|::1|fe80:*) ;; '
                '*) echo "$a"; exit 0 ;; esac; done; echo "no address but loopback on $(hostname)" >&2; exit 1')
"""Shell code printing this node's first address that other nodes can reach."""

NODE_TASK = """\
addr=$(bash -c "$1") || exit 1
is_host=0
if [ "$SLURMD_NODENAME" = "$2" ]; then is_host=1; fi
python=$3
shift 3
exec "$python" -m torch.distributed.run --local-addr="$addr" --rdzv-conf="is_host=$is_host" "$@"
"""
"""What srun runs on every node: ``bash -c NODE_TASK node NODE_ADDRESS HEAD PYTHON TORCHRUN_ARGS...``."""

NODE_MARK = 'touch -- "$1/$SLURMD_NODENAME" 2>/dev/null; exit 0'
"""What srun runs on every node before training: a marker, named after the node, in a folder of the run
directory (``bash -c NODE_MARK node FOLDER``); a node that cannot see the folder leaves none."""


def log_pattern(directory: Path, name: str) -> str:
    """A SLURM output file name: ``%`` in the directory is literal, the ``%j``/``%n`` of ``name`` are not."""
    return str(directory).replace("%", "%%") + "/" + name


def site_options(cluster: ClusterConfig) -> list[str]:
    """The sbatch options every job of this cluster takes, quoted: partition, account, time limit, and the
    cluster's own directives."""
    s = cluster.slurm
    options = [f"--{name}={shlex.quote(getattr(s, name))}" for name in ("partition", "account", "time")
               if getattr(s, name) is not None]
    return options + [shlex.quote(d) for d in s.directives]


def sbatch(script: Path, *options: str) -> str:
    """Submits ``script``; returns its job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch: not found on PATH (is this a SLURM login node? --dry-run writes the job scripts "
                          "without submitting them)")
    argv = ["sbatch", "--parsable", *options, str(script)]
    done = subprocess.run(argv, capture_output=True, text=True)
    job = done.stdout.strip().split(";")[0]  # --parsable: <job id>[;<cluster>]
    if done.returncode != 0 or not job.isdigit():
        raise ConfigError(f"{shlex.join(argv)}: {done.stderr.strip() or done.stdout.strip() or 'no job id'} "
                          f"(exit status {done.returncode})")
    return job


def node_memory(cluster: ClusterConfig, host_memory: int | None) -> str | None:
    """sbatch's --mem: ``slurm.mem``, else ``host_memory`` (the plan's bytes per node) rounded up to GiB, else
    with --exclusive 0 (all of the node's); None leaves the site's default."""
    s = cluster.slurm
    if s.mem is not None:
        return s.mem
    if host_memory is not None:
        return f"{math.ceil(host_memory / 2**30)}G"
    return "0" if s.exclusive else None


def node_options(cluster: ClusterConfig, host_memory: int | None) -> list[str]:
    """The sbatch options of what a job takes on each node: CPUs per task, memory (``node_memory``), exclusive."""
    s = cluster.slurm
    options = [] if s.cpus_per_task is None else [f"--cpus-per-task={s.cpus_per_task}"]
    memory = node_memory(cluster, host_memory)
    if memory is not None:
        options.append(f"--mem={memory}")
    return options + (["--exclusive"] if s.exclusive else [])


def sbatch_script(*, torchrun: list[str], workdir: Path, run: RunDir, cluster: ClusterConfig,
                  env: dict[str, str], host_memory: int | None = None) -> str:
    """``torchrun``: torchrun's arguments for every node but the rendezvous, which the script adds.
    ``host_memory``: the memory plan's host memory per node in bytes, if a plan was made."""
    q = shlex.quote
    s = cluster.slurm
    nnodes = cluster.nnodes or 1
    logs = run.log(0).parent
    options = [f"--job-name={q(s.job_name or 'weam-' + run.root.name)}", f"--nodes={nnodes}", "--ntasks-per-node=1"]
    if s.gpus_per_node is not None:
        options.append(f"--gpus-per-node={s.gpus_per_node}")
    options += [*node_options(cluster, host_memory), "--requeue", f"--signal=B:USR1@{s.signal_seconds}",
                "--export=ALL", "--open-mode=append", f"--output={q(log_pattern(logs, 'slurm-%j.out'))}",
                *site_options(cluster)]
    port = str(s.rdzv_port) if s.rdzv_port is not None else "$((29500 + SLURM_JOB_ID % 1000))"
    rendezvous = ["--rdzv-backend=c10d", '--rdzv-endpoint="$endpoint"', '--rdzv-id="$SLURM_JOB_ID"']
    lines = [
        "#!/bin/bash",
        "# A weam-ds training job written by `python -m launcher run --backend slurm`. Submit it with sbatch;",
        "# run again (or requeued), it resumes from the run's newest checkpoint.",
        *(f"#SBATCH {option}" for option in options),
        "",
        "set -u",
        ': "${SLURM_JOB_ID:?not in a SLURM job: submit this script with sbatch}"',
        ': "${SLURM_JOB_NODELIST:?not in a SLURM job: submit this script with sbatch}"',
        f"cd {q(str(workdir))} || exit 1",
        "# The job inherits the submitting shell's environment: its credentials stay out (the run's own follow).",
        f"credential={q(CREDENTIAL_NAME)}",
        'for name in $(compgen -e); do if [[ ${name^^} =~ $credential ]]; then unset "$name"; fi; done',
        *(f"export {key}={q(value)}" for key, value in env.items()),
        f"python={q(sys.executable)}",
        f"run_dir={q(str(run.root))}",
        f"logs={q(str(logs))}",
        "started=$(date +%s)",
        'mkdir -p "$logs"',
        "",
        "stop=0",
        "requeue=0",
        "stop_training() {",
        '  stop=1',
        '  scancel --signal=TERM "$SLURM_JOB_ID"',
        "}",
        "trap 'requeue=1; stop_training' USR1",
        "trap 'stop_training' TERM",
        "",
        f"node_address={q(NODE_ADDRESS)}",
        f"node_task={q(NODE_TASK)}",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'head_addr=$(srun --nodes=1 --ntasks=1 --nodelist="$head" bash -c "$node_address") || {',
        '  echo "launcher: cannot find the address of the head node $head" >&2; exit 1; }',
        f"port={port}",
        'case "$head_addr" in *:*) endpoint="[$head_addr]:$port" ;; *) endpoint="$head_addr:$port" ;; esac',
        f'echo "launcher: job $SLURM_JOB_ID on {nnodes} nodes, rendezvous on the head node $head at $endpoint"',
        'if [ "$stop" = 1 ]; then exit 143; fi',
        "",
        "# Every node must see this run directory (a node-local output_dir would fail the node's task launch and",
        "# leave the others waiting in the rendezvous): each node leaves a marker, and this shell checks them all.",
        'seen="$run_dir/.nodes-$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}"',
        'mkdir -p "$seen" || exit 1',
        f"srun --nodes={nnodes} --ntasks={nnodes} --ntasks-per-node=1 bash -c " + q(NODE_MARK) + ' node "$seen"',
        'unseen=""',
        'for node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do',
        '  [ -e "$seen/$node" ] || unseen="$unseen $node"',
        "done",
        'rm -rf -- "$seen"',
        'if [ -n "$unseen" ]; then',
        '  echo "launcher: error: node${unseen} cannot see the run directory $run_dir (node-local storage?): every node '
        'must share output_dir; nothing was trained" >&2',
        "  exit 1",
        "fi",
        "",
        "# SLURM 22.05-23.02 do not pass sbatch's --cpus-per-task on to srun: without it the node shares one CPU.",
        f"cpus_per_task=${{SLURM_CPUS_PER_TASK:-{s.cpus_per_task or ''}}}",
        f"srun --nodes={nnodes} --ntasks={nnodes} --ntasks-per-node=1 "
        '${cpus_per_task:+"--cpus-per-task=$cpus_per_task"} --kill-on-bad-exit=1 --export=ALL \\',
        f"  --open-mode=append --output={q(log_pattern(logs, 'slurm-%j-node%n.out'))} \\",
        '  bash -c "$node_task" node "$node_address" "$head" "$python" \\',
        "  " + " ".join([*rendezvous, *map(q, torchrun)]) + " &",
        "step=$!",
        "while :; do",
        '  wait "$step"',
        "  status=$?",
        "  # A trapped signal ends `wait` early (status > 128) while the step runs on: wait again.",
        '  if [ "$status" -gt 128 ] && kill -0 "$step" 2>/dev/null; then continue; fi',
        "  break",
        "done",
        'if [ "$status" -ne 0 ] && [ "$stop" = 0 ]; then',
        '  "$python" -m launcher.rank_logs "$run_dir" "$started" >&2',
        "fi",
        'if [ "$requeue" = 1 ]; then',
        '  echo "launcher: stopped ahead of the time limit; requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"
