"""Run configuration: YAML validated into typed models before any engine starts.

Every problem becomes one line, ``FILE: KEY.PATH: what was expected``, so a user
sees the mistake without a traceback and without waiting for Spark or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arcforge.runtime.checkspec import CheckConfig
from arcforge.runtime.chain import CHAIN, ChainParams, ChainStage, Step, StepSpec, resolve_steps
from arcforge.runtime.stage import ENGINES, ArtifactStage, GlobalStage, MapStage, PartitionStage, SourceStage, Stage, resolve_stage
from arcforge.runtime.storage import S3Options, expand_inputs
from arcforge.runtime.yamlconf import ConfigError, first_error, read_yaml, validate_mapping  # ConfigError is re-exported


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SparkConfig(_Strict):
    master: str = "local[*]"
    app_name: str = "arcforge"
    conf: dict[str, str] = Field(default_factory=dict)
    task_retries: int = Field(1, ge=0)  # Spark re-runs a failed partition this many times before the run fails


class RayConfig(_Strict):
    address: str | None = None  # None starts a local Ray inside the run
    num_cpus: int | None = None
    object_store_memory_mb: int = 512

    @field_validator("address")
    @classmethod
    def _not_ray_client(cls, v: str | None) -> str | None:
        # Ray Client cannot run Ray Data (ray 2.60: AttributeError 'Worker' object has no
        # attribute 'core_worker' at the first dataset), which the Ray engine runs tasks on
        if v is not None and v.strip().lower().startswith("ray://"):
            raise ValueError(
                "a Ray Client address (ray://) cannot run Ray Data, which the Ray engine uses; give the "
                "cluster's GCS address HOST:6379 from a machine in the cluster's network, or submit the run "
                "to the cluster (ray job submit -- arcforge run CONFIG) with address: auto"
            )
        return v


class EnginesConfig(_Strict):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ray: RayConfig = Field(default_factory=RayConfig)


class S3Config(_Strict):
    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(6, ge=0)  # retries of an operation or task that failed transiently, with backoff
    backoff_s: float = Field(0.5, ge=0)  # first wait; doubled each retry up to max_backoff_s
    max_backoff_s: float = Field(16.0, ge=0)

    def options(self) -> S3Options:
        env = S3Options.from_env()
        return S3Options(
            endpoint_url=self.endpoint_url or env.endpoint_url,
            region=self.region or env.region,
            connect_timeout_s=self.connect_timeout_s,
            request_timeout_s=self.request_timeout_s,
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
        )


class StorageConfig(_Strict):
    root: str
    s3: S3Config = Field(default_factory=S3Config)


class FilesInput(_Strict):
    files: list[str] = Field(min_length=1)


class DatasetInput(_Strict):
    """A committed arcforge dataset of another run (its directory), or external Parquet
    (a file, a directory of ``*.parquet`` or a glob), local or ``s3://``."""

    dataset: str | list[str] = Field(min_length=1)

    def uris(self) -> list[str]:
        return [self.dataset] if isinstance(self.dataset, str) else list(self.dataset)


