r"""The memory planner: will a run fit its GPUs, its nodes' host memory and their NVMe?

``python -m launcher plan --config run.yaml --nnodes N --gpus-per-node P --gpu-mem 80GB [--cpu-mem 1TB]
[--nvme 2TB]`` prints a table per GPU and per node and a verdict; ``launcher run`` makes the same check.
Counts come from the model built on PyTorch's meta device (shapes only: ``xxl`` plans instantly). N is
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
``overlap_comm``) and all-gather bucket; the activations (:func:`activation_bytes`, measured); the backward
pass's working memory; and a fixed reserve for the CUDA context and allocator slack (assumed).

Headroom. A plan fits when each total is at most (1 - ``headroom``) of what is there: GPU memory per GPU, host
memory and NVMe per node alike (default :data:`HEADROOM`, 10%). The activation figures on CUDA are derived from
PyTorch's kernels, not measured there, the CUDA reserve and the host baselines are assumed, and the allocator
fragments: a plan at 96% of a GPU leaves no margin for any of them. The host figure a node should reserve (SLURM's
``--mem``) is :attr:`Plan.host_bytes_per_node`, the host total with the headroom on top.

Attention. Whether a layer keeps its attention scores (rows × heads × width² of them) for the backward pass
depends on the kernel that computes them (:func:`attention_kernel`; PyTorch's SDPA kernel selection,
``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` and ``sdp_utils_cpp.cpp``):

- eager attention (the model's ``attn_implementation``: checkpoints of architectures without SDPA) computes
  softmax(q kᵀ + mask) as tensors and keeps the probabilities, the dropout mask and the dropped probabilities;
- SDPA on CUDA: weam_ds always hands the encoder a mask (packed rows a 4D block-diagonal bool mask; stacked rows
  a 4D padding mask whenever the batch has padding), and any mask rules out the flash kernel. The
  memory-efficient kernel takes it (fp32, fp16, bf16 on sm80 and newer; with dropout) and keeps no scores, only
  its log-sum-exp and the mask converted to an additive bias of the query's dtype, one per layer. It refuses a
  head size that is not a multiple of 8 in 16-bit (4 in fp32); then SDPA falls back to its math path, which
  upcasts q, k, v to fp32 and keeps fp32 probabilities, the dropout mask and the dropped probabilities (the
  cuDNN kernel, first on H100 with recent cuDNN, takes a mask too and keeps no scores either);
- SDPA on CPU: its flash kernel takes any mask but no dropout, so training with attention dropout (every
  preset: 0.1) takes the math path; without attention dropout the flash kernel keeps no scores.

A ZeRO-3 build on CPU ranks (``device="cpu"``) peaks well above the rank's partition: see
:func:`build_peak_bytes` and the README's "Memory planner".
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from data_prep.manifest import ManifestError, read_manifest
from data_prep.typed_config import ConfigError
from launcher.cluster import ClusterConfig, LaunchShape
from weam_ds.config import DeepSpeedSection, RunConfig, deepspeed_config, training_precision
from weam_ds.objective import PretrainingObjective
from weam_ds.presets import build_model

GiB = 2 ** 30
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50}

CPU_RANK_BASELINE = int(0.45 * GiB)
"""Host memory of a CPU rank before its model exists: Python, torch, transformers and DeepSpeed imported,
gloo initialised (measured: 0.41 GB on this project's CPU machine)."""
GPU_RANK_BASELINE = 3 * GiB
"""Host memory of a GPU rank before its model exists, CUDA libraries loaded (assumed, not measured)."""
LOADER_WORKER = GiB // 2
"""Host memory of one DataLoader worker process (assumed, not measured)."""
CUDA_RESERVE = int(1.5 * GiB)
"""GPU memory outside PyTorch's tensors: CUDA context, NCCL and cuBLAS workspaces, allocator slack (assumed)."""
HEADROOM = 0.10
"""Share of GPU memory, host memory and NVMe that a plan keeps free (see the module docstring)."""
BUFFER_FACTOR = 1.5
"""DeepSpeed's estimators' ``additional_buffer_factor`` on host memory."""
HEAP_LIMIT = 32 * 2 ** 20
"""glibc's largest dynamic mmap threshold on 64-bit: freed blocks below it come from the heap and may stay
resident (see :func:`build_peak_bytes`)."""


def parse_size(text: str) -> int:
    """Bytes from a size such as ``80GB``, ``79.6GiB``, ``1TB`` or ``512M``.

    Binary units throughout, the way memory is quoted: K, M, G, T (with or without ``B``, with or without
    ``i``) are powers of 1024, so ``80GB`` = ``80GiB``. An "80 GB" H100 is 80 GiB nominal; nvidia-smi
    shows 79.6 GiB usable, and ``--gpu-mem 79.6GB`` plans against what the driver leaves. Disks are sold in
    decimal units: a "2 TB" NVMe drive holds 1.82 TiB, so give ``--nvme 1.8TB``.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGTP]?)(I?B)?\s*", text.upper())
    if not match or (match[3] and match[3].startswith("I") and not match[2]):
        raise ValueError(f"{text!r} is not a size (e.g. 80GB, 512GiB, 1TB)")
    size = int(float(match[1]) * _UNITS[match[2]])
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return size


def _gib(n: float) -> str:
    return f"{n / GiB:,.2f}"


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.4g}{unit}"
    return str(int(n))


# --- the model -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model, counted on the meta device."""

    config: object
    """The transformers config: layers, hidden, heads, ffn, vocabulary, model type."""
    params: int
    """N: every parameter of the trained module (the objective's own included), shared tensors once."""
    largest_layer: int
    """L: the most parameters one module holds itself (DeepSpeed's ``model_to_params``)."""
    largest_layer_name: str
    init_gather: int
    """The most parameters transformers gathers at once to initialise weights under ZeRO-3 (a module's own
    and its direct children's, ``initialize_weights_zero3``)."""
    tensors: tuple[int, ...]
    """The size of every parameter tensor (shared ones once)."""
    untied_decoder: int
    """Parameters of the MLM decoder that a ZeRO-3 build holds untied until it ties the weights."""


def model_shape(model: str, vocab_size: int, objective) -> ModelShape:
    """Counts of preset or checkpoint ``model`` with ``vocab_size`` pieces, wrapped in the objective."""
    with torch.device("meta"):
        encoder = build_model(model, vocab_size, meta=True, resize_vocab=True)  # shapes at the dataset's vocabulary
        module = PretrainingObjective(encoder, objective)
    params = {id(p): p for p in module.parameters()}
    largest, name = 0, ""
    for n, m in module.named_modules():
        own = sum({id(p): p.numel() for p in m.parameters(recurse=False)}.values())
        if own > largest:
            largest, name = own, n.removeprefix("model.").removeprefix(f"{encoder.base_model_prefix}.")
    gather = 0
    for m in encoder.modules():
        group = {id(p): p.numel() for p in m.parameters(recurse=False)}
        for child in m.children():
            if not isinstance(child, PreTrainedModel):
                group.update({id(p): p.numel() for p in child.parameters(recurse=False)})
        gather = max(gather, sum(group.values()))
    c = encoder.config
    untied = c.vocab_size * c.hidden_size if getattr(c, "tie_word_embeddings", False) else 0
    sizes = tuple(p.numel() for p in params.values())
    return ModelShape(c, sum(sizes), largest, name, gather, sizes, untied)


# --- activations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchShape:
    """One micro-batch as the encoder and the MLM head see it."""

    rows: int
    """Sequences per encoder call: 2B for weam and mlm (both sides stacked), B for tlm."""
    width: int
    """Tokens per row, padding included."""
    predicted: int
    """Positions through the MLM head (MLM and XPRED)."""
    exchange: int
    """Elements of the hard exchange's alignment weights, both directions (B × M slots × key width)."""

    @classmethod
    def worst_case(cls, cfg: RunConfig) -> BatchShape:
        """Every sentence ``max_length`` long; ``rate`` of all positions selected for MLM and as many again
        for XPRED; a row's selected positions taken at their mean plus three standard deviations."""
        d, o = cfg.data, cfg.objective
        width = 2 * d.max_length if o.name == "tlm" else d.max_length
        if d.batch_size is not None:
            pairs = d.batch_size
            rows = pairs if o.name == "tlm" else 2 * pairs
        else:
            rows = max(1, d.batch_tokens // width)
            pairs = rows if o.name == "tlm" else math.ceil(rows / 2)
        rate = o.masking.rate
        predicted = math.ceil(rate * rows * width) * (2 if o.name == "weam" else 1)
        slots = min(d.max_length, math.ceil(rate * d.max_length + 3 * math.sqrt(rate * (1 - rate) * d.max_length)))
        return cls(rows, width, predicted, 2 * pairs * slots * d.max_length if o.name == "weam" else 0)


@dataclass(frozen=True)
class AttentionKernel:
    """How a layer's attention runs in training (the rule: the module docstring) and what it keeps of it."""

    name: str
    """eager, math (SDPA's composite fallback) or fused (SDPA's memory-efficient, flash or cuDNN kernel)."""
    why: str
    score_bytes: int
    """Bytes kept per attention score for the backward pass (rows × heads × width² scores a layer); 0 when fused."""

    def layer_bytes(self, config, rows: int, width: int, e: int) -> int:
        """What one layer's attention keeps beyond its q, k, v and the context (counted with the layer)."""
        scores = rows * config.num_attention_heads * width * width * self.score_bytes
        if self.name == "fused":  # the fp32 log-sum-exp and the mask as an additive bias of the query's dtype
            return rows * config.num_attention_heads * width * 4 + rows * width * width * e
        if self.name == "math":  # q, k, v kept as fp32 copies instead of e-byte ones
            return scores + 3 * rows * width * config.hidden_size * (4 - e)
        return scores


def _score_bytes(dtype_bytes: int, device: str, dropout: bool) -> int:
    """Per attention score of ``dtype_bytes``: the softmax's output and, with dropout, its mask (CUDA's fused
    dropout: 1 byte; CPU's: the scores' dtype) and the dropped probabilities."""
    return dtype_bytes + (dtype_bytes + (1 if device == "cuda" else dtype_bytes) if dropout else 0)


def attention_kernel(config, *, dtype_bytes: int, device: str) -> AttentionKernel:
    """The attention kernel a training step of a model with transformers ``config`` runs in ``dtype_bytes``
    precision on ``device`` (cuda: sm80 or newer), by PyTorch's SDPA selection rule (the module docstring)."""
    e, dropout = dtype_bytes, config.attention_probs_dropout_prob > 0
    if config._attn_implementation == "eager":
        return AttentionKernel("eager", "eager attention (the model's attn_implementation)",
                               _score_bytes(e, device, dropout))
    # weam_ds.presets.build_model gives every other model SDPA.
    if device == "cpu":
        if dropout:
            return AttentionKernel("math", "SDPA's math path (attention dropout rules out CPU flash)",
                                   _score_bytes(4, device, dropout))
        return AttentionKernel("fused", "SDPA's CPU flash kernel", 0)
    head, alignment = config.hidden_size // config.num_attention_heads, 8 if e == 2 else 4
    if head % alignment:
        return AttentionKernel("math", f"SDPA's math path (head size {head} is not a multiple of {alignment})",
                               _score_bytes(4, device, dropout))
    return AttentionKernel("fused", "SDPA's memory-efficient kernel (the attention mask rules out flash)", 0)


def _layer_bytes(config, rows: int, width: int, e: int, device: str) -> int:
    """What one encoder layer saves without checkpointing (see :func:`activation_bytes`)."""
    c, t = config, rows * width
    m = 1 if device == "cuda" else e
    attention = attention_kernel(c, dtype_bytes=e, device=device).layer_bytes(c, rows, width, e)
    masks = 1 if c.model_type == "xlm-roberta-xl" else 2
    return 8 * t * c.hidden_size * e + masks * t * c.hidden_size * m + 2 * t * c.intermediate_size * e + 16 * t \
        + attention


def activation_bytes(config, shape: BatchShape, *, dtype_bytes: int, device: str, checkpointing: bool,
                     exchange: str = "hard") -> int:
    """Bytes that autograd saves for the backward pass in one forward of the WEAM objective.

    T = rows × width tokens, H hidden, F feed-forward, h heads, S width, V vocabulary, e = ``dtype_bytes``,
    m the dropout mask (1 byte on CUDA; on CPU dropout keeps an e-byte mask). A layer keeps its input, q, k,
    v, the attention context, both LayerNorms' inputs and the first one's output (8·T·H·e), the GELU's input
    and output (2·T·F·e), its dropout masks (post-LN 2, pre-LN XL 1, × T·H·m), LayerNorm statistics
    (4·T fp32), and what attention keeps (:func:`attention_kernel`): a fused kernel its fp32 log-sum-exp and
    the mask as an e-byte bias (rows·h·S·4 + rows·S²·e; its output is the context); eager attention the
    probabilities, their dropout mask and the dropped probabilities (rows·h·S²·(2e + m)); SDPA's math path the
    same in fp32 (rows·h·S²·(8 + m), m of 4 bytes on CPU) and fp32 copies of q, k, v (3·T·H·(4 - e) more);
    without attention dropout no mask and no dropped copy. With activation checkpointing a layer
    keeps its input only (T·H·e), plus the attention mask once (rows·S² bools). The embeddings keep three
    int64 index tensors, a dropout mask and a LayerNorm's input (pre-LN models: the final LayerNorm's). The
    MLM head runs at the ``predicted`` positions P only: four P×H inputs and the fp32 log-softmax P×V.
    The hard exchange keeps its alignment weights; prior attention also keeps both sides' states as keys.
    """
    c, e = config, dtype_bytes
    rows, width = shape.rows, shape.width
    t = rows * width
    m = 1 if device == "cuda" else e
    if checkpointing:
        layers = c.num_hidden_layers * t * c.hidden_size * e + rows * width * width
    else:
        layers = c.num_hidden_layers * _layer_bytes(c, rows, width, e, device)
    embeddings = 3 * t * 8 + t * c.hidden_size * m + t * (c.hidden_size * e + 8)
    p = shape.predicted
    head = 4 * p * c.hidden_size * e + 8 * p + p * c.vocab_size * 4 + 8 * p
    exchanged = shape.exchange * e + 2 * t + (2 * t * c.hidden_size * e if exchange == "prior_attention" else 0)
    return layers + embeddings + head + exchanged


def _working_bytes(config, shape: BatchShape, e: int, device: str, checkpointing: bool) -> int:
    """Transient memory beyond the saved activations: at the MLM head two fp32 P×V tensors besides the saved
    log-softmax (the float logits in the forward, the log-softmax's output and input gradients in the backward),
    one layer's gradients (2·T·F + 4·T·H), the attention mask (rows·S²), and under checkpointing the
    recomputed layer's saved tensors."""
    c = config
    t = shape.rows * shape.width
    working = (8 * shape.predicted * c.vocab_size + (2 * t * c.intermediate_size + 4 * t * c.hidden_size) * e
               + shape.rows * shape.width ** 2 * e)
    if checkpointing:
        working += _layer_bytes(c, shape.rows, shape.width, e, device)
    return working


def build_peak_bytes(shape: ModelShape, world_size: int, dtype_bytes: int = 4) -> int:
    """Peak host memory above a CPU rank's baseline while ``weam_ds.train`` builds the model under ZeRO-3.

    transformers builds the model inside ``deepspeed.zero.Init`` (each module's parameters partitioned as soon
    as it exists, the MLM decoder still untied: N + V·H parameters over ``world_size`` ranks), then
    initialises the weights module by module (``initialize_weights_zero3``): it gathers each module's
    parameters whole on every rank, rank 0 draws them, and they are broadcast and partitioned again. Three
    terms: the partitions; the largest gather, twice (the gathered tensor and gloo's flat copy of it); and
    what the allocator keeps of the freed gathers. glibc serves blocks under its 32 MiB mmap threshold from
    its heaps and keeps them resident once freed when they cannot be trimmed, so the two blocks of every
    such tensor's gather may stay. Measured, the kept share varies from run to run (0.75 to 1.5 times those
    tensors' bytes for ``base``); the bound takes both blocks.
    """
    e = dtype_bytes
    partitions = math.ceil((shape.params + shape.untied_decoder) / world_size) * e
    kept = 2 * sum(n for n in shape.tensors if n * e < HEAP_LIMIT) * e
    return partitions + 2 * shape.init_gather * e + kept


# --- DeepSpeed settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setup:
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
    def of(cls, name: str, ds: dict) -> _Setup:
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


def _dataset_vocab(cfg: RunConfig) -> int:
    try:
        return int(read_manifest(cfg.data.datasets[0])["tokenizer"]["vocab_size"])
    except (ManifestError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"data.datasets[0]: cannot read the tokenizer's vocabulary size ({exc})") from None


def plan(cfg: RunConfig, nnodes: int, gpus_per_node: int, gpu_mem: int, cpu_mem: int | None = None,
         nvme: int | None = None, *, device: str = "cuda", vocab_size: int | None = None,
         headroom: float = HEADROOM) -> Plan:
    """The memory plan of ``cfg`` on ``nnodes`` × ``gpus_per_node`` GPUs of ``gpu_mem`` bytes, with
    ``cpu_mem`` bytes of host memory and ``nvme`` bytes of NVMe per node (None: not checked). The run fits when
    every total is at most (1 - ``headroom``) of its memory.

    ``device="cpu"`` plans CPU ranks (``gpus_per_node`` counts ranks per node, ``gpu_mem`` is ignored and
    everything lives in host memory). ``vocab_size`` defaults to the dataset tokenizer's. When the run does
    not fit, ``suggestions`` name what would: a shipped offload config, activation checkpointing, a smaller
    micro-batch with more accumulation, or more nodes."""
    if min(nnodes, gpus_per_node) < 1:
        raise ValueError("nnodes and gpus_per_node must be at least 1")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, not {device!r}")
    if device == "cuda" and gpu_mem <= 0:
        raise ValueError("gpu_mem must be positive")
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom must be at least 0 and below 1, not {headroom}")
    shape = model_shape(cfg.model, vocab_size or _dataset_vocab(cfg), cfg.objective)
    capacity = Capacity(gpu_mem if device == "cuda" else None, cpu_mem, nvme, headroom)
    result = _evaluate(cfg, shape, nnodes, gpus_per_node, capacity, device)
    if not result.fits:
        result.suggestions = _suggestions(cfg, shape, nnodes, gpus_per_node, capacity, device)
    return result


def plan_launch(cfg: RunConfig, cluster: ClusterConfig, shape: LaunchShape) -> Plan | None:
    """The memory plan of launching ``cfg`` on ``cluster`` in ``shape``, against the cluster's ``gpu_mem``,
    ``cpu_mem`` and ``nvme`` (ConfigError naming the key that is no size); for a local run without ``gpu_mem``
    this machine's GPU. None where no GPU memory is known (CPU processes, or a cluster without ``gpu_mem``)."""
    sizes = {}
    for key in ("gpu_mem", "cpu_mem", "nvme"):
        try:
            sizes[key] = None if getattr(cluster, key) is None else parse_size(getattr(cluster, key))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if sizes["gpu_mem"] is None and cluster.backend == "local" and torch.cuda.is_available():
        sizes["gpu_mem"] = torch.cuda.get_device_properties(0).total_memory
    if sizes["gpu_mem"] is None:
        return None
    return plan(cfg, shape.nodes, shape.processes_per_node, sizes["gpu_mem"], sizes["cpu_mem"], sizes["nvme"])

def _setup(cfg: RunConfig, shape: ModelShape, world: int, device: str) -> _Setup:
    ds = deepspeed_config(cfg, world_size=world, hidden_size=shape.config.hidden_size, cpu=device == "cpu")
    return _Setup.of(cfg.deepspeed.config, ds)


def _evaluate(cfg: RunConfig, shape: ModelShape, nnodes: int, gpn: int, capacity: Capacity, device: str) -> Plan:
    s = _setup(cfg, shape, nnodes * gpn, device)
    world, n, big = nnodes * gpn, shape.params, shape.largest_layer
    mixed = s.precision != "fp32"
    w = 2 if mixed else 4
    optimizer_bytes = 12 if mixed else 8
    sharded = world if s.stage > 0 else 1
    prec = s.precision
    dev: list[Line] = []

    def add(lines: list[Line], label: str, per_rank: float | None, model: str, per_node: float | None = None):
        lines.append(Line(label, None if per_rank is None else int(per_rank),
                          int(per_node if per_node is not None else per_rank * gpn), model))

    # Model states, placed as DeepSpeed's estimators place them.
    opt_off, par_off = s.offload_optimizer != "none", s.offload_param != "none" and s.stage == 3
    if s.stage == 3:
        add(dev, "parameters", 0 if par_off else w * n / world,
            f"offloaded to {s.offload_param}" if par_off else f"{prec} partition: {w} B x N {_count(n)} / {world}")
    else:
        add(dev, "parameters", w * n, f"{prec}, replicated: {w} B x N {_count(n)}")
    # ZeRO-1/2 keep a 16-bit gradient partition beside the fp32 one; ZeRO-3 reduces into the fp32 partition.
    grad_bytes = 6 if mixed and s.stage < 3 else 4
    add(dev, "gradients", 0 if opt_off else grad_bytes * n / sharded,
        f"offloaded to {s.offload_optimizer}" if opt_off else
        f"{'16-bit + ' if grad_bytes == 6 else ''}fp32 partition: {grad_bytes} B x N / {sharded}")
    states = ("fp32 master + Adam m, v" if mixed else "Adam m, v") + f": {optimizer_bytes} B x N / {sharded}"
    add(dev, "optimizer states", 0 if opt_off else optimizer_bytes * n / sharded,
        f"offloaded to {s.offload_optimizer}" if opt_off else states)
    if s.stage == 3:
        add(dev, "gathered largest layer", 2 * w * big,
            f"{s.precision} parameter + gradient of {shape.largest_layer_name} ({_count(big)})")
    model_states_gpu = sum(line.per_rank for line in dev)
    if s.stage == 3:
        live = max(0, min(n, s.live) - big)
        add(dev, "ZeRO-3 live parameters", w * live, f"{w} B x (min(N, max live {_count(s.live)}) - largest layer)")
        add(dev, "ZeRO-3 prefetch + reduce buckets", w * (s.prefetch + s.reduce),
            f"{w} B x ({_count(s.prefetch)} prefetch + {_count(s.reduce)} reduce)")
    else:
        reduce = s.reduce * (2 if s.overlap else 1)
        add(dev, "ZeRO reduce + all-gather buckets", w * (reduce + s.allgather),
            f"{w} B x ({_count(reduce)} reduce{' (overlap_comm: two)' if s.overlap else ''} "
            f"+ {_count(s.allgather)} all-gather)")
    batch = BatchShape.worst_case(cfg)
    kernel = attention_kernel(shape.config, dtype_bytes=w, device=device)
    checkpointing = cfg.train.activation_checkpointing
    acts = {ck: activation_bytes(shape.config, batch, dtype_bytes=w, device=device, checkpointing=ck,
                                 exchange=cfg.objective.exchange) for ck in (False, True)}
    other = "on" if not checkpointing else "off"
    add(dev, f"activations (checkpointing {'on' if checkpointing else 'off'})", acts[checkpointing],
        f"{batch.rows} x {batch.width} tokens, head at {batch.predicted:,} positions; checkpointing {other}: "
        f"{_gib(acts[not checkpointing])}")
    add(dev, "backward working memory", _working_bytes(shape.config, batch, w, device, checkpointing),
        "the head's logit gradients, one layer's gradients"
        + (", the recomputed layer" if checkpointing else ""))
    if device == "cuda":
        add(dev, "CUDA context, allocator slack", CUDA_RESERVE, "assumed (not measured)")
    device_total = sum(line.per_rank for line in dev)

    # Host memory and NVMe per node.
    host: list[Line] = []
    nvme_lines: list[Line] = []
    workers = cfg.data.workers
    if device == "cpu":
        build = CPU_RANK_BASELINE + (build_peak_bytes(shape, world, w) if s.stage == 3 else 4 * n)
        add(host, "rank processes", CPU_RANK_BASELINE + workers * LOADER_WORKER,
            f"Python, torch, DeepSpeed (measured) + {workers} loader worker(s) x {_gib(LOADER_WORKER)} (assumed)")
        add(host, "training (the rows above)", device_total, "model states, buffers, activations")
        extra = max(0, build - CPU_RANK_BASELINE - device_total)
        add(host, "model build beyond that", extra,
            f"build peak {_gib(build)} per rank: partitions, 2 x largest init gather, allocator-kept gathers")
        host_states = 0
    else:
        # Under ZeRO-3 zero.Init builds on the GPU, leaving DeepSpeed's largest-layer allowance on the host;
        # under ZeRO-1/2 each rank builds the whole fp32 model on the host first.
        build = GPU_RANK_BASELINE + (4 * big if s.stage == 3 else 4 * n) * BUFFER_FACTOR
        add(host, "rank processes", GPU_RANK_BASELINE + workers * LOADER_WORKER,
            f"Python, torch, CUDA + {workers} loader worker(s) x {_gib(LOADER_WORKER)} (assumed)")
        if s.stage == 3 and not opt_off:
            host_states = 4 * big * gpn * BUFFER_FACTOR
            add(host, "model build", None, f"DeepSpeed: largest layer in fp32 per rank x {BUFFER_FACTOR}",
                host_states)
        elif s.stage == 3 and s.offload_optimizer == "cpu":
            to_cpu = [("offloaded gradients", 4), ("offloaded optimizer states", optimizer_bytes)]
            if s.offload_param == "cpu":
                to_cpu.insert(0, ("offloaded parameters", w))
            host_states = 0
            for label, b in to_cpu:
                add(host, label, None, f"{b} B x N / {nnodes} nodes", b * n / nnodes)
                host_states += b * n / nnodes
            add(host, "DeepSpeed buffer allowance", None, f"x {BUFFER_FACTOR} of the offloaded states",
                host_states * (BUFFER_FACTOR - 1))
            host_states *= BUFFER_FACTOR
        elif s.stage < 3 and not opt_off:
            host_states = 4 * n * gpn * BUFFER_FACTOR
            add(host, "model build", None, f"DeepSpeed: the fp32 model per rank x {BUFFER_FACTOR}", host_states)
        elif s.stage < 3:
            host_states = n * max(4 * world, 16) * BUFFER_FACTOR
            add(host, "offloaded gradients + optimizer", None, f"DeepSpeed: N x max(4 G, 16) x {BUFFER_FACTOR}",
                host_states)
        else:  # ZeRO-3 with the optimizer (and maybe parameters) on NVMe
            host_states = 4 * big * gpn * BUFFER_FACTOR
            add(host, "model build", None, f"DeepSpeed: largest layer in fp32 per rank x {BUFFER_FACTOR}",
                host_states)
            staging = s.optimizer_buffers * min(s.sub_group, math.ceil(n / world)) * 4
            if s.offload_param == "nvme":
                staging += w * (s.param_buffers + min(s.param_in_cpu, math.ceil(n / world)))
            add(host, "NVMe staging buffers", staging, "offload_optimizer.buffer_count x sub-group (fp32) "
                "+ offload_param buffers and max_in_cpu")
            on_nvme = (16 + (w if s.offload_param == "nvme" else 0)) * n / nnodes
            add(nvme_lines, "offloaded model states", None,
                f"{16 + (w if s.offload_param == 'nvme' else 0)} B x N / {nnodes} nodes", on_nvme)
    host_total = sum(line.per_node for line in host)
    nvme_total = sum(line.per_node for line in nvme_lines)
    model_states_host = 0 if device == "cpu" else int(host_states)

    reasons, fits = [], True
    checks = [("GPU", device_total, capacity.gpu, "per GPU", dev),
              ("host memory", host_total, capacity.host, "per node", host),
              ("NVMe", nvme_total, capacity.nvme if nvme_lines else None, "per node", nvme_lines)]
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
    header = [
        f"plan: {cfg.model}, {_count(n)} parameters, vocabulary {shape.config.vocab_size:,}, "
        f"objective {cfg.objective.name}"
        + (f" ({cfg.objective.exchange} exchange)" if cfg.objective.name == "weam" else ""),
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
    return Plan(fits, header, dev, host, nvme_lines, capacity,
                {"device": device_total, "ranks": gpn, "host": host_total, "nvme": nvme_total},
                (int(model_states_gpu), model_states_host), acts, build, reasons)


def _micro_batches(cfg: RunConfig) -> list[RunConfig]:
    """Halvings of the micro-batch, with the accumulation doubled so that the batch per step stays."""
    out, d, t = [], cfg.data, cfg.train
    for k in range(1, 12):
        if d.batch_size is not None and d.batch_size >> k >= 1 and d.batch_size % (1 << k) == 0:
            data = dataclasses.replace(d, batch_size=d.batch_size >> k)
        elif d.batch_tokens is not None and d.batch_tokens >> k >= 2 * d.max_length:
            data = dataclasses.replace(d, batch_tokens=d.batch_tokens >> k)
        else:
            break
        out.append(dataclasses.replace(cfg, data=data, train=dataclasses.replace(
            t, gradient_accumulation=t.gradient_accumulation << k)))
    return out


def _suggestions(cfg: RunConfig, shape: ModelShape, nnodes: int, gpn: int, capacity: Capacity,
                 device: str) -> list[str]:
    precision = "fp16" if _setup(cfg, shape, nnodes * gpn, device).precision == "fp16" else "bf16"
    configs: list[tuple[str | None, DeepSpeedSection | None]] = [(None, None)]
    if device == "cuda":
        for kind in ("offload", "nvme"):
            name = f"ds_configs/zero3_{kind}_{precision}.json"
            if name != cfg.deepspeed.config:
                # Only sizes are read here: any existing directory stands in for the NVMe path.
                paths = {"zero_optimization": {k: {"nvme_path": "/"} for k in ("offload_optimizer", "offload_param")}}
                configs.append((name, DeepSpeedSection(name, paths if kind == "nvme" else {})))
    found, failed = [], []
    for name, section in configs:
        base = cfg if section is None else dataclasses.replace(cfg, deepspeed=section)
        result = None
        for checkpointing in sorted({cfg.train.activation_checkpointing, True}):
            variant = dataclasses.replace(base, train=dataclasses.replace(base.train,
                                                                          activation_checkpointing=checkpointing))
            # The largest micro-batch that fits with this config and checkpointing choice.
            for k, smaller in enumerate([variant] + _micro_batches(variant)):
                if name is None and k == 0 and checkpointing == cfg.train.activation_checkpointing:
                    continue
                result = _evaluate(smaller, shape, nnodes, gpn, capacity, device)
                if result.fits:
                    found.append(((name, checkpointing != cfg.train.activation_checkpointing, k), smaller, result))
                    break
        if name is not None and not any(f[0][0] == name for f in found) and result is not None:
            failed.append(f"{name}: does not fit, even with activation checkpointing and the smallest micro-batch: "
                          f"{result.reasons[0]}")

    def dominated(a, b) -> bool:  # b needs every change a needs, and a smaller micro-batch
        return a is not b and a[0][0] in (None, b[0][0]) and a[0][1] <= b[0][1] and a[0][2] <= b[0][2]

    found = [f for f in found if not any(dominated(g, f) for g in found)]
    lines = []
    for (name, checkpointing, k), variant, result in sorted(found, key=lambda f: (sum(map(bool, f[0])), f[0][2])):
        what = [name] * (name is not None) + ["activation checkpointing"] * checkpointing
        if k:
            micro = (f"{variant.data.batch_size} pairs" if variant.data.batch_size is not None
                     else f"{variant.data.batch_tokens} tokens")
            what.append(f"micro-batch {micro} x {variant.train.gradient_accumulation} accumulation")
        nvme_path = " (set nvme_path)" if "nvme" in (name or "") else ""
        lines.append(f"{' + '.join(what)}{nvme_path}: {'; '.join(result.reasons)}")
    for nodes in (2 ** k for k in range(13)):
        if nodes > nnodes and _evaluate(cfg, shape, nodes, gpn, capacity, device).fits:
            lines.append(f"{nodes} nodes of {gpn} {'GPU' if device == 'cuda' else 'rank'}{'s' * (gpn > 1)} "
                         "with the run as configured")
            break
    if not lines:
        lines.append("nothing tried fits (offload to CPU or NVMe, activation checkpointing, smaller micro-batches, "
                     "up to 4096 nodes)")
    return lines + failed
