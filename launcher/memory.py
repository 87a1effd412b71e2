r"""The memory one configuration of a run needs, line by line, against what its GPUs, nodes and NVMe have: a
``Plan`` with its table and verdict (launcher.planner calls it, and searches what would fit when it does not).

Counts come from the model built on PyTorch's meta device (launcher.model_shape: ``xxl`` plans instantly). N is
every trained parameter (shared tensors once, the objective's own included), L the largest layer
(DeepSpeed's definition: the most parameters one module holds itself; with a 250k vocabulary that is the
tied embedding/decoder at every size), G the ranks, n the nodes, P the GPUs per node, w = 2 bytes.

Model states under bf16/fp16 are 18 bytes per parameter (16-bit parameters 2, fp32 gradients 4, fp32
master weights and Adam's two moments 12), placed as DeepSpeed's own estimators place them
(``estimate_zero3_model_states_mem_needs``, ``estimate_zero2_model_states_mem_needs``; equal, tested):

    ZeRO-3              GPU: 4L (the largest layer gathered: parameter and gradient) + 18N/G
    ZeRO-3 + offload    GPU: 4L (+ 2N/G when parameters stay);  host per node: 18N/n (16N/n) × 1.5
    ZeRO-1/2            GPU: 2N + 18N/G;  host per node: 4N × P × 1.5 (each rank builds the fp32 model)

fp32 training (``ds_configs/cpu.json``) keeps no master copy: 4 + 4 + 8 = 16 bytes per parameter (outside
DeepSpeed's estimators). On top of the states: ZeRO-3's live parameters (gathered ones are kept while
their reuse is near, up to ``stage3_max_live_parameters``: with the shipped settings the whole 16-bit model
up to 1e9 parameters) and its prefetch and reduce buckets, or ZeRO-2's reduce buckets (two under
``overlap_comm``) and all-gather bucket; the worst-case micro-batch's activations and the backward pass's working
memory (launcher.activations, measured); and a fixed reserve for the CUDA context and allocator slack (assumed).

Headroom. A plan fits when each total is at most (1 - ``headroom``) of what is there: GPU memory per GPU, host
memory and NVMe per node alike (default ``launcher.planner.HEADROOM``, 10%). The activation figures on CUDA are
derived from PyTorch's kernels, not measured there, the CUDA reserve and the host baselines are assumed, and the
allocator fragments: a plan at 96% of a GPU leaves no margin for any of them. The host figure a node should reserve
(SLURM's ``--mem``) is :attr:`Plan.host_bytes_per_node`, the host total with the headroom on top.

Whether a layer keeps its attention scores for the backward pass depends on its attention kernel: see
launcher.activations. A ZeRO-3 build on CPU ranks (``device="cpu"``) peaks well above the rank's partition: see
``launcher.model_shape.build_peak_bytes`` and docs/memory_planner.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from launcher.activations import BatchShape, activation_bytes, attention_kernel, working_bytes
from launcher.model_shape import ModelShape, build_peak_bytes
from weam_ds.config import RunConfig, deepspeed_config, training_precision
from weam_ds.objectives import OBJECTIVES

GiB = 2 ** 30

CPU_RANK_BASELINE = int(0.45 * GiB)
"""Host memory of a CPU rank before its model exists: Python, torch, transformers and DeepSpeed imported,
gloo initialised (measured: 0.41 GB on this project's CPU machine)."""
GPU_RANK_BASELINE = 3 * GiB
"""Host memory of a GPU rank before its model exists, CUDA libraries loaded (assumed, not measured)."""
LOADER_WORKER = GiB // 2
"""Host memory of one DataLoader worker process (assumed, not measured)."""
CUDA_RESERVE = int(1.5 * GiB)
"""GPU memory outside PyTorch's tensors: CUDA context, NCCL and cuBLAS workspaces, allocator slack (assumed)."""
BUFFER_FACTOR = 1.5
"""DeepSpeed's estimators' ``additional_buffer_factor`` on host memory."""


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f}"


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(int(n))