class StepConfig(_Strict):
    """One step of a fused chain (see ``arcforge.runtime.chain``)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")  # default: the step's ``uses``
    uses: str
    params: dict[str, Any] = Field(default_factory=dict)


class StageConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    uses: str | None = None  # a stage; or leave it out and give ``steps`` for a fused chain
    steps: list[StepConfig] | None = Field(None, min_length=1)
    input: str | list[str] | FilesInput | DatasetInput
    engine: Literal["local", "spark", "ray"] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)  # name -> an earlier stage (a tokenizer, a model)
    # Rows quarantined because the stage raised on them, as a share of its input: above this the
    # run fails (a bug is never a green run). Not part of the fingerprint: changing it reruns nothing.
    max_error_fraction: float = Field(0.01, ge=0, le=1)
    # Data-quality expectations on the stage's stats (arcforge.runtime.checkspec); not fingerprinted.
    checks: list[CheckConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _uses_or_steps(self) -> StageConfig:
        if self.steps is None and self.uses is None:
            raise ValueError("needs `uses` (a stage) or `steps` (a fused chain of map stages)")
        if self.steps is not None:
            if self.uses in (None, "chain") and self.params:
                raise ValueError("a chain gives its steps' `params` under `steps`, not at the stage")
            self.uses = self.uses or "chain"
            names = [s.name or s.uses for s in self.steps]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"step names must be unique; name the repeated step(s) {dup} with `name:`")
        checks = [c.check_name for c in self.checks]
        dup = sorted({n for n in checks if checks.count(n) > 1})
        if dup:
            raise ValueError(f"check names must be unique within a stage; give the repeated check(s) {dup} a `name:`")
        return self

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one input stage")
        return v

    def input_stages(self) -> list[str]:
        if isinstance(self.input, (FilesInput, DatasetInput)):
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RunConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    storage: StorageConfig
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    stages: list[StageConfig] = Field(min_length=1)


class ResolvedStage:
    """A configured stage with its declaration and validated params.

    ``files`` are a source's expanded inputs, ``schema`` its output schema read at
    plan time; ``datasets`` are the URIs of an ``input: {dataset: ...}``."""

    def __init__(
        self,
        cfg: StageConfig,
        stage: Stage[Any],
        params: Any,
        engine: str,
        files: list[str],
        schema: pa.Schema | None = None,
        datasets: list[str] | None = None,
        steps: Any = None,
    ):
        self.cfg = cfg
        self.steps = steps  # ChainParams of the map steps fused after a source or map stage
        self.stage = stage
        self.params = params
        self.engine = engine
        self.files = files
        self.schema = schema
        self.datasets = datasets or []

    @property
    def name(self) -> str:
        return self.cfg.name


class Plan:
    """A validated run: config plus resolved stages in topological order."""

    def __init__(self, path: str, config: RunConfig, stages: list[ResolvedStage]):
        self.path = path
        self.config = config
        self.stages = stages

    @property
    def s3(self) -> S3Options:
        return self.config.storage.s3.options()

    @property
    def run_uri(self) -> str:
        return self.config.storage.root.rstrip("/") + "/" + self.config.name

    def engines_needed(self) -> set[str]:
        return {s.engine for s in self.stages}


def load_plan(path: str | Path) -> Plan:
    """Read, expand, validate and resolve a run config; raise ConfigError with one line."""
    path = str(path)
    data = read_yaml(path)
    cfg = validate_mapping(RunConfig, data, path, "name, storage, stages")
    return Plan(path, cfg, _resolve_stages(path, cfg, data))


def _resolve_stages(path: str, cfg: RunConfig, data: dict[str, Any]) -> list[ResolvedStage]:
    seen: dict[str, ResolvedStage] = {}
    out: list[ResolvedStage] = []
    s3 = cfg.storage.s3.options()
    for sc in cfg.stages:
        key = f"stages[{sc.name}]"
        if sc.name in seen:
            raise ConfigError(f"{path}: {key}.name: stage names must be unique")
        steps = None
        if sc.uses == "chain":
            stage, params = _resolve_chain(path, key, sc.steps or [])
        else:
            stage, params = _resolve_one(path, key, sc.uses, sc.params)
            if sc.steps is not None:
                if isinstance(stage, PartitionStage) or not isinstance(stage, (SourceStage, MapStage)):
                    raise ConfigError(f"{path}: {key}.steps: map steps fuse after a source or map stage, not after {stage.kind} stage {sc.uses}")
                _, steps = _resolve_chain(path, key, sc.steps)
        engine = sc.engine or stage.engine
        if isinstance(stage, GlobalStage) and engine not in stage.supported_engines():
            raise ConfigError(
                f"{path}: {key}.engine: {stage.name} runs on {', '.join(stage.supported_engines())}, not {engine!r}"
            )
        files: list[str] = []
        schema = None  # the stage's output schema as far as the plan knows it
        input_schema: pa.Schema | None = None
        for art_name, dep in sc.artifacts.items():
            if dep not in seen:
                raise ConfigError(f"{path}: {key}.artifacts.{art_name}: {dep!r} is not an earlier stage of this run")
        if isinstance(stage, SourceStage) and stage.reads_files:
            if not isinstance(sc.input, FilesInput):
                raise ConfigError(f"{path}: {key}.input: {stage.name} reads files; expected {{files: [glob, ...]}}")
            files = _expand_files(path, key, sc.input.files, s3, stage.reads_dirs)
            try:
                schema = stage.source_schema(files, s3, params)
            except ValueError as exc:
                raise ConfigError(f"{path}: {key}.params: {' '.join(str(exc).split())}") from None
            except OSError as exc:
                raise ConfigError(f"{path}: {key}.input.files: cannot read the input's schema ({' '.join(str(exc).split())[:300]})") from None
        elif isinstance(sc.input, DatasetInput):
            from arcforge.runtime.external import resolve_dataset_inputs

            try:
                input_schema = resolve_dataset_inputs(sc.input.uris(), s3).schema
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{path}: {key}.input.dataset: {' '.join(str(exc).split())[:400]}") from None
        else:
            if isinstance(sc.input, FilesInput):
                raise ConfigError(f"{path}: {key}.input: {stage.name} reads datasets; expected a stage name, a list, or {{dataset: URI}}")
            for dep in sc.input_stages():
                if dep not in seen:
                    later = any(s.name == dep for s in cfg.stages)
                    why = "must be declared before it" if later else "is not a stage of this run"
                    raise ConfigError(f"{path}: {key}.input: {dep!r} {why}")
        datasets = sc.input.uris() if isinstance(sc.input, DatasetInput) else []
        if not isinstance(sc.input, (FilesInput, DatasetInput)):
            input_schema = _planned_input(sc.input_stages(), seen)
        if schema is None and input_schema is not None and not isinstance(stage, ArtifactStage):
            if sc.uses == "chain":
                _check_chain_reads(path, key, params, input_schema)
            else:
                _check_reads(path, key, sc.uses, stage, params, input_schema)
            try:  # params that only the input's schema can check (a keep rule's column types)
                schema = stage.schema_for(params, input_schema)
            except ValueError as exc:
                raise ConfigError(f"{path}: {key}.params: {' '.join(str(exc).split())[:400]}") from None
        if steps is not None and schema is not None:
            _check_chain_reads(path, key, steps, schema)
            schema = CHAIN.schema_for(steps, schema)
        _check_checks(path, key, sc)
        rs = ResolvedStage(sc, stage, params, engine, files, schema, datasets, steps)
        seen[sc.name] = rs
        out.append(rs)
    assert all(e in ENGINES for e in (s.engine for s in out))
    return out


def _check_checks(path: str, key: str, sc: StageConfig) -> None:
    """Checks that cannot hold for this stage, whatever its data: one line now, not a red asset later."""
    for check in sc.checks:
        where = f"{path}: {key}.checks[{check.check_name}].metric"
        if check.metric.startswith("bucket") and sc.uses != "quality.buckets":
            raise ConfigError(f"{where}: {check.metric} needs a quality.buckets stage, not {sc.uses}")


def _find_stage(path: str, key: str, uses: str) -> Stage[Any]:
    try:
        return resolve_stage(uses)
    except (KeyError, ImportError, AttributeError, TypeError):
        from arcforge.runtime.stage import registered_names

        raise ConfigError(
            f"{path}: {key}.uses: unknown stage {uses!r}; expected one of {', '.join(registered_names())} "
            "or an import path 'package.module:stage'"
        ) from None


def _resolve_one(path: str, key: str, uses: str, raw: dict[str, Any], kind: type | None = None) -> tuple[Stage[Any], Any]:
    """A stage by name or import path, and its params validated: errors name the key."""
    stage = _find_stage(path, key, uses)
    if kind is not None and (not isinstance(stage, kind) or isinstance(stage, ChainStage)):
        raise ConfigError(f"{path}: {key}.uses: {uses} is a {stage.kind} stage; a chain's steps must be map stages")
    try:
        params = stage.params.model_validate(raw)
    except ValidationError as exc:
        raise first_error(path, exc, raw, prefix=f"{key}.params") from None
    return stage, params


def _resolve_chain(path: str, key: str, steps: list[StepConfig]) -> tuple[Stage[Any], Any]:
    """Each step resolved and validated on its own key, then the plan's chain stage."""
    specs, resolved = [], []
    for sc in steps:
        name = sc.name or sc.uses
        step_key = f"{key}.steps[{name}]"
        stage, params = _resolve_one(path, step_key, sc.uses, sc.params, kind=MapStage)
        spec = StepSpec(name=name, uses=sc.uses, params=params.model_dump(mode="json"), version=stage.version)
        specs.append(spec)
        resolved.append(Step(spec))
    return ChainStage.configured(resolved), ChainParams(steps=specs)


