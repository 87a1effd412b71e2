"""``python -m launcher prep`` on the real two-node SLURM cluster (tests/slurm_cluster.py): a prepare
job, an array of align+encode tasks and a final job give the dataset a local build gives; an array task killed
mid-chunk ends the chain, and the same command then redoes that chunk alone.

What a local build repeats exactly, and so what is compared: the counts (records, clean pairs, drops by reason,
chunks, samples per split), the shards' names, splits, chunks and sample counts, and each sample's key and
texts. Not compared: token ids, links and so the shards' bytes: two local builds of one config differ there too
(the unigram trainer's scores differ in their last digits between runs, and eflomal seeds its sampler from
/dev/urandom)."""
from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import time
from pathlib import Path

import psutil
import yaml
from conftest import small_config

from data_prep.manifest import read_manifest
from data_prep.shards import file_sha256, read_samples
from launcher.cli import main

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def launcher_prep(*args: str) -> tuple[int, str]:
    """``python -m launcher prep ARGS`` in this process: its exit status and its console."""
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        code = main(["prep", *args])
    return code, console.getvalue()


def submitted(log: Path, what: str, seconds: float = 120) -> str:
    """The id of the job the prepare job says it submitted (``array`` or ``final``), once its log says so."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(rf"submitted {what} job (\d+)", log.read_text() if log.exists() else "")
        if found:
            return found[1]
        time.sleep(0.2)
    raise AssertionError(f"{log}: no {what} job after {seconds:.0f} s:\n" + (log.read_text() if log.exists() else ""))


def stop_when_aligning(array: str, task: int, chunk_done: Path, seconds: float = 120) -> psutil.Process:
    """Stops (SIGSTOP) the eflomal of array task ``task`` once ``chunk_done`` exists: that task is then inside its
    next chunk, which cannot finish while its aligner is stopped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if chunk_done.exists():
            for process in psutil.process_iter(["name"]):
                try:
                    env = process.environ() if process.info["name"] == "eflomal" else {}
                except psutil.Error:
                    continue
                if env.get("SLURM_ARRAY_JOB_ID") == array and env.get("SLURM_ARRAY_TASK_ID") == str(task):
                    process.send_signal(signal.SIGSTOP)
                    return process
        time.sleep(0.02)
    raise AssertionError(f"array task {array}_{task} did not start aligning its second chunk in {seconds:.0f} s")


def deterministic(dataset: Path) -> tuple[dict, dict]:
    """What two builds of one config share: per pair, the counts and the shards' names, splits, chunks and sample
    counts; per shard, its samples' keys and texts. Every shard is checked against its record on the way."""
    manifest = read_manifest(dataset)
    pairs, samples = {}, {}
    for key, entry in manifest["pairs"].items():
        pairs[key] = {name: entry[name] for name in ("input_records", "clean_pairs", "dropped", "chunks", "chunks_done")}
        pairs[key]["samples"] = {split: totals["samples"] for split, totals in entry["splits"].items()}
        pairs[key]["shards"] = [(s["path"], s["split"], s["chunk"], s["samples"]) for s in entry["shards"]]
        for shard in entry["shards"]:
            path = dataset / shard["path"]
            assert file_sha256(path) == shard["sha256"], path
            samples[shard["path"]] = [(s["__key__"], s["meta.json"]) for s in read_samples(path)]
            assert len(samples[shard["path"]]) == shard["samples"], path
    return pairs, samples


