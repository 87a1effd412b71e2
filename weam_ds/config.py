"""weam_ds's configuration tree: one run file (YAML) validated strictly (unknown keys, wrong types and
impossible combinations are errors naming the key; see data_prep.typed_config), plus the DeepSpeed config
it points at, merged with its overrides."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_prep.typed_config import ConfigError, load_yaml
from weam_ds.objectives import ObjectiveName
from weam_ds.vocab_check import ModelVocab



@dataclass
class MaskingConfig:
    rate: float = 0.15
    """Share of non-special tokens selected for prediction."""
    mask: float = 0.8
    """Of the selected tokens, the share replaced by <mask>; ``random`` get a random token, the rest stay."""
    random: float = 0.1
    whole_word: bool = False
    """Select whole words (every subword of a chosen word) rather than single subwords."""

    def __post_init__(self):
        if not 0 < self.rate < 1:
            raise ConfigError("rate: must be between 0 and 1")
        if self.mask < 0 or self.random < 0 or self.mask + self.random > 1:
            raise ConfigError("mask, random: must be non-negative and sum to at most 1")


@dataclass
class ObjectiveConfig:
    name: ObjectiveName = "weam"
    """weam (MLM + cross-lingual prediction), mlm (MLM on both sides) or tlm (MLM on the concatenated pair):
    a key of weam_ds.objectives.OBJECTIVES."""
    exchange: Literal["hard", "prior_attention"] = "hard"
    """weam only: hard (alignment-weighted mean of aligned states) or prior_attention (attention with
    the alignment as a log-prior)."""
    xpred_weight: float = 1.0
    """λ, the weight of the cross-lingual prediction losses."""
    prior_epsilon: float = 1e-4
    """prior_attention: ε in log(Â + ε), the score left to positions the aligner did not link."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)

    def __post_init__(self):
        if self.xpred_weight < 0:
            raise ConfigError("xpred_weight: must not be negative")
        if not 0 < self.prior_epsilon < 1:
            raise ConfigError("prior_epsilon: must be between 0 and 1")


@dataclass
class DataConfig:
    datasets: list[str]
    """Dataset directories written by data_prep (each with its manifest.json)."""
    pairs: list[str] | None = None
    """Sources to train on: language pairs (``de-en`` ...) and monolingual languages (``sw``); default all.
    The number of languages is a study variable."""
    temperature: float = 0.3
    """α of the mixture (weam_ds.mixture): a source is drawn with probability ∝ n^α (n: its train samples)."""
    monolingual_weight: float | None = None
    """Share of monolingual samples, the language pairs sharing the rest (each kind ∝ n^α within itself);
    null: one mixture of every source ∝ n^α."""
    monolingual_temperature: float | None = None
    """β, the temperature within the monolingual languages when ``monolingual_weight`` is set; null: α."""
    max_length: int = 128
    """Tokens per sentence, special tokens included; longer ones are truncated."""
    batch_size: int | None = 32
    """Sentence pairs per rank and micro-step; or set ``batch_tokens`` instead."""
    batch_tokens: int | None = None
    """A budget of encoded positions per rank and micro-step, padding included, counted as the objective
    encodes a batch of B pairs: R rows × W positions when packed (``pack_rows``), else 2B × max(source,
    target width) for weam and mlm, and B × (source + target) for tlm. At least 2 × ``max_length``, what one
    pair of two full-length sentences encodes, so every batch keeps to the budget."""
    pack_rows: bool = True
    """Pack the rows a batch encodes into fewer rows, each segment attending only to itself (weam_ds.packing),
    instead of padding every row to the batch's widest one; the same losses and gradients with less padding.
    weam and mlm: the 2B sentences (both sides of every pair) into rows of at most ``max_length`` positions;
    tlm: the B concatenations [x; y] into rows of at most 2 × ``max_length``. Needs attn_implementation sdpa
    or eager."""
    bucket_pool: int = 64
    """Length bucketing: samples are drawn this many batches at a time, sorted by width and cut into batches,
    so that each batch is near one width and little of it is padding (1: batches in draw order). Larger
    pools pad less; a pool is drawn before its first batch and replayed on resume."""
    shuffle_buffer: int = 1000
    workers: int = 1
    """DataLoader worker processes per rank (0: read in the training process)."""
    verify_sha256: bool = True
    """Check each shard against the manifest's sha256 the first time it is opened."""
    eval_batches: int = 20
    """Batches of the dev split evaluated every ``train.eval_interval`` steps."""

    def __post_init__(self):
        if not self.datasets:
            raise ConfigError("datasets: name at least one dataset directory")
        MicroBatch.of(self)  # checks batch_size and batch_tokens
        if not 0 <= self.temperature <= 1:
            raise ConfigError("temperature: must be between 0 and 1")
        if self.monolingual_weight is not None and not 0 < self.monolingual_weight < 1:
            raise ConfigError("monolingual_weight: must be between 0 and 1, both excluded (leave a kind out of "
                              "data.pairs instead)")
        if self.monolingual_temperature is not None and (
                self.monolingual_weight is None or not 0 <= self.monolingual_temperature <= 1):
            raise ConfigError("monolingual_temperature: must be between 0 and 1, and needs monolingual_weight "
                              "(without it every source is drawn ∝ n^temperature)")
        if self.max_length < 8:
            raise ConfigError("max_length: must be at least 8")
        if self.bucket_pool < 1:
            raise ConfigError(f"bucket_pool: must be at least 1, got {self.bucket_pool}")
        if self.shuffle_buffer < 1 or self.workers < 0 or self.eval_batches < 0:
            raise ConfigError("shuffle_buffer, workers, eval_batches: must be positive (workers, eval_batches >= 0)")

    @property
    def micro_batch(self) -> MicroBatch:
        """Pairs or tokens per micro-step: what ``batch_size`` and ``batch_tokens`` decide."""
        return MicroBatch.of(self)


