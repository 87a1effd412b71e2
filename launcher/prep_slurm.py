"""A data_prep build spread over a SLURM cluster: ``python -m launcher prep --config prep.yaml
--cluster cluster.yaml``.

    submitting host          compute nodes
    sbatch prepare.sbatch ─► prepare job: clean, split, tokenizer (``data_prep --stage prepare``), which plans the
                             chunks still to do in groups and then submits, itself:
                             sbatch --array=0-<groups-1>%<nnodes> chunks.sbatch ─► one task per group: align and
                                    encode its chunks (``--stage chunks``), each chunk leaving its own result file
                             sbatch --dependency=afterok:<array> --kill-on-invalid-dep=yes finish.sbatch
                                    ─► final job: merges the results into manifest.json, verifies every shard
                                       (sha256, samples) and marks the dataset complete (``--stage finish``)

The array is submitted by the prepare job because the number of chunks is known only after cleaning. A failed
or cancelled array task makes the final job's dependency impossible, and ``--kill-on-invalid-dep`` cancels it
instead of leaving it pending. The same command then submits the chain again: the prepare job skips what is
done (clean spools, the tokenizer, finished chunks) and plans only the unfinished chunks.

Groups: by default the chunks are spread over the cluster file's ``nnodes`` (one group per node, so each task
starts Python and loads the tokenizer once, and runs its chunks on every CPU it was given); ``--chunks-per-task``
makes smaller groups (less lost to a failed task, and tasks that fit into gaps of a busy cluster). At most
``nnodes`` tasks run at once (the array's ``%`` limit). Each task's workers are the CPUs SLURM gave it
(``slurm.cpus_per_task``, or a whole node with ``exclusive``). data_prep uses no GPUs: ``gpus_per_node`` is
not requested.

All jobs of one dataset directory share one job name (``data_prep-`` and a hash of the directory), so a second
submission while any of them is queued or running is refused, naming them. The scripts and their logs are in
``<output_dir>/slurm/``; every value in them is quoted for the shell (``#SBATCH`` lines too). As in the
launcher's job script, the submitting shell's credentials are unset in the jobs (launcher.cluster).
"""
from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from data_prep.build import is_complete
from data_prep.config import PrepConfig
from data_prep.output_dirs import claim
from data_prep.typed_config import ConfigError
from launcher.backends import run_environment
from launcher.cluster import CREDENTIAL_NAME, ClusterConfig
from launcher.slurm import log_pattern, node_options, sbatch, site_options

SCRIPTS = "slurm"
"""The folder of the output directory that holds the job scripts and their logs."""


def submit(config: Path, cfg: PrepConfig, cluster: ClusterConfig, chunks_per_task: int | None) -> str | None:
    """Submits the prepare job (which submits the rest) and says what it did; returns its job id, or None when
    the dataset is complete already."""
    out = Path(cfg.output_dir)
    claim(out, "data_prep", earlier="manifest.json")
    if is_complete(cfg):
        print(f"data_prep: {out} is complete; nothing to do")
        return None
    name = job_name(out, cluster)
    live = _live_jobs(name)
    if live:
        raise ConfigError(f"{out}: jobs of an earlier submission are still queued or running ({', '.join(live)}; "
                          f"squeue --name={name}); wait for them to end, or scancel them, before submitting again")
    folder = out / SCRIPTS
    folder.mkdir(exist_ok=True)
    scripts = {kind: folder / f"{kind}.sbatch" for kind in ("prepare", "chunks", "finish")}
    stage = [sys.executable, "-m", "data_prep", "--config", str(config.resolve())]
    workers = ["--workers", "${SLURM_CPUS_ON_NODE:-1}"]  # the CPUs SLURM gave the job on its node
    nodes = cluster.nnodes or 1
    plan = ["--stage", "prepare", "--nodes", str(nodes)]
    if chunks_per_task is not None:
        plan += ["--chunks-per-task", str(chunks_per_task)]
    bodies = {
        "prepare": _prepare_body(_command(stage + plan, workers), scripts["chunks"], scripts["finish"], nodes),
        "chunks": [f"exec {_command(stage + ['--stage', 'chunks', '--task', '${SLURM_ARRAY_TASK_ID}'], workers)}"],
        "finish": [f"exec {_command(stage + ['--stage', 'finish'], workers)}"],
    }
    logs = {"prepare": "prepare-%j.out", "chunks": "chunks-%A_%a.out", "finish": "finish-%j.out"}
    for kind, script in scripts.items():
        script.write_text(_script(kind, name, log_pattern(folder, logs[kind]), cluster, bodies[kind]))
    job = sbatch(scripts["prepare"])
    print(f"data_prep: submitted job {job} ({name}): clean, split and tokenizer; it then submits the align+encode "
          f"array and the final job\n"
          f"watch: squeue --name={name}    logs: {folder}/ (the array's and final job's ids: {folder}/prepare-{job}.out)")
    return job


