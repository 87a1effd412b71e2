"""``python -m launcher run`` as users launch: real torchrun jobs of the tiny preset on CPU (gloo) for the
local and torchrun backends, dry runs for every backend, and hostile values (a host name with ``;touch``,
``$(...)`` in YAML values) that must stay data. The SLURM backend runs on a real cluster in test_slurm_cluster.py,
the DeepSpeed runner over real sshd and pdsh in test_deepspeed_runner.py."""
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

from conftest import free_port, fresh_interpreter, launched_run
from launcher.backends import BACKENDS
from launcher.cli import main
from launcher.cluster import BACKEND_NAMES
from weam_ds.run_dir import SHARED_MARKER_PREFIX, RunDir, checkpoint_problem

LAUNCHING = Path(__file__).resolve().parents[2] / "docs" / "launching.md"
LAUNCH = [sys.executable, "-m", "launcher", "run"]
HOSTILE = "$(touch pwned-dollar) `touch pwned-tick` 'q' ;touch pwned-semi"
"""A value that runs commands wherever a shell reads it unquoted; each one leaves a pwned-* file in the cwd."""


def write_run_config(tmp: Path, dataset: Path, out: Path, steps: int, **train) -> Path:
    path = tmp / f"{out.name.split()[0]}.yaml"
    path.write_text(yaml.safe_dump(launched_run(dataset, out, steps, train=train)))
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


@pytest.mark.slow
def test_two_agents_with_their_own_addresses_meet_at_an_address_and_restart_elastically_after_a_kill(
        small_dataset, tmp_path, start):
    """Two torchrun agents, as two nodes would run them: each with its own --local-addr (127.0.0.1 and
    127.0.0.2), meeting through c10d at an endpoint given as an address, not the host's name. A worker killed
    after the first checkpoint: both agents restart their workers (the default 3 restarts across nodes), the job
    resumes from that checkpoint and runs to its end, each step once. The nodes share the run directory, which the
    training checks with markers it cleans up (a node that sees another: tests/weam_ds/test_multinode.py)."""
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=10, checkpoint_interval=3)
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [start([*LAUNCH, "--config", str(config), "--backend", "torchrun", "--nnodes", "2", "--nproc-per-node",
                     "1", "--rdzv-endpoint", endpoint, "--local-addr", address], cwd=tmp_path, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
              for address in ("127.0.0.1", "127.0.0.2")]
    run = RunDir(out)
    wait_for(lambda: run.latest_tag() is not None, agents[1])
    workers = [p for p in psutil.Process(agents[1].pid).children(recursive=True)
               if "torch.distributed.run" in p.parent().cmdline()]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGKILL)
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for output, address in zip(outputs, ("127.0.0.1", "127.0.0.2")):
        command = shlex.split(output.splitlines()[[i for i, line in enumerate(output.splitlines())
                                                   if "torch.distributed.run" in line][0]])
        assert {"--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--local-addr={address}",
                "--max-restarts=3", f"--rdzv-conf=is_host={int(address == '127.0.0.1')}"} <= set(command)
    resumed = re.findall(r"resumed from \S+ at step (\d+)", run.log(0).read_text())
    assert len(resumed) == 1 and int(resumed[0]) >= 3 and int(resumed[0]) % 3 == 0
    assert metric_steps(run) == list(range(1, 11)) and run.latest_tag() == "step10"
    rank0, rank1 = logged_losses(run.log(0)), logged_losses(run.log(1))
    assert rank0[-3:] == rank1[-3:]  # one job: the same global loss
    assert "rank 1 of 2" in run.log(1).read_text()
    assert "parallel setup: 2 ranks on 2 nodes (gloo)" in run.log(0).read_text()
    assert not list(run.checkpoints.glob(f"{SHARED_MARKER_PREFIX}*"))  # the nodes' shared-directory markers: gone


