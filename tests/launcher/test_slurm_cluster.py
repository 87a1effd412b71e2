"""``python -m launcher run --backend slurm`` on a real two-node SLURM cluster (tests/slurm_cluster.py: Debian's
slurm-wlm, one slurmctld and two slurmd daemons on this machine, node2 with a node-local tmpfs): the job script
as sbatch runs it, with real srun job steps, real signals and a real requeue.

Two things are not waited for as a cluster would: the time-limit signal is sent with ``scancel --batch
--signal=USR1`` (what slurmctld sends at ``--signal=B:USR1@<s>``; SLURM may send it up to a minute early, so a
real limit makes a slow, uncertain test), and a requeued job is released with ``scontrol update StartTime=now``
instead of waiting out SLURM's fixed two-minute requeue delay."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from test_launch_shape import CREDENTIALS, LOOK_ALIKES
from test_run import HOSTILE, assert_nothing_ran, logged_losses, metric_steps, write_run_config

from weam_ds.run_dir import RunDir, checkpoint_problem

LAUNCH = [sys.executable, "-m", "launcher", "run"]


def write_cluster(tmp: Path, env: dict | None = None, **slurm) -> Path:
    """Two nodes x one process; the training gets 20 s to checkpoint after SIGTERM (SLURM's KillWait is 30 s)."""
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump({"backend": "slurm", "nnodes": 2, "nproc_per_node": 1, "shutdown_timeout": 20,
                                    "env": {"WEAM_PROBE": HOSTILE, **(env or {})},
                                    "slurm": {"time": "30", "signal_seconds": 60, **slurm}}))
    return path


def submit(tmp: Path, config: Path, cluster: Path) -> str:
    """``launcher run`` as a user types it on the login node; the job id sbatch printed."""
    done = subprocess.run([*LAUNCH, "--config", str(config), "--cluster", str(cluster)], cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"Submitted batch job (\d+)", done.stdout)[1]


def wait_until(condition, seconds: float, what: str, job: str, slurm) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what} (job {job} {slurm.job_state(job)})"
        time.sleep(0.2)


def steps_logged(run: RunDir) -> int:
    return len(run.metrics.read_text().splitlines()) if run.metrics.exists() else 0


def restarts(slurm, job: str) -> int:
    return int(re.search(r"Restarts=(\d+)", slurm.command("scontrol", "show", "job", job).stdout)[1])


def job_processes(job: str, node: str | None = None) -> list[psutil.Process]:
    """The processes of ``job`` (on ``node``): every process SLURM gave the job's environment."""
    found = []
    for process in psutil.process_iter(["environ"]):
        env = process.info["environ"] or {}
        if env.get("SLURM_JOB_ID") == job and node in (None, env.get("SLURMD_NODENAME")):
            found.append(process)
    return found


def trainers(job: str) -> list[psutil.Process]:
    """The job's training processes: the workers of its torchrun agents (not their DataLoader workers)."""
    return [p for p in job_processes(job) if "torch.distributed.run" in p.parent().cmdline()]


def batch_log(run: RunDir, job: str) -> str:
    return (run.log(0).parent / f"slurm-{job}.out").read_text(errors="replace")


def steps_since_resume(run: RunDir, resumes: int) -> int:
    """The steps rank 0 logged after its ``resumes``-th resume (0 before it resumed that often): metrics.jsonl
    still holds the lines an earlier attempt logged past its checkpoint until the resumed run drops them."""
    parts = re.split(r"resumed from .* at step \d+", run.log(0).read_text()) if run.log(0).exists() else []
    return len(re.findall(r"monitor: step \d+", parts[resumes])) if len(parts) > resumes else 0


