"""Carrying out a launch (launcher.backends): write its files, print what runs, start it without a shell, wait
for the job, and on failure print the failing ranks' last log lines."""
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

from data_prep.typed_config import ConfigError
from launcher.backends import Launch, LaunchFile
from launcher.rank_logs import failed_rank_report
from weam_ds.failure import end_with_parent
from weam_ds.run_dir import RunDir


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
    run.log(0).parent.mkdir(parents=True, exist_ok=True)  # sbatch opens its output file there
    for file in launch.files:
        write_launch_file(file)
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
        env = {**os.environ, **launch.env}
        if not launch.waits:
            return subprocess.run(launch.argv, env=env, stdout=job_output, stderr=job_output).returncode
        started = time.time()
        # A killed launcher (or study runner) never leaves the job running unsupervised: it gets SIGTERM,
        # and the training checkpoints and stops.
        job = subprocess.Popen(launch.argv, env=env, stdout=job_output, stderr=job_output,
                               preexec_fn=end_with_parent)
        stopped = []

        def stop(signum, _frame):
            stopped.append(signum)
            job.send_signal(signum)

        # SIGTERM reaches the job (it checkpoints and stops); Ctrl-C reaches it from the terminal directly.
        on_term, on_int = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            code = job.wait()
        finally:
            signal.signal(signal.SIGTERM, on_term)
            signal.signal(signal.SIGINT, on_int)
        if stopped:
            print("launcher: stopped by SIGTERM; launched again, the run resumes from its newest checkpoint",
                  file=errors)
        elif code != 0:
            print(failed_rank_report(run, started), file=errors)
        return code if code >= 0 else 128 - code
