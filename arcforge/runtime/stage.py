"""Stage declarations: what a stage is, declared once, independent of any engine.

Three kinds cover the pipelines:

* ``SourceStage`` turns one input file (a WARC, a dump) into document batches.
* ``MapStage`` turns each record batch of one input part into kept and rejected rows.
* ``GlobalStage`` needs every row at once (dedup clustering, percentiles); it
  implements ``run`` once against ``arcforge.runtime.globalops`` and commits parts
  through the same helpers.

The per-batch functions are plain Python over Arrow, so tests call them directly.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from arcforge.runtime.documents import DOC_SCHEMA, REJECT_FIELDS, with_columns

ENGINES = ("local", "spark", "ray")


class StageParams(BaseModel):
    """Base of every stage's typed parameters: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(StageParams):
    pass


P = TypeVar("P", bound=StageParams)


@dataclass(frozen=True)
class Resources:
    """What one task of the stage needs, as NeMo Curator declares it."""

    cpus: float = 1.0
    gpus: float = 0.0


class Stats:
    """Per-task counters, summed by the driver into the manifest (datatrove's stat_update)."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def update(self, name: str, value: int | float = 1) -> None:
        self.counters[name] += value

    def merge(self, other: dict[str, int | float]) -> None:
        for k, v in other.items():
            self.counters[k] += v

    def as_dict(self) -> dict[str, int | float]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sorted(self.counters.items())}


@dataclass
class Output:
    """What a batch function returns: rows to keep and rows rejected with a reason column."""

    kept: pa.Table | pa.RecordBatch
    rejected: pa.Table | None = None


def split_rejected(
    batch: pa.Table | pa.RecordBatch,
    reasons: list[str | None],
    details: list[str | None] | None = None,
) -> Output:
    """Split a batch by a per-row reason: ``None`` keeps the row, a string rejects it."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if all(r is None for r in reasons):  # the common case: nothing to filter or copy
        return Output(kept=table, rejected=None)
    reason_arr = pa.array(reasons, pa.string())
    keep_mask = pc.is_null(reason_arr)
    kept = table.filter(keep_mask)
    drop_mask = pc.invert(keep_mask)
    if not pc.any(drop_mask).as_py():
        return Output(kept=kept, rejected=None)
    detail_arr = pa.array(details if details is not None else [None] * len(reasons), pa.string())
    rejected = table.filter(drop_mask)
    rejected = rejected.append_column(REJECT_FIELDS[0], reason_arr.filter(drop_mask))
    rejected = rejected.append_column(REJECT_FIELDS[1], detail_arr.filter(drop_mask))
    return Output(kept=kept, rejected=rejected)


@dataclass
class TaskContext:
    """Handed to batch functions: the worker's setup state, the task's counters,
    file-level errors (a corrupt input) that the run reports without stopping, the
    artifacts the stage declared (name -> URI of a committed artifact stage), and
    side files the task published next to its part (Megatron shards, say)."""

    state: Any = None
    stats: Stats = field(default_factory=Stats)
    partition: int = 0
    errors: list[str] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    output_uri: str = ""
    s3: Any = None
    files: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)  # which piece of the input file (see Split)
    first_error: dict[str, str] | None = None  # the first quarantined row's error and traceback

    def publish_file(self, local_path: str, name: str) -> dict[str, Any]:
        """Move a finished local file into the stage's output directory and record it
        in the partition's commit record. Locally a rename; on S3 one upload."""
        from arcforge.runtime.storage import publish_file

        info = publish_file(local_path, self.output_uri, name, self.s3)
        self.files.append(info)
        return info


class Stage(Generic[P]):
    """Common declaration: a name, typed params, resources and a default engine."""

    kind: ClassVar[str] = "stage"

    def __init__(
        self,
        name: str,
        params: type[P],
        *,
        resources: Resources = Resources(),
        engine: str = "local",
        version: str = "1",
        doc: str = "",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"stage {name}: engine must be one of {ENGINES}, got {engine!r}")
        self.name = name
        self.params = params
        self.resources = resources
        self.engine = engine
        self.version = version  # bump when the logic changes so committed outputs are redone
        self.doc = doc

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        raise NotImplementedError

    def schema_for(self, params: P, input_schema: pa.Schema | None) -> pa.Schema:
        """The output schema of this configured stage (a chain's depends on its steps)."""
        return self.output_schema(input_schema)

    def resources_for(self, params: P) -> Resources:
        """What one task of this configured stage needs; the engines schedule by it (a
        scorer on ``device: cuda`` asks for a GPU). Default: the declared ``resources``."""
        return self.resources

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@dataclass(frozen=True)
class Split:
    """One partition of a source stage: a file, or a piece of one.

    ``spec`` tells the reader which piece (``{"byte_range": [start, end]}`` for line
    formats, ``{"row_groups": [first, last]}`` for Parquet, ``{"files": [...]}`` for a
    group of small files); it is JSON and part of the partition's fingerprint, so a
    re-plan of the same input gives the same partitions and resume stays exact.
    """

    uri: str
    size: int
    spec: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """The partition's identity for fingerprints: file, size and piece."""
        import json

        return f"{self.uri}:{self.size}" + (":" + json.dumps(self.spec, sort_keys=True) if self.spec else "")