# --- DeepSpeed settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeepSpeedSetup:
    """The DeepSpeed settings that decide memory."""

    name: str
    stage: int
    precision: str
    offload_optimizer: str
    offload_param: str
    live: int
    prefetch: int
    reduce: int
    allgather: int
    overlap: bool
    param_buffers: int
    """NVMe parameter offload: buffer_count × buffer_size elements, plus max_in_cpu."""
    param_in_cpu: int
    optimizer_buffers: int
    sub_group: int

    @classmethod
    def of(cls, name: str, ds: dict) -> DeepSpeedSetup:
        zero = ds.get("zero_optimization", {})
        precision = training_precision(ds)
        opt, par = zero.get("offload_optimizer", {}), zero.get("offload_param", {})

        def number(key: str, default: float, section: dict = zero) -> int:
            value = section.get(key, default)
            return int(default if value == "auto" else value)

        return cls(name, int(zero.get("stage", 0)), precision, opt.get("device", "none") or "none",
                   par.get("device", "none") or "none", number("stage3_max_live_parameters", 1e9),
                   number("stage3_prefetch_bucket_size", 5e7), number("reduce_bucket_size", 5e8),
                   number("allgather_bucket_size", 5e8), bool(zero.get("overlap_comm", False)),
                   number("buffer_count", 5, par) * number("buffer_size", 1e8, par), number("max_in_cpu", 1e9, par),
                   number("buffer_count", 4, opt), number("sub_group_size", 1e9))

    @property
    def mixed(self) -> bool:
        """16-bit training (bf16 or fp16) with fp32 master weights."""
        return self.precision != "fp32"

    @property
    def param_bytes(self) -> int:
        """w: bytes of a parameter as trained."""
        return 2 if self.mixed else 4

    @property
    def optimizer_bytes(self) -> int:
        """Optimizer states per parameter: fp32 master weights (mixed precision) and Adam's two moments."""
        return 12 if self.mixed else 8

    @property
    def offload(self) -> str:
        devices = [f"{what} to {dev}" for what, dev in (("optimizer", self.offload_optimizer),
                                                         ("parameters", self.offload_param)) if dev != "none"]
        return ", ".join(devices) or "none"



# --- the plan ------------------------------------------------------------------------------------------

@dataclass
class Line:
    label: str
    per_rank: int | None
    """Per GPU (or per CPU rank); None for a per-node figure only."""
    per_node: int
    model: str


@dataclass(frozen=True)
class Capacity:
    """What each GPU and each node has, in bytes (None: not given, not checked), and the share kept free."""

    gpu: int | None
    """Per GPU; None for CPU ranks."""
    host: int | None
    """Host memory per node."""
    nvme: int | None
    """NVMe per node."""
    headroom: float

    def usable(self, have: int) -> int:
        return int(have * (1 - self.headroom))

    def has(self, have: int) -> str:
        """What a total may use of ``have`` bytes, in the report's words."""
        if not self.headroom:
            return _gib(have)
        return f"{_gib(self.usable(have))} usable ({1 - self.headroom:.0%} of {_gib(have)})"


