"""``arcforge train``: pre-train a GLM-4.5-style proxy on Megatron token shards.

One YAML (``TrainConfig``) describes the model (preset + overrides), the data (a blend from
``arcforge mix`` or inline shard prefixes), the batch-size warm-up, the token budget, the
optimizer and LR schedule, loss-free balancing and the MTP weight schedule, evaluation,
checkpoints and (on GPU) the parallel sizes. See docs/train.md.

CPU path (tested): megatron-core ``GPTModel`` built by ``build_model`` (cpu_compat layer,
world size 1, gloo), data through megatron-core's ``BlendedMegatronDatasetBuilder``,
``torch.optim`` (AdamW or arcforge's Muon), ``clip_grad_norm_``, ``expert_bias_update`` after
every optimizer step, checkpoints with ``arcforge.model.checkpoint``.

GPU path (written against megatron-core 0.16.1's APIs, **not run here: no GPU**): torchrun +
NCCL, ``parallel_state.initialize_model_parallel(tp, pp, ep)``, Transformer-Engine layer
specs when TE imports, the ``alltoall`` token dispatcher, megatron's DDP wrapper, its pipeline
schedules (``get_forward_backward_func``), ``finalize_model_grads`` (data-parallel reduction
and the router expert-bias update) and its optimizer (bf16 with fp32 main weights, model-
parallel-aware clipping), one checkpoint file per rank.

Reproducibility: the data order depends only on the number of samples consumed (sample
``i`` of the run is ``dataset[i]``), the batch size and the schedules are pure functions of
the step / tokens, and checkpoints hold the model (with the routers' expert bias), the
optimizer state, the step, the consumed samples and every RNG state, so a resumed run
continues the uninterrupted run's loss curve (tests/test_train.py checks it).
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arcforge.runtime.config import ConfigError, S3Config, read_yaml, validate_mapping

TRAINER_FORMAT = "arcforge.train/1"
CKPT_RE = re.compile(r"^step_(\d+)(?:-rank(\d+))?\.pt$")


# ---- configuration ------------------------------------------------------------------------


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

    @model_validator(mode="after")
    def _lrs(self) -> OptimizerSection:
        if self.min_lr > self.lr:
            raise ValueError("min_lr must be <= lr")
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
    if cfg.parallel.ep > 1 and arch.num_experts % cfg.parallel.ep:
        raise ConfigError(f"{path}: parallel.ep: {cfg.parallel.ep} does not divide the {arch.num_experts} experts")


def _blend_of(section: DataSection | EvalData, key: str, path: str):
    from arcforge.model.data import inline_blend, load_blend_file

    if section.blend_file is not None:
        if "://" not in section.blend_file and not os.path.exists(section.blend_file):
            raise ConfigError(f"{path}: {key}.blend_file: {section.blend_file}: no such file")
        try:
            blend, meta = load_blend_file(section.blend_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: {key}.blend_file: {section.blend_file}: not a blend file ({exc})") from None
        return blend, meta
    items = [x if isinstance(x, str) else (x[0], x[1]) for x in section.blend or []]
    for i, it in enumerate(items):
        w = 1.0 if isinstance(it, str) else it[1]
        if not w > 0:
            raise ConfigError(f"{path}: {key}.blend[{i}]: weights must be positive (got {w!r})")
    return inline_blend(items), {}


def _check_lineage(blend_file: str | None, cfg: TrainConfig, path: str, key: str) -> None:
    """Refuse a stale blend (one line: the blend, the stage, both fingerprints) unless
    ``data.allow_stale`` / ``--force``; then, and for a blend without lineage, warn."""
    if blend_file is None:
        return
    import sys

    from arcforge.tokenize.lineage import check_blend

    check = check_blend(blend_file)
    quiet = int(os.environ.get("RANK", "0")) != 0  # torchrun: rank 0 speaks
    if check.state == "stale":
        line = f"{path}: {key}.blend_file: {check.message()}"
        if not cfg.data.allow_stale:
            again = f"re-run arcforge mix {check.mixture_config}" if check.mixture_config else "re-run arcforge mix"
            raise ConfigError(f"{line}; {again}, or pass --force (data.allow_stale: true) to train on it anyway")
        if not quiet:
            print(f"warning: {line}; training on it anyway (--force / data.allow_stale)", file=sys.stderr)
    elif check.state == "unknown" and not quiet:
        print(f"note: {key}.blend_file: {check.message()}", file=sys.stderr)
    for note in check.notes if not quiet else ():  # e.g. the mixture file was edited since
        print(f"note: {key}.blend_file: {note}", file=sys.stderr)


def _local_blend(blend: Any, cfg: TrainConfig, path: str, key: str) -> Any:
    """The blend with ``s3://`` shards copied into the data cache (megatron reads local files)."""
    from arcforge.model.data import localize_prefixes

    try:
        return localize_prefixes(blend[0], cfg.cache_dir), blend[1]
    except OSError as exc:
        raise ConfigError(f"{path}: {key}: cannot fetch a shard ({' '.join(str(exc).split())[:300]})") from None


