"""Carrying out a launch (launcher.backends): write its files, print what runs, start it without a shell, wait
for the job, and on failure print the failing ranks' last log lines.

Stopping: the job runs in a session of its own, so a terminal's Ctrl-C reaches the launcher alone (torchrun
would otherwise take it as a failure, print two tracebacks and kill the ranks in their save). SIGINT and
SIGTERM to the launcher send SIGTERM to the job's processes below its agent (the ranks, under torchrun), or to
the DeepSpeed runner, which stops the ranks on every host through pdsh (its kill command): they checkpoint
and stop, and the launcher says so in one line. A second Ctrl-C kills the job here outright; ``latest`` still
names a complete checkpoint (weam_ds.checkpoint)."""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from data_prep.files import write_failure
from data_prep.typed_config import ConfigError
from launcher.backends import Launch, LaunchFile
from launcher.cluster import without_credentials
from launcher.rank_logs import failed_rank_report
from weam_ds.failure import end_with_parent
from weam_ds.run_dir import RunDir


STOPPED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)
"""What ``execute`` returns when the launcher was stopped (Ctrl-C, SIGTERM), as a shell reports a signal."""


def write_launch_file(file: LaunchFile) -> None:
    """Atomically, and never readable by others on the way (the file may hold the environment's values)."""
    file.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.path.with_name(f".{file.path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), file.mode)  # a leftover temporary file keeps its old mode otherwise
        f.write(file.text)
    os.replace(tmp, file.path)


def command_line(launch: Launch) -> str:
    """What runs, as a shell would read it (every word quoted)."""
    assignments = [f"{key}={shlex.quote(value)}" for key, value in launch.env.items()]
    return " ".join([*assignments, shlex.join(launch.argv)])


def execute(launch: Launch, run: RunDir, dry_run: bool, output: Path | None = None) -> int:
    """Carries out ``launch``; ``output`` (appended to) takes the job's console and these lines instead of
    this terminal (the study runner keeps one per cell)."""
    try:
        run.log(0).parent.mkdir(parents=True, exist_ok=True)  # sbatch opens its output file there
        for file in launch.files:
            write_launch_file(file)
    except OSError as exc:
        raise ConfigError(write_failure(exc, run.root) or f"{exc.filename}: {exc.strerror}") from None
    with contextlib.ExitStack() as stack:
        job_output = stack.enter_context(open(output, "a", encoding="utf-8")) if output else None
        console, errors = (job_output, job_output) if output else (sys.stdout, sys.stderr)
        for note in launch.notes:
            print(f"launcher: {note}", file=console)
        if dry_run and launch.shows is not None:
            print(launch.shows.read_text(encoding="utf-8"), end="", file=console)
        print(command_line(launch), file=console, flush=True)
        if dry_run:
            print("launcher: dry run: nothing started", file=console)
            return 0
        if shutil.which(launch.argv[0]) is None:
            raise ConfigError(f"{launch.argv[0]}: not found on PATH" + (
                " (is this a SLURM login node? --dry-run writes the script without submitting it)"
                if launch.argv[0] == "sbatch" else ""))
        # torchrun hands its environment to the ranks, and an sbatch job inherits it: credentials stay here.
        env = {**without_credentials(dict(os.environ)), **launch.env}
        if not launch.waits:
            return subprocess.run(launch.argv, env=env, stdout=job_output, stderr=job_output).returncode
        started = time.time()
        # A killed launcher (or study runner) never leaves the job running unsupervised: it gets SIGTERM,
        # and the training checkpoints and stops.
        job = subprocess.Popen(launch.argv, env=env, stdout=job_output, stderr=job_output,
                               preexec_fn=end_with_parent, start_new_session=True)
        stopped = []

        def stop(signum, _frame):
            stopped.append(signum)
            if len(stopped) > 1:
                _kill(job.pid)
            elif launch.stops_its_ranks:
                job.terminate()
            else:
                _stop_ranks(job.pid)

        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = job.wait()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if stopped:
            print(f"launcher: stopped by {signal.Signals(stopped[0]).name}"
                  f"{' (twice: killed)' if len(stopped) > 1 else ''}; launched again, the run resumes from its "
                  "newest checkpoint", file=errors)
            return 128 + stopped[0]
        if code != 0:
            print(failed_rank_report(run, started), file=errors)
        return code if code >= 0 else 128 - code


def _stop_ranks(agent: int) -> None:
    """SIGTERM to the agent's children (torchrun's ranks): each checkpoints and stops, and the agent ends as
    after a finished run."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(agent).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()


def _kill(agent: int) -> None:
    """SIGKILL to the job, every process of it at once."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(agent)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
