"""Training under DeepSpeed on CPU (gloo, 2 processes) on shards built by data_prep: losses, ZeRO-2 vs
ZeRO-3, exact resume, export round trip, TensorBoard scalars; and the resumable stream on its own."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForMaskedLM, AutoTokenizer

from conftest import free_port
from data_prep.typed_config import ConfigError, from_dict
from weam_ds.batch import TokenInfo
from weam_ds.config import DataConfig, MaskingConfig, RunConfig, deepspeed_config, load_run_config
from weam_ds.data import Corpus, NoData, TrainStream
from weam_ds.export import export
from weam_ds.run_dir import COMMIT_FILE, PROBE_FILE, RunDir

from runs import losses, run_config, train

STEPS = 16


def test_two_rank_zero3_weam_run_learns_and_reports(trained_run):
    """The shared trained run (tests/fixtures/runs.py): a 2-rank ZeRO-3 WEAM run continuing a saved checkpoint."""
    assert ("parallel setup: 2 ranks on 1 node (gloo), ZeRO-3, fp32, offload none, optimizer torch.optim.AdamW, "
            "activation checkpointing off, micro-batch 8 pairs per rank x 1 accumulation") in trained_run.stderr
    out = trained_run.out
    values = losses(out)
    assert len(values) == STEPS
    assert np.mean(values[-4:]) < np.mean(values[:4])
    run = RunDir(out)
    assert run.latest_tag() == f"step{STEPS}"
    assert run.step_tags() == ["step8", f"step{STEPS}"]  # keep_checkpoints: 2 (pruning: test_fault_tolerance)
    assert (run.log(0)).is_file() and (run.log(1)).is_file()
    # Each rank's collector back on once its trainer was built, start-up's objects frozen (weam_ds.startup).
    for rank in (0, 1):
        frozen = re.search(r"start-up done: ([\d,]+) objects frozen", run.log(rank).read_text())
        assert frozen and int(frozen[1].replace(",", "")) > 10_000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/total", "loss/mlm", "loss/xpred", "loss_by_pair/fr-en", "loss_by_pair/ja-en", "optim/lr",
                "optim/grad_norm", "optim/loss_scale", "throughput/tokens_per_s", "throughput/samples_per_s",
                "throughput/tflops", "throughput/data_wait_fraction", "memory/max_rss_gb",
                "counters/skipped_steps", "counters/bad_shards", "eval/loss"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("loss/total")] == [4, 8, 12, 16]
    # The commit record lists every file of the save: under ZeRO-3 each rank's model states and optimizer
    # partition (ZeRO-2's: test_fault_tolerance), so a save that lost a rank's file is never resumed from.
    tag_dir = run.checkpoints / f"step{STEPS}"
    files = json.loads((tag_dir / COMMIT_FILE).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in tag_dir.iterdir() if p.name != COMMIT_FILE)
    assert sum("model_states" in n for n in files) == 2 and sum("optim_states" in n for n in files) == 2


def test_zero2_gives_the_losses_of_zero3(trained_run, tmp_path):
    cfg = trained_run.config
    zero2 = run_config(Path(cfg["data"]["datasets"][0]), tmp_path / "zero2", model=cfg["model"],
                       deepspeed={"config": "ds_configs/cpu.json", "overrides": {"zero_optimization": {"stage": 2}}})
    train(zero2, tmp_path)
    assert losses(tmp_path / "zero2") == pytest.approx(losses(trained_run.out), rel=1e-4)


def test_interrupted_and_resumed_run_takes_the_same_steps(trained_run, tmp_path):
    """The trained run as a job lost after step 16 but before its checkpoint was complete leaves it (a copy:
    step16 gone, ``latest`` naming step8, metrics logged up to step 16): resumed, it takes steps 9 to 16 again
    with the very losses of the uninterrupted run (the data position and every random state restored), each
    step logged once. A stop between checkpoints (--stop-at) and its resume: test_fault_tolerance's shards test."""
    out = trained_run.copy(tmp_path / "resumed")
    run = RunDir(out)
    shutil.rmtree(run.checkpoints / f"step{STEPS}")
    (run.checkpoints / "latest").write_text("step8\n", encoding="utf-8")
    train({**trained_run.config, "output_dir": str(out)}, tmp_path)
    assert re.search(r"resumed from .* at step 8$", run.log(0).read_text(), re.M)
    assert losses(out) == pytest.approx(losses(trained_run.out), rel=1e-6)


