"""Training mixtures: token budgets, weights and epochs -> Megatron data blends.

A mixture YAML names committed ``tokenize.megatron_shards`` stages and, per training
stage, a token budget and the sources (optionally one quality bucket) to draw from,
each with a ``weight`` (a share of what the epoch targets leave of the budget) or a
target number of ``epochs`` over what is available, or a ``buckets:`` table giving each
range of quality buckets its epochs (``arcforge.tokenize.bucket_epochs``: every bucket
becomes an entry, dropped ones and those without shards included). For every stage,
``arcforge mix CONFIG`` writes:

* ``<stage>.blend.json``: ``data_path`` (the flat ``weight prefix ...`` list that
  Megatron's ``--data-path`` takes), ``blend`` (``(prefixes, weights)`` for
  ``BlendedMegatronDatasetConfig(blend=...)``), ``train_samples``, ``split`` and the table;
* ``<stage>.per-split.json``: ``{"train": [...], "valid": [...], "test": [...]}`` for
  ``--per-split-data-args-path``: valid and test are the mixture's ``valid``/``test`` shards
  stages (held-out text, weighted by tokens; refused if training draws from them), else
  the training blend again (then use ``data_path`` with ``--split``);

and ``mixture.json`` / ``mixture.md`` with every stage's table and the cumulative epochs
each source gets over all stages. Blend files and ``mixture.json`` carry a ``lineage``
object (the fingerprints of the shards stages and tokenizers they were mixed from, and the
mixture config's hash), and a pointer to each blend is left in ``<run>/_blends/`` of every
run it draws from (``arcforge.tokenize.lineage``), so ``arcforge status`` and ``arcforge
train`` can tell a stale blend.

Epochs: a source with ``T`` tokens in its shards that is allotted ``A`` tokens of a
stage is seen ``A / T`` times (Megatron's ``GPTDataset`` repeats its shuffled epochs
until it has drawn its share). A stage whose allotment would exceed the epoch cap, or
that names a source with no shards or a shard whose files are missing, is a one-line
``ConfigError``: ``FILE: key: expectation``.

This module plans (``load_mixture``); ``arcforge.tokenize.mixture_files`` writes the plan
and reads a blend back (``write_mixture``, ``load_blend``, re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcforge.runtime import storage
from arcforge.runtime.config import ConfigError
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.tokenize import bucket_epochs, lineage
from arcforge.tokenize.held_out import held_out_blends
from arcforge.tokenize.mixture_files import fmt_tokens, load_blend, markdown, stage_blend, write_mixture
from arcforge.tokenize.mixture_spec import parse_tokens, read_spec


@dataclass
class Shard:
    prefix: str  # absolute prefix (path or s3:// URI), no extension
    tokens: int
    documents: int
    sequences: int
    pack_seq_length: int | None


@dataclass
class Group:
    """One (source, bucket) of one shards stage: every partition's shard of it."""

    shards_uri: str
    group: str
    source: str
    bucket: str | None
    shards: list[Shard] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)


@dataclass
class Allocation:
    source: str
    bucket: str | None
    groups: list[Group]
    available: int  # tokens in the shards
    tokens: int  # tokens the stage draws from them
    share: float  # tokens / stage budget
    epochs: float  # tokens / available
    asked: str  # "weight 0.5", "3.2 epochs", "2 epochs (12-17)" or "dropped (0-4)"
    range: str | None = None  # the bucket range of a `buckets:` table this bucket came from
    dropped: bool = False  # 0 epochs in a `buckets:` table: listed, never drawn

    @property
    def label(self) -> str:
        return self.source + (f"/{self.bucket}" if self.bucket else "")