def test_a_two_node_job_is_cancelled_loses_a_node_and_is_requeued_at_the_time_limit_resuming_each_step_once(
        small_dataset, tmp_path, slurm, monkeypatch):
    """One run through three jobs, each resuming from the newest checkpoint: a plain scancel (the training
    checkpoints), a lost node (the job ends promptly and keeps its checkpoint), and the time-limit signal (a
    checkpoint, the job requeues itself and runs to the end)."""
    dataset, _, _ = small_dataset
    out = tmp_path / f"run {HOSTILE}"
    config = write_run_config(tmp_path, dataset, out, steps=10_000)  # until stopped, whatever the machine's speed
    run = RunDir(out)
    # The submitting shell holds credentials: the job inherits them (sbatch --export=ALL) and must drop them.
    for name, value in {**CREDENTIALS, **LOOK_ALIKES}.items():
        monkeypatch.setenv(name, value)
    cluster = write_cluster(tmp_path, env={"WANDB_API_KEY": "given-by-env"}, job_name=HOSTILE, cpus_per_task=2,
                            mem="1G")

    # A plain scancel: SIGTERM to every step, SIGKILL after KillWait. The training checkpoints at the step reached.
    job = submit(tmp_path, config, cluster)
    wait_until(lambda: steps_logged(run) >= 3, 300, "three steps", job, slurm)
    ranks = trainers(job)
    assert len(ranks) == 2
    for rank in ranks:
        env = rank.environ()
        assert env.items() >= {**LOOK_ALIKES, "WANDB_API_KEY": "given-by-env", "WEAM_PROBE": HOSTILE}.items()
        assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "TOKEN"} & set(env)
        assert env["SLURM_CPUS_PER_TASK"] == "2"  # srun was given the job's CPUs
    assert re.search(r"MinMemoryNode=1G\b", slurm.command("scontrol", "show", "job", job).stdout)
    slurm.command("scancel", job)
    slurm.wait_for_state(job, {"CANCELLED", "COMPLETED", "FAILED"}, 120)
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None, batch_log(run, job)[-3000:]
    cancelled_at = int(tag[4:])
    assert cancelled_at >= 3 and metric_steps(run) == list(range(1, cancelled_at + 1))

    # Submitted again, it resumes. Node 2 lost: its part of the job (the torchrun agent and its rank) killed at
    # once. The job ends within a bound, saying why, and keeps the checkpoint it had.
    slurm.wait_for_nodes_idle()
    job = submit(tmp_path, config, cluster)
    wait_until(lambda: steps_since_resume(run, 1) >= 2, 300, "two steps more", job, slurm)
    assert re.search(f"resumed from .* at step {cancelled_at}$", run.log(0).read_text(), re.M)
    lost = time.monotonic()
    for process in job_processes(job, "node2"):
        process.kill()
    state = slurm.wait_for_state(job, {"FAILED", "CANCELLED", "COMPLETED", "NODE_FAIL"}, 120)
    ended_after = time.monotonic() - lost
    assert state == "FAILED" and ended_after < 60, ended_after
    log = batch_log(run, job)
    assert "srun: error: node2: task 1: Killed" in log, log[-3000:]
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None and int(tag[4:]) >= cancelled_at
    kept = int(tag[4:])

    # Submitted again, it resumes from the newest checkpoint. The time-limit signal, as slurmctld sends it ahead of
    # the limit: the training checkpoints and the job requeues itself.
    slurm.wait_for_nodes_idle()
    job = submit(tmp_path, config, cluster)
    wait_until(lambda: steps_since_resume(run, 2) >= 2, 300, "two steps more", job, slurm)
    assert re.search(f"resumed from .* at step {kept}$", run.log(0).read_text(), re.M)
    slurm.command("scancel", "--batch", "--signal=USR1", job)
    wait_until(lambda: restarts(slurm, job) == 1 and slurm.job_state(job) == "PENDING", 120, "the requeue", job,
               slurm)
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None, batch_log(run, job)[-3000:]
    stopped_at = int(tag[4:])
    assert kept + 2 <= stopped_at  # the SIGTERM checkpoint: checkpoint_interval is 1000
    steps = stopped_at + 3  # the requeued job resumes with a shorter run (train.steps may change on resume)
    write_run_config(tmp_path, dataset, out, steps=steps)

    # Released once both nodes have cleaned up, and a second after the requeue: slurmd refuses a credential issued
    # in the same second as the revocation the requeue made ("Job credential revoked").
    slurm.wait_for_nodes_idle()
    time.sleep(2)
    slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now")
    assert slurm.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, 300) == "COMPLETED", \
        batch_log(run, job)[-3000:]
    log = batch_log(run, job)
    assert "stopped ahead of the time limit; requeueing job" in log
    assert re.search(f"resumed from .* at step {stopped_at}$", run.log(0).read_text(), re.M)
    assert metric_steps(run) == list(range(1, steps + 1)) and run.latest_tag() == f"step{steps}"
    assert logged_losses(run.log(0))[-4:] == logged_losses(run.log(1))[-4:]
    assert "2 ranks on 2 nodes" in run.log(0).read_text()
    logs = sorted(p.name for p in run.log(0).parent.glob(f"slurm-{job}-*.out"))
    assert logs == [f"slurm-{job}-node0.out", f"slurm-{job}-node1.out"]  # one per node, by its index in the job
    assert_nothing_ran(tmp_path)


def test_an_output_dir_that_a_node_cannot_see_ends_the_job_at_once_naming_the_node(small_dataset, tmp_path, slurm):
    """output_dir on node-local storage: node2 sees another directory at the same path. The job ends at once with
    one line naming the directory and the node; nothing of the head's checkpoints is deleted."""
    dataset, _, _ = small_dataset
    out = slurm.node_local / tmp_path.name / "run"
    config = write_run_config(tmp_path, dataset, out, steps=4)
    run = RunDir(out)
    started = time.monotonic()
    job = submit(tmp_path, config, write_cluster(tmp_path))
    assert slurm.wait_for_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, 120) == "FAILED"
    assert time.monotonic() - started < 60
    log = batch_log(run, job)
    lines = [line for line in log.splitlines() if "cannot see" in line]
    assert len(lines) == 1 and "node2" in lines[0] and str(out) in lines[0], log
    assert not run.metrics.exists()