@dataclass
class Plan:
    """The memory a run needs against what its nodes have. ``report()`` is the table and the verdict."""

    fits: bool
    header: list[str]
    device_lines: list[Line]
    host_lines: list[Line]
    nvme_lines: list[Line]
    capacity: Capacity
    """What the totals are checked against, and the headroom kept free of it."""
    totals: dict[str, int]
    """device (per GPU or CPU rank), host and nvme (per node), in bytes; ranks: per node."""
    model_states: tuple[int, int]
    """Parameters, gradients, optimizer states (and ZeRO-3's gathered largest layer) as DeepSpeed's estimator
    counts them: bytes per GPU, and host bytes per node."""
    activations: dict[bool, int]
    """Saved activations per rank, without (False) and with (True) activation checkpointing."""
    build_peak: int
    """Host memory of one rank while its model is built (baseline included)."""
    reasons: list[str]
    """The verdict's figures; first, when it does not fit, what overflows and its largest items."""
    suggestions: list[str] = field(default_factory=list)
    """When it does not fit: changes that would fit (a shipped offload config, activation checkpointing, a
    smaller micro-batch with more accumulation, more nodes)."""

    @property
    def host_bytes_per_node(self) -> int:
        """Host memory a node should reserve for the run (SLURM's ``--mem``): the planned total with the headroom
        on top, so that the plan fits a node of exactly this much."""
        return math.ceil(self.totals["host"] / (1 - self.capacity.headroom))

    def report(self) -> str:
        lines = self.device_lines + self.host_lines + self.nvme_lines
        width = max(len(line.label) for line in lines) + 2
        c = self.capacity
        out = list(self.header)
        out.append(f"{'(GiB)':{width + 2}}{'per GPU' if c.gpu is not None else 'per rank':>10}  {'per node':>10}")

        def section(title: str, rows: list[Line], total: tuple[str, str], budget: str) -> None:
            out.append(title)
            for row in rows:
                rank = _gib(row.per_rank) if row.per_rank is not None else ""
                out.append(f"  {row.label:{width}}{rank:>10}  {_gib(row.per_node):>10}  {row.model}".rstrip())
            out.append(f"  {'total':{width}}{total[0]:>10}  {total[1]:>10}  {budget}".rstrip())

        per_rank = self.totals["device"]
        section("GPU memory" if c.gpu is not None else "per rank (in host memory)", self.device_lines,
                (_gib(per_rank), _gib(per_rank * self.totals["ranks"])),
                f"of {c.has(c.gpu)} per GPU" if c.gpu is not None else "")
        section("host memory", self.host_lines, ("", _gib(self.totals["host"])),
                f"of {c.has(c.host)} per node" if c.host is not None else "not checked (no --cpu-mem)")
        if self.nvme_lines:
            section("NVMe", self.nvme_lines, ("", _gib(self.totals["nvme"])),
                    f"of {c.has(c.nvme)} per node" if c.nvme is not None else "not checked (no --nvme)")
        out.append(f"verdict: {'fits' if self.fits else 'does not fit'}")
        out += [f"  {reason}" for reason in self.reasons]
        tried = [s for s in self.suggestions if ": does not fit" in s]
        for title, lines in (("what would fit:", [s for s in self.suggestions if s not in tried]),
                             ("tried, does not fit:", tried)):
            if lines:
                out += [title] + [f"  {s}" for s in lines]
        return "\n".join(out)


def deepspeed_setup(cfg: RunConfig, shape: ModelShape, world: int, device: str) -> DeepSpeedSetup:
    """The memory-deciding settings of ``cfg``'s DeepSpeed config on ``world`` ranks, ``"auto"`` values filled."""
    ds = deepspeed_config(cfg, world_size=world, hidden_size=shape.config.hidden_size, cpu=device == "cpu")
    return DeepSpeedSetup.of(cfg.deepspeed.config, ds)


def evaluate(cfg: RunConfig, shape: ModelShape, nnodes: int, gpn: int, capacity: Capacity, device: str) -> Plan:
    """The plan of ``cfg`` on ``nnodes`` × ``gpn`` ranks: a GPU's (or CPU rank's) lines, a node's host memory and
    NVMe lines, and the verdict against ``capacity``."""
    world = nnodes * gpn
    s = deepspeed_setup(cfg, shape, world, device)
    batch = BatchShape.worst_case(cfg)
    states = _model_state_lines(s, shape, world, gpn)
    step, activations = _step_lines(cfg, shape, s, batch, gpn, device)
    dev = states + _buffer_lines(s, shape, gpn) + step
    device_total = sum(line.per_rank for line in dev)
    if device == "cpu":
        host, build = _cpu_rank_lines(cfg, shape, s, world, gpn, device_total)
        host_states, nvme = 0, []
    else:
        host, build, host_states, nvme = _gpu_node_lines(cfg, shape, s, nnodes, gpn)
    totals = {"device": device_total, "ranks": gpn, "host": sum(line.per_node for line in host),
              "nvme": sum(line.per_node for line in nvme)}
    fits, reasons = _verdict(capacity, totals, dev, host, nvme)
    return Plan(fits, _header(cfg, shape, s, nnodes, gpn, device, batch, capacity), dev, host, nvme, capacity, totals,
                (int(sum(line.per_rank for line in states)), int(host_states)), activations, build, reasons)


def _rank_line(label: str, per_rank: float, ranks: int, model: str) -> Line:
    """A figure of every rank: a node holds ``ranks`` of it."""
    return Line(label, int(per_rank), int(per_rank * ranks), model)


def _node_line(label: str, per_node: float, model: str) -> Line:
    """A figure of the node as a whole."""
    return Line(label, None, int(per_node), model)