@dataclass
class StagePlan:
    name: str
    tokens: int
    seq_length: int
    split: str
    max_epochs: float
    allocations: list[Allocation]

    @property
    def train_samples(self) -> int:
        return math.ceil(self.tokens / self.seq_length)

    def prefixes_and_weights(self) -> list[tuple[str, float]]:
        out = []
        for a in self.allocations:
            if a.share <= 0:  # a dropped bucket, or one without shards
                continue
            for g in a.groups:
                for s in g.shards:
                    if s.tokens:
                        out.append((s.prefix, a.share * s.tokens / a.available))
        return out

    @property
    def blend(self) -> tuple[list[str], list[float]]:
        """What ``BlendedMegatronDatasetConfig(blend=...)`` takes."""
        pw = self.prefixes_and_weights()
        return [p for p, _ in pw], [round(w, 12) for _, w in pw]

    @property
    def data_path(self) -> list[str]:
        """The flat ``weight prefix weight prefix ...`` list of Megatron's ``--data-path``."""
        return [x for p, w in self.prefixes_and_weights() for x in (f"{w:.10g}", p)]

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "source": a.source,
                "bucket": a.bucket,
                "range": a.range,
                "dropped": a.dropped,
                "asked": a.asked,
                "available_tokens": a.available,
                "tokens": a.tokens,
                "share": round(a.share, 6),
                "epochs": round(a.epochs, 4),
                "shards": sum(len(g.shards) for g in a.groups),
            }
            for a in self.allocations
        ]


@dataclass
class MixturePlan:
    path: str
    name: str
    output: str
    stages: list[StagePlan]
    mixture: dict[str, Any] = field(default_factory=dict)  # lineage: config path, sha256, fingerprint
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # lineage of each shards URI
    held_out: dict[str, dict[str, Any]] = field(default_factory=dict)  # "valid"/"test": shards, tokens, data_path
    registered: list[str] = field(default_factory=list)  # pointers left in run dirs by write_mixture
    warnings: list[str] = field(default_factory=list)

    def lineage(self, st: StagePlan | None = None) -> dict[str, Any]:
        """The ``lineage`` of one stage's blend (or, without a stage, of the whole mixture)."""
        used: dict[str, list[str]] = {}
        for s in [st] if st is not None else self.stages:
            for a in s.allocations:
                for g in a.groups:
                    used.setdefault(g.shards_uri, []).append(g.source + (f"/{g.bucket}" if g.bucket else ""))
        held: dict[str, list[str]] = {}  # the per-split file's valid/test shards, checked apart from training's
        for split, h in self.held_out.items():
            for uri in h["shards"]:
                held.setdefault(uri, []).append(split)
        return lineage.blend_lineage(self.mixture, self.datasets, used, held)

    def totals(self) -> list[dict[str, Any]]:
        """Cumulative tokens and epochs per source and bucket over all stages."""
        acc: dict[tuple[str, str | None], dict[str, Any]] = {}
        for st in self.stages:
            for a in st.allocations:
                for g in a.groups:
                    key = (g.source, g.bucket)
                    row = acc.setdefault(
                        key, {"source": g.source, "bucket": g.bucket, "tokens": 0, "epochs": 0.0, "by_stage": {}}
                    )
                    part = a.tokens * g.tokens / a.available if a.available else 0
                    row["tokens"] += round(part)
                    epochs = part / g.tokens if g.tokens else 0.0
                    row["by_stage"][st.name] = round(row["by_stage"].get(st.name, 0.0) + epochs, 4)
        for row in acc.values():
            row["epochs"] = round(sum(row["by_stage"].values()), 4)
        return sorted(acc.values(), key=lambda r: (r["source"], bucket_epochs.sort_key(r["bucket"])))


# -- loading --------------------------------------------------------------------------------


GroupKey = tuple[str, str | None]  # (source, bucket)


