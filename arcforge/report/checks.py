"""Evaluate the data-quality checks of a run's stages against what the runtime counted.

Every metric is read from what a committed stage already holds: the manifest's counters
(``docs_in``, ``dropped.<reason>``, ``quarantined``, ``buckets.docs.<i>``) and, for the
language mix, the ``language`` column of its output (one column read, no text). The
same function serves Dagster's asset checks, ``arcforge status`` and the HTML report,
so the three never disagree. A check on a stage that is not committed is not failed
but *not evaluated* (``passed`` is None): there is nothing to judge yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from arcforge.runtime import dataset, storage
from arcforge.runtime.checkspec import CheckConfig
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import RUN_FILE


@dataclass
class CheckOutcome:
    stage: str
    name: str
    metric: str
    blocking: bool
    passed: bool | None  # None: the stage is not committed, nothing to evaluate
    value: float | None
    expected: str  # the band, e.g. "0 <= drop_share <= 0.3"
    description: str  # one line a person reads: the value, what it measures, why it failed


def language_counts(ref: DatasetRef, column: str = "language") -> dict[str, int]:
    """Documents per language of a committed stage's output ({} without such a column), most
    frequent first; a null language counts as ``unknown``."""
    manifest = dataset.read_manifest(ref)
    if manifest is None or not manifest.get("schema_ipc"):
        return {}
    if column not in dataset.schema_from_b64(manifest["schema_ipc"]).names:
        return {}
    table = dataset.read_dataset(ref, [column])
    if table.num_rows == 0:
        return {}
    counts = {("unknown" if c["values"] is None else str(c["values"])): int(c["counts"])
              for c in pc.value_counts(table.column(column)).to_pylist()}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _bucket_docs(stats: dict[str, Any]) -> dict[int, int]:
    return {int(k.rsplit(".", 1)[1]): int(v) for k, v in stats.items() if k.startswith("buckets.docs.")}


def metric_value(check: CheckConfig, manifest: dict[str, Any], ref: DatasetRef) -> tuple[float | None, str]:
    """The metric's value for a committed stage, and a few words on what it was computed from."""
    stats = manifest.get("stats", {})
    docs_in = int(stats.get("docs_in", 0))
    if check.metric == "drop_share":
        dropped = stats.get(f"dropped.{check.reason}", 0) if check.reason else stats.get("dropped", 0)
        what = f"dropped as {check.reason}" if check.reason else "dropped"
        return (dropped / docs_in if docs_in else None), f"{int(dropped):,} of {docs_in:,} documents {what}"
    if check.metric == "error_share":
        errors = int(stats.get("quarantined", 0))
        return (errors / docs_in if docs_in else None), f"{errors:,} of {docs_in:,} rows quarantined"
    if check.metric == "docs_out":
        out = int(stats.get("docs_out", manifest.get("rows", 0)))
        return float(out), f"{out:,} documents kept"
    if check.metric == "language_distance":
        counts = language_counts(ref)
        total = sum(counts.values())
        if not total:
            return None, "no documents with a language"
        ref_total = sum(check.reference.values()) or 1.0
        langs = set(counts) | set(check.reference)
        tvd = 0.5 * sum(abs(counts.get(lg, 0) / total - check.reference.get(lg, 0) / ref_total) for lg in langs)
        top = ", ".join(f"{lg} {n / total:.0%}" for lg, n in list(counts.items())[:4])
        return tvd, f"languages {top}"
    docs = _bucket_docs(stats)
    total = sum(docs.values())
    if not total:
        return None, "no bucket counts in the manifest"
    if check.metric == "bucket_max_share":
        bucket, most = max(docs.items(), key=lambda kv: (kv[1], -kv[0]))
        return most / total, f"bucket {bucket} holds {most:,} of {total:,} documents"
    nonempty = sum(1 for n in docs.values() if n)
    return float(nonempty), f"{nonempty} of {len(docs)} buckets hold documents"


def evaluate(check: CheckConfig, stage: str, ref: DatasetRef, manifest: dict[str, Any] | None = None) -> CheckOutcome:
    """One check against one stage; ``manifest`` defaults to the stage's committed one."""
    manifest = manifest if manifest is not None else dataset.read_manifest(ref)
    base = dict(stage=stage, name=check.check_name, metric=check.metric, blocking=check.blocking, expected=check.band())
    if manifest is None:
        return CheckOutcome(**base, passed=None, value=None, description=f"{stage} is not committed: not evaluated")
    value, detail = metric_value(check, manifest, ref)
    if value is None:
        return CheckOutcome(**base, passed=False, value=None, description=f"no value ({detail}); expected {check.band()}")
    ok = (check.min is None or value >= check.min) and (check.max is None or value <= check.max)
    verdict = "within" if ok else "outside"
    return CheckOutcome(**base, passed=ok, value=value,
                        description=f"{check.metric} {value:.4g} ({detail}): {verdict} {check.band()}")


def evaluate_run(run_dir: str) -> list[CheckOutcome]:
    """Every check recorded in the run's ``_run.json`` (the config of its last run), in stage order."""
    run = DatasetRef(run_dir.rstrip("/"))
    fs, base = run.fs()
    run_file = storage.join(base, RUN_FILE)
    if not storage.exists(fs, run_file):
        return []
    info = storage.read_json(fs, run_file)
    out = []
    for st in info.get("stages", []):
        for raw in st.get("checks") or []:
            out.append(evaluate(CheckConfig.model_validate(raw), st["name"], run.child(st["name"])))
    return out


def status_lines(run_dir: str, outcomes: list[CheckOutcome] | None = None) -> list[str]:
    """``arcforge status``'s view of the checks (``outcomes``: ``evaluate_run``'s, if already
    computed): one line each, failures first."""
    outcomes = evaluate_run(run_dir) if outcomes is None else outcomes
    if not outcomes:
        return []
    mark = {True: "pass", False: "FAIL", None: "wait"}
    order = {False: 0, None: 1, True: 2}
    lines = [f"checks: {sum(o.passed is True for o in outcomes)} passed, {sum(o.passed is False for o in outcomes)} failed, "
             f"{sum(o.passed is None for o in outcomes)} not evaluated"]
    for o in sorted(outcomes, key=lambda o: order[o.passed]):
        kind = "" if o.blocking else " (warning only)"
        lines.append(f"  {mark[o.passed]} {o.stage}.{o.name}{kind}: {o.description}")
    return lines