@dataclass(frozen=True)
class MicroBatch:
    """What one rank takes per micro-step, decided once from ``data.batch_size`` and ``data.batch_tokens``:
    ``pairs`` sentence pairs, or a budget of ``tokens`` encoded positions, padding included, counted as the
    objective encodes a batch (weam_ds.objectives). Exactly one of the two is set."""

    pairs: int | None
    tokens: int | None

    @classmethod
    def of(cls, data: DataConfig) -> MicroBatch:
        """``data``'s micro-batch; a ConfigError naming the key when it sets both or neither, or a size too small."""
        if (data.batch_size is None) == (data.batch_tokens is None):
            raise ConfigError("batch_size, batch_tokens: set exactly one of them")
        if data.batch_size is not None and data.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {data.batch_size}")
        if data.batch_tokens is not None and data.batch_tokens < 2 * data.max_length:
            # One pair of two max_length sentences encodes 2 x max_length positions under every objective.
            raise ConfigError(f"batch_tokens: must be at least 2 x max_length ({2 * data.max_length}), "
                              f"got {data.batch_tokens}")
        return cls(data.batch_size, data.batch_tokens)

    def describe(self) -> str:
        """As the logs and the planner's suggestions print it: ``32 pairs`` or ``8192 tokens``."""
        return f"{self.pairs} pairs" if self.pairs is not None else f"{self.tokens} tokens"

    def full_length_pairs(self, max_length: int) -> int:
        """Pairs per batch when every sentence is ``max_length`` long (at least one): a budget holds
        tokens // (2 × max_length) of them under every objective."""
        return self.pairs or max(1, self.tokens // (2 * max_length))

    def halved(self, k: int, max_length: int) -> MicroBatch | None:
        """The micro-batch halved ``k`` times, or None where that is none: pairs that do not halve evenly, a
        budget below one pair of full-length sentences."""
        if self.pairs is not None:
            return MicroBatch(self.pairs >> k, None) if self.pairs >> k >= 1 and self.pairs % (1 << k) == 0 else None
        return MicroBatch(None, self.tokens >> k) if self.tokens >> k >= 2 * max_length else None


@dataclass
class OptimizerConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01

    def __post_init__(self):
        if self.lr <= 0 or len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas) or self.eps <= 0:
            raise ConfigError("lr, betas, eps: lr > 0, two betas in [0, 1), eps > 0")


@dataclass
class ScheduleConfig:
    warmup_steps: int = 1000
    decay: Literal["linear", "cosine"] = "linear"
    """linear or cosine, from the peak after warm-up down to ``min_lr_ratio`` × peak at the last step."""
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("warmup_steps, min_lr_ratio: warmup_steps >= 0, min_lr_ratio in [0, 1]")