def _model_state_lines(s: DeepSpeedSetup, shape: ModelShape, world: int, gpn: int) -> list[Line]:
    """Parameters, gradients, optimizer states and ZeRO-3's gathered largest layer on a GPU, placed as DeepSpeed's
    estimators place them."""
    n, big, w, prec = shape.params, shape.largest_layer, s.param_bytes, s.precision
    sharded = world if s.stage > 0 else 1
    opt_off, par_off = s.offload_optimizer != "none", s.offload_param != "none" and s.stage == 3
    if s.stage == 3:
        lines = [_rank_line("parameters", 0 if par_off else w * n / world, gpn,
                            f"offloaded to {s.offload_param}" if par_off
                            else f"{prec} partition: {w} B x N {_count(n)} / {world}")]
    else:
        lines = [_rank_line("parameters", w * n, gpn, f"{prec}, replicated: {w} B x N {_count(n)}")]
    # ZeRO-1/2 keep a 16-bit gradient partition beside the fp32 one; ZeRO-3 reduces into the fp32 partition.
    grad_bytes = 6 if s.mixed and s.stage < 3 else 4
    lines.append(_rank_line("gradients", 0 if opt_off else grad_bytes * n / sharded, gpn,
                            f"offloaded to {s.offload_optimizer}" if opt_off else
                            f"{'16-bit + ' if grad_bytes == 6 else ''}fp32 partition: {grad_bytes} B x N / {sharded}"))
    states = (("fp32 master + Adam m, v" if s.mixed else "Adam m, v")
              + f": {s.optimizer_bytes} B x N / {sharded}")
    lines.append(_rank_line("optimizer states", 0 if opt_off else s.optimizer_bytes * n / sharded, gpn,
                            f"offloaded to {s.offload_optimizer}" if opt_off else states))
    if s.stage == 3:
        lines.append(_rank_line("gathered largest layer", 2 * w * big, gpn,
                                f"{prec} parameter + gradient of {shape.largest_layer_name} ({_count(big)})"))
    return lines


def _buffer_lines(s: DeepSpeedSetup, shape: ModelShape, gpn: int) -> list[Line]:
    """ZeRO-3's live parameters and its prefetch and reduce buckets, or ZeRO-1/2's reduce and all-gather buckets."""
    w = s.param_bytes
    if s.stage == 3:
        live = max(0, min(shape.params, s.live) - shape.largest_layer)
        return [_rank_line("ZeRO-3 live parameters", w * live, gpn,
                           f"{w} B x (min(N, max live {_count(s.live)}) - largest layer)"),
                _rank_line("ZeRO-3 prefetch + reduce buckets", w * (s.prefetch + s.reduce), gpn,
                           f"{w} B x ({_count(s.prefetch)} prefetch + {_count(s.reduce)} reduce)")]
    reduce = s.reduce * (2 if s.overlap else 1)
    return [_rank_line("ZeRO reduce + all-gather buckets", w * (reduce + s.allgather), gpn,
                       f"{w} B x ({_count(reduce)} reduce{' (overlap_comm: two)' if s.overlap else ''} "
                       f"+ {_count(s.allgather)} all-gather)")]


def _step_lines(cfg: RunConfig, shape: ModelShape, s: DeepSpeedSetup, batch: BatchShape, gpn: int,
                device: str) -> tuple[list[Line], dict[bool, int]]:
    """What a training step adds (activations, the backward pass's working memory, on CUDA its reserve), and the
    activations without (False) and with (True) checkpointing."""
    w, checkpointing = s.param_bytes, cfg.train.activation_checkpointing
    acts = {ck: activation_bytes(shape.config, batch, dtype_bytes=w, device=device, checkpointing=ck,
                                 exchange=cfg.objective.exchange) for ck in (False, True)}
    other = "on" if not checkpointing else "off"
    lines = [_rank_line(f"activations (checkpointing {'on' if checkpointing else 'off'})", acts[checkpointing], gpn,
                        f"{batch.rows} x {batch.width} tokens, head at {batch.predicted:,} positions; checkpointing "
                        f"{other}: {_gib(acts[not checkpointing])}"),
             _rank_line("backward working memory", working_bytes(shape.config, batch, w, device, checkpointing), gpn,
                        "the head's logit gradients, one layer's gradients"
                        + (", the recomputed layer" if checkpointing else ""))]
    if device == "cuda":
        lines.append(_rank_line("CUDA context, allocator slack", CUDA_RESERVE, gpn, "assumed (not measured)"))
    return lines, acts