def test_a_slurm_build_equals_the_local_one_and_a_killed_array_task_is_redone_alone(small_dataset, ja_pairs,
                                                                                     tmp_path, monkeypatch, slurm):
    local, _, _ = small_dataset
    monkeypatch.chdir(tmp_path)
    dataset = tmp_path / "dataset"
    prep = tmp_path / "prep.yaml"
    prep.write_text(yaml.safe_dump(small_config(tmp_path, ja_pairs, output_dir=str(dataset))))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"backend": "slurm", "nnodes": 2,
                                       "slurm": {"partition": "debug", "time": "00:10:00", "cpus_per_task": 1}}))
    command = ("--config", str(prep), "--cluster", str(cluster), "--chunks-per-task", "2")
    logs = dataset / "slurm"

    code, console = launcher_prep(*command)
    assert code == 0, console
    prepare = re.search(r"submitted job (\d+) \((data_prep-\w+)\)", console)
    job, name = prepare[1], prepare[2]
    assert f"squeue --name={name}" in console
    # A second submission while the first's jobs are queued or running is refused, naming them.
    code, again = launcher_prep(*command)
    assert code == 2 and job in again and "still queued or running" in again, again

    # The prepare job planned 4 groups of 2 chunks (fr-en 0-1, 2-3, 4 + ja-en 0, ja-en 1), as the array's tasks.
    array = submitted(logs / f"prepare-{job}.out", "array")
    final = submitted(logs / f"prepare-{job}.out", "final")
    plan = json.loads((dataset / ".work" / "plan.json").read_text())["groups"]
    assert plan == [[["fr-en", 0], ["fr-en", 1]], [["fr-en", 2], ["fr-en", 3]], [["fr-en", 4], ["ja-en", 0]],
                    [["ja-en", 1]]]
    # Task 0 is killed mid-chunk: its first chunk finished, its second aligning (its eflomal stopped meanwhile).
    work = dataset / ".work" / "fr-en"
    aligner = stop_when_aligning(array, 0, work / "chunk-00000.json")
    slurm.command("scancel", f"{array}_0")
    assert slurm.wait_for_state(f"{array}_0", ENDED, 60) == "CANCELLED"
    assert not aligner.is_running() or aligner.status() == psutil.STATUS_ZOMBIE
    # The chain ends: the other tasks finish their chunks, the final job is cancelled without running.
    for task in (1, 2, 3):
        assert slurm.wait_for_state(f"{array}_{task}", ENDED, 120) == "COMPLETED"
    assert slurm.wait_for_state(final, ENDED, 30) == "CANCELLED"
    assert not (logs / f"finish-{final}.out").exists()
    assert not read_manifest(dataset, require_complete=False)["complete"]
    done = sorted(p.name for p in dataset.glob(".work/*/chunk-*.json"))
    assert done == ["chunk-00000.json"] * 2 + ["chunk-00001.json", "chunk-00002.json", "chunk-00003.json",
                                                "chunk-00004.json"]
    assert not (work / "chunk-00001.json").exists()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dataset.glob("*-en/*/*.tar")
                if not p.name.startswith("fr-en-") or "-00001-" not in p.name}

    # The same command redoes only fr-en chunk 1: one array task, then the final job completes the dataset.
    code, console = launcher_prep(*command)
    assert code == 0, console
    job = re.search(r"submitted job (\d+)", console)[1]
    array = submitted(logs / f"prepare-{job}.out", "array")
    final = submitted(logs / f"prepare-{job}.out", "final")
    assert "1 align+encode tasks" in (logs / f"prepare-{job}.out").read_text()
    assert slurm.wait_for_state(final, ENDED, 120) == "COMPLETED", (logs / f"finish-{final}.out").read_text()
    assert "aligning and encoding 1 of its 1 chunks" in (logs / f"chunks-{array}_0.out").read_text()
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert "shards verified" in (logs / f"finish-{final}.out").read_text()
    assert not (dataset / ".work").exists()

    # The dataset a local build makes.
    assert deterministic(dataset) == deterministic(local)
    assert read_manifest(dataset)["tokenizer"]["vocab_size"] == read_manifest(local)["tokenizer"]["vocab_size"]
    # Submitted again once complete: nothing to do, nothing submitted.
    before = slurm.command("squeue", "-h", "--states=all", f"--name={name}", "-o", "%i").stdout.split()
    code, console = launcher_prep(*command)
    assert code == 0 and "is complete; nothing to do" in console, console
    assert slurm.command("squeue", "-h", "--states=all", f"--name={name}", "-o", "%i").stdout.split() == before