@dataclass
class DataPlan:
    train_blend: tuple[list[str], list[float] | None]
    train_split: str
    eval_blend: tuple[list[str], list[float] | None] | None
    eval_split: str | None
    eod_id: int
    pad_id: int | None
    vocab_source: str


def resolve_data(cfg: TrainConfig, path: str | None = None) -> DataPlan:
    """Blends, splits and special ids of a config (one-line ``ConfigError`` on any problem)."""
    from arcforge.model.data import missing_shards, read_tokenizer_info

    path = path or cfg._path
    from arcforge.runtime import storage

    storage.configure(cfg.storage.s3.options())  # blends and shards on object storage use the config's endpoint
    train_blend, meta = _blend_of(cfg.data, "data", path)
    _check_lineage(cfg.data.blend_file, cfg, path, "data")
    train_blend = _local_blend(train_blend, cfg, path, "data")
    split = cfg.data.split or meta.get("split") or "100,0,0"
    for p in missing_shards(train_blend[0]):
        raise ConfigError(f"{path}: data.blend: {p}: no Megatron shard (.bin and .idx) with this prefix")
    eval_blend = eval_split = None
    if cfg.eval.data is not None:
        eval_blend, _ = _blend_of(cfg.eval.data, "eval.data", path)
        _check_lineage(cfg.eval.data.blend_file, cfg, path, "eval.data")
        eval_blend = _local_blend(eval_blend, cfg, path, "eval.data")
        eval_split = cfg.eval.data.split
        for p in missing_shards(eval_blend[0]):
            raise ConfigError(f"{path}: eval.data.blend: {p}: no Megatron shard (.bin and .idx) with this prefix")
    eod, pad, source = cfg.data.eod_id, cfg.data.pad_id, "data.eod_id/pad_id"
    if cfg.data.tokenizer is not None:
        try:
            info = read_tokenizer_info(cfg.data.tokenizer)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: data.tokenizer: {exc}") from None
        eod, pad, source = info.eod_id, info.pad_id, info.source
    return DataPlan(train_blend, split, eval_blend, eval_split, eod, pad, source)


def check_data_files(cfg: TrainConfig, path: str) -> DataPlan:
    """Shards exist; the model's vocabulary equals the tokenizer's, or (without a tokenizer)
    exceeds every token id in the shards."""
    from arcforge.model.data import max_token_id, read_tokenizer_info

    plan = resolve_data(cfg, path)
    vocab = cfg.arch().vocab_size
    if cfg.data.tokenizer is not None:
        info = read_tokenizer_info(cfg.data.tokenizer)
        if info.vocab_size != vocab:
            raise ConfigError(
                f"{path}: model.overrides.vocab_size: the model has {vocab} token ids, the tokenizer "
                f"{info.source} has {info.vocab_size}: set vocab_size: {info.vocab_size}"
            )
    elif cfg.data.check_token_ids:
        prefixes = list(plan.train_blend[0]) + (list(plan.eval_blend[0]) if plan.eval_blend else [])
        for p in prefixes:
            if "://" in p:
                continue
            top = max_token_id(p)
            if top >= vocab:
                raise ConfigError(
                    f"{path}: model.overrides.vocab_size: shard {p} holds token id {top}, the model has "
                    f"only {vocab} ids: set vocab_size to the tokenizer's vocabulary (or data.tokenizer)"
                )
    if max(plan.eod_id, plan.pad_id or 0) >= vocab:
        raise ConfigError(f"{path}: data.eod_id: special ids ({plan.eod_id}, {plan.pad_id}) must be < vocab_size {vocab}")
    cfg._data_plan = plan  # the shard scan is not repeated when the trainer starts
    return plan


# ---- the step plan ------------------------------------------------------------------------