@dataclass
class TrainConfig:
    steps: int = 10_000
    """Optimizer steps."""
    seed: int = 1234
    gradient_accumulation: int = 1
    gradient_clipping: float = 1.0
    activation_checkpointing: bool = False
    log_interval: int = 10
    eval_interval: int = 1000
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 2
    max_nonfinite_in_row: int = 10
    """Steps whose loss is NaN/inf are skipped and counted; this many in a row abort the run."""
    failure_timeout: float = 60.0
    """Seconds within which an error on any rank ends every rank of the job (see weam_ds.failure)."""
    collective_timeout: float = 1800.0
    """Seconds a rank waits in one collective before it fails (the process-group timeout): what ends a job
    whose peer was killed outright or hangs. Raise it when saving a checkpoint takes longer."""

    def __post_init__(self):
        for name in ("steps", "gradient_accumulation", "log_interval", "eval_interval", "checkpoint_interval",
                     "keep_checkpoints", "max_nonfinite_in_row"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if self.gradient_clipping < 0:
            raise ConfigError("gradient_clipping: must not be negative (0 turns it off)")
        if self.failure_timeout < 5 or self.collective_timeout < 5:
            raise ConfigError("failure_timeout, collective_timeout: must be at least 5 seconds")


@dataclass
class DeepSpeedSection:
    config: str = "ds_configs/zero3_bf16.json"
    """A DeepSpeed JSON config: a path, or the name of one shipped in ds_configs/."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Merged into the JSON (nested mappings key by key): ``{zero_optimization: {stage: 2}}``."""


@dataclass
class MonitorConfig:
    peak_tflops: float | None = None
    """Peak dense TFLOP/s per device for MFU; default: looked up for known GPUs (none for CPUs)."""


@dataclass
class RunConfig:
    output_dir: str
    data: DataConfig
    model: str = "base"
    """An encoder preset (tiny, mini, base, large, xl, xxl) or a local Hugging Face checkpoint directory."""
    model_vocab: ModelVocab = "match"
    """A checkpoint's vocabulary (weam_ds.vocab_check): ``match``, the dataset must have been built with the
    checkpoint's tokenizer (refused otherwise); ``resize``, train on the dataset's tokenizer anyway: the embedding
    table takes its size, rows kept by id (a piece whose id moved starts from another piece's vector)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def load_run_config(path: str | Path, nvme_here: bool = True) -> RunConfig:
    """The run config, checked against everything it names (datasets and their pairs, the model, the output
    directory, the DeepSpeed JSON) so that a mistake is a one-line error before any process starts work.
    ``nvme_here=False`` skips the NVMe offload path, a node's own mount, where the run starts on other nodes
    (a SLURM login node has none): each node's training checks it when it loads the config."""
    cfg = load_yaml(RunConfig, path)
    _check_output_dir(cfg.output_dir, str(path))
    _check_apart(cfg.output_dir, cfg.data.datasets, str(path))
    _check_pairs(cfg.data, str(path))
    _check_model(cfg.model, str(path))
    _check_model_vocabulary(cfg, str(path))
    ds = deepspeed_config(cfg, where=str(path))  # validates the DeepSpeed section early
    if nvme_here:
        _check_nvme_paths(ds, str(path))
    return cfg


def _check_nvme_paths(ds: dict, where: str) -> None:
    """ZeRO's NVMe offload paths are directories on this node (the message names the node)."""
    zero = ds.get("zero_optimization", {})
    for kind in ("offload_optimizer", "offload_param"):
        offload = zero.get(kind, {})
        if offload.get("device") == "nvme" and not Path(str(offload.get("nvme_path", ""))).is_dir():
            raise ConfigError(f"{where}: deepspeed.zero_optimization.{kind}.nvme_path: "
                              f"{offload.get('nvme_path')!r} is not a directory on node {socket.gethostname()} "
                              "(set it to a local NVMe mount)")


def _check_output_dir(output_dir: str, where: str) -> None:
    out = Path(output_dir)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            under = "" if p == out else f" lies under {p}, which"
            raise ConfigError(f"{where}: output_dir: {out}{under} is a file, not a directory")


def _check_apart(output_dir: str, datasets: list[str], where: str) -> None:
    """The run directory and the datasets must not nest: run files would mix into a dataset, or a dataset into
    the run directory (the run's commands would then write, or refuse to write, inside it)."""
    out = Path(output_dir).resolve()
    for i, d in enumerate(datasets):
        data = Path(d).resolve()
        if out == data or data in out.parents or out in data.parents:
            relation = "is" if out == data else "lies inside" if data in out.parents else "holds"
            raise ConfigError(f"{where}: output_dir: {output_dir} {relation} the dataset data.datasets[{i}] ({d}); "
                              "the run directory and the datasets must be apart")


def _check_pairs(data: DataConfig, where: str) -> None:
    from data_prep.manifest import ManifestError, read_manifest, tokenizer_dir

    available = set()
    for i, d in enumerate(data.datasets):
        if not (Path(d) / "manifest.json").is_file():
            raise ConfigError(f"{where}: data.datasets[{i}]: {d} has no manifest.json (build it with data_prep)")
        try:
            manifest = read_manifest(d)
            tokenizer_dir(d, manifest)
            available.update(manifest["pairs"])
        except ManifestError as exc:
            raise ConfigError(f"{where}: data.datasets[{i}]: {exc}") from None
    unknown = [p for p in data.pairs or [] if p not in available]
    if unknown:
        raise ConfigError(f"{where}: data.pairs: {', '.join(unknown)} not in any dataset "
                          f"(they have {', '.join(sorted(available))})")


def _check_model(model: str, where: str) -> None:
    from weam_ds.preset_table import PRESETS

    if model not in PRESETS and not (Path(model) / "config.json").is_file():
        raise ConfigError(f"{where}: model: {model!r} is neither a preset ({', '.join(PRESETS)}) nor a Hugging "
                          "Face checkpoint directory (with a config.json)")


def _check_model_vocabulary(cfg: RunConfig, where: str) -> None:
    """A checkpoint and the dataset's tokenizer (the first dataset's: datasets share one) must agree."""
    from data_prep.manifest import read_manifest
    from weam_ds.vocab_check import check_model_vocabulary

    dataset = Path(cfg.data.datasets[0])
    tokenizer_dir = dataset / read_manifest(dataset)["tokenizer"]["path"]
    check_model_vocabulary(cfg.model, tokenizer_dir, cfg.model_vocab, where)


DS_CONFIG_DIR = Path(__file__).resolve().parent.parent / "ds_configs"


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(cfg: RunConfig, where: str = "config", world_size: int = 1, hidden_size: int | None = None,
                     cpu: bool = False) -> dict:
    """The DeepSpeed config of a run: the JSON file with the overrides merged in, and every ``"auto"``
    value (Hugging Face's convention) filled from the run config and the model. Impossible combinations
    are errors naming the key."""
    path = Path(cfg.deepspeed.config)
    if not path.is_file() and (DS_CONFIG_DIR / path.name).is_file() and path.parent == Path("ds_configs"):
        path = DS_CONFIG_DIR / path.name
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in DS_CONFIG_DIR.glob("*.json")))
        raise ConfigError(f"{where}: deepspeed.config: no file {cfg.deepspeed.config} (shipped: {shipped})")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{where}: deepspeed.config: {path} must hold a JSON object, not a {type(ds).__name__}")
    ds = _merge(ds, cfg.deepspeed.overrides)
    for section in ("zero_optimization", "fp16", "bf16", "optimizer", "scheduler", "checkpoint", "pipeline"):
        if not isinstance(ds.get(section, {}), dict):
            raise ConfigError(f"{where}: deepspeed.{section}: must be a mapping, got {type(ds[section]).__name__}")
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise ConfigError(f"{where}: deepspeed: fp16.enabled and bf16.enabled cannot both be true")
    if zero.get("stage") not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: deepspeed.zero_optimization.stage: must be 0, 1, 2 or 3")
    if zero.get("stage") == 3 and ds.get("pipeline", {}).get("stages", 1) != 1:
        raise ConfigError(f"{where}: deepspeed.pipeline.stages: ZeRO-3 cannot be combined with pipeline parallelism")
    if cpu and (ds.get("fp16", {}).get("enabled") or any(zero.get(k, {}).get("device") == "nvme"
                                                         for k in ("offload_optimizer", "offload_param"))):
        raise ConfigError(f"{where}: deepspeed: fp16 and NVMe offload need a GPU; use ds_configs/cpu.json")
    t = cfg.train
    micro = cfg.data.micro_batch.pairs or 1  # DeepSpeed counts samples; a token budget's batches vary in pairs
    auto = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "train_batch_size": micro * t.gradient_accumulation * world_size,
        "gradient_clipping": t.gradient_clipping,
        "lr": cfg.optimizer.lr, "betas": cfg.optimizer.betas, "eps": cfg.optimizer.eps,
        "weight_decay": cfg.optimizer.weight_decay,
    }
    if hidden_size:  # Hugging Face's rules of thumb for ZeRO-3 buckets, by model width
        auto.update(reduce_bucket_size=hidden_size * hidden_size,
                    stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
                    stage3_param_persistence_threshold=10 * hidden_size)
    return _fill_auto(ds, auto, where)


def training_precision(ds: dict) -> str:
    """The training precision a resolved DeepSpeed config selects: bf16, fp16 or fp32."""
    return next((p for p in ("bf16", "fp16") if ds.get(p, {}).get("enabled")), "fp32")


def _fill_auto(node: Any, auto: dict, where: str, key: str = "deepspeed") -> Any:
    if isinstance(node, dict):
        return {k: _fill_auto(v, auto, where, f"{key}.{k}") for k, v in node.items()}
    if node == "auto":
        name = key.rsplit(".", 1)[-1]
        if name not in auto:
            if name.startswith(("reduce_bucket", "stage3_")):
                return node  # filled once the model is known
            raise ConfigError(f"{where}: {key}: 'auto' is not supported for this key")
        return auto[name]
    return node