def test_export_loads_with_auto_model_and_matches_the_engine(trained_run):
    """The trained run's export (weam_ds.export.export, which measured ``export_difference`` on the probe)."""
    target, out = trained_run.export, trained_run.out
    assert trained_run.export_difference < 1e-4
    model = AutoModelForMaskedLM.from_pretrained(str(target)).eval()
    probe = torch.load(out / "checkpoints" / f"step{STEPS}" / PROBE_FILE, weights_only=True)
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    real = probe["attention_mask"].bool()
    assert torch.allclose(logits[..., :probe["logits"].shape[-1]][real], probe["logits"][real], atol=1e-4)
    assert AutoTokenizer.from_pretrained(str(target)).vocab_size == model.config.vocab_size


# --- the stream on its own -----------------------------------------------------------------------------

def _stream(dataset: Path, rank: int, **data) -> tuple[TrainStream, Corpus]:
    cfg = from_dict(DataConfig, {"datasets": [str(dataset)], "max_length": 48, "batch_size": 8, "workers": 0,
                                 "shuffle_buffer": 32, **data})
    corpus = Corpus.open(cfg)
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(corpus.tokenizer_dir)))
    return TrainStream(corpus, cfg, MaskingConfig(), info, seed=7, rank=rank), corpus


def _take(stream, n):
    """The first ``n`` (batch, position) items."""
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_ranks_read_different_data_and_pairs_follow_the_temperature(small_dataset):
    dataset, _, _ = small_dataset
    a, corpus = _stream(dataset, 0)
    b, _ = _stream(dataset, 1)
    first_a, first_b = _take(a, 3), _take(b, 3)
    assert not torch.equal(first_a[0][0]["src_ids"], first_b[0][0]["src_ids"])
    sizes = np.array([sum(s.samples for s in corpus.shards[p]) for p in corpus.pairs], dtype=float)
    assert corpus.probabilities == pytest.approx(sizes ** 0.3 / (sizes ** 0.3).sum())
    uniform, _ = _stream(dataset, 0, temperature=0.0)
    drawn = Counter(int(i) for batch, _ in _take(uniform, 40) for i in batch["pair_index"])
    assert all(abs(drawn[k] / 320 - 0.5) < 0.1 for k in range(2))


def test_stream_resumes_exactly_from_a_batch_position(small_dataset):
    dataset, _, _ = small_dataset
    stream, corpus = _stream(dataset, 0, batch_size=None, batch_tokens=400)
    batches = _take(stream, 12)
    info, cfg = stream.info, stream.cfg
    resumed = TrainStream(corpus, cfg, stream.masking, info, seed=7, rank=0,
                          positions={0: batches[6][1].resume}, first_batch=7)
    for (expected, _), (got, _) in zip(batches[7:], _take(resumed, 5)):
        for key in ("src_input_ids", "tgt_input_ids", "src_labels", "links", "pair_index"):
            assert torch.equal(expected[key], got[key]), key


def test_corrupt_and_missing_shards_are_skipped_and_counted(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    copy = tmp_path / "dataset"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    train_shards = [s for s in manifest["pairs"]["ja-en"]["shards"] if s["split"] == "train"]
    corrupt = copy / train_shards[0]["path"]
    corrupt.write_bytes(corrupt.read_bytes()[:1000] + b"\xff" * 5000)
    for shard in train_shards[1:]:
        (copy / shard["path"]).unlink()
    kept = [s for s in manifest["pairs"]["fr-en"]["shards"] if s["split"] == "train"]
    stream, corpus = _stream(copy, 0, pairs=["fr-en", "ja-en"])
    with pytest.raises(NoData, match=r"every train shard of ja-en \(\d+ shards\) is bad"):
        _take(stream, 200)  # every ja-en shard is bad: the stream says so rather than spinning
    stream, _ = _stream(copy, 0, pairs=["fr-en"])
    assert kept and _take(stream, 5)[-1][1].resume["bad_shards"] == []
    # With a good ja-en shard back, the bad ones are remembered and the stream goes on.
    shutil.copy(dataset / train_shards[1]["path"], copy / train_shards[1]["path"])
    stream, corpus = _stream(copy, 0)
    batches = _take(stream, 60)
    bad = set(batches[-1][1].resume["bad_shards"])
    assert bad and bad <= {str(copy / s["path"]) for s in train_shards[:1] + train_shards[2:]}
    ja = corpus.pairs.index("ja-en")
    assert sum(int((b["pair_index"] == ja).sum()) for b, _ in batches) > 0


# --- configuration -------------------------------------------------------------------------------------

def _bad(small_dataset, tmp_path, message, **sections):
    dataset, _, _ = small_dataset
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(dataset, tmp_path / "out", **sections)))
    with pytest.raises(ConfigError, match=message):
        load_run_config(path)


