"""Fused chains: several map steps in one task, one committed dataset.

Ten cheap heuristic filters and a scorer, each its own stage, would write ten
copies of the corpus. A chain runs them back to back on every batch in one task
and writes the text once: the rows that survive every step, plus each step's
rejects, whose ``step`` column names the step that dropped them.

    - name: quality
      input: dedup
      steps:
        - {name: length, uses: filter, params: {rules: [{column: n_chars, op: ">=", value: 200}]}}
        - {name: langid, uses: web.langid}
        - {name: english, uses: filter, params: {rules: [{column: language, op: in, value: [en]}]}}

Each step is an ordinary map stage: it declares what it reads and adds, is
unit-tested alone, and keeps its own counters (``steps.<name>.docs_in``,
``steps.<name>.dropped.<reason>``, ...). A step that raises on a batch is
retried row by row, so one bad row is quarantined by that step alone. The
chain's fingerprint covers every step's params and version: changing any step
re-runs the chain. Keep an expensive scorer in a stage of its own when its
thresholds change often; a chain suits the cheap steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa
from pydantic import Field

from arcforge.runtime.documents import DOC_SCHEMA, check_columns, conform, rejected_schema
from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, Stats, TaskContext, resolve_stage


class StepSpec(StageParams):
    """One step as the workers see it: the resolver fills ``version`` from the stage."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    uses: str
    params: dict[str, Any] = Field(default_factory=dict)
    version: str = "1"


class ChainParams(StageParams):
    steps: list[StepSpec] = Field(min_length=1)


class Step:
    """A resolved step: its map stage and validated params."""

    def __init__(self, spec: StepSpec) -> None:
        stage = resolve_stage(spec.uses)
        if not isinstance(stage, MapStage) or isinstance(stage, ChainStage):
            raise TypeError(f"step {spec.name}: {spec.uses} is a {stage.kind} stage; a chain's steps must be map stages")
        self.name = spec.name
        self.stage: MapStage[Any] = stage
        self.params = stage.params.model_validate(spec.params)

    def output_schema(self, schema: pa.Schema | None) -> pa.Schema:
        """What the step returns for this input, from its params (a scorer's ``quality_<name>``)."""
        return self.stage.schema_for(self.params, schema)

    def added(self, schema: pa.Schema) -> list[str]:
        """The columns the step must return: its fixed ``adds`` and the new ones its params name."""
        fixed = [f.name for f in self.stage.adds]
        return list(dict.fromkeys([*fixed, *(n for n in self.output_schema(schema).names if n not in schema.names)]))

    def resources(self) -> Resources:
        return self.stage.resources_for(self.params)


def resolve_steps(params: ChainParams) -> list[Step]:
    return [Step(spec) for spec in params.steps]


def chain_setup(params: ChainParams, artifacts: dict[str, str]) -> dict[str, Any]:
    """The resolved steps and each step's own setup result (a loaded model), by step name.

    This is the chain's ``setup``: the runtime caches it per worker process (keyed by the
    chain's params and artifacts, ``tasks.worker_state``), so every step's model loads
    once per worker however many partitions and batches the worker runs."""
    steps = resolve_steps(params)
    return {"steps": steps, "states": {s.name: s.stage.setup(s.params, artifacts) if s.stage.setup else None for s in steps}}


def most_resources(resources: list[Resources]) -> Resources:
    """What a task that runs all of these needs: the most CPUs and the most GPUs of any."""
    return Resources(cpus=max(r.cpus for r in resources), gpus=max(r.gpus for r in resources))


def task_resources(stage: Any, params: dict[str, Any], steps: dict[str, Any] | None = None) -> Resources:
    """What one task of a configured stage needs, from its params (JSON, as a task carries
    them) and those of the steps fused after it: what the engines reserve per task."""
    own = stage.resources_for(stage.params.model_validate(params))
    if not steps:
        return own
    return most_resources([own, *(s.resources() for s in resolve_steps(ChainParams.model_validate(steps)))])


def apply_fn(stage: MapStage[Any], batch: pa.RecordBatch | pa.Table, params: StageParams, ctx: TaskContext) -> Iterator[Output]:
    """A map stage's function on one batch; a batch that raises is retried row by row
    so one bad record is quarantined with its error instead of failing the partition."""
    from arcforge.runtime.tasks import quarantine  # the runtime's one quarantine rule

    try:
        yield stage.fn(batch, params, ctx)
    except Exception:
        for i in range(batch.num_rows):
            row = batch.slice(i, 1)
            try:
                yield stage.fn(row, params, ctx)
            except Exception as exc:  # noqa: BLE001 - quarantine, whatever the error
                yield quarantine(row, exc, ctx)