def _check_chain_reads(path: str, key: str, params: Any, schema: pa.Schema) -> None:
    """Each step reads what the input or an earlier step gives it."""
    for step in resolve_steps(params):
        _check_reads(path, f"{key}.steps[{step.name}]", step.stage.name, step.stage, step.params, schema)
        schema = step.output_schema(schema)  # from the step's params: a scorer's quality_<name>


def _planned_input(deps: list[str], seen: dict[str, ResolvedStage]) -> pa.Schema | None:
    """The union of the planned output schemas of a stage's input stages (None if unknown)."""
    schemas = [seen[d].schema for d in deps if d in seen]
    if not schemas or any(sch is None for sch in schemas):
        return None
    try:
        return pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _check_reads(path: str, key: str, uses: str, stage: Stage[Any], params: Any, schema: pa.Schema) -> None:
    """A column a stage reads (a filter's rule, a scorer's text) must exist upstream."""
    wanted = stage.required_columns(params) if hasattr(stage, "required_columns") else []
    missing = [c for c in dict.fromkeys(wanted) if c not in schema.names]
    if missing:
        raise ConfigError(
            f"{path}: {key}: {uses} reads column(s) {missing}, which no upstream stage declares "
            f"(its input has: {', '.join(schema.names)})"
        )


def _expand_files(path: str, key: str, patterns: list[str], s3: S3Options, dirs: bool) -> list[str]:
    try:
        files = expand_inputs(patterns, s3, dirs=dirs)
    except OSError as exc:
        raise ConfigError(f"{path}: {key}.input.files: cannot list {patterns} ({' '.join(str(exc).split())[:300]})") from None
    if not files:
        hint = " (run `arcforge corpus` to fetch the demo corpus)" if "demo-corpus" in str(patterns) else ""
        raise ConfigError(f"{path}: {key}.input.files: no file matches {patterns}{hint}")
    return files