def test_config_errors_name_the_key(small_dataset, tmp_path):
    _bad(small_dataset, tmp_path, "train.stepz: unknown key", train={"stepz": 3})
    _bad(small_dataset, tmp_path, "fp16.enabled and bf16.enabled", deepspeed={
        "config": "ds_configs/zero3_bf16.json", "overrides": {"fp16": {"enabled": True}}})
    _bad(small_dataset, tmp_path, "pipeline.stages", deepspeed={
        "config": "ds_configs/zero3_bf16.json", "overrides": {"pipeline": {"stages": 2}}})
    _bad(small_dataset, tmp_path, "nvme_path", deepspeed={"config": "ds_configs/zero3_nvme_bf16.json"})
    _bad(small_dataset, tmp_path, "deepspeed.config: no file", deepspeed={"config": "nope.json"})
    _bad(small_dataset, tmp_path, "data.datasets\\[0\\]: .* has no manifest.json", data={"datasets": ["/nonexistent"]})
    _bad(small_dataset, tmp_path, "objective.exchange: 'soft' is not one of hard, prior_attention",
         objective={"exchange": "soft"})
    _bad(small_dataset, tmp_path, "objective.name: 'xlm' is not one of weam, mlm, tlm", objective={"name": "xlm"})
    _bad(small_dataset, tmp_path, "schedule.decay: 1 is not one of linear, cosine", schedule={"decay": 1})
    _bad(small_dataset, tmp_path, "batch_size, batch_tokens: set exactly one", data={"batch_tokens": 512})
    _bad(small_dataset, tmp_path, "batch_tokens: must be at least 2 x max_length \\(96\\)",
         data={"batch_size": None, "batch_tokens": 60, "max_length": 48})


