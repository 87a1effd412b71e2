"""``python -m weam_ds.train --config run.yaml``: pre-train an encoder preset under DeepSpeed.

The same code runs one CPU process (gloo) or a GPU cluster (NCCL); launch several processes with
torchrun, the DeepSpeed runner or SLURM (see launcher/). Read top to bottom, a run:

1. loads and checks the run config, joins the process group, sets up the run directory and logs;
2. builds the model (partitioned from the start under ZeRO-3, through transformers' HfDeepSpeedConfig)
   and the objective, and hands both to DeepSpeed with the optimizer and LR schedule;
3. resumes from the newest checkpoint, if any: weights, optimizer, schedule, step, RNG states and the
   position of every data slot, so the continued run takes the same steps as an uninterrupted one;
4. trains: per optimizer step, gradient-accumulation micro-batches from the resumable WebDataset stream;
   a non-finite loss skips its micro-batch on every rank (counted; too many in a row abort);
5. logs every ``log_interval``, evaluates every ``eval_interval``, checkpoints every
   ``checkpoint_interval`` and on SIGTERM/SIGINT (preemption), keeping the last ``keep_checkpoints``
   (weam_ds.checkpoint: ``latest`` names a checkpoint only once every rank's files are on disk).

An error on any rank ends every rank within ``train.failure_timeout`` seconds, with its reason
(weam_ds.failure); a bad config or dataset is a one-line error and exit status 2.
"""
from __future__ import annotations

import gc

if __name__ == "__main__":  # a rank: the garbage collector stays off until its trainer is built (weam_ds.startup)
    gc.disable()

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from data_prep.files import write_atomically
from data_prep.manifest import ManifestError
from data_prep.typed_config import ConfigError, to_dict
from weam_ds import checkpoint, extensions, failure, resume_check, run_lock, startup
from weam_ds.batch import TokenInfo
from weam_ds.config import RunConfig, deepspeed_config, load_run_config, training_precision
from weam_ds.data import Corpus, NoData, TrainStream, check_shards, eval_batches, padding_counts
from weam_ds.hardware import adam_implementation, probe
from weam_ds.monitor import Monitor, StepFigures, all_sum, all_sums, peak_tflops, setup_logging
from weam_ds.objective import PretrainingObjective
from weam_ds.optimizer import lr_lambda, optimizer_for, param_groups
from weam_ds.presets import PRESETS, build_model, count_parameters, train_flops
from weam_ds.run_dir import PROBE_FILE, RunDir

log = logging.getLogger("weam_ds.train")


class Preempted(Exception):
    """SIGTERM/SIGINT arrived (or --stop-at was reached): checkpoint and leave."""


def _ignore_stop_signals(_worker: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT (sent to every process on preemption) to the training process,
    which checkpoints; a worker dying of it would make the loader raise before the checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_device(batch: dict, device: str) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class StopSignals:
    """SIGTERM/SIGINT caught while training (preemption): the loop ends its step, checkpoints and leaves."""

    def __init__(self):
        self.caught: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._catch)

    def _catch(self, signum: int, _frame) -> None:
        self.caught = signum


class NonFiniteGuard:
    """Decides, on every rank alike, whether a micro-batch's loss can be back-propagated: a NaN/inf loss
    on any rank skips the micro-batch everywhere (counted); ``limit`` in a row abort the run."""

    def __init__(self, limit: int):
        self.limit, self.in_row, self.skipped = limit, 0, 0

    def ok(self, loss: torch.Tensor, step: int) -> bool:
        finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=loss.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() == 1:
            self.in_row = 0
            return True
        self.in_row += 1
        self.skipped += 1
        log.warning("non-finite loss at step %d: micro-batch skipped (%d in a row)", step, self.in_row)
        if self.in_row >= self.limit:
            raise RuntimeError(f"{self.in_row} non-finite losses in a row at step {step}: lower the learning "
                               "rate, check the data, or raise train.max_nonfinite_in_row")
        return False