def step_batch_sizes(cfg: TrainConfig, dp: int = 1) -> list[int]:
    """Sequences per optimizer step for every step of the run (batch warm-up included)."""
    from arcforge.model.schedule import batch_size_at

    b = cfg.batch
    seq = cfg.model.seq_length
    inc = b.micro_batch_size * dp
    start = b.warmup_start or b.global_batch_size
    sizes: list[int] = []
    tokens = 0
    limit = 50_000_000
    while True:
        if cfg.train.iters is not None and len(sizes) >= cfg.train.iters:
            break
        if cfg.train.tokens is not None and tokens >= cfg.train.tokens:
            break
        bs = batch_size_at(tokens, start=start, end=b.global_batch_size, ramp_tokens=b.warmup_tokens, increment=inc)
        bs = max(inc, (bs // inc) * inc)
        sizes.append(bs)
        tokens += bs * seq
        if len(sizes) > limit:
            raise ConfigError(f"{cfg._path}: train.tokens: more than {limit:,} steps; raise the batch size")
    return sizes


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    from arcforge.model.schedule import cosine_lr

    o = cfg.optimizer
    return cosine_lr(step, max_lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_iters, total_steps=o.decay_iters or total_steps)


def mtp_weight_at(cfg: TrainConfig, arch, tokens: int) -> float:
    if cfg.mtp.switch_tokens is not None and tokens >= cfg.mtp.switch_tokens:
        return cfg.mtp.later_weight
    return arch.mtp_loss_weight


def bias_rate_at(cfg: TrainConfig, arch, tokens: int) -> float:
    if cfg.balance.bias_update_until_tokens is not None and tokens >= cfg.balance.bias_update_until_tokens:
        return 0.0
    return arch.bias_update_rate


# ---- checkpoints --------------------------------------------------------------------------


def list_checkpoints(ckpt_dir: str, rank: int | None = None) -> list[tuple[int, Path]]:
    """``(step, path)`` of the trainer's checkpoints in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and ((rank is None and m.group(2) is None) or (rank is not None and m.group(2) is not None and int(m.group(2)) == rank)):
            out.append((int(m.group(1)), p))
    return sorted(out)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        state["megatron_tracker"] = dict(get_cuda_rng_tracker().get_states())
    except Exception:  # noqa: BLE001 - no tracker yet
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "megatron_tracker" in state:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        get_cuda_rng_tracker().set_states(dict(state["megatron_tracker"]))


# the sections whose change makes a checkpoint's trajectory meaningless to continue
_RESUME_KEYS = ("model", "data", "batch", "seed")
_RESUME_IGNORED = {"data": ("cache_dir", "check_token_ids", "allow_stale")}


def _resume_view(config: dict[str, Any], key: str) -> Any:
    v = config.get(key)
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if k not in _RESUME_IGNORED.get(key, ())}
    return v


# ---- the trainer --------------------------------------------------------------------------


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    tokens: int
    final_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    tokens_per_s: float | None  # mean over the steps of this invocation after the first
    csv: str
    plot: str | None
    checkpoint: str | None
    resumed_from: int | None = None
    eval_curve: list[tuple[int, float]] = field(default_factory=list)


class Trainer:
    """Builds the model, data and optimizer of a ``TrainConfig`` and runs its steps."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = True, verbose: bool | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.verbose = (cfg.log.print_interval > 0) if verbose is None else verbose
        self.gpu = cfg.device == "cuda"
        self.arch = cfg.arch()
        self.rank, self.world, self.dp = 0, 1, 1

    def say(self, msg: str) -> None:
        if self.verbose and self.rank == 0:
            print(msg, flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        import torch

        cfg = self.cfg
        self.data_plan = cfg._data_plan or check_data_files(cfg, cfg._path)
        if self.gpu:
            _gpu_init(self)
        else:
            from arcforge.model.megatron_model import init_runtime

            init_runtime("cpu", seed=cfg.seed)
        random.seed(cfg.seed)
        import numpy as np

        np.random.seed(cfg.seed % (2**32))
        self.plan = step_batch_sizes(cfg, self.dp)
        self.total_steps = len(self.plan)
        self.total_samples = sum(self.plan)
        self._build_data()
        if self.gpu:
            _gpu_build(self)
        else:
            from arcforge.model.megatron_model import build_model, causal_attention_mask
            from arcforge.model.optim import build_optimizer

            self.model = build_model(self.arch, seq_length=cfg.model.seq_length, params_dtype=torch.float32, device="cpu", seed=cfg.seed)
            self.model.train()
            o = cfg.optimizer
            self.optimizer = build_optimizer(self.model, o.name, o.lr, o.weight_decay, tuple(o.betas), self.arch.num_experts)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.mask = causal_attention_mask(cfg.model.seq_length)
        from arcforge.model.trainlog import RouterLoad

        self.router_load = RouterLoad(self.model)
        self.step = 0
        self.consumed = 0
        self.tokens = 0
        self.resumed_from = None
        if self.resume:
            self._load_latest()
        else:  # starting over: older checkpoints would otherwise be taken for this run's
            for _, old in list_checkpoints(cfg.checkpoint_dir, None if self.world == 1 else self.rank):
                old.unlink(missing_ok=True)

    def _build_data(self) -> None:
        from arcforge.model.data import Batches, ShardTokenizer, build_dataset

        cfg, dp = self.cfg, self.data_plan
        tok = ShardTokenizer(self.arch.vocab_size, dp.eod_id, dp.pad_id)
        seq = cfg.model.seq_length
        try:
            train_ds, _ = build_dataset(dp.train_blend, num_samples=self.total_samples, seq_length=seq, seed=cfg.seed,
                                     tokenizer=tok, split=dp.train_split, part="train", cache_dir=cfg.cache_dir,
                                     eod_mask_loss=cfg.data.eod_mask_loss)
        except (ValueError, AssertionError) as exc:
            raise ConfigError(f"{cfg._path}: data: {exc}") from None
        self.train_batches = Batches(train_ds)
        self.eval_samples = cfg.eval.iters * cfg.batch.micro_batch_size * self.dp
        self.eval_batches = None
        if dp.eval_blend is not None:
            blend, split, key = dp.eval_blend, dp.eval_split, "eval.data"
        else:
            from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

            has_valid = parse_and_normalize_split(dp.train_split)[1] > 0
            blend, split, key = (dp.train_blend, dp.train_split, "data.split") if has_valid else (None, None, None)
        if blend is not None:
            try:
                ds, dropped = build_dataset(blend, num_samples=self.eval_samples, seq_length=seq, seed=cfg.seed,
                                            tokenizer=tok, split=split, part="valid", cache_dir=cfg.cache_dir,
                                            eod_mask_loss=cfg.data.eod_mask_loss, drop_empty=True)
            except (ValueError, AssertionError) as exc:
                raise ConfigError(f"{cfg._path}: {key}: {exc}") from None
            if dropped:
                self.say(f"validation: {len(dropped)} of {len(blend[0])} shards have no documents in the valid share "
                         f"of split {split}; validating on the others")
            self.eval_dropped = dropped
            self.eval_batches = Batches(ds)
        elif cfg.eval.interval:
            raise ConfigError(f"{cfg._path}: eval.interval: no validation data: set eval.data or a data.split with a valid share")

    def _config_dump(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def _ckpt_path(self, step: int) -> Path:
        name = f"step_{step:07d}.pt" if self.world == 1 else f"step_{step:07d}-rank{self.rank:05d}.pt"
        return Path(self.cfg.checkpoint_dir) / name

    def _load_latest(self) -> None:
        from arcforge.model.checkpoint import load_checkpoint, load_model_state

        found = list_checkpoints(self.cfg.checkpoint_dir, None if self.world == 1 else self.rank)
        if not found:
            return
        step, path = found[-1]
        state, arch, extra = load_checkpoint(path)
        if extra.get("trainer") != TRAINER_FORMAT:
            raise ConfigError(f"{self.cfg._path}: checkpoint.dir: {path} was not written by arcforge train")
        saved = extra.get("config", {})
        now = self._config_dump()
        for k in _RESUME_KEYS:
            if _resume_view(saved, k) != _resume_view(now, k):
                raise ConfigError(
                    f"{self.cfg._path}: {k}: differs from the checkpoint {path.name} in {self.cfg.checkpoint_dir}; "
                    "use --no-resume (or another checkpoint.dir) to start over"
                )
        if arch != self.arch:
            raise ConfigError(f"{self.cfg._path}: model: the checkpoint {path.name} holds a different architecture")
        load_model_state(_unwrap(self.model), state)
        if self.gpu:
            _gpu_load_optimizer(self, extra["optimizer"])
        else:
            self.optimizer.load_state_dict(extra["optimizer"])
        set_rng_state(extra["rng"])
        self.step = int(extra["step"])
        self.consumed = int(extra["consumed_samples"])
        self.tokens = int(extra["tokens"])
        self.resumed_from = self.step
        self.say(f"resumed from {path} (step {self.step}, {self.tokens:,} tokens)")

    def save(self) -> Path:
        from arcforge.model.checkpoint import save_checkpoint

        extra = {
            "trainer": TRAINER_FORMAT,
            "step": self.step,
            "consumed_samples": self.consumed,
            "tokens": self.tokens,
            "optimizer": _gpu_optimizer_state(self) if self.gpu else self.optimizer.state_dict(),
            "rng": rng_state(),
            "config": self._config_dump(),
        }
        path = save_checkpoint(self._ckpt_path(self.step), _unwrap(self.model), self.arch, extra)
        for _, old in list_checkpoints(self.cfg.checkpoint_dir, None if self.world == 1 else self.rank)[: -self.cfg.checkpoint.keep]:
            old.unlink(missing_ok=True)
        return path

    # -- steps -------------------------------------------------------------------------------

    def _set_schedules(self) -> tuple[float, float, float]:
        lr = lr_at(self.cfg, self.step, self.total_steps)
        factor = lr / self.cfg.optimizer.lr
        for g in self.optimizer.param_groups:
            g["lr"] = g.get("base_lr", self.cfg.optimizer.lr) * factor
        mtp_w = mtp_weight_at(self.cfg, self.arch, self.tokens)
        rate = bias_rate_at(self.cfg, self.arch, self.tokens)
        config = _unwrap(self.model).config
        config.mtp_loss_scaling_factor = mtp_w
        config.moe_router_bias_update_rate = rate
        return lr, mtp_w, rate

    def train_step(self) -> dict[str, Any]:
        """One optimizer step on CPU: accumulate over micro-batches, clip, step, balance."""
        import torch

        from arcforge.model.megatron_model import expert_bias_update, lm_loss

        cfg = self.cfg
        bs = self.plan[self.step]
        mbs = cfg.batch.micro_batch_size
        n_micro = bs // mbs
        lr, mtp_w, rate = self._set_schedules()
        t0 = time.perf_counter()
        lm = mtp = aux = 0.0
        for j in range(n_micro):
            tokens, labels, mask = self.train_batches.get(self.consumed + j * mbs, mbs)
            out = lm_loss(self.model, tokens, labels, mask, attention_mask=self.mask, loss_scale=1.0 / n_micro)
            out.loss.backward()
            lm += out.lm_loss / n_micro
            mtp += (sum(out.mtp_losses) / len(out.mtp_losses) if out.mtp_losses else math.nan) / n_micro
            aux += sum(out.aux_losses.values()) / n_micro
        max_norm = cfg.optimizer.clip_grad if cfg.optimizer.clip_grad > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm) or not math.isfinite(lm):
            raise FloatingPointError(f"step {self.step}: loss {lm} / gradient norm {grad_norm} is not finite")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        expert_bias_update(self.model, update_rate=rate)
        dt = time.perf_counter() - t0
        return dict(batch_size=bs, micro_batches=n_micro, lr=lr, loss=lm, mtp_loss=mtp if self.arch.mtp_layers else None,
                    aux_loss=aux, grad_norm=grad_norm, step_seconds=dt, tokens_per_s=bs * cfg.model.seq_length / dt,
                    mtp_weight=mtp_w if self.arch.mtp_layers else None, bias_update_rate=rate)

    def evaluate(self) -> tuple[float, int]:
        """Mean main-LM loss per target token over the same ``eval.iters`` micro-batches."""
        import torch

        from arcforge.model.megatron_model import lm_loss

        if self.gpu:
            return _gpu_evaluate(self)
        mbs = self.cfg.batch.micro_batch_size
        total = count = 0.0
        self.model.eval()
        try:
            with torch.no_grad():
                for i in range(self.cfg.eval.iters):
                    tokens, labels, mask = self.eval_batches.get(i * mbs, mbs)
                    out = lm_loss(self.model, tokens, labels, mask, attention_mask=self.mask)
                    total += float((out.per_token.float() * mask).sum())
                    count += float(mask.sum())
        finally:
            self.model.train()
        return total / max(count, 1.0), int(count)

    def advance(self, log) -> dict[str, Any]:
        """One optimizer step with its bookkeeping: counters, router load, CSV/JSONL rows,
        progress line (evaluation and checkpoints are ``run``'s)."""
        from arcforge.model.trainlog import balance_stats

        cfg = self.cfg
        row = self.train_step() if not self.gpu else _gpu_train_step(self)
        self.consumed += row["batch_size"]
        self.tokens += row["batch_size"] * cfg.model.seq_length
        self.step += 1
        layers = self.router_load.take()
        row.update(step=self.step, tokens=self.tokens, samples=self.consumed, **balance_stats(layers))
        if log is not None:
            log.train_row(row)
            log.router_row(self.step, self.tokens, layers)
        pi = cfg.log.print_interval
        if pi and (self.step % pi == 0 or self.step == 1):
            self.say(f"step {self.step}/{self.total_steps} tokens {self.tokens:,} loss {row['loss']:.4f} "
                     f"lr {row['lr']:.3g} grad {row['grad_norm']:.3g} {row['tokens_per_s']:,.0f} tok/s "
                     f"balance {row['balance_max_mean']:.2f}")
        return row

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train to the end of the plan (or ``max_steps`` more steps), then checkpoint."""
        from arcforge.model.trainlog import TrainLog, plot_curves, read_csv

        cfg = self.cfg
        if not hasattr(self, "model"):
            self.setup()
        log = TrainLog(cfg.output_dir, resume_step=self.step if self.resumed_from is not None else None) if self.rank == 0 else None
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        speeds = []
        last_eval_step = None
        ckpt_path = None
        self.say(f"{cfg.name}: {self.arch.name} ({self.arch.total_params(include_mtp=True):,} params), "
                 f"{self.total_steps} steps, {sum(self.plan) * cfg.model.seq_length:,} tokens, device {cfg.device}")
        try:
            while self.step < stop:
                row = self.advance(log)
                speeds.append(row["tokens_per_s"])
                at_end = self.step == self.total_steps
                if self.eval_batches is not None and ((cfg.eval.interval and self.step % cfg.eval.interval == 0) or at_end):
                    loss, n = self.evaluate()
                    last_eval_step = self.step
                    if log is not None:
                        log.eval_row(self.step, self.tokens, self.consumed, loss, n)
                    self.say(f"step {self.step}: eval loss {loss:.4f} ({n:,} tokens)")
                if (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0) or self.step == stop:
                    ckpt_path = self.save()
                    if log is not None and cfg.log.plot:
                        plot_curves(log.csv_path, log.plot_path, title=f"{cfg.name} ({self.arch.name})")
        finally:
            if log is not None:
                log.close()
        # a run resumed at its end: make sure the final evaluation and the plot exist
        from arcforge.model.trainlog import CSV_NAME, PLOT_NAME

        csv_path = Path(cfg.output_dir) / CSV_NAME
        png = Path(cfg.output_dir) / PLOT_NAME
        rows = read_csv(csv_path) if csv_path.exists() else []
        if (self.rank == 0 and self.step == self.total_steps and self.eval_batches is not None and last_eval_step is None
                and not any(r["kind"] == "eval" and r["step"] == self.step for r in rows)):
            loss, n = self.evaluate()
            with _Appender(cfg.output_dir) as lg:
                lg.eval_row(self.step, self.tokens, self.consumed, loss, n)
            rows = read_csv(csv_path)
        if self.rank == 0 and cfg.log.plot and rows and (not png.exists() or ckpt_path is None):
            plot_curves(csv_path, png, title=f"{cfg.name} ({self.arch.name})")
        train_rows = [r for r in rows if r["kind"] == "train"]
        eval_rows = [r for r in rows if r["kind"] == "eval"]
        if ckpt_path is None:
            found = list_checkpoints(cfg.checkpoint_dir, None if self.world == 1 else self.rank)
            ckpt_path = found[-1][1] if found else None
        return TrainResult(
            output_dir=cfg.output_dir,
            steps=self.step,
            tokens=self.tokens,
            final_loss=train_rows[-1]["loss"] if train_rows else None,
            final_eval_loss=eval_rows[-1]["eval_loss"] if eval_rows else None,
            best_eval_loss=min(r["eval_loss"] for r in eval_rows) if eval_rows else None,
            tokens_per_s=(sum(speeds[1:]) / len(speeds[1:])) if len(speeds) > 1 else (speeds[0] if speeds else None),
            csv=str(csv_path),
            plot=str(png) if png.exists() else None,
            checkpoint=str(ckpt_path) if ckpt_path else None,
            resumed_from=self.resumed_from,
            eval_curve=[(r["step"], r["eval_loss"]) for r in eval_rows],
        )

    def close(self) -> None:
        if hasattr(self, "router_load"):
            self.router_load.remove()


class _Appender:
    """Appends eval rows to an existing ``train_log.csv`` (for a run resumed at its end)."""

    def __init__(self, out_dir: str) -> None:
        from arcforge.model.trainlog import TrainLog

        self._log = TrainLog(out_dir, resume_step=10**12)

    def __enter__(self):
        return self._log

    def __exit__(self, *exc: Any) -> None:
        self._log.close()


def _unwrap(model):
    return getattr(model, "module", model)


def train(cfg: TrainConfig | str | os.PathLike, *, resume: bool = True, max_steps: int | None = None,
          verbose: bool | None = None) -> TrainResult:
    """Train a config (or a YAML path); resume from the latest checkpoint unless ``resume=False``."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_train_config(cfg)
    import torch

    threads = torch.get_num_threads()
    if cfg.threads is not None and cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg, resume=resume, verbose=verbose)
    try:
        trainer.setup()
        return trainer.run(max_steps=max_steps)
    finally:
        trainer.close()
        torch.set_num_threads(threads)


# ---- GPU path (megatron-core features; not run on this CPU-only machine) -------------------


def _gpu_init(t: Trainer) -> None:
    """torchrun/NCCL, megatron's model-parallel groups (tp, pp, ep) and CUDA RNG."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    from arcforge.model import megatron_model

    cfg = t.cfg
    if not torch.cuda.is_available():
        raise ConfigError(f"{cfg._path}: device: cuda requested but torch sees no GPU")
    if not dist.is_initialized():
        if "RANK" in os.environ:
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1)
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
    p = cfg.parallel
    t.rank, t.world = dist.get_rank(), dist.get_world_size()
    if t.world % (p.tp * p.pp):
        raise ConfigError(f"{cfg._path}: parallel: tp*pp = {p.tp * p.pp} does not divide the world size {t.world}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, expert_model_parallel_size=p.ep
        )
    t.dp = parallel_state.get_data_parallel_world_size()
    b = cfg.batch
    for key, n in (("global_batch_size", b.global_batch_size), ("warmup_start", b.warmup_start)):
        if n is not None and n % (b.micro_batch_size * t.dp):
            raise ConfigError(f"{cfg._path}: batch.{key}: {n} is not a multiple of micro_batch_size x data-parallel size "
                              f"({b.micro_batch_size} x {t.dp})")
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    megatron_model._CUDA_INITIALISED = True  # build helpers must not re-initialise the groups


def _have_te() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _gpu_build(t: Trainer) -> None:
    """GPTModel with TE specs (when TE imports), alltoall dispatcher, bf16, DDP, megatron optimizer."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from arcforge.model.arch import to_transformer_config

    cfg, arch = t.cfg, t.arch
    te = _have_te()
    bf16 = cfg.dtype == "bf16"
    p = cfg.parallel
    config = to_transformer_config(
        arch,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=False,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        expert_model_parallel_size=p.ep,
        sequence_parallel=p.tp > 1,
        moe_token_dispatcher_type="alltoall",
        moe_grouped_gemm=te,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        bias_activation_fusion=te,
        masked_softmax_fusion=te,
        apply_rope_fusion=False,
        bias_dropout_fusion=te,
        gradient_accumulation_fusion=False,
    )
    pre = parallel_state.is_pipeline_first_stage()
    post = parallel_state.is_pipeline_last_stage()
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=te, normalization="RMSNorm")
    mtp = get_gpt_mtp_block_spec(config, block, use_transformer_engine=te) if arch.mtp_layers and post else None
    torch.manual_seed(cfg.seed)
    model = GPTModel(
        config=config, transformer_layer_spec=block, vocab_size=arch.vocab_size,
        max_sequence_length=cfg.model.seq_length, pre_process=pre, post_process=post,
        parallel_output=True, share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope", rotary_percent=arch.rotary_fraction, rotary_base=arch.rope_theta,
        mtp_block_spec=mtp,
    ).cuda()
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=False)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    # the schedules call this after the last micro-batch: DP all-reduce + expert-bias update
    config.finalize_model_grads_func = finalize_model_grads
    o = cfg.optimizer
    ocfg = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0],
        adam_beta2=o.betas[1], clip_grad=o.clip_grad, bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=False,
    )
    if o.name == "muon":
        from megatron.core.optimizer.muon import get_megatron_muon_optimizer

        ocfg.muon_momentum = 0.95
        ocfg.muon_use_nesterov = True
        optimizer = get_megatron_muon_optimizer(ocfg, [model])
    else:
        optimizer = get_megatron_optimizer(ocfg, [model])
    for g in optimizer.param_groups:
        g["base_lr"] = o.lr
    t.model, t.optimizer, t.mcfg = model, optimizer, config
    t.params = [q for q in model.parameters() if q.requires_grad]