def _cpu_rank_lines(cfg: RunConfig, shape: ModelShape, s: DeepSpeedSetup, world: int, gpn: int,
                    device_total: int) -> tuple[list[Line], int]:
    """CPU ranks: a node's host memory is its ranks' processes, their training and what the model build needs beyond
    that; and one rank's build peak."""
    workers = cfg.data.workers
    build = CPU_RANK_BASELINE + (build_peak_bytes(shape, world, s.param_bytes) if s.stage == 3 else 4 * shape.params)
    return [_rank_line("rank processes", CPU_RANK_BASELINE + workers * LOADER_WORKER, gpn,
                       f"Python, torch, DeepSpeed (measured) + {workers} loader worker(s) x {_gib(LOADER_WORKER)} "
                       "(assumed)"),
            _rank_line("training (the rows above)", device_total, gpn, "model states, buffers, activations"),
            _rank_line("model build beyond that", max(0, build - CPU_RANK_BASELINE - device_total), gpn,
                       f"build peak {_gib(build)} per rank: partitions, 2 x largest init gather, allocator-kept "
                       "gathers")], build


def _gpu_node_lines(cfg: RunConfig, shape: ModelShape, s: DeepSpeedSetup, nnodes: int,
                    gpn: int) -> tuple[list[Line], float, float, list[Line]]:
    """GPU ranks: a node's host memory lines, one rank's build peak, the model states on the host (DeepSpeed's
    estimators' figure) and the NVMe lines."""
    # Under ZeRO-3 zero.Init builds on the GPU, leaving DeepSpeed's largest-layer allowance on the host;
    # under ZeRO-1/2 each rank builds the whole fp32 model on the host first.
    build = GPU_RANK_BASELINE + (4 * shape.largest_layer if s.stage == 3 else 4 * shape.params) * BUFFER_FACTOR
    workers = cfg.data.workers
    processes = _rank_line("rank processes", GPU_RANK_BASELINE + workers * LOADER_WORKER, gpn,
                           f"Python, torch, CUDA + {workers} loader worker(s) x {_gib(LOADER_WORKER)} (assumed)")
    offloaded, nvme = s.offload_optimizer != "none", []
    if s.stage == 3 and offloaded and s.offload_optimizer != "cpu":
        states, host_states, nvme = _zero3_nvme_lines(s, shape, nnodes, gpn)
    elif s.stage == 3 and offloaded:
        states, host_states = _zero3_cpu_offload_lines(s, shape, nnodes)
    elif s.stage == 3:
        states, host_states = _zero3_build_lines(shape, gpn)
    elif offloaded:
        host_states = shape.params * max(4 * nnodes * gpn, 16) * BUFFER_FACTOR
        states = [_node_line("offloaded gradients + optimizer", host_states,
                             f"DeepSpeed: N x max(4 G, 16) x {BUFFER_FACTOR}")]
    else:
        host_states = 4 * shape.params * gpn * BUFFER_FACTOR
        states = [_node_line("model build", host_states, f"DeepSpeed: the fp32 model per rank x {BUFFER_FACTOR}")]
    return [processes] + states, build, host_states, nvme


def _zero3_build_lines(shape: ModelShape, gpn: int) -> tuple[list[Line], float]:
    """ZeRO-3 with the optimizer on the GPU or NVMe: the largest layer each rank builds in fp32 on the host."""
    host_states = 4 * shape.largest_layer * gpn * BUFFER_FACTOR
    return [_node_line("model build", host_states,
                       f"DeepSpeed: largest layer in fp32 per rank x {BUFFER_FACTOR}")], host_states


def _zero3_cpu_offload_lines(s: DeepSpeedSetup, shape: ModelShape, nnodes: int) -> tuple[list[Line], float]:
    """ZeRO-3 offloading to host memory: the offloaded states shared by the nodes, and DeepSpeed's buffer
    allowance on them."""
    to_cpu = [("offloaded gradients", 4), ("offloaded optimizer states", s.optimizer_bytes)]
    if s.offload_param == "cpu":
        to_cpu.insert(0, ("offloaded parameters", s.param_bytes))
    lines = [_node_line(label, b * shape.params / nnodes, f"{b} B x N / {nnodes} nodes") for label, b in to_cpu]
    host_states = sum(b * shape.params / nnodes for _, b in to_cpu)
    lines.append(_node_line("DeepSpeed buffer allowance", host_states * (BUFFER_FACTOR - 1),
                            f"x {BUFFER_FACTOR} of the offloaded states"))
    return lines, host_states * BUFFER_FACTOR