def job_name(out: Path, cluster: ClusterConfig) -> str:
    """The name every job of this dataset directory's build carries (a hash, so that any path fits squeue)."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:12]
    return f"{cluster.slurm.job_name or 'data_prep'}-{digest}"


def _command(argv: list[str], workers: list[str]) -> str:
    """A data_prep command line for the job's shell: every word quoted, but ``${...}`` that the job expands."""
    return " ".join(f'"{word}"' if word.startswith("${") else shlex.quote(word) for word in argv + workers)


def _prepare_body(prepare: str, chunks: Path, finish: Path, nodes: int) -> list[str]:
    q = shlex.quote
    return [
        f"groups=$({prepare}) || exit 1",
        "after=()",
        'if [ "$groups" -gt 0 ]; then',
        f'  array=$(sbatch --parsable --array="0-$((groups - 1))%{nodes}" {q(str(chunks))}) || exit 1',
        '  array=${array%%;*}',
        '  after=(--dependency="afterok:$array" --kill-on-invalid-dep=yes)',
        '  echo "data_prep: submitted array job $array: $groups align+encode tasks"',
        "fi",
        # A final job that cannot be submitted must not leave the array to run for nothing.
        f'final=$(sbatch --parsable "${{after[@]}}" {q(str(finish))}) || {{ [ -n "${{array:-}}" ] && scancel "$array"; exit 1; }}',
        'echo "data_prep: submitted final job ${final%%;*}: merges the chunks, verifies every shard, writes the manifest"',
    ]


def _script(kind: str, name: str, output: str, cluster: ClusterConfig, body: list[str]) -> str:
    q = shlex.quote
    options = [f"--job-name={q(name)}", "--nodes=1", "--ntasks=1", *node_options(cluster, None), "--export=ALL",
               "--open-mode=append", f"--output={q(output)}", *site_options(cluster)]
    lines = [
        "#!/bin/bash",
        f"# data_prep's {kind} job, written by `python -m launcher prep` (launcher/prep_slurm.py).",
        *(f"#SBATCH {option}" for option in options),
        "",
        "set -u",
        ': "${SLURM_JOB_ID:?not in a SLURM job: submit this script with sbatch}"',
        f"cd {q(str(Path.cwd()))} || exit 1",  # the config's relative paths are relative to it
        "# The job inherits the submitting shell's environment: its credentials stay out (the cluster's env follow).",
        f"credential={q(CREDENTIAL_NAME)}",
        'for name in $(compgen -e); do if [[ ${name^^} =~ $credential ]]; then unset "$name"; fi; done',
        *(f"export {key}={q(value)}" for key, value in run_environment(cluster).items()),
        *body,
    ]
    return "\n".join(lines) + "\n"


def _live_jobs(name: str) -> list[str]:
    """The jobs named ``name`` that are queued or running (squeue lists no others by default), by id."""
    if shutil.which("squeue") is None:
        raise ConfigError("squeue: not found on PATH (is this a SLURM login node?)")
    argv = ["squeue", "-h", f"--name={name}", "-o", "%i"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        # Unknown is not none: a second chain beside the first would redo its chunks.
        raise ConfigError(f"{shlex.join(argv)}: {done.stderr.strip()} (exit status {done.returncode}); "
                          "submitting only once SLURM can tell whether this build's jobs still run")
    return done.stdout.split()