class Trainer:
    def __init__(self, cfg: RunConfig, resume: bool = True, stop_at: int | None = None):
        self.cfg, self.stop_at = cfg, stop_at
        self.hw = probe()
        import deepspeed

        self.deepspeed = deepspeed
        extensions.before_deepspeed()
        deepspeed.init_distributed(dist_backend=self.hw.dist_backend,
                                   timeout=datetime.timedelta(seconds=cfg.train.collective_timeout))
        self.watch = failure.FailureWatch(interval=min(5.0, cfg.train.failure_timeout / 4))
        self.watch.start()
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if self.hw.device == "cuda" else "cpu"
        if self.hw.device == "cuda":
            torch.cuda.set_device(self.device)
        self.run = RunDir(Path(cfg.output_dir))
        self.lock = run_lock.hold_for_training(self.run.root, self.rank)  # before anything is written there
        setup_logging(self.run, self.rank)
        log.info("rank %d of %d on %s (%s)", self.rank, self.world, self.device, self.hw.dist_backend)
        if self.world > 1:
            checkpoint.check_shared(self.run)  # before any checkpoint is read, judged or pruned

        self.corpus = Corpus.open(cfg.data)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.corpus.tokenizer_dir), local_files_only=True)
        self.info = TokenInfo.from_tokenizer(self.tokenizer)
        log.info("pairs %s, sampling probabilities %s", self.corpus.pairs,
                 [round(float(p), 3) for p in self.corpus.probabilities])

        self._build_engine()
        self._log_parallel_setup()
        self.step, self.counters, positions, self.batches_taken = 0, {}, {}, 0
        if resume:
            positions = self._resume()
        self.counters_at_start = dict(self.counters)
        self._write_run_files()
        failures = self._check_shards()
        self.stream = TrainStream(self.corpus, cfg.data, cfg.objective.masking, self.info, cfg.train.seed,
                                  self.rank, positions, self.batches_taken, objective=cfg.objective.name,
                                  sha256_failures=failures)
        self.positions = dict(positions)
        self.eval = eval_batches(cfg.data, cfg.objective.masking, self.info, self.rank, self.world, cfg.train.seed,
                                 failures)
        counts = count_parameters(self.model)
        self.non_embedding = counts["non_embedding"]
        log.info("model %s: %s parameters (%s non-embedding)", cfg.model, f"{counts['total']:,}",
                 f"{counts['non_embedding']:,}")

    def _check_shards(self) -> dict[str, str] | None:
        """The shards that fail their sha256 (a collective: each rank checks a share, data.check_shards), or None
        without ``data.verify_sha256``. The streams and the dev batches then read without hashing."""
        if not self.cfg.data.verify_sha256:
            return None
        started = time.perf_counter()
        everyone: list[dict] = [{}] * self.world
        dist.all_gather_object(everyone, check_shards(self.cfg.data, self.rank, self.world))
        failures = {path: why for mine in everyone for path, why in mine.items()}
        log.info("shards checked against their sha256 in %.1f s, each by one of %d rank%s: %d fail%s",
                 time.perf_counter() - started, self.world, "s" * (self.world > 1), len(failures),
                 "s" * (len(failures) == 1))
        return failures

    def _log_parallel_setup(self) -> None:
        """One line with what this run actually got."""
        ds, cfg = self.ds, self.cfg
        zero = ds["zero_optimization"]
        offload = ", ".join(f"{what} to {zero[key]['device']}" for key, what in
                            (("offload_optimizer", "optimizer"), ("offload_param", "parameters"))
                            if zero.get(key, {}).get("device") in ("cpu", "nvme")) or "none"
        micro = cfg.data.micro_batch.describe()
        log.info("parallel setup: %d rank%s on %s (%s), ZeRO-%d, %s, offload %s, optimizer %s, activation "
                 "checkpointing %s, micro-batch %s per rank x %d accumulation", self.world, "s" * (self.world > 1),
                 _launched_nodes(self.world), self.hw.dist_backend, zero.get("stage", 0),
                 training_precision(ds), offload, self.hw.optimizer,
                 "on" if cfg.train.activation_checkpointing else "off", micro, cfg.train.gradient_accumulation)

    def _build_engine(self) -> None:
        cfg, deepspeed = self.cfg, self.deepspeed
        hidden = PRESETS[cfg.model].hidden if cfg.model in PRESETS else None
        self.ds = deepspeed_config(cfg, world_size=self.world, hidden_size=hidden, cpu=self.hw.device == "cpu")
        self.hw = dataclasses.replace(self.hw, optimizer=adam_implementation(self.hw.device, self.hw.apex, self.ds))
        zero3 = self.ds["zero_optimization"].get("stage") == 3
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        if zero3:
            from transformers.integrations import HfDeepSpeedConfig

            # Alive while the model is built: transformers then builds it inside deepspeed.zero.Init, so each
            # rank only ever holds its partition (an xl model never exists whole on one device).
            self._hf_ds = HfDeepSpeedConfig(self.ds)
        info = self.info
        self.model = build_model(cfg.model, info.vocab_size, pad_token_id=info.pad_id, bos=info.bos_id,
                                 eos=info.eos_id, resize_vocab=cfg.model_vocab == "resize")
        if cfg.train.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The objective's own parameters (prior_attention) are created partitioned and in the training dtype,
        # like the model's.
        with deepspeed.zero.Init(config_dict_or_path=self.ds) if zero3 else contextlib.nullcontext():
            objective = PretrainingObjective(self.model, cfg.objective)
        optimizer = optimizer_for(self.ds, self.hw, objective, cfg)
        params = param_groups(objective, cfg.optimizer.weight_decay) if optimizer is None else None
        self.schedule = partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=partial(lr_lambda, cfg=cfg))
        extensions.take_over_stale_locks()  # the optimizer may build a DeepSpeed op (DeepSpeedCPUAdam)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=objective, model_parameters=params, optimizer=optimizer, config=self.ds,
            lr_scheduler=self.schedule)
        torch.manual_seed(cfg.train.seed + 1 + self.rank)  # dropout differs across ranks

    # --- checkpoints -----------------------------------------------------------------------------------

    def _resume(self) -> dict:
        universal = bool(self.ds.get("checkpoint", {}).get("load_universal"))
        tag = self.run.latest_tag(universal=True) if universal else checkpoint.choose_resume_tag(self.run)
        if tag is None:
            if universal:
                raise ConfigError(f"{self.run.checkpoints}: checkpoint.load_universal is set but there is no "
                                  "latest_universal (convert with deepspeed.checkpoint.ds_to_universal)")
            return {}
        if not universal:
            resume_check.check_world(self.run.checkpoints / tag, self.world)
        path, state = self.engine.load_checkpoint(str(self.run.checkpoints), tag)
        if path is None:
            raise RuntimeError(f"{self.run.checkpoints}/{tag}: DeepSpeed could not load this checkpoint")
        self.step, self.counters = state["step"], state["counters"]
        log.info("resumed from %s at step %d", path, self.step)
        for key, old, new in resume_check.config_changes(self.run, self.cfg):
            log.info("changed since the checkpoint: %s %r -> %r", key, old, new)
        self.scheduler = resume_check.rebuild_schedule(self.engine, self.schedule, self.cfg.optimizer.lr)
        if state["world"] != self.world:
            log.warning("the checkpoint was written by %d ranks, this run has %d: the data streams start afresh "
                        "(weights and optimizer come through DeepSpeed's universal checkpoint)", state["world"],
                        self.world)
            return {}
        mine = state["ranks"][self.rank]
        torch.set_rng_state(mine["torch_rng"])
        if torch.cuda.is_available() and mine.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(mine["cuda_rng"])
        self.batches_taken = mine["batches"]
        return {int(slot): pos for slot, pos in mine["positions"].items()}

    def save(self) -> None:
        mine = {"torch_rng": torch.get_rng_state(), "batches": self.batches_taken,
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "positions": {str(k): v for k, v in self.positions.items()}}
        ranks = [None] * self.world
        dist.all_gather_object(ranks, mine)
        tag = f"step{self.step}"
        state = {"step": self.step, "counters": self.counters, "world": self.world, "ranks": ranks}
        checkpoint.save(self.engine, self.run, tag, state, self._save_probe, self.cfg.train.keep_checkpoints)
        log.info("checkpoint %s saved", tag)

    def _save_probe(self, tag_dir: Path) -> None:
        """The engine's MLM logits on two fixed sentences, which an export must reproduce."""
        batch = self.eval[0] if self.eval else None
        if batch is None:
            return
        ids, mask = batch["src_ids"][:2, :16].to(self.device), batch["src_attention_mask"][:2, :16].to(self.device)
        objective = self.engine.module
        was_training = objective.training
        objective.eval()
        with torch.no_grad():
            logits = objective.head(objective.encode(ids, mask)).float()[..., :1024].contiguous().cpu()
        objective.train(was_training)
        if self.rank == 0:
            torch.save({"input_ids": ids.cpu(), "attention_mask": mask.cpu(), "logits": logits,
                        "precision": training_precision(self.ds)}, tag_dir / PROBE_FILE)

    def _write_run_files(self) -> None:
        if self.rank != 0:
            return
        run = self.run
        run.root.mkdir(parents=True, exist_ok=True)
        # Atomically: the other ranks read it while resuming (resume_check.config_changes), and a half-written
        # file there is "not a run config".
        write_atomically(run.config, yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        run.ds_config.write_text(json.dumps(self.ds, indent=1))
        self.model.config.save_pretrained(str(run.model))
        self.tokenizer.save_pretrained(str(run.model))

    # --- training --------------------------------------------------------------------------------------

    def train(self) -> int:
        """Steps until ``train.steps``; after each, in this order: its figures, validation, the stop check (a
        signal or --stop-at: checkpoint and leave) and the checkpoint."""
        batches = iter(self._loader())
        # A resumed run takes up its logs at the checkpoint's step: what a killed run logged after it is dropped.
        monitor = Monitor(self.run.tensorboard if self.rank == 0 else None,
                          self.run.metrics if self.rank == 0 else None, self.corpus.pairs,
                          peak_tflops(self.cfg.monitor.peak_tflops), self.world, self.device, resumed_at=self.step)
        stop = StopSignals()
        guard = NonFiniteGuard(self.cfg.train.max_nonfinite_in_row)
        self.engine.train()
        try:
            while self.step < self.cfg.train.steps:
                started = time.perf_counter()
                figures = self.train_step(batches, guard, monitor)
                self.step += 1
                self._record(figures, started, monitor)
                if self.eval and self._due(self.cfg.train.eval_interval):
                    monitor.add("eval/loss", self.evaluate(), self.step)
                if self._stop_agreed(stop):
                    raise Preempted
                if self._due(self.cfg.train.checkpoint_interval):
                    self.save()
        except Preempted:
            log.info("stopping at step %d (%s): saving a checkpoint", self.step,
                     signal.Signals(stop.caught).name if stop.caught else "--stop-at")
            # A stop may come because the launcher died (failure.end_with_parent), taking the store with it:
            # the save must not be cut short for that. A peer failing meanwhile fails the save's collectives.
            self.watch.stop()
            self.save()
        finally:
            monitor.close()
        self.watch.stop()  # from here the job ends normally, and rank 0 may leave first
        log.info("done at step %d; TensorBoard logs in %s", self.step, self.run.tensorboard)
        return 0

    def _loader(self) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.workers
        return torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=workers, pin_memory=self.hw.device == "cuda",
            prefetch_factor=2 if workers else None, worker_init_fn=_ignore_stop_signals,
            generator=torch.Generator())  # its own seed draw must not move the RNG that dropout uses

    def _due(self, interval: int) -> bool:
        """Whether logging, validation or a checkpoint every ``interval`` steps falls on this step (the last
        step always has them all)."""
        return self.step % interval == 0 or self.step == self.cfg.train.steps

    def train_step(self, batches, guard: NonFiniteGuard, monitor: Monitor) -> StepFigures:
        """One optimizer step: ``gradient_accumulation`` micro-batches back-propagated (DeepSpeed steps the
        optimizer after the last); one whose loss is not finite is skipped and the next batch takes its place.
        Returns this rank's figures of the step."""
        figures = StepFigures()
        done = 0
        while done < self.cfg.train.gradient_accumulation:
            batch = self._next_batch(batches, figures)
            out = self.engine(_to_device(batch, self.device))
            if not guard.ok(out.loss, self.step):
                self.counters["skipped_steps"] = self.counters.get("skipped_steps", 0) + 1
                continue
            self.engine.backward(out.loss)
            self.engine.step()
            done += 1
            figures.add_micro_batch(out, batch, self.cfg.train.gradient_accumulation,
                                    padding_counts(batch, self.cfg.objective.name), self._model_flops(batch, out))
            monitor.pairs_seen(batch["pair_index"].to(self.device), out.row_loss, out.row_count)
        return figures

    def _next_batch(self, batches, figures: StepFigures) -> dict:
        """The stream's next micro-batch; its slot's position and counters are kept for the checkpoint."""
        t = time.perf_counter()
        batch, where = next(batches)
        figures.data_wait += time.perf_counter() - t
        self.positions[where.slot] = where.resume
        self.batches_taken += 1
        for key, value in where.stats.items():  # per slot, counted since this process started
            name = f"{key}_slot{where.slot}"
            self.counters[name] = self.counters_at_start.get(name, 0) + value
        return batch

    def _model_flops(self, batch: dict, out) -> float:
        """The micro-batch's model FLOPs on its real tokens (presets.train_flops), what MFU counts."""
        lengths = torch.cat([batch["src_attention_mask"].sum(1), batch["tgt_attention_mask"].sum(1)])
        return train_flops(self.model.config, self.non_embedding, lengths, out.tokens["mlm"] + out.tokens["xpred"])

    def _record(self, figures: StepFigures, started: float, monitor: Monitor) -> None:
        """The step's figures over every rank into the monitor; at a logging step with the run's counters, and the
        interval's report (collectives: every rank comes here)."""
        total = figures.over_ranks(self.world, self.device)
        grad_norm = self.engine.get_global_grad_norm()
        reporting = self._due(self.cfg.train.log_interval)
        monitor.step(self.step, total.with_optimizer(
            lr=self.scheduler.get_last_lr()[0], grad_norm=float(grad_norm) if grad_norm is not None else 0.0,
            loss_scale=float(getattr(self.optimizer, "cur_scale", 1.0)), step_time=time.perf_counter() - started),
            self._counters() if reporting else None)
        if reporting:
            monitor.report(self.step, reduce=all_sum)

    def _stop_agreed(self, stop: StopSignals) -> bool:
        """Whether a rank caught a stop signal or --stop-at's step is reached (a collective: every rank stops
        after the same step)."""
        flag = torch.tensor([1.0 if stop.caught or self.step == self.stop_at else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _counters(self) -> dict[str, float]:
        """The run's counters over all ranks and resumes (a collective). A bad shard is counted once however
        many ranks and slots met it."""
        bad_shards = sorted({path for position in self.positions.values() for path in position.get("bad_shards", ())})
        everyone: list[list[str]] = [[]] * self.world
        dist.all_gather_object(everyone, bad_shards)
        (bad_samples,) = all_sums([sum(v for k, v in self.counters.items() if k.startswith("bad_samples"))],
                                  self.device)
        # Ours (non-finite losses) and DeepSpeed's (fp16 overflow, loss scale lowered).
        skipped = self.counters.get("skipped_steps", 0) + getattr(self.engine, "skipped_steps", 0)
        return {"skipped_steps": skipped, "bad_shards": len(set().union(*everyone)), "bad_samples": bad_samples}

    def evaluate(self) -> float:
        self.engine.eval()
        total = 0.0
        with torch.no_grad():
            for batch in self.eval:
                total += self.engine(_to_device(batch, self.device)).loss.item()
        self.engine.train()
        (mean,) = all_sums([total / len(self.eval) / self.world], self.device)
        return mean


def _launched_nodes(world: int) -> str:
    """How many nodes the launcher started this job on, by its own count: torchrun's agents (GROUP_WORLD_SIZE),
    the DeepSpeed runner's nodes (CROSS_SIZE), else the world over the ranks per node (LOCAL_WORLD_SIZE,
    LOCAL_SIZE, Open MPI's). Host names cannot tell: two nodes may share one (containers, two agents on one
    machine)."""
    nodes = next((int(os.environ[key]) for key in ("GROUP_WORLD_SIZE", "CROSS_SIZE")
                  if os.environ.get(key, "").isdigit()), None)
    if nodes is None:
        local = next((int(os.environ[key]) for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")
                      if os.environ.get(key, "").isdigit() and int(os.environ[key]) > 0), None)
        nodes = world // local if local else None
    return f"{nodes} node{'s' * (nodes > 1)}" if nodes else "an unknown number of nodes"


def _launch_environment() -> None:
    """Without a launcher (no rank variables), the run is rank 0 of 1: DeepSpeed would look for MPI instead.
    A launched rank ends with its launcher (failure.end_with_parent)."""
    if any(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        failure.end_with_parent()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _stop_during_start_up(signum: int, _frame) -> None:
    """SIGTERM/SIGINT before training (which checkpoints on them, Trainer.train): nothing to save yet, so the
    rank ends at once and quietly, wherever it was (an exception could land in a JIT build or a rendezvous)."""
    if failure.env_rank() == 0:
        print(f"weam_ds.train: stopped by {signal.Signals(signum).name} during start-up; nothing to save",
              file=sys.stderr, flush=True)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weam_ds.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run.yaml (see docs/run_config.md)")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run directory")
    parser.add_argument("--stop-at", type=int, help="checkpoint and stop after this step, as on preemption")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the DeepSpeed runner
    args = parser.parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        parser.error(f"--stop-at: {args.stop_at} is not a step (steps count from 1)")
    try:
        cfg = load_run_config(args.config)
        run = RunDir(Path(cfg.output_dir))
        if args.no_resume and run.step_tags():
            raise ConfigError(f"{run.checkpoints} already has checkpoints (--no-resume)")
        if not args.no_resume:
            resume_check.config_changes(run, cfg)  # refused changes end here, before any process group
    except ConfigError as exc:
        failure.record_for_torchrun(str(exc))
        if failure.env_rank() == 0:  # every rank reads the same config: say it once
            print(f"weam_ds.train: error: {exc}", file=sys.stderr)
        return failure.EXIT_BAD_INPUT
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_during_start_up)
    _launch_environment()
    try:
        trainer = Trainer(cfg, resume=not args.no_resume, stop_at=args.stop_at)
        startup.finished()
        code = trainer.train()
        dist.destroy_process_group()  # as PyTorch asks: collectives' threads left at exit may abort the process
        return code
    except BaseException as exc:  # noqa: BLE001 - every failure must end the rank (and the job) promptly
        bad_input = isinstance(exc, (ConfigError, ManifestError, NoData))  # NoData: the dataset's shards
        rank = dist.get_rank() if dist.is_initialized() else failure.env_rank()
        reason = str(exc) if bad_input else f"rank {rank}: {failure.describe(exc)}"
        if isinstance(exc, NoData):  # raised again from a DataLoader worker, with the worker's traceback
            reason = failure.describe(exc)
        failure.end_rank(reason, failure.EXIT_BAD_INPUT if bad_input else failure.EXIT_FAILED,
                         traceback.format_exc(), cfg.train.failure_timeout, "weam_ds.train")


if __name__ == "__main__":
    raise SystemExit(main())