def _gpu_batch_iter(t: Trainer, batches, start: int, n_micro: int):
    """This data-parallel rank's micro-batches: micro-batch j of the step takes samples
    ``start + (j * dp + dp_rank) * mbs ...``, so the global order is independent of dp."""
    from megatron.core import parallel_state

    mbs = t.cfg.batch.micro_batch_size
    r = parallel_state.get_data_parallel_rank()
    for j in range(n_micro):
        tokens, labels, mask = batches.get(start + (j * t.dp + r) * mbs, mbs)
        yield {k: v.cuda(non_blocking=True) for k, v in (("tokens", tokens), ("labels", labels), ("loss_mask", mask))}


def _gpu_forward_step(t: Trainer):
    from functools import partial

    import torch

    from arcforge.model.megatron_model import causal_attention_mask, position_ids_for

    mask = causal_attention_mask(t.cfg.model.seq_length, "cuda")

    def loss_func(loss_mask, output):
        per_token = output.float()
        total = (per_token * loss_mask).sum()
        n = loss_mask.sum().clamp(min=1)
        return total / n, {"lm loss": torch.stack([total.detach(), n.detach()])}

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["tokens"], position_ids_for(b["tokens"]), mask, labels=b["labels"], loss_mask=b["loss_mask"])
        return out, partial(loss_func, b["loss_mask"])

    return forward_step