def _zero3_nvme_lines(s: DeepSpeedSetup, shape: ModelShape, nnodes: int,
                      gpn: int) -> tuple[list[Line], float, list[Line]]:
    """ZeRO-3 with the optimizer (and maybe the parameters) on NVMe: the build, the host's staging buffers, and the
    offloaded states on each node's NVMe."""
    n, w, world = shape.params, s.param_bytes, nnodes * gpn
    lines, host_states = _zero3_build_lines(shape, gpn)
    staging = s.optimizer_buffers * min(s.sub_group, math.ceil(n / world)) * 4
    if s.offload_param == "nvme":
        staging += w * (s.param_buffers + min(s.param_in_cpu, math.ceil(n / world)))
    lines.append(_rank_line("NVMe staging buffers", staging, gpn, "offload_optimizer.buffer_count x sub-group (fp32) "
                            "+ offload_param buffers and max_in_cpu"))
    per_parameter = 16 + (w if s.offload_param == "nvme" else 0)
    return lines, host_states, [_node_line("offloaded model states", per_parameter * n / nnodes,
                                           f"{per_parameter} B x N / {nnodes} nodes")]


def _verdict(capacity: Capacity, totals: dict[str, int], dev: list[Line], host: list[Line],
             nvme: list[Line]) -> tuple[bool, list[str]]:
    """Whether every total fits its memory, and the verdict's figures: first, when one does not, what overflows
    and its two largest items."""
    reasons, fits = [], True
    checks = [("GPU", totals["device"], capacity.gpu, "per GPU", dev),
              ("host memory", totals["host"], capacity.host, "per node", host),
              ("NVMe", totals["nvme"], capacity.nvme if nvme else None, "per node", nvme)]
    for what, need, have, where, lines in checks:
        if have is None:
            if lines and what != "GPU":
                reasons.append(f"{what} {_gib(need)} GiB {where} (not checked)")
            continue
        if need <= capacity.usable(have):
            reasons.append(f"{what} {_gib(need)} GiB of {capacity.has(have)} {where}")
        else:
            fits = False
            key = (lambda line: line.per_rank) if where == "per GPU" else (lambda line: line.per_node)
            top = sorted(lines, key=key, reverse=True)[:2]
            reasons.insert(0, f"{what} needs {_gib(need)} GiB {where}, has {capacity.has(have)}; largest: "
                           + ", ".join(f"{line.label} {_gib(key(line))}" for line in top))
    return fits, reasons


def _header(cfg: RunConfig, shape: ModelShape, s: DeepSpeedSetup, nnodes: int, gpn: int, device: str, batch: BatchShape,
            capacity: Capacity) -> list[str]:
    """The report's first lines: the model, the cluster, DeepSpeed, the micro-batch, attention, the headroom."""
    world, checkpointing = nnodes * gpn, cfg.train.activation_checkpointing
    kernel = attention_kernel(shape.config, dtype_bytes=s.param_bytes, device=device)
    return [
        f"plan: {cfg.model}, {_count(shape.params)} parameters, vocabulary {shape.config.vocab_size:,}, "
        f"objective {cfg.objective.name}"
        + (f" ({cfg.objective.exchange} exchange)" if OBJECTIVES[cfg.objective.name].cross_lingual else ""),
        f"cluster: {nnodes} node{'s' * (nnodes > 1)} x {gpn} {'GPU' if device == 'cuda' else 'CPU rank'}"
        f"{'s' * (gpn > 1)} = {world} rank{'s' * (world > 1)}",
        f"DeepSpeed: {s.name}: ZeRO-{s.stage}, {s.precision}, offload {s.offload}",
        f"micro-batch: {batch.rows} rows x {batch.width} tokens (every sentence at max_length), "
        f"accumulation {cfg.train.gradient_accumulation}, activation checkpointing "
        f"{'on' if checkpointing else 'off'}",
        f"attention: {kernel.why}, "
        + (f"scores kept: {batch.rows} rows x {shape.config.num_attention_heads} heads x {batch.width}^2 x "
           f"{kernel.score_bytes} B per layer" if kernel.score_bytes else "no scores kept"),
        f"headroom: {capacity.headroom:.0%} of each memory kept free" if capacity.headroom else
        "headroom: none (totals checked against the whole memory)",
    ]
