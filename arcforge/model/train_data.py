"""Data resolution for ``arcforge train``: blends (files or inline), lineage (stale-blend)
checks, S3 shards copied into the cache, special ids, the vocabulary check (``DataPlan``), and
the megatron-core datasets the trainer reads (``build_batches``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from arcforge.model.train_config import DataSection, EvalData, TrainConfig
from arcforge.runtime.config import ConfigError

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
    per_split = check.per_split_message()
    if per_split and not quiet:  # training's own blend is unchanged: say it, go on
        print(f"note: {key}.blend_file: {per_split}", file=sys.stderr)
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


@dataclass
class DataSets:
    train: Any  # data.Batches over the training samples
    eval: Any | None  # data.Batches over the validation samples, or None
    eval_dropped: list[str]  # validation shards without documents in the valid share


def build_batches(cfg: TrainConfig, plan: DataPlan, vocab_size: int, *, train_samples: int, eval_samples: int,
                  say: Callable[[str], None] = print) -> DataSets:
    """megatron-core datasets for exactly the samples the run uses (one-line ``ConfigError``)."""
    from arcforge.model.data import Batches, ShardTokenizer, build_dataset

    tok = ShardTokenizer(vocab_size, plan.eod_id, plan.pad_id)
    seq = cfg.model.seq_length
    try:
        train_ds, _ = build_dataset(plan.train_blend, num_samples=train_samples, seq_length=seq, seed=cfg.seed,
                                    tokenizer=tok, split=plan.train_split, part="train", cache_dir=cfg.cache_dir,
                                    eod_mask_loss=cfg.data.eod_mask_loss)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"{cfg._path}: data: {exc}") from None
    if plan.eval_blend is not None:
        blend, split, key = plan.eval_blend, plan.eval_split, "eval.data"
    else:
        from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

        has_valid = parse_and_normalize_split(plan.train_split)[1] > 0
        blend, split, key = (plan.train_blend, plan.train_split, "data.split") if has_valid else (None, None, None)
    if blend is None:
        if cfg.eval.interval:
            raise ConfigError(f"{cfg._path}: eval.interval: no validation data: set eval.data or a data.split with a valid share")
        return DataSets(Batches(train_ds), None, [])
    try:
        ds, dropped = build_dataset(blend, num_samples=eval_samples, seq_length=seq, seed=cfg.seed,
                                    tokenizer=tok, split=split, part="valid", cache_dir=cfg.cache_dir,
                                    eod_mask_loss=cfg.data.eod_mask_loss, drop_empty=True)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"{cfg._path}: {key}: {exc}") from None
    if dropped:
        say(f"validation: {len(dropped)} of {len(blend[0])} shards have no documents in the valid share "
            f"of split {split}; validating on the others")
    return DataSets(Batches(train_ds), Batches(ds), dropped)