def test_shipped_deepspeed_configs_resolve(small_dataset, tmp_path):
    dataset, _, _ = small_dataset
    shipped = sorted(Path(__file__).resolve().parents[2].joinpath("ds_configs").glob("*.json"))
    assert {p.stem for p in shipped} >= {"cpu", "zero2_bf16", "zero2_fp16", "zero3_bf16", "zero3_fp16",
                                         "zero3_offload_bf16", "zero3_offload_fp16", "zero3_nvme_bf16",
                                         "zero3_nvme_fp16"}
    for path in shipped:
        overrides = {}
        if "nvme" in path.stem:
            nvme = {"device": "nvme", "nvme_path": str(tmp_path)}
            overrides = {"zero_optimization": {"offload_optimizer": nvme, "offload_param": nvme}}
        cfg = from_dict(RunConfig, run_config(dataset, tmp_path, deepspeed={"config": f"ds_configs/{path.name}",
                                                                            "overrides": overrides}))
        ds = deepspeed_config(cfg, world_size=4, hidden_size=768)
        text = json.dumps(ds)
        assert '"auto"' not in text, path.name
        assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 1
        assert ds["gradient_clipping"] == 1.0 and ds["optimizer"]["params"]["lr"] == 2e-3
        assert not (ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"))


def test_non_finite_losses_are_skipped_then_abort(tmp_path):
    import torch.distributed as dist

    from weam_ds.train import NonFiniteGuard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        guard = NonFiniteGuard(limit=3)
        assert guard.ok(torch.tensor(2.5), step=0)
        assert not guard.ok(torch.tensor(float("nan")), step=1)
        assert not guard.ok(torch.tensor(float("inf")), step=1)
        assert guard.ok(torch.tensor(1.0), step=1) and guard.in_row == 0 and guard.skipped == 2
        assert not guard.ok(torch.tensor(float("nan")), step=2)
        assert not guard.ok(torch.tensor(float("-inf")), step=2)
        with pytest.raises(RuntimeError, match="3 non-finite losses in a row at step 2"):
            guard.ok(torch.tensor(float("nan")), step=2)
    finally:
        dist.destroy_process_group()


def test_resume_on_another_number_of_ranks_through_a_universal_checkpoint(trained_run, tmp_path):
    cfg = trained_run.config
    copy = trained_run.copy(tmp_path / "universal")
    ckpt = copy / "checkpoints"
    convert = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                              str(ckpt / f"step{STEPS}"), "--output_folder", str(ckpt / f"step{STEPS}_universal")],
                             capture_output=True, text=True, timeout=600)
    assert convert.returncode == 0, convert.stderr[-3000:]
    one_rank = {**cfg, "output_dir": str(copy), "train": {**cfg["train"], "steps": STEPS + 2},
                "deepspeed": {"config": "ds_configs/cpu.json", "overrides": {"checkpoint": {"load_universal": True}}}}
    run = train(one_rank, tmp_path, 1)
    assert f"at step {STEPS}" in run.stderr and "written by 2 ranks, this run has 1" in run.stderr
    values = losses(copy)
    assert len(values) == STEPS + 2
    # The weights came through: the loss goes on from where the 2-rank run left it, not from scratch.
    assert values[-1] < (values[0] + np.mean(values[STEPS - 4:STEPS])) / 2


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_and_a_bf16_run_with_prior_attention_exports(small_dataset, tmp_path):
    """One process without a launcher, as docs/run_config.md shows it (no rank variables, no MPI), training
    in bf16 with prior attention: SIGTERM checkpoints and exits 0; the fp32 export of that checkpoint agrees
    with its probe, computed in bf16, within 16-bit rounding."""
    import signal
    import time

    dataset, _, _ = small_dataset
    out = tmp_path / "preempted"
    cfg = run_config(dataset, out, objective={"name": "weam", "exchange": "prior_attention"},
                     train={"steps": 10_000, "checkpoint_interval": 10_000},
                     deepspeed={"config": "ds_configs/cpu.json", "overrides": {"bf16": {"enabled": True}}})
    path = tmp_path / "preempted.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "weam_ds.train", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "(SIGTERM): saving a checkpoint" in stderr
    step = len(losses(out))
    assert 3 <= step < 10_000
    assert RunDir(out).latest_tag() == f"step{step}"
    difference = export(out / "checkpoints", tmp_path / "hf")
    assert difference is not None and (tmp_path / "hf" / "model.safetensors").is_file()


def test_positions_keep_pairs_not_drawn_since_the_resume(small_dataset):
    dataset, _, _ = small_dataset
    stream, corpus = _stream(dataset, 0, pairs=["fr-en"], bucket_pool=1)
    resumed = TrainStream(corpus, stream.cfg, stream.masking, stream.info, seed=7, rank=0,
                          positions={0: {"drawn": 0, "pairs": {"fr-en": [0, 3], "ja-en": [2, 7]}}})
    position = _take(resumed, 1)[0][1].resume["pool"]
    assert position["pairs"]["ja-en"] == [2, 7]
    assert position["pairs"]["fr-en"] == [0, 3 + 8]


def test_every_rank_gets_eval_batches_even_with_more_ranks_than_samples(small_dataset):
    from weam_ds.data import eval_batches

    dataset, _, _ = small_dataset
    cfg = from_dict(DataConfig, {"datasets": [str(dataset)], "max_length": 32, "batch_size": 4, "eval_batches": 2})
    info = TokenInfo.from_tokenizer(AutoTokenizer.from_pretrained(str(dataset / "tokenizer")))
    few, many = (eval_batches(cfg, MaskingConfig(), info, rank=rank, world=world, seed=1)
                 for rank, world in ((1, 2), (999, 1000)))
    assert len(few) == len(many) == 2
    assert not torch.equal(few[0]["src_ids"], eval_batches(cfg, MaskingConfig(), info, 0, 2, 1)[0]["src_ids"])