def load_groups(
    path: str, key: str, uri: str, cache: dict[str, dict[GroupKey, Group]], check_files: bool,
    datasets: dict[str, dict[str, Any]] | None = None,
) -> dict[GroupKey, Group]:
    """The shard sets of a committed shards stage, by (source, bucket), every file checked."""
    if uri in cache:
        return cache[uri]
    ref = DatasetRef(uri)
    try:
        manifest = read_manifest(ref)
    except OSError as exc:
        raise ConfigError(f"{path}: {key}: cannot read {uri} ({exc})") from None
    if manifest is None:
        raise ConfigError(
            f"{path}: {key}: {uri} is not a committed dataset (run its tokenize.megatron_shards stage first)"
        )
    table = read_dataset(ref)
    needed = {"group", "source", "bucket", "prefix", "tokens", "documents", "sequences", "pack_seq_length"}
    if not needed <= set(table.column_names) and table.num_rows:
        missing = ", ".join(sorted(needed - set(table.column_names)))
        raise ConfigError(f"{path}: {key}: {uri} is not a tokenize.megatron_shards dataset (no {missing})")
    files = {f["name"] for p in manifest["parts"] for f in p.get("files", [])}
    fs, base = ref.fs()
    groups: dict[tuple[str, str | None], Group] = {}
    for row in table.to_pylist():
        for ext in (".bin", ".idx"):
            name = row["prefix"] + ext
            if name not in files or (check_files and not storage.exists(fs, storage.join(base, name))):
                raise ConfigError(f"{path}: {key}: shard {storage.join(uri, name)} is missing")
        g = groups.setdefault((row["source"], row["bucket"]), Group(uri, row["group"], row["source"], row["bucket"]))
        prefix = storage.join(uri if storage.is_s3(uri) else base, row["prefix"])
        g.shards.append(Shard(prefix, row["tokens"], row["documents"], row["sequences"], row["pack_seq_length"]))
    cache[uri] = groups
    if datasets is not None:
        datasets[uri] = lineage.dataset_lineage(uri, manifest)
    return groups


@dataclass
class _Pick:
    """One entry of a stage, before its tokens are known: a source (or one bucket of it)."""

    index: int  # the source entry it came from
    source: str
    bucket: str | None
    groups: list[Group]
    weight: float | None
    epochs: float | None
    asked: str
    range: str | None = None  # set for a bucket of a `buckets:` table

    @property
    def total(self) -> int:
        return sum(g.tokens for g in self.groups)


