"""The ``arcforge train`` config schema (``TrainConfig``), parsing and cross-section checks.

One YAML describes the model (preset + overrides), the data (a blend from ``arcforge mix`` or
inline shard prefixes), the batch-size warm-up, the token budget, the optimizer and LR
schedule, loss-free balancing and the MTP weight schedule, evaluation, checkpoints and (on
GPU) the parallel sizes. See docs/train.md. The data checks live in ``train_data``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arcforge.runtime.config import ConfigError, S3Config, read_yaml, validate_mapping

def _tokens(v: Any) -> Any:
    if v is None:
        return None
    from arcforge.tokenize.mixture_spec import parse_tokens

    return parse_tokens(v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    preset: str = "proxy-tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)  # ArchConfig fields, e.g. vocab_size
    seq_length: int = Field(gt=0)
    # activation recompute (megatron's recompute_granularity; arch.recompute_settings): none |
    # selective (core attention, norms, expert activation) | full (one layer at a time)
    recompute: Literal["none", "selective", "full"] = "none"
    # torch.compile of every transformer layer (arcforge.model.compile): none | layers (needs
    # kernels sdpa + grouped + dispatcher device, and recompute none)
    compile: Literal["none", "layers"] = "none"
    # inductor options for compile: layers (torch.compile(options=...)), e.g.
    # {coordinate_descent_tuning: true}: tunes each generated kernel's launch settings (longer compile)
    compile_options: dict[str, bool | int | float | str] = Field(default_factory=dict)


BlendItem = str | tuple[str, float]


class DataSection(_Strict):
    blend_file: str | None = None  # <stage>.blend.json written by `arcforge mix`
    blend: list[BlendItem] | None = None  # [[prefix, weight], ...] or [prefix, ...]
    split: str | None = None  # e.g. "99,1,0": train on the first share of each shard's documents
    tokenizer: str | None = None  # tokenizer stage dir, tokenizer.json or tokenizer.model
    eod_id: int = Field(2, ge=0)  # used without a tokenizer (arcforge's fixed layout)
    pad_id: int | None = Field(3, ge=0)
    eod_mask_loss: bool = False
    check_token_ids: bool = True  # without a tokenizer: max token id < vocab_size (reads the shards)
    cache_dir: str | None = None  # megatron's dataset index cache (default OUTPUT_DIR/data_cache)
    allow_stale: bool = False  # train on a blend whose lineage is stale (warn); `arcforge train --force`

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\s*[0-9.]+\s*(,\s*[0-9.]+\s*){0,2}", v):
            raise ValueError("expected 'train,valid,test' shares such as '99,1,0'")
        return v

    @model_validator(mode="after")
    def _one(self) -> DataSection:
        if (self.blend_file is None) == (self.blend is None):
            raise ValueError("give exactly one of blend_file or blend")
        if self.blend is not None and not self.blend:
            raise ValueError("blend must name at least one shard prefix")
        return self


class EvalData(_Strict):
    blend_file: str | None = None
    blend: list[BlendItem] | None = None
    split: str = "0,1,0"  # which share of each shard's documents is validation data

    @model_validator(mode="after")
    def _one(self) -> EvalData:
        if (self.blend_file is None) == (self.blend is None):
            raise ValueError("give exactly one of blend_file or blend")
        return self


class BatchSection(_Strict):
    micro_batch_size: int = Field(gt=0)
    global_batch_size: int = Field(gt=0, description="sequences per optimizer step after the warm-up")
    warmup_start: int | None = Field(None, gt=0, description="sequences per step at the start of the ramp")
    warmup_tokens: int = 0  # the ramp from warmup_start to global_batch_size over this many tokens

    @field_validator("warmup_tokens", mode="before")
    @classmethod
    def _t(cls, v: Any) -> Any:
        return 0 if v in (None, 0) else _tokens(v)

    @model_validator(mode="after")
    def _multiples(self) -> BatchSection:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        if self.warmup_start is not None:
            if self.warmup_start > self.global_batch_size:
                raise ValueError("warmup_start must be <= global_batch_size")
            if self.warmup_start % self.micro_batch_size:
                raise ValueError("warmup_start must be a multiple of micro_batch_size")
        return self


class TrainSection(_Strict):
    iters: int | None = Field(None, gt=0)
    tokens: int | None = None  # a budget: 2000000, '2M', '500B'

    @field_validator("tokens", mode="before")
    @classmethod
    def _t(cls, v: Any) -> Any:
        return _tokens(v)

    @model_validator(mode="after")
    def _one(self) -> TrainSection:
        if (self.iters is None) == (self.tokens is None):
            raise ValueError("give exactly one of iters or tokens")
        return self


class OptimizerSection(_Strict):
    name: Literal["adamw", "muon"] = "adamw"
    lr: float = Field(2.5e-4, gt=0)
    min_lr: float = Field(2.5e-5, ge=0)
    warmup_iters: int = Field(0, ge=0)
    decay_iters: int | None = Field(None, gt=0)  # cosine end; default: the run's last step
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = Field(1.0, ge=0)  # 0 = no clipping (the norm is still logged)
    fused: bool = False  # AdamW's fused kernel (optim.use_fused_adamw); megatron without TE/Apex steps foreach
    # megatron's distributed optimizer (ZeRO-1): fp32 main weights and Adam moments sharded over
    # the data-parallel ranks, gradients reduce-scattered; GPU path, adamw only
    distributed: bool = False

    @model_validator(mode="after")
    def _lrs(self) -> OptimizerSection:
        if self.min_lr > self.lr:
            raise ValueError("min_lr must be <= lr")
        if self.fused and self.name != "adamw":
            raise ValueError("fused is for adamw (Muon has no fused kernel)")
        if self.distributed and self.name != "adamw":
            raise ValueError("distributed is for adamw (Muon orthogonalises whole matrices; the distributed "
                             "optimizer holds flat slices of them)")
        return self


class BalanceSection(_Strict):
    bias_update_rate: float | None = Field(None, ge=0)  # default: the preset's (1e-3)
    bias_update_until_tokens: int | None = None  # then rate 0 (the report: 15T)
    aux_loss_coeff: float | None = Field(None, ge=0)  # sequence-level aux loss (default: preset's 1e-4)

    @field_validator("bias_update_until_tokens", mode="before")
    @classmethod
    def _t(cls, v: Any) -> Any:
        return _tokens(v)


class MTPSection(_Strict):
    loss_weight: float | None = Field(None, ge=0)  # default: the preset's (0.3)
    later_weight: float = Field(0.1, ge=0)
    switch_tokens: int | None = None  # from here on later_weight (the report: 15T); null = never

    @field_validator("switch_tokens", mode="before")
    @classmethod
    def _t(cls, v: Any) -> Any:
        return _tokens(v)


class EvalSection(_Strict):
    data: EvalData | None = None  # default: the valid share of data.split, if it has one
    interval: int = Field(0, ge=0)  # steps between evaluations; 0 = only at the end
    iters: int = Field(4, gt=0)  # micro-batches per evaluation (always the same samples)


class CheckpointSection(_Strict):
    dir: str | None = None  # default OUTPUT_DIR/checkpoints
    interval: int = Field(0, ge=0)  # steps between checkpoints; 0 = only at the end
    keep: int = Field(2, gt=0)


class ParallelSection(_Strict):
    tp: int = Field(1, gt=0)
    pp: int = Field(1, gt=0)
    ep: int = Field(1, gt=0)


class KernelsSection(_Strict):
    """Which megatron modules run attention and the routed experts (``arcforge.model.kernels``).
    ``auto``: on CUDA without Transformer Engine ``sdpa`` + ``grouped``, with TE its own
    modules; on CPU ``local`` + ``sequential``. Grouped and sequential experts store their
    weights under different parameter names: a checkpoint resumes with the same choice only."""

    attention: Literal["auto", "sdpa", "local"] = "auto"  # torch SDPA (flash) | megatron's DotProductAttention
    experts: Literal["auto", "grouped", "sequential"] = "auto"  # GroupedMLP on torch._grouped_mm | SequentialMLP
    # megatron's own token dispatcher | arcforge.model.dispatch (all experts on one rank, no host syncs)
    dispatcher: Literal["megatron", "device"] = "megatron"
    # megatron's cross-entropy: plain | fused (its cross_entropy_loss_fusion; dtype bf16 only)
    cross_entropy: Literal["plain", "fused"] = "plain"
    # float32 matmuls (the routers' gating GEMMs under bf16): ieee | tf32 (tensor cores; CUDA only)
    fp32_matmul: Literal["ieee", "tf32"] = "ieee"


class LogSection(_Strict):
    print_interval: int = Field(10, ge=0)  # 0 = silent
    plot: bool = True


class TrainStorage(_Strict):
    s3: S3Config = Field(default_factory=S3Config)  # the same keys as a run config's storage.s3


class TrainConfig(_Strict):
    name: str = Field("train", pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str
    seed: int = 1234
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["fp32", "bf16"] = "fp32"
    threads: int | None = Field(None, gt=0)  # torch intra-op threads on CPU; null = torch's default
    model: ModelSection
    data: DataSection
    batch: BatchSection
    train: TrainSection
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    balance: BalanceSection = Field(default_factory=BalanceSection)
    mtp: MTPSection = Field(default_factory=MTPSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    parallel: ParallelSection = Field(default_factory=ParallelSection)
    kernels: KernelsSection = Field(default_factory=KernelsSection)
    log: LogSection = Field(default_factory=LogSection)
    storage: TrainStorage = Field(default_factory=lambda: TrainStorage())

    # where the YAML came from (for messages) and whether the data was checked; not config keys
    _path: str = "<config>"
    _data_plan: Any = None

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.output_dir, "checkpoints")

    @property
    def cache_dir(self) -> str:
        return self.data.cache_dir or os.path.join(self.output_dir, "data_cache")

    def arch(self):
        """The model's ``ArchConfig``: preset + overrides + the balance/MTP sections."""
        from arcforge.model.arch import get_preset

        changes = dict(self.model.overrides)
        if self.balance.bias_update_rate is not None:
            changes["bias_update_rate"] = self.balance.bias_update_rate
        if self.balance.aux_loss_coeff is not None:
            changes["aux_seq_loss_coeff"] = self.balance.aux_loss_coeff
        if self.mtp.loss_weight is not None:
            changes["mtp_loss_weight"] = self.mtp.loss_weight
        return get_preset(self.model.preset).with_overrides(**changes)