@pytest.mark.slow
def test_an_error_on_every_rank_ends_the_job_promptly_with_its_reason_and_the_ranks_last_log_lines(small_dataset,
                                                                                                   tmp_path):
    """Both ranks fail at once (the non-finite guard decides alike on all), each with DataLoader workers to end: the
    job ends within the bound (train.failure_timeout's default), the reason printed once, and the launcher shows
    each failing rank's last log lines. (An error on one rank alone, a hung rank: test_fault_tolerance.py.)"""
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(launched_run(dataset, out, 1000, optimizer={"lr": 1.0e8}, data={"workers": 2},
                                                  train={"max_nonfinite_in_row": 2})))
    started = time.monotonic()
    job = subprocess.run([*LAUNCH, "--config", str(config), "--backend", "local", "--nproc-per-node", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert job.returncode != 0
    assert seconds < 60, f"the job took {seconds:.0f} s to end"
    errors = [line for line in job.stderr.splitlines() if "weam_ds.train: error:" in line]
    assert len(errors) == 1 and "2 non-finite losses in a row" in errors[0], job.stderr[-3000:]
    report = job.stderr[job.stderr.index("launcher: rank 0 failed; the last lines of"):]
    assert str(RunDir(out).log(0)) in report.splitlines()[0]
    # The traceback goes to the rank's log only (the console has one line): it came from the log.
    assert "Traceback (most recent call last)" in report and "non-finite losses in a row" in report


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_training_with_a_checkpoint(small_dataset, tmp_path, start):
    dataset, _, _ = small_dataset
    out = tmp_path / "run"
    config = write_run_config(tmp_path, dataset, out, steps=10_000)  # until stopped, whatever the machine's speed
    job = start([*LAUNCH, "--config", str(config), "--backend", "local"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
    run = RunDir(out)
    wait_for(lambda: run.metrics.exists() and len(run.metrics.read_text().splitlines()) >= 2, job)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    tag = run.latest_tag()
    assert tag is not None and checkpoint_problem(run.checkpoints / tag) is None and int(tag[4:]) < 10_000, stderr[-3000:]
    assert "launcher: stopped by SIGTERM" in stderr and "failed; the last lines" not in stderr


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


@pytest.mark.slow
def test_a_launch_that_plans_no_memory_imports_no_model_code(workdir):
    """The memory plan builds the model on the meta device, which imports transformers' model code (3 to 4 s of
    CPU); a launch without GPU memory to plan against (CPU ranks, a cluster without gpu_mem) starts without it.
    A fresh interpreter, as a user's command line; the planner's own module, imported after, shows what the check
    would see."""
    code = ("import sys\n"
            "from launcher.cli import main\n"
            "assert main(['run', '--config', 'run.yaml', '--backend', 'local', '--dry-run']) == 0\n"
            "loaded = lambda: sorted(m for m in ('deepspeed', 'transformers') if m in sys.modules)\n"
            "print(loaded())\n"
            "import launcher.model_shape\n"
            "print(loaded())\n")
    assert fresh_interpreter(code)[-2:] == ["[]", "['transformers']"]


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
    ("backend: torchrun\n", ["--local-addr", "10.0.0.1;touch pwned-addr"],
     "cluster.yaml: local_addr: '10.0.0.1;touch pwned-addr' is not a host name or an address"),
    ("backend: slurm\nnproc_per_node: 1\nlocal_addr: 10.0.0.1\n", [],
     "cluster.yaml: local_addr: only the torchrun backend takes this node's address (backend is slurm)"),
    ("backend: kubernetes\n", [], "cluster.yaml: backend: 'kubernetes' is not one of local, torchrun, deepspeed, slurm"),
])
def test_a_bad_cluster_description_is_one_line_naming_the_key(workdir, capsys, cluster, flags, message):
    (workdir / "cluster.yaml").write_text(cluster)
    code, out, err = launch(capsys, "--cluster", "cluster.yaml", *flags)
    assert code == 2 and out == "" and err.startswith(f"launcher: error: {message}") and len(err.splitlines()) == 1


def test_every_backend_a_cluster_file_may_name_has_a_launch():
    assert list(BACKENDS) == list(BACKEND_NAMES)  # the config checks the names before the launches are imported


def test_a_bad_run_config_fails_before_anything_is_written(workdir, capsys):
    (workdir / "run.yaml").write_text((workdir / "run.yaml").read_text().replace("model: tiny", "model: huge"))
    code, out, err = launch(capsys, "--backend", "slurm", "--nproc-per-node", "1")
    assert code == 2 and out == "" and "run.yaml: model: 'huge' is neither a preset" in err
    assert not list(workdir.glob("run */slurm.sbatch"))


def test_the_readme_examples_pass_every_check_in_a_dry_run(workdir, capsys):
    section = LAUNCHING.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, re.S)
    for block in blocks:  # the files the examples name, as the documentation shows them
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
