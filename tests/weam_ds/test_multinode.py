"""A job of several nodes, simulated on one machine with one torchrun agent per "node": the launch's node count
in the log, the check that every node sees one run directory (a node-local ``output_dir``: the second agent in a
mount namespace of its own, with a private tmpfs over the run's parent), pruning that never deletes a committed
checkpoint for a file rank 0 does not see, and the input's reads per rank (each shard hashed once per job, each
rank reading and decoding only its share of the dev split)."""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import free_port, kill_tree, shard_samples
from data_prep.manifest import read_manifest
from data_prep.typed_config import from_dict
from runs import write_config
from weam_ds import checkpoint, data, shard_reader
from weam_ds.batch import TokenInfo, collate
from weam_ds.config import DataConfig, MaskingConfig
from weam_ds.run_dir import COMMIT_FILE, SHARED_MARKER_PREFIX, RunDir, checkpoint_problem

BOUND_S = 30
"""A job whose nodes do not share the run directory ends within this many seconds of its ranks' meeting (its
start-up before that, importing torch on a loaded machine, is not what is measured)."""


def _agents(config: Path, *private: Path) -> list[subprocess.Popen]:
    """Two torchrun agents on this machine as two nodes of one job; the second, when ``private`` names a
    directory, sees a tmpfs of its own there (as a node sees its local disk at the same path)."""
    endpoint = f"127.0.0.1:{free_port()}"
    agents = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-conf=is_host={int(node == 0)}",
               "--max-restarts=0", "-m", "weam_ds.train", "--config", str(config)]
        if node == 1 and private:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
                   str(private[0]), *cmd]
        agents.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return agents


def _finish(agents: list[subprocess.Popen], timeout: float) -> list[str]:
    try:
        return [agent.communicate(timeout=timeout)[1] for agent in agents]
    finally:
        for agent in agents:
            kill_tree(agent.pid)


def _logged_at(log: Path, message: str) -> float:
    """When the last record of ``log`` that contains ``message`` was written (LOG_FORMAT's time)."""
    stamp = [line[:23] for line in log.read_text().splitlines() if message in line][-1]
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _can_mount_privately(tmp: Path) -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(tmp)],
                           capture_output=True)
    return probe.returncode == 0


