"""``python -m launcher run`` as users launch: real torchrun jobs of the tiny preset on CPU (gloo) for the
local, torchrun and SLURM backends (the SLURM script executed with stand-ins for srun, scontrol and scancel
that start one task per "node" on this machine), dry runs for every backend, and hostile values (a host name
with ``;touch``, ``$(...)`` in YAML values) that must stay data."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import free_port
from launcher.cli import main
from slurm_stand_ins import STAND_INS
from weam_ds.run_dir import RunDir, checkpoint_problem

README = Path(__file__).resolve().parents[2] / "README.md"
LAUNCH = [sys.executable, "-m", "launcher", "run"]
HOSTILE = "$(touch pwned-dollar) `touch pwned-tick` 'q' ;touch pwned-semi"
"""A value that runs commands wherever a shell reads it unquoted; each one leaves a pwned-* file in the cwd."""


def write_run_config(tmp: Path, dataset: Path, out: Path, steps: int, **train) -> Path:
    cfg = {
        "output_dir": str(out),
        "model": "tiny",
        "data": {"datasets": [str(dataset)], "max_length": 48, "batch_size": 8, "workers": 1, "eval_batches": 2,
                 "shuffle_buffer": 64},
        "optimizer": {"lr": 2e-3},
        "schedule": {"warmup_steps": 2},
        "train": {"steps": steps, "log_interval": 1, "eval_interval": 1000, "checkpoint_interval": 1000,
                  "keep_checkpoints": 1, **train},
        "deepspeed": {"config": "ds_configs/cpu.json"},
    }
    path = tmp / f"{out.name.split()[0]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def logged_losses(log: Path) -> list[tuple[int, str]]:
    return [(int(s), loss) for s, loss in re.findall(r"monitor: step (\d+) \| loss (\S+)", log.read_text())]


def metric_steps(run: RunDir) -> list[int]:
    return [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]


def assert_nothing_ran(where: Path) -> None:
    assert not list(where.glob("pwned*")), "a value was executed as a command"


@pytest.fixture
def start():
    """subprocess.Popen for the jobs of a test; whatever is left of them when the test ends (a failed assertion,
    a timeout) is killed, with every process they started."""
    jobs = []

    def popen(cmd, **kwargs) -> subprocess.Popen:
        jobs.append(subprocess.Popen(cmd, **kwargs))
        return jobs[-1]

    yield popen
    for job in jobs:
        try:
            tree = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def wait_for(condition, job: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert job.poll() is None, f"the job ended early ({job.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- torchrun -------------------------------------------------------------------------------------------


def test_two_agents_on_one_machine_train_as_two_nodes(small_dataset, tmp_path, start):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=4)
    cmd = [*LAUNCH, "--config", str(config), "--backend", "torchrun", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    agents = [start(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert all("--rdzv-backend=c10d" in o and "--max-restarts=3" in o for o in outputs)  # the command it ran
    run = RunDir(out)
    rank0, rank1 = logged_losses(run.log(0)), logged_losses(run.log(1))
    assert [step for step, _ in rank0] == [1, 2, 3, 4] and rank0 == rank1  # one job: the same global loss
    assert "rank 1 of 2" in run.log(1).read_text()


def test_a_killed_worker_is_restarted_and_the_job_resumes_from_its_checkpoint(small_dataset, tmp_path, start):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=10, checkpoint_interval=3)
    job = start([*LAUNCH, "--config", str(config), "--backend", "torchrun", "--nproc-per-node", "2",
                 "--max-restarts", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = RunDir(out)
    wait_for(lambda: run.latest_tag() is not None, job)
    agent = next(p for p in psutil.Process(job.pid).children() if "torch.distributed.run" in p.cmdline())
    workers = [p for p in agent.children() if "weam_ds.train" in p.cmdline()]
    assert len(workers) == 2
    workers[1].send_signal(signal.SIGKILL)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-4000:]
    resumed = re.findall(r"resumed from \S+ at step (\d+)", run.log(0).read_text())
    assert len(resumed) == 1 and int(resumed[0]) >= 3 and int(resumed[0]) % 3 == 0
    assert metric_steps(run) == list(range(1, 11)) and run.latest_tag() == "step10"


def test_a_failed_job_exits_non_zero_with_the_failing_ranks_last_log_lines(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=10, max_nonfinite_in_row=1)
    cfg = yaml.safe_load(config.read_text())
    cfg["optimizer"]["lr"] = 1.0e8
    config.write_text(yaml.safe_dump(cfg))
    job = subprocess.run([*LAUNCH, "--config", str(config), "--backend", "local"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert job.returncode != 0
    report = job.stderr[job.stderr.index("launcher: rank 0 failed; the last lines of"):]
    assert str(RunDir(out).log(0)) in report.splitlines()[0]
    # The traceback goes to the rank's log only (the console has one line): it came from the log.
    assert "Traceback (most recent call last)" in report and "non-finite losses in a row" in report


def test_sigterm_to_the_launcher_stops_the_training_with_a_checkpoint(small_dataset, tmp_path, start):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=50)
    job = start([*LAUNCH, "--config", str(config), "--backend", "local"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
    run = RunDir(out)
    wait_for(lambda: run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 2, job)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None and int(tag[4:]) < 50, stderr[-3000:]
    assert "launcher: stopped by SIGTERM" in stderr and "failed; the last lines" not in stderr


# --- SLURM, with stand-ins for its commands ---------------------------------------------------------------

@pytest.fixture
def slurm_job(tmp_path):
    """Stand-ins on PATH and the variables SLURM sets in the batch script of a 2-node job. One node's name
    carries a command, as data from scontrol."""
    bin_dir, state = tmp_path / "bin", tmp_path / "standin"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("srun", "scontrol", "scancel"):
        source = STAND_INS[name]
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STANDIN": str(state),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-a;touch pwned-node,node-b", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NNODES": "2"}
    return env, state


def write_slurm_script(tmp: Path, config: Path, port: int) -> Path:
    cluster = tmp / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"backend": "slurm", "nnodes": 2, "nproc_per_node": 1,
                                       "env": {"WEAM_PROBE": HOSTILE},
                                       "slurm": {"rdzv_port": port, "job_name": HOSTILE, "time": "01:00:00"}}))
    dry = subprocess.run([*LAUNCH, "--config", str(config), "--cluster", str(cluster), "--dry-run"], cwd=tmp,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    script = RunDir(Path(yaml.safe_load(config.read_text())["output_dir"])).root / "slurm.sbatch"
    assert dry.stdout.count("#SBATCH --signal=B:USR1@300") == 1 and shlex.join(["sbatch", str(script)]) in dry.stdout
    return script


def test_the_slurm_script_trains_stops_on_sigterm_with_a_checkpoint_and_resumes_when_run_again(
        small_dataset, tmp_path, slurm_job, start):
    dataset, _, _ = small_dataset
    env, state = slurm_job
    out = tmp_path / f"run {HOSTILE}"
    config = write_run_config(tmp_path, dataset, out, steps=10)
    script = write_slurm_script(tmp_path, config, free_port())
    run = RunDir(out)

    job = start(["bash", str(script)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
    wait_for(lambda: run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 3, job)
    job.send_signal(signal.SIGTERM)  # to the batch shell, as SLURM's --signal=B: and preemption do
    output = job.communicate(timeout=300)[0]
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None, output[-3000:]
    stopped_at = int(tag[4:])
    assert 3 <= stopped_at < 10  # the SIGTERM checkpoint: checkpoint_interval is 1000
    assert "scancel --signal=TERM 4242" in (state / "calls").read_text()
    assert "SIGTERM" in run.log(0).read_text() and "SIGTERM" in run.log(1).read_text()

    rerun = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(f"resumed from .* at step {stopped_at}$", run.log(0).read_text(), re.M)
    assert metric_steps(run) == list(range(1, 11)) and run.latest_tag() == "step10"
    assert logged_losses(run.log(0))[-4:] == logged_losses(run.log(1))[-4:]
    logs = sorted(p.name for p in run.log(0).parent.glob("slurm-4242-*.out"))
    assert logs == ["slurm-4242-node-a;touch pwned-node.out", "slurm-4242-node-b.out"]  # one log per node
    assert "rendezvous on the head node node-a;touch pwned-node" in rerun.stdout
    assert_nothing_ran(tmp_path)


def test_slurm_submits_the_script_with_sbatch_and_says_so_when_sbatch_is_missing(workdir, capsys, monkeypatch):
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!{sys.executable}\nimport sys\nopen({str(workdir / 'submitted')!r}, 'w').write(sys.argv[1])\n"
                      "print('Submitted batch job 77')\n")
    sbatch.chmod(0o700)
    args = ["run", "--config", "run.yaml", "--backend", "slurm", "--nproc-per-node", "1"]
    monkeypatch.setenv("PATH", str(bin_dir))
    assert main(args) == 0
    script = RunDir(workdir / f"run {HOSTILE}").root / "slurm.sbatch"
    assert (workdir / "submitted").read_text() == str(script)
    sbatch.unlink()
    assert main(args) == 2
    assert capsys.readouterr().err == ("launcher: error: sbatch: not found on PATH (is this a SLURM login node? "
                                       "--dry-run writes the script without submitting it)\n")


FAKE_TASK = '''
import os, pathlib, signal, sys, time
state = pathlib.Path(os.environ["STANDIN"])
signal.signal(signal.SIGTERM, lambda *_: ((state / ("term-" + os.environ["SLURM_PROCID"])).touch(), sys.exit(0)))
(state / ("up-" + os.environ["SLURM_PROCID"])).touch()
time.sleep(60)
sys.exit(1)
'''


@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_the_slurm_script_stops_the_training_through_the_job_steps_and_requeues_at_the_time_limit(
        small_dataset, tmp_path, slurm_job, start, sig, requeued):
    """The script's own signal handling, with a stand-in task in place of torchrun: the time-limit signal
    (USR1) and SIGTERM reach every task as SIGTERM, never through srun (which would kill them), and only the
    time limit requeues the job."""
    dataset, _, _ = small_dataset
    env, state = slurm_job
    config = write_run_config(tmp_path, dataset, tmp_path / "run", steps=10)
    script = write_slurm_script(tmp_path, config, free_port())
    job = start(["bash", str(script)], env={**env, "STANDIN_TASK": FAKE_TASK}, cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (state / "up-0").exists() and (state / "up-1").exists(), job, 60)
    job.send_signal(sig)
    output = job.communicate(timeout=60)[0]
    assert (state / "term-0").exists() and (state / "term-1").exists(), output
    calls = (state / "calls").read_text().splitlines()
    assert calls[-2 if requeued else -1] == "scancel --signal=TERM 4242"
    assert (calls[-1] == "scontrol requeue 4242") == requeued
    assert job.returncode == 0


# --- dry runs -----------------------------------------------------------------------------------------------


@pytest.fixture
def workdir(small_dataset, tmp_path, monkeypatch):
    """A working directory holding run.yaml (its output_dir carries commands) and a two-host hostfile."""
    dataset, _, _ = small_dataset
    write_run_config(tmp_path, dataset, tmp_path / f"run {HOSTILE}", steps=4)
    (tmp_path / "hostfile").write_text("# two nodes\nnode-a slots=8\nnode-b slots=8\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def launch(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", "--config", "run.yaml", *args, "--dry-run"])
    out, err = capsys.readouterr()
    return code, out, err


def last_command(out: str) -> list[str]:
    return shlex.split(out.splitlines()[-2])


def test_dry_run_local_is_torchrun_standalone_on_this_machine(workdir, capsys):
    code, out, _ = launch(capsys, "--backend", "local", "--env", f"WEAM_PROBE={HOSTILE}")
    assert code == 0 and out.endswith("launcher: dry run: nothing started\n")
    words = last_command(out)
    # A shell reading the printed line gets the value back, as data.
    assert words[:2] == ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", f"WEAM_PROBE={HOSTILE}"]
    assert words[2:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    assert "--nproc-per-node=1" in words and "--max-restarts=0" in words  # a CPU machine: one process
    assert words[-3:] == ["weam_ds.train", "--config", str(workdir / "run.yaml")]
    assert_nothing_ran(workdir)


def test_dry_run_torchrun_across_nodes_needs_an_endpoint_and_restarts_by_default(workdir, capsys):
    code, _, err = launch(capsys, "--backend", "torchrun", "--nnodes", "2")
    assert code == 2 and err.startswith("launcher: error: command line: rdzv_endpoint: torchrun on 2 nodes needs")
    code, out, _ = launch(capsys, "--backend", "torchrun", "--nnodes", "4", "--nproc-per-node", "8",
                          "--rdzv-endpoint", "10.1.0.11:29400")
    words = last_command(out)
    assert code == 0 and {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d",
                          "--rdzv-endpoint=10.1.0.11:29400", "--max-restarts=3",
                          "--rdzv-conf=is_host=0"} <= set(words)  # another machine's address: not the store's host
    code, _, err = launch(capsys, "--backend", "torchrun", "--nnodes", "2", "--rdzv-endpoint", "node;touch pwned:1")
    assert code == 2 and "rdzv_endpoint: 'node;touch pwned:1' is not HOST:PORT" in err
    assert_nothing_ran(workdir)


def test_dry_run_deepspeed_writes_the_environment_that_arrives_intact_through_deepspeeds_own_code(
        workdir, capsys, monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    monkeypatch.setenv("HF_TOKEN", "secret")
    code, out, _ = launch(capsys, "--backend", "deepspeed", "--hostfile", "hostfile", "--env", f"WEAM_PROBE={HOSTILE}",
                          "OMP_NUM_THREADS=4")
    assert code == 0, out
    words = last_command(out)
    assert words[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert {f"--hostfile={workdir / 'hostfile'}", "--force_multi", "--master_addr=node-a", "--master_port=29500",
            "--num_nodes=2", "--module"} <= set(words)
    env_file = workdir / ".deepspeed_env"
    assert f"launcher: {env_file}: " in out and stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert "NCCL_SOCKET_IFNAME=ib0" in lines and "OMP_NUM_THREADS=4" in lines
    assert not any(line.startswith("HF_TOKEN=") for line in lines)  # credentials are not forwarded

    # What the DeepSpeed runner makes of the file (runner.main's loop, then pdsh's remote command), run by a shell.
    from deepspeed.launcher.multinode_runner import PDSHRunner
    from deepspeed.launcher.runner import parse_args

    runner = PDSHRunner(parse_args(words[3:]), "world-info")
    for line in env_file.read_text().splitlines(keepends=True):
        key, value = line.split("=", maxsplit=1)
        runner.add_export(key, value)
    cmd, _, _ = runner.get_cmd(dict(os.environ), {"node-a": [0, 1], "node-b": [0, 1]})
    exports = cmd[cmd.index("-w") + 2]
    remote = subprocess.run(["bash", "-c", exports + 'printf %s "$WEAM_PROBE"'], capture_output=True, text=True)
    assert remote.stdout == HOSTILE
    assert_nothing_ran(workdir)


@pytest.mark.parametrize("hostfile, message", [
    (None, "hostfile: the deepspeed backend needs one (--hostfile); it never falls back"),
    ("missing", "missing: cannot read hostfile"),
    ("node-a slots=8\nnode-b 8\n", ":2: expected '<host> slots=<n>'"),
    ("node-a slots=8\nnode-b;touch${IFS}pwned-host slots=8\n", ":2: 'node-b;touch${IFS}pwned-host' is not a host name"),
])
def test_deepspeed_refuses_a_missing_or_malformed_hostfile_and_launches_nothing(workdir, capsys, hostfile, message):
    args = ["--backend", "deepspeed"]
    if hostfile == "missing":
        args += ["--hostfile", "missing"]
    elif hostfile is not None:
        (workdir / "bad-hostfile").write_text(hostfile)
        args += ["--hostfile", "bad-hostfile"]
    code, out, err = launch(capsys, *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err
    assert err.startswith("launcher: error: ")
    assert not (workdir / ".deepspeed_env").exists()
    assert_nothing_ran(workdir)


def test_dry_run_slurm_writes_the_sbatch_script_with_every_value_quoted(workdir, capsys):
    (workdir / "cluster.yaml").write_text(textwrap.dedent(f"""\
        backend: slurm
        nnodes: 16
        env: {{WEAM_PROBE: {json.dumps(HOSTILE)}}}
        slurm: {{partition: gpu, account: {json.dumps(HOSTILE)}, gpus_per_node: 8, cpus_per_task: 96,
                 directives: [--qos=high]}}
    """))
    code, out, _ = launch(capsys, "--cluster", "cluster.yaml", "--nnodes", "2", "--time", "2-00:00:00", "--exclusive")
    assert code == 0
    script = RunDir(workdir / f"run {HOSTILE}").root / "slurm.sbatch"
    text = script.read_text()
    assert out.count(text) == 1 and stat.S_IMODE(script.stat().st_mode) == 0o700
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=96", "#SBATCH --partition=gpu", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --exclusive", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --qos=high",
                 f"#SBATCH --account={shlex.quote(HOSTILE)}", f"export WEAM_PROBE={shlex.quote(HOSTILE)}",
                 "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
                 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'):
        assert line in text.splitlines(), line
    assert "--nproc-per-node=8" in text and "--max-restarts=3" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert_nothing_ran(workdir)


@pytest.mark.parametrize("cluster, flags, message", [
    ("backend: slurm\nslurm: {partion: gpu}\n", [], "cluster.yaml: slurm.partion: unknown key"),
    ("backend: local\nnnodes: 2\n", [], "cluster.yaml: nnodes: local runs on this machine only"),
    ("backend: torchrun\nhostfile: hostfile\n", [], "cluster.yaml: hostfile: only the deepspeed backend"),
    ("backend: slurm\nnproc_per_node: 1\nslurm: {time: '00:04:00'}\n", [],
     "cluster.yaml: slurm.signal_seconds: 300 s is not less than the time limit 00:04:00"),
    ("backend: local\nenv: {BAD-NAME: 1}\n", [], "cluster.yaml: env.BAD-NAME: not an environment variable name"),
    ("backend: slurm\nslurm: {gpus_per_node: 8}\n", ["--backend", "torchrun"],
     "cluster.yaml: slurm.gpus_per_node: a setting of the slurm backend (backend is torchrun)"),
    ("backend: local\n", ["--backend", "slurm", "--partition", "gpu"],
     "cluster.yaml: nproc_per_node: set --nproc-per-node, or --gpus-per-node"),
])
def test_a_bad_cluster_description_is_one_line_naming_the_key(workdir, capsys, cluster, flags, message):
    (workdir / "cluster.yaml").write_text(cluster)
    code, out, err = launch(capsys, "--cluster", "cluster.yaml", *flags)
    assert code == 2 and out == "" and err.startswith(f"launcher: error: {message}") and len(err.splitlines()) == 1


def test_a_bad_run_config_fails_before_anything_is_written(workdir, capsys):
    (workdir / "run.yaml").write_text((workdir / "run.yaml").read_text().replace("model: tiny", "model: huge"))
    code, out, err = launch(capsys, "--backend", "slurm", "--nproc-per-node", "1")
    assert code == 2 and out == "" and "run.yaml: model: 'huge' is neither a preset" in err
    assert not list(workdir.glob("run */slurm.sbatch"))


def _readme_launching() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Launching")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_examples_pass_every_check_in_a_dry_run(workdir, capsys):
    section = _readme_launching()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
    for block in blocks:  # the files the examples name, as the README shows them
        first = block.splitlines()[0]
        if first.startswith("# ") and first[2:].split()[0] in ("hostfile", "slurm.yaml", "cluster.yaml"):
            (workdir / first[2:].split()[0]).write_text(block)
    commands = [" ".join(line.rstrip("\\").strip() for line in cmd.splitlines())
                for cmd in re.findall(r"^python -m launcher run .*?(?<!\\)$", section, re.M | re.S)]
    commands = [c for c in commands if "[" not in c]  # not the synopsis
    assert len(commands) == 4
    # The reference cluster file is a valid one.
    assert launch(capsys, "--cluster", "cluster.yaml")[0] == 0
    backends = set()
    for command in commands:
        args = shlex.split(command)[3:]
        code, out, err = launch(capsys, *args[args.index("--config") + 2:])
        assert code == 0, (command, err)
        backends.add(yaml.safe_load((workdir / "slurm.yaml").read_text())["backend"] if "--cluster" in args
                     else args[args.index("--backend") + 1])
    assert backends == {"local", "torchrun", "deepspeed", "slurm"}


def test_a_run_that_cannot_fit_is_refused_with_the_plan(small_dataset, tmp_path, capsys, monkeypatch):
    """``launcher run`` makes the memory planner's check before it writes or starts anything."""
    dataset, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    config = write_run_config(tmp_path, dataset, tmp_path / "xxl", steps=10)
    cfg = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**cfg, "model": "xxl", "deepspeed": {"config": "ds_configs/zero3_bf16.json"}}))
    assert main(["run", "--config", str(config), "--backend", "local", "--nproc-per-node", "1",
                 "--gpu-mem", "80GB", "--cpu-mem", "128GB", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "does not fit" in err and "nothing launched" in err
    assert not (tmp_path / "xxl").exists()
    config.write_text(yaml.safe_dump({**cfg, "deepspeed": {"config": "ds_configs/zero3_bf16.json"}}))  # tiny
    assert main(["run", "--config", str(config), "--backend", "local", "--nproc-per-node", "1",
                 "--gpu-mem", "80GB", "--dry-run"]) == 0
    assert "dry run: nothing started" in capsys.readouterr().out
    assert main(["run", "--config", str(config), "--backend", "local", "--gpu-mem", "lots", "--dry-run"]) == 2
    assert "gpu_mem: 'lots' is not a size" in capsys.readouterr().err