class SourceStage(Stage[P]):
    """Reads input files and yields (kept, rejected) tables, one partition per Split.

    ``plan(uris, s3, params)`` cuts the input into Splits (default: one per file);
    ``infer_schema(uris, s3, params)`` reads the input's schema at plan time (default:
    the fixed ``schema``), so a missing column is a config error before any engine
    starts. ``read(path, fs, params, ctx)`` reads one Split (``ctx.split``).
    """

    kind = "source"
    reads_files = True
    reads_dirs = False  # True when an input pattern may name a directory (a dataset folder)

    def __init__(
        self,
        name: str,
        params: type[P],
        read: Callable[[str, Any, P, TaskContext], Iterator[Output]],
        *,
        schema: pa.Schema = DOC_SCHEMA,
        setup: Callable[[P, dict[str, str]], Any] | None = None,
        plan: Callable[[list[str], Any, P], list[Split]] | None = None,
        infer_schema: Callable[[list[str], Any, P], pa.Schema] | None = None,
        reads_dirs: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(name, params, **kw)
        self.read = read
        self.schema = schema
        self.setup = setup
        self._plan = plan
        self._infer_schema = infer_schema
        self.reads_dirs = reads_dirs

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        return self.schema

    def plan(self, uris: list[str], s3: Any, params: P) -> list[Split]:
        if self._plan is not None:
            return self._plan(uris, s3, params)
        from arcforge.runtime import storage

        return [Split(uri, storage.file_size(uri, s3)) for uri in uris]

    def source_schema(self, uris: list[str], s3: Any, params: P) -> pa.Schema:
        if self._infer_schema is not None:
            return self._infer_schema(uris, s3, params)
        return self.schema


class PartitionStage(SourceStage[P]):
    """Like a source stage, but its partitions are the parts of input datasets: the
    function sees a whole part at once (to write one shard per part, say) and emits
    rows of its own ``schema`` (often a small table describing what it wrote)."""

    kind = "partition"
    reads_files = False


class MapStage(Stage[P]):
    """Applies ``fn(batch, params, ctx) -> Output`` to every batch of every input part."""

    kind = "map"

    def __init__(
        self,
        name: str,
        params: type[P],
        fn: Callable[[pa.RecordBatch, P, TaskContext], Output],
        *,
        requires: tuple[str, ...] = ("text",),
        adds: tuple[pa.Field, ...] = (),
        setup: Callable[[P, dict[str, str]], Any] | None = None,
        reads: Callable[[P], Iterable[str]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(name, params, **kw)
        self.fn = fn
        self.requires = requires
        self.adds = adds
        self.setup = setup
        self._reads = reads  # columns that depend on the params (a filter's rules)

    def required_columns(self, params: P) -> list[str]:
        """The input columns this configured stage reads: checked at plan time."""
        return [*self.requires, *(self._reads(params) if self._reads else ())]

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        return with_columns(input_schema or DOC_SCHEMA, self.adds)


class GlobalStage(Stage[P]):
    """Needs all rows at once; subclasses implement ``run(ctx)`` once, against the
    engine-neutral primitives of ``arcforge.runtime.globalops`` (``ctx.engine.ops()``),
    and so run on every engine in ``engines``.

    A global stage still writes one part per input partition through the shared
    commit helpers (``ops.finish`` + ``tasks.commit_partition``), so resume and
    rejected datasets work as for map stages. ``ctx`` is the runner's ``GlobalContext``:
    ``tasks`` (all partitions), ``pending`` (those to write), ``engine``, ``on_commit``.
    """

    kind = "global"
    adds: tuple[pa.Field, ...] = ()
    engines: tuple[str, ...] = ENGINES  # where ``run`` works; the primitives exist on all three

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        return with_columns(input_schema or DOC_SCHEMA, self.adds)

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        """Write the pending partitions and return their commit records."""
        raise NotImplementedError(f"{self.name}: a global stage implements run(ctx)")

    def supported_engines(self) -> tuple[str, ...]:
        return tuple(e for e in ENGINES if e in self.engines)


@dataclass
class ArtifactContext:
    """What an artifact stage's ``build`` gets: its inputs, where to write, the engines."""

    inputs: list[Any]  # DatasetRef of each input stage
    output: Any  # DatasetRef of this stage's directory
    artifacts: dict[str, str]
    engine: Any
    stats: Stats = field(default_factory=Stats)


class ArtifactStage(Stage[P]):
    """Produces files rather than a partitioned dataset (a tokenizer, a classifier).

    ``build(params, ctx) -> dict`` writes its files under ``ctx.output`` and returns
    ``{"files": [...], "meta": {...}}``; the runner commits that as the manifest. It
    is redone as a whole when its params or inputs change.
    """

    kind = "artifact"

    def __init__(self, name: str, params: type[P], build: Callable[[P, ArtifactContext], dict[str, Any]], **kw: Any):
        super().__init__(name, params, **kw)
        self.build = build

    def output_schema(self, input_schema: pa.Schema | None) -> pa.Schema:
        return pa.schema([])


def resolve_stage(ref: str) -> Stage[Any]:
    """Find a stage by built-in name (``web.extract_warc``, see ``arcforge.catalog``) or
    by import path (``pkg.mod:obj``) to a user's own stage."""
    from arcforge.catalog import STAGES

    if ":" not in ref and ref not in STAGES:
        raise KeyError(ref)
    mod_name, _, attr = STAGES.get(ref, ref).partition(":")
    obj = getattr(importlib.import_module(mod_name), attr)
    if not isinstance(obj, Stage):
        raise TypeError(f"{ref} is not an arcforge Stage")
    return obj


def registered_names() -> list[str]:
    from arcforge.catalog import STAGES

    return sorted(STAGES)