def test_pruning_never_deletes_a_committed_checkpoint_for_a_file_rank_0_cannot_see(trained_run, tmp_path, caplog):
    """Pruning by what rank 0 sees, on a copy of the 2-rank trained run: step8 committed, then a file of rank 1
    gone (as on a node rank 0 cannot see), and step17 a save killed before its commit. Only the uncommitted one
    may go. (Two nodes that share the directory run, their markers cleaned up: tests/launcher/test_run.py's
    two-agent job.)"""
    run = RunDir(trained_run.copy(tmp_path / "run"))
    record = json.loads((run.checkpoints / "step8" / COMMIT_FILE).read_text())
    (run.checkpoints / "step8" / next(name for name in record["files"] if "rank_1_" in name)).unlink()
    shutil.copytree(run.checkpoints / "step16", run.checkpoints / "step17")
    (run.checkpoints / "step17" / COMMIT_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="weam_ds.checkpoint"):
        checkpoint.prune(run, keep=1)
    assert run.step_tags() == ["step8", "step16"]
    assert any("step8: not deleted although" in r.getMessage() and "rank_1_" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_node_that_sees_another_run_directory_ends_the_job_touching_no_checkpoint(trained_run, tmp_path):
    """The second node sees another directory at the path of the run (a copy of the trained run): the job ends at
    once, saying which, and the checkpoints rank 0 has are left as they were."""
    if shutil.which("unshare") is None or not _can_mount_privately(tmp_path):
        pytest.skip("needs unshare -m and tmpfs mounts (root)")
    out = trained_run.copy(tmp_path / "shared" / "run")
    run = RunDir(out)
    before = {tag: sorted(p.name for p in (run.checkpoints / tag).iterdir()) for tag in run.step_tags()}
    cfg = {**trained_run.config, "output_dir": str(out), "train": {**trained_run.config["train"], "steps": 18}}
    agents = _agents(write_config(cfg, tmp_path), out.parent)
    errors = _finish(agents, timeout=300)
    ended = time.time()
    assert all(agent.returncode != 0 for agent in agents)
    assert ended - _logged_at(run.log(0), "rank 0 of 2") < BOUND_S
    # Both ranks find it; the one that announces first says it (a job's ranks share one log under SLURM).
    lines = [line for err in errors for line in err.splitlines() if line.startswith("weam_ds.train: error:")]
    assert len(lines) == 1, "\n---\n".join(err[-3000:] for err in errors)
    assert re.search(rf"output_dir: {re.escape(str(run.checkpoints))} is not one directory shared by every node: "
                     r"\S+ \(rank 1\) and rank 0 on \S+ do not see", lines[0]), lines[0]
    assert {tag: sorted(p.name for p in (run.checkpoints / tag).iterdir()) for tag in run.step_tags()} == before
    assert checkpoint_problem(run.checkpoints / "step16") is None and run.latest_tag() == "step16"
    assert not list(run.checkpoints.glob(f"{SHARED_MARKER_PREFIX}*"))


def test_a_run_whose_checkpoints_are_gone_says_so_before_starting_afresh(tmp_path):
    # What rank 0 saw when a node-local prune had deleted every checkpoint: latest, and nothing it names.
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    (run.checkpoints / "latest").write_text("step8")
    assert run.resume_tag() == (None, ["latest names step8, which does not exist"])


class _Reads:
    """Counts, through the real functions, the shards hashed and the dev samples read and decoded."""

    def __init__(self, monkeypatch):
        self.hashed, self.read, self.decoded = Counter(), 0, 0
        real_hash, real_read, real_decode = (shard_reader.file_sha256, shard_reader.read_samples,
                                             shard_reader.decode_sample)

        def file_sha256(path):
            self.hashed[str(path)] += 1
            return real_hash(path)

        def read_samples(path):
            for raw in real_read(path):
                self.read += 1
                yield raw

        def decode_sample(raw, **kwargs):
            self.decoded += 1
            return real_decode(raw, **kwargs)

        monkeypatch.setattr(shard_reader, "file_sha256", file_sha256)
        monkeypatch.setattr(shard_reader, "read_samples", read_samples)
        monkeypatch.setattr(shard_reader, "decode_sample", decode_sample)


def test_each_shard_is_hashed_once_per_job_and_each_rank_reads_its_dev_share(small_dataset, tmp_path, monkeypatch):
    dataset, _, _ = small_dataset
    copy = tmp_path / "dataset"
    shutil.copytree(dataset, copy)
    manifest = read_manifest(copy)
    shards = {str(copy / s["path"]): s for entry in manifest["pairs"].values() for s in entry["shards"]
              if s["split"] in ("train", "dev")}
    # A silent corruption: a byte of a sample's array flipped, the tar still whole; only the sha256 tells.
    corrupt = next(p for p, s in shards.items() if s["split"] == "train" and "fr-en" in p)
    raw = bytearray(Path(corrupt).read_bytes())
    npy = raw.index(b"\x93NUMPY")
    raw[npy + 10 + int.from_bytes(raw[npy + 8:npy + 10], "little")] ^= 1  # the first token id's lowest bit
    Path(corrupt).write_bytes(bytes(raw))
    cfg = from_dict(DataConfig, {"datasets": [str(copy)], "max_length": 32, "batch_size": 4, "eval_batches": 3,
                                 "shuffle_buffer": 16, "workers": 0})
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(copy / "tokenizer")))
    world = 3
    reads = _Reads(monkeypatch)

    # The job's check: every train and dev shard hashed once, by one rank; the corrupt one found.
    failures = {}
    for rank in range(world):
        failures.update(data.check_shards(cfg, rank, world))
    assert reads.hashed == Counter(shards.keys())
    assert list(failures) == [corrupt]

    # A stream given the job's verdict hashes nothing and skips the corrupt shard.
    reads.hashed.clear()
    corpus = data.Corpus.open(dataclasses.replace(cfg, pairs=["fr-en"]))
    stream = iter(data.TrainStream(corpus, cfg, MaskingConfig(), info, seed=7, rank=0, sha256_failures=failures))
    bad = next((bad for _, position in itertools.islice(stream, 1000) if (bad := position.resume["bad_shards"])), [])
    assert bad == [corrupt] and not reads.hashed

    # Dev: rank r evaluates samples r, r + W, ... of the whole split (as when every rank read it all), reading only
    # as far as its last one and decoding only those.
    by_pair = [shard_samples(copy, pairs=(pair,), split="dev") for pair in data.Corpus.open(cfg, "dev").pairs]
    every = [sample for samples in by_pair for sample in samples]
    pairs = [index for index, samples in enumerate(by_pair) for _ in samples]
    need = cfg.eval_batches * cfg.batch_size
    assert len(every) > world * need
    for rank in range(world):
        reads.read = reads.decoded = 0
        batches = data.eval_batches(cfg, MaskingConfig(), info, rank, world, seed=1, sha256_failures=failures)
        assert reads.read == rank + world * (need - 1) + 1 and reads.decoded == need and not reads.hashed
        mine = list(range(rank, len(every), world))[:need]
        for b, batch in enumerate(batches):
            picked = mine[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            expected = collate([every[i] for i in picked], info, cfg.max_length)
            for key in ("src_ids", "tgt_ids", "links"):
                assert torch.equal(batch[key], expected[key]), key
            assert batch["pair_index"].tolist() == [pairs[i] for i in picked]