def load_mixture(path: str | Path, *, check_files: bool = True) -> MixturePlan:
    """Validate a mixture against the committed shards and allot every stage's budget."""
    path = str(path)
    spec, data = read_spec(path)
    storage.configure(spec.storage.s3.options())  # shards, blends and outputs on the mixture's endpoint
    cache: dict[str, dict[GroupKey, Group]] = {}
    datasets: dict[str, dict[str, Any]] = {}
    stages = []
    for st in spec.stages:
        key = f"stages[{st.name}]"
        shards = st.shards if st.shards is not None else spec.shards
        if shards is None:
            raise ConfigError(f"{path}: {key}.shards: required key is missing (here or at the top level)")
        uris = [shards] if isinstance(shards, str) else shards
        where = f"{key}.shards" if st.shards is not None else "shards"
        available: dict[GroupKey, Group] = {}
        for uri in uris:
            for k, g in load_groups(path, where, uri, cache, check_files, datasets).items():
                if k in available:
                    raise ConfigError(
                        f"{path}: {where}: {k[0]} appears in more than one shards dataset ({available[k].shards_uri}, {uri})"
                    )
                available[k] = g
        cap = st.max_epochs or spec.max_epochs
        claimed: dict[GroupKey, int] = {}
        chosen: list[_Pick] = []
        for i, src in enumerate(st.sources):
            skey = f"{key}.sources[{i}]"
            groups = [
                g
                for (s, b), g in sorted(available.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
                if s == src.source and (src.bucket is None or b == src.bucket)
            ]
            if not groups:
                have = sorted({f"{s}/{b}" if b else s for s, b in available})
                what = f"source {src.source!r}" + (f" bucket {src.bucket!r}" if src.bucket else "")
                raise ConfigError(
                    f"{path}: {skey}: no shards for {what} in {', '.join(uris)} (have: {', '.join(have) or 'none'})"
                )
            if src.buckets is not None:  # one pick per bucket, each with its range's epochs
                try:
                    entries = bucket_epochs.expand(src.buckets, src.n_buckets, src.source, groups)
                except ValueError as exc:
                    raise ConfigError(f"{path}: {skey}.buckets: {exc}") from None
                picks = [_Pick(i, src.source, e.name, e.groups, None, e.epochs, bucket_epochs.asked(e), e.label) for e in entries]
            else:
                asked = f"{src.epochs:g} epochs" if src.epochs is not None else f"weight {src.weight:g}"
                picks = [_Pick(i, src.source, src.bucket, groups, src.weight, src.epochs, asked)]
            for g in groups:
                if (g.source, g.bucket) in claimed:
                    other = claimed[(g.source, g.bucket)]
                    raise ConfigError(f"{path}: {skey}: {g.source}/{g.bucket or '*'} is already drawn by sources[{other}]")
                claimed[(g.source, g.bucket)] = i
                for s in g.shards:
                    if s.pack_seq_length is not None and s.pack_seq_length != st.seq_length:
                        raise ConfigError(
                            f"{path}: {skey}: shards of {src.source} are packed for {s.pack_seq_length} tokens, "
                            f"but the stage trains at seq_length {st.seq_length}"
                        )
            if src.buckets is None and picks[0].total == 0:
                raise ConfigError(f"{path}: {skey}: the shards for {src.source!r} hold no tokens")
            chosen += picks
        fixed = sum(p.epochs * p.total for p in chosen if p.epochs is not None)
        weights = sum(p.weight for p in chosen if p.weight is not None)
        if st.tokens is None:
            if weights:
                raise ConfigError(f"{path}: {key}.tokens: required when a source is given a weight")
            budget = round(fixed)
        else:
            budget = st.tokens
            if fixed > budget * (1 + 1e-9):
                raise ConfigError(
                    f"{path}: {key}.tokens: the epoch targets alone need {fmt_tokens(fixed)} tokens, "
                    f"over the budget of {fmt_tokens(budget)}"
                )
            if not weights and abs(fixed - budget) > 0.001 * budget:
                raise ConfigError(
                    f"{path}: {key}.tokens: the epoch targets add up to {fmt_tokens(fixed)} tokens, "
                    f"not {fmt_tokens(budget)}; give a source a weight to fill the rest, or leave tokens out"
                )
            if weights and budget - fixed <= 0:
                raise ConfigError(
                    f"{path}: {key}.tokens: the epoch targets use the whole budget; weighted sources get nothing"
                )
        if budget <= 0:
            raise ConfigError(f"{path}: {key}.sources: the stage draws no tokens (every bucket is dropped or has no shards)")
        rest = budget - fixed
        allocations = []
        for p in chosen:
            tokens = p.epochs * p.total if p.epochs is not None else rest * p.weight / weights
            epochs = tokens / p.total if p.total else 0.0
            if epochs > cap * (1 + 1e-9):
                label = p.source + (f"/{p.bucket}" if p.bucket else "")
                raise ConfigError(
                    f"{path}: {key}.sources[{p.index}]: {label} would be repeated {epochs:.2f} epochs "
                    f"({fmt_tokens(tokens)} of {fmt_tokens(p.total)} tokens), over the cap max_epochs={cap:g}"
                )
            allocations.append(
                Allocation(p.source, p.bucket, p.groups, p.total, round(tokens), tokens / budget, epochs, p.asked,
                           p.range, p.range is not None and p.epochs == 0)
            )
        stages.append(StagePlan(st.name, budget, st.seq_length, st.split, cap, allocations))
    output = spec.output or str(Path(path).with_suffix("")) + "-blends"
    plan = MixturePlan(path, spec.name, output, stages, lineage.mixture_identity(path, spec), datasets)
    if spec.max_total_epochs is not None:
        for r in plan.totals():
            if r["epochs"] > spec.max_total_epochs * (1 + 1e-9):
                label = r["source"] + (f"/{r['bucket']}" if r["bucket"] else "")
                by = ", ".join(f"{k} {v:.2f}" for k, v in r["by_stage"].items() if v)
                raise ConfigError(f"{path}: max_total_epochs: {label} would be repeated {r['epochs']:.2f} epochs over "
                                  f"all stages ({by}), over the cap max_total_epochs={spec.max_total_epochs:g}")
    plan.held_out = held_out_blends(path, spec, stages, lambda key, uri: load_groups(path, key, uri, cache, check_files, datasets))
    return plan


__all__ = [
    "ConfigError",
    "MixturePlan",
    "StagePlan",
    "load_blend",
    "load_mixture",
    "markdown",
    "parse_tokens",
    "stage_blend",
    "write_mixture",
]