def _gpu_train_step(t: Trainer) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from arcforge.model.megatron_model import aux_loss_values, mtp_loss_values

    cfg = t.cfg
    bs = t.plan[t.step]
    mbs = cfg.batch.micro_batch_size
    n_micro = bs // (mbs * t.dp)
    lr, mtp_w, rate = t._set_schedules()
    t.mcfg.moe_router_bias_update_rate = rate
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    t.optimizer.zero_grad()
    t.model.zero_grad_buffer()
    losses = get_forward_backward_func()(
        forward_step_func=_gpu_forward_step(t),
        data_iterator=_gpu_batch_iter(t, t.train_batches, t.consumed, n_micro),
        model=[t.model], num_microbatches=n_micro, seq_length=cfg.model.seq_length,
        micro_batch_size=mbs, forward_only=False,
    )
    ok, grad_norm, _ = t.optimizer.step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    s = torch.zeros(2, device="cuda")
    if parallel_state.is_pipeline_last_stage():
        s = torch.stack([x["lm loss"] for x in losses]).sum(0)
        dist.all_reduce(s, group=parallel_state.get_data_parallel_group())
    # the loss lives on the last pipeline stage; rank 0 (first stage) writes the log
    dist.broadcast(s, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    lm = float(s[0] / s[1].clamp(min=1))
    mtp = mtp_loss_values()
    return dict(batch_size=bs, micro_batches=n_micro, lr=lr, loss=lm,
                mtp_loss=(sum(mtp) / len(mtp)) if mtp else None, aux_loss=sum(aux_loss_values().values()),
                grad_norm=float(grad_norm) if grad_norm is not None else math.nan, step_seconds=dt,
                tokens_per_s=bs * cfg.model.seq_length / dt, mtp_weight=mtp_w, bias_update_rate=rate)


def _gpu_evaluate(t: Trainer) -> tuple[float, int]:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    t.model.eval()
    try:
        with torch.no_grad():
            n_micro = t.cfg.eval.iters
            losses = get_forward_backward_func()(
                forward_step_func=_gpu_forward_step(t),
                data_iterator=_gpu_batch_iter(t, t.eval_batches, 0, n_micro),
                model=[t.model], num_microbatches=n_micro, seq_length=t.cfg.model.seq_length,
                micro_batch_size=t.cfg.batch.micro_batch_size, forward_only=True,
            )
    finally:
        t.model.train()
    s = torch.zeros(2, device="cuda")
    if parallel_state.is_pipeline_last_stage():
        s = torch.stack([x["lm loss"] for x in losses]).sum(0)
        dist.all_reduce(s, group=parallel_state.get_data_parallel_group())
    dist.broadcast(s, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return float(s[0] / s[1].clamp(min=1)), int(s[1])


def _gpu_optimizer_state(t: Trainer) -> dict[str, Any]:
    return t.optimizer.state_dict()


def _gpu_load_optimizer(t: Trainer, state: dict[str, Any]) -> None:
    t.optimizer.load_state_dict(state)


__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_train_config",
    "parse_train_config",
    "step_batch_sizes",
    "train",
]
