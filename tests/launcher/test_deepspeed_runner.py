"""``python -m launcher run --backend deepspeed`` for real: the DeepSpeed runner checks ssh, then pdsh starts
``deepspeed.launcher.launch`` on each host of a hostfile through a real sshd (tests/sshd_hosts.py: two loopback
aliases of this machine), and the two nodes train a tiny run on CPU (gloo): stopped by Ctrl-C with a checkpoint,
then launched again to the end."""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port
from sshd_hosts import SshHosts, ssh_hosts  # noqa: F401 (a fixture)
from test_run import HOSTILE, LAUNCH, assert_nothing_ran, logged_losses, metric_steps, write_run_config
from test_run import start  # noqa: F401 (a fixture)
from weam_ds.run_dir import RunDir, checkpoint_problem

MORE_STEPS = 3
"""The resumed run's length past the step the Ctrl-C stopped at (the first launch runs until it is stopped)."""


@pytest.fixture
def hosts(ssh_hosts: SshHosts):
    """The two hosts, and after the test no process left of what it started through them."""
    yield ssh_hosts
    ssh_hosts.end_sessions()


def is_rank(cmdline: list[str], config: Path) -> bool:
    """A training process of this run (``python -u -m weam_ds.train ... --config <config>``), not one of the
    commands that start it (the runner, pdsh, ssh and the per-host launcher name the module and config too)."""
    runs_trainer = any(cmdline[i:i + 2] == ["-m", "weam_ds.train"] for i in range(len(cmdline)))
    return runs_trainer and str(config) in cmdline


def watch_ranks(job: subprocess.Popen, config: Path, seconds: float = 300) -> dict[str, dict[str, str]]:
    """Until the job ends: each training rank's environment (by RANK), read from the processes themselves,
    which run under sshd, not under this test."""
    ranks = {}
    deadline = time.monotonic() + seconds
    while job.poll() is None:
        assert time.monotonic() < deadline, "timed out"
        for process in psutil.process_iter(["cmdline", "environ"]):
            if is_rank(process.info["cmdline"] or [], config) and process.info["environ"]:
                ranks[process.info["environ"]["RANK"]] = process.info["environ"]
        time.sleep(0.2)
    return ranks


def test_the_deepspeed_runner_trains_on_two_hosts_through_sshd_and_pdsh_stops_on_ctrl_c_and_resumes(
        hosts, small_dataset, tmp_path, start):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    run = RunDir(out)
    config = write_run_config(tmp_path, dataset, out, steps=10_000)  # until stopped, whatever the machine's speed
    (tmp_path / "hostfile").write_text("".join(f"{host} slots=1\n" for host in hosts.hosts))
    command = [*LAUNCH, "--config", str(config), "--backend", "deepspeed", "--hostfile", "hostfile",
               "--rdzv-endpoint", f"{hosts.hosts[0]}:{free_port()}", "--env", f"WEAM_PROBE={HOSTILE}"]

    # Ctrl-C to the launcher (the job runs in a session of its own): the runner stops the ranks on both hosts
    # through pdsh, they checkpoint, and the launcher says so in one line.
    stopped = tmp_path / "stopped.log"
    with stopped.open("w") as sink:
        job = start(command, cwd=tmp_path, env=hosts.environ(), stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not (run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 2):
            assert job.poll() is None and time.monotonic() < deadline, stopped.read_text()[-4000:]
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=120) == 130, stopped.read_text()[-4000:]
    deadline = time.monotonic() + 120
    while [p for p in psutil.process_iter(["cmdline"]) if is_rank(p.info["cmdline"] or [], config)]:
        assert time.monotonic() < deadline, "ranks left running after Ctrl-C"
        time.sleep(0.2)
    assert [line for line in stopped.read_text().splitlines() if line.startswith("launcher: stopped")] == [
        "launcher: stopped by SIGINT; launched again, the run resumes from its newest checkpoint"]
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None
    hosts.end_sessions()
    steps = int(tag[4:]) + MORE_STEPS  # resumed with a shorter run: train.steps may change on resume
    write_run_config(tmp_path, dataset, out, steps=steps)

    console = tmp_path / "console.log"  # a file, not a pipe: the watch below reads no output while the job runs
    with console.open("w") as sink:
        job = start(command, cwd=tmp_path, env=hosts.environ(), stdout=sink, stderr=subprocess.STDOUT)
        ranks = watch_ranks(job, config)
    assert job.returncode == 0, console.read_text()[-4000:]
    assert re.search(f"resumed from .* at step {tag[4:]}$", run.log(0).read_text(), re.M)

    # One rank per host (slots=1), as the launcher said, each inside a login that sshd accepted on that host's
    # alias, with .deepspeed_env's value intact.
    assert "launcher: 2 nodes x 1 process per node = 2 ranks" in console.read_text().splitlines()
    assert sorted(ranks) == ["0", "1"]
    logins = hosts.logins()
    for rank, host in enumerate(hosts.hosts):
        environ = ranks[str(rank)]
        client, port, reached, _ = environ["SSH_CONNECTION"].split()
        assert reached == host and logins[client, port] == host
        assert (environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("2", "0")
        assert environ["WEAM_PROBE"] == HOSTILE

    rank0, rank1 = logged_losses(run.log(0)), logged_losses(run.log(1))
    assert [step for step, _ in rank0] == list(range(1, steps + 1)) and rank0 == rank1  # one job: one global loss
    assert "rank 1 of 2" in run.log(1).read_text()
    assert metric_steps(run) == list(range(1, steps + 1))
    assert run.latest_tag() == f"step{steps}" and checkpoint_problem(run.checkpoints / f"step{steps}") is None
    assert_nothing_ran(tmp_path)