def parse_train_config(data: Any, path: str = "<config>", *, check_data: bool = True,
                       allow_stale: bool = False) -> TrainConfig:
    """Validate a config mapping (one-line ``ConfigError``), then check the model and the data
    on disk: shards exist, the vocabulary matches the tokenizer or covers every token id, and
    blend files are not stale (``allow_stale``, like ``data.allow_stale``, only warns)."""
    cfg = validate_mapping(TrainConfig, data, path, "output_dir, model, data, batch, train")
    cfg._path = path
    if allow_stale:
        cfg.data.allow_stale = True
    check_config(cfg, path)
    if check_data:
        from arcforge.model.train_data import check_data_files

        check_data_files(cfg, path)
    return cfg


def load_train_config(path: str | os.PathLike, *, check_data: bool = True, allow_stale: bool = False) -> TrainConfig:
    path = str(path)
    return parse_train_config(read_yaml(path), path, check_data=check_data, allow_stale=allow_stale)


def check_config(cfg: TrainConfig, path: str) -> None:
    """Checks across sections that pydantic cannot express per field."""
    from arcforge.model.arch import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"{path}: model.preset: unknown preset {cfg.model.preset!r} (known: {', '.join(PRESETS)})")
    try:
        arch = cfg.arch()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "overrides"
        msg = "unknown architecture field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{path}: model.overrides.{key}: {msg}") from None
    if cfg.model.seq_length > arch.max_position_embeddings:
        raise ConfigError(f"{path}: model.seq_length: {cfg.model.seq_length} exceeds the preset's max_position_embeddings {arch.max_position_embeddings}")
    if cfg.device == "cpu":
        if cfg.dtype != "fp32":
            raise ConfigError(f"{path}: dtype: the CPU path trains in fp32 (bf16 is for device: cuda)")
        for k in ("tp", "pp", "ep"):
            if getattr(cfg.parallel, k) != 1:
                raise ConfigError(f"{path}: parallel.{k}: the CPU path runs one process (world size 1); model parallelism needs device: cuda")
        if cfg.optimizer.distributed:
            raise ConfigError(f"{path}: optimizer.distributed: the CPU path runs one process (nothing to shard over); "
                              "megatron's distributed optimizer needs device: cuda")
    if cfg.kernels.dispatcher == "device" and (cfg.parallel.ep > 1 or cfg.parallel.tp > 1):
        raise ConfigError(f"{path}: kernels.dispatcher: device needs every expert on each rank (parallel.ep 1 and "
                          f"parallel.tp 1; got ep {cfg.parallel.ep}, tp {cfg.parallel.tp}); use megatron")
    if cfg.kernels.cross_entropy == "fused" and cfg.dtype != "bf16":
        raise ConfigError(f"{path}: kernels.cross_entropy: fused needs dtype: bf16 (megatron's fused loss hands back "
                          f"bf16 gradients); got {cfg.dtype}")
    if cfg.kernels.fp32_matmul == "tf32" and cfg.device != "cuda":
        raise ConfigError(f"{path}: kernels.fp32_matmul: tf32 needs device: cuda (a tensor-core format); got {cfg.device}")
    if cfg.model.compile != "none" or cfg.model.compile_options:
        from arcforge.model.kernel_choices import check_compile, check_compile_options, resolve_kernels

        try:
            attention, experts = resolve_kernels(cfg.kernels.attention, cfg.kernels.experts, device=cfg.device, te=False)
            check_compile(cfg.model.compile, dispatcher=cfg.kernels.dispatcher, experts=experts, attention=attention,
                          recompute=cfg.model.recompute)
            check_compile_options(cfg.model.compile, cfg.model.compile_options)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if cfg.parallel.ep > 1 and arch.num_experts % cfg.parallel.ep:
        raise ConfigError(f"{path}: parallel.ep: {cfg.parallel.ep} does not divide the {arch.num_experts} experts")