def _tag(rejected: pa.Table, step: str) -> pa.Table:
    values = pa.array([step] * rejected.num_rows, pa.string())
    idx = rejected.schema.get_field_index("step")
    return rejected.set_column(idx, "step", values) if idx >= 0 else rejected.append_column("step", values)


def run_chain(batch: pa.RecordBatch | pa.Table, params: ChainParams, ctx: TaskContext) -> Output:
    """Every step in order over the rows the previous steps kept."""
    # the worker's cached setup; called on its own (a test, a notebook), the chain sets itself up
    state = ctx.state if isinstance(ctx.state, dict) and "steps" in ctx.state else chain_setup(params, ctx.artifacts)
    steps, states = state["steps"], state["states"]
    current: pa.Table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    rejects: list[pa.Table] = []
    for step in steps:
        if current.num_rows == 0:  # every row dropped: the later steps see nothing
            break
        stats = Stats()
        sctx = replace(ctx, state=states.get(step.name), stats=stats, first_error=None)  # errors and files stay shared
        stats.update("docs_in", current.num_rows)
        expected = step.output_schema(current.schema)
        declared = step.added(current.schema)
        kept_parts = []
        batches = current.combine_chunks().to_batches()  # one batch: map functions take a RecordBatch
        for out in apply_fn(step.stage, batches[0], step.params, sctx):
            kept = out.kept if isinstance(out.kept, pa.Table) else pa.Table.from_batches([out.kept])
            if kept.num_rows:
                check_columns(kept, expected, f"chain step {step.name} ({step.stage.name})", declared)
                kept_parts.append(conform(kept, expected))
            if out.rejected is not None and out.rejected.num_rows:
                rejects.append(_tag(out.rejected, step.name))
                for reason, count in _reason_counts(out.rejected).items():
                    stats.update("dropped", count)
                    stats.update(f"dropped.{reason}", count)
        current = pa.concat_tables(kept_parts) if kept_parts else expected.empty_table()
        stats.update("docs_out", current.num_rows)
        for key, value in stats.counters.items():
            ctx.stats.update(f"steps.{step.name}.{key}", value)
        if "quarantined" in stats.counters:
            ctx.stats.update("quarantined", stats.counters["quarantined"])
        if sctx.first_error is not None and ctx.first_error is None:
            ctx.first_error = {**sctx.first_error, "step": step.name, "step_uses": step.stage.name}
    if not rejects:
        return Output(kept=current)
    rej_schema = rejected_schema(current.schema)
    return Output(kept=current, rejected=pa.concat_tables([conform(r, rej_schema) for r in rejects]))


def _reason_counts(rejected: pa.Table) -> dict[str, int]:
    rows = rejected.group_by("reason").aggregate([("reason", "count")]).to_pylist()
    return {r["reason"]: r["reason_count"] for r in rows}


class ChainStage(MapStage[ChainParams]):
    """The map stage that runs a chain's steps; its schema depends on the steps."""

    def __init__(self, resources: Resources = Resources(cpus=1), engine: str = "local") -> None:
        super().__init__(
            "chain",
            ChainParams,
            run_chain,
            requires=(),
            setup=chain_setup,
            reads=self._reads,
            resources=resources,
            engine=engine,
            doc="Several map steps fused in one task: the text is written once.",
        )

    @staticmethod
    def _reads(params: ChainParams) -> list[str]:
        """What the chain reads from its input: each step's columns not added by an earlier step
        (what a step adds comes from its params: ``schema_for``)."""
        added: set[str] = set()
        reads: list[str] = []
        for step in resolve_steps(params):
            reads += [c for c in step.stage.required_columns(step.params) if c not in added]
            added |= set(step.added(DOC_SCHEMA))
        return reads

    def schema_for(self, params: ChainParams, input_schema: pa.Schema | None) -> pa.Schema:
        """Each step's ``schema_for(params, schema)`` in turn: a step's added columns may
        depend on its params (``quality.fasttext``'s ``quality_<name>``)."""
        schema = input_schema
        for step in resolve_steps(params):
            schema = step.output_schema(schema)
        assert schema is not None
        return schema

    def resources_for(self, params: ChainParams) -> Resources:
        """The most any step needs, each step's from its own params (``resources_for``)."""
        return most_resources([s.resources() for s in resolve_steps(params)])

    @classmethod
    def configured(cls, steps: list[Step]) -> ChainStage:
        """The plan's instance: resources are the most any step needs, the engine the first step's."""
        return cls(most_resources([s.resources() for s in steps]), steps[0].stage.engine)


CHAIN = ChainStage()
