"""What a run reports: TensorBoard scalars, console lines, and metrics.jsonl (rank 0 writes them all).

Each optimizer step's figures are gathered on every rank (:class:`StepFigures`), summed over the ranks in one
collective, and handed to the :class:`Monitor`, which writes the step's line and reports the interval's means.
A resumed run continues both logs at its checkpoint's step: the lines and events that a killed run wrote
after that step are dropped (metrics.jsonl is rewritten without them; TensorBoard is told to purge them
with ``purge_step``), so each step appears once."""
from __future__ import annotations

import dataclasses
import json
import logging
import resource
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from data_prep.files import write_atomically
from weam_ds.peak_flops import PEAK_TFLOPS
from weam_ds.run_dir import LOG_FORMAT, RunDir

log = logging.getLogger(__name__)


def setup_logging(run: RunDir, rank: int) -> None:
    """Every rank logs to its own file in the run directory; rank 0 also to the console (less the records marked
    file-only, failure.FILE_ONLY)."""
    # DeepSpeed calls collectives that torch has renamed; the warning repeats every step.
    warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).*",
                            category=FutureWarning)
    run.log(rank).parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(LOG_FORMAT.format(rank=rank))
    handlers = [logging.FileHandler(run.log(rank))]
    if rank == 0:
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(lambda record: not getattr(record, "file_only", False))
        handlers.append(console)
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("DeepSpeed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def peak_tflops(configured: float | None) -> float | None:
    if configured is not None:
        return configured
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_TFLOPS.items():
            if key in name:
                return value
        log.warning("no peak TFLOP/s known for %s: set monitor.peak_tflops for MFU", name)
    return None


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank (a collective), ``t`` itself left as it was."""
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_sums(values: list[float], device: str) -> list[float]:
    """Several figures summed over ranks in one collective."""
    return all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


@dataclasses.dataclass
class StepFigures:
    """One optimizer step's figures on one rank, added up over its micro-batches."""

    loss: float = 0.0
    """The losses: each micro-batch adds its share of the step's mean (its loss over the accumulation)."""
    mlm: float = 0.0
    xpred: float = 0.0
    tokens: float = 0.0
    """Real tokens, both sides of every row."""
    samples: float = 0.0
    flops: float = 0.0
    """Model FLOPs on the real tokens (presets.train_flops), what MFU counts."""
    positions: float = 0.0
    """Positions the encoder processed, and how many of them were padding (weam_ds.data.padding_counts)."""
    padded: float = 0.0
    data_wait: float = 0.0
    """Seconds spent waiting for the stream's batches."""

    def add_micro_batch(self, out, batch: dict, accumulation: int, padding: tuple[int, int], flops: float) -> None:
        """A back-propagated micro-batch: the objective's output ``out`` on ``batch``."""
        self.loss += out.loss.item() / accumulation
        self.mlm += out.mlm.item() / accumulation
        self.xpred += out.xpred.item() / accumulation
        self.tokens += float(batch["src_attention_mask"].sum() + batch["tgt_attention_mask"].sum())
        self.samples += len(batch["src_ids"])
        self.positions += padding[0]
        self.padded += padding[1]
        self.flops += flops

    def over_ranks(self, world: int, device: str) -> StepFigures:
        """The step over every rank (a collective): losses and data wait are means over ranks; tokens, samples,
        FLOPs and positions are totals."""
        loss, mlm, xpred, data_wait, tokens, samples, flops, positions, padded = all_sums(
            [self.loss / world, self.mlm / world, self.xpred / world, self.data_wait / world, self.tokens,
             self.samples, self.flops, self.positions, self.padded], device)
        return StepFigures(loss=loss, mlm=mlm, xpred=xpred, tokens=tokens, samples=samples, flops=flops,
                           positions=positions, padded=padded, data_wait=data_wait)

    def with_optimizer(self, lr: float, grad_norm: float, loss_scale: float, step_time: float) -> dict[str, float]:
        """The step's figures for :meth:`Monitor.step`, in metrics.jsonl's order, with the optimizer's state and
        the step's wall time."""
        return {"loss": self.loss, "mlm": self.mlm, "xpred": self.xpred, "lr": lr, "grad_norm": grad_norm,
                "loss_scale": loss_scale, "tokens": self.tokens, "samples": self.samples, "flops": self.flops,
                "positions": self.positions, "padded": self.padded, "data_wait": self.data_wait,
                "step_time": step_time}


class Monitor:
    """Accumulates per-step figures and reports their means every ``interval`` steps."""

    def __init__(self, tensorboard: Path | None, metrics: Path | None, pairs: list[str], peak: float | None,
                 world: int, device: str = "cpu", resumed_at: int = 0):
        self.writer = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard), purge_step=resumed_at + 1)
        self.metrics = None
        if metrics is not None:
            _drop_lines_after(metrics, resumed_at)
            self.metrics = open(metrics, "a", encoding="utf-8")
        self.pairs, self.peak, self.world, self.device = pairs, peak, world, device
        self.counters: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self.sums = defaultdict(float)
        self.pair_loss = torch.zeros(len(self.pairs), dtype=torch.float64, device=self.device)
        self.pair_count = torch.zeros(len(self.pairs), dtype=torch.float64, device=self.device)
        self.steps = 0
        self.started = time.perf_counter()

    def step(self, step: int, figures: dict[str, float], counters: dict[str, float] | None = None) -> None:
        """Figures of one optimizer step, already averaged (losses) or summed (counts) over ranks; at a
        reporting step also the run's counters, which go to metrics.jsonl as ``counters/<name>``. The step's
        padding fraction (``padded`` of the ``positions`` the encoder processed) goes there too."""
        if counters is not None:
            self.counters = counters
        if self.metrics is not None:
            extra = {f"counters/{k}": v for k, v in (counters or {}).items()}
            padding = {"padding": figures["padded"] / figures["positions"]} if figures.get("positions") else {}
            self.metrics.write(json.dumps({"step": step, **figures, **padding, **extra}) + "\n")
            self.metrics.flush()
        for key, value in figures.items():
            self.sums[key] += value
        self.steps += 1

    def pairs_seen(self, pair_index: torch.Tensor, row_loss: torch.Tensor, row_count: torch.Tensor) -> None:
        """One micro-batch's per-row losses, added up per language pair on this rank (no collective, no sync)."""
        self.pair_loss.index_add_(0, pair_index, row_loss.double())
        self.pair_count.index_add_(0, pair_index, row_count.double())

    def report(self, step: int, reduce=lambda t: t) -> dict[str, float]:
        """``reduce`` sums a tensor over ranks (every rank calls report); per-pair losses are reduced only here."""
        pair_loss, pair_count = reduce(self.pair_loss).cpu(), reduce(self.pair_count).cpu()
        seconds = time.perf_counter() - self.started
        n = max(self.steps, 1)
        s = self.sums
        scalars = {
            "loss/total": s["loss"] / n, "loss/mlm": s["mlm"] / n, "loss/xpred": s["xpred"] / n,
            "optim/lr": s["lr"] / n, "optim/grad_norm": s["grad_norm"] / n, "optim/loss_scale": s["loss_scale"] / n,
            "throughput/tokens_per_s": s["tokens"] / seconds, "throughput/samples_per_s": s["samples"] / seconds,
            "throughput/data_wait_fraction": s["data_wait"] / max(s["step_time"], 1e-9),
            # Of the positions the encoder processed, the share that was padding (weam_ds.data.padding_counts).
            "data/padding": s["padded"] / max(s["positions"], 1.0),
        }
        tflops = s["flops"] / seconds / 1e12  # model FLOPs on real tokens (presets.train_flops)
        scalars["throughput/tflops"] = tflops
        if self.peak:
            scalars["throughput/mfu"] = tflops / (self.peak * self.world)
        for k, pair in enumerate(self.pairs):
            if pair_count[k] > 0:
                scalars[f"loss_by_pair/{pair}"] = float(pair_loss[k] / pair_count[k])
        if torch.cuda.is_available():
            scalars["memory/allocated_gb"] = torch.cuda.memory_allocated() / 2**30
            scalars["memory/reserved_gb"] = torch.cuda.memory_reserved() / 2**30
        else:
            scalars["memory/max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        counters = self.counters
        scalars.update({f"counters/{k}": v for k, v in counters.items()})
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        mfu = f" mfu {scalars['throughput/mfu']:.1%}" if "throughput/mfu" in scalars else ""
        log.info("step %d | loss %.4f (mlm %.4f, xpred %.4f) | lr %.2e | grad norm %.3f | %.0f tok/s | "
                 "%.3f TFLOP/s%s | padding %.0f%% | data wait %.0f%% | skipped %d", step, scalars["loss/total"],
                 scalars["loss/mlm"], scalars["loss/xpred"], scalars["optim/lr"], scalars["optim/grad_norm"],
                 scalars["throughput/tokens_per_s"], tflops, mfu, 100 * scalars["data/padding"],
                 100 * scalars["throughput/data_wait_fraction"], counters.get("skipped_steps", 0))
        self._reset()
        return scalars

    def add(self, key: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()


def _drop_lines_after(metrics: Path, step: int) -> None:
    """Rewrites metrics.jsonl without the lines of steps after ``step`` (and without a torn last line)."""
    if not metrics.is_file():
        return
    kept, dropped = [], 0
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            keep = json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        log.info("%s: dropped %d lines logged after step %d by an earlier attempt", metrics, dropped, step)
        write_atomically(metrics, "".join(kept))
