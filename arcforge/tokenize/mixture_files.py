"""What ``arcforge mix`` writes from a planned mixture (``mixture.load_mixture``): every
stage's ``<stage>.blend.json`` and ``<stage>.per-split.json``, ``mixture.json`` and the
``mixture.md`` tables, a pointer to each blend in the runs it draws from; and a written
blend read back (``load_blend``) for training. See ``arcforge.tokenize.mixture``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from arcforge.runtime import storage
from arcforge.tokenize import lineage

if TYPE_CHECKING:
    from arcforge.tokenize.mixture import MixturePlan, StagePlan


def fmt_tokens(n: float) -> str:
    """A token count as people read it: 1.5B, 320M, 12K."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def stage_blend(st: StagePlan, plan: MixturePlan | None = None) -> dict[str, Any]:
    """A stage's ``<stage>.blend.json``; with its plan, the lineage it was mixed from too."""
    prefixes, weights = st.blend
    out = {
        "stage": st.name,
        "seq_length": st.seq_length,
        "tokens": st.tokens,
        "train_samples": st.train_samples,
        "split": st.split,
        "max_epochs": st.max_epochs,
        "data_path": st.data_path,
        "blend": [prefixes, weights],
        "sources": st.table(),
    }
    if plan is not None and plan.datasets:
        out["lineage"] = plan.lineage(st)
    return out


def markdown(plan: MixturePlan) -> str:
    lines = [f"# mixture {plan.name}", ""]
    for st in plan.stages:
        lines += [
            f"## {st.name}: {fmt_tokens(st.tokens)} tokens at seq_length {st.seq_length} "
            f"({st.train_samples:,} samples), cap {st.max_epochs:g} epochs",
            "",
            "| source | bucket | asked | available tokens | tokens | share | epochs |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in st.table():
            lines.append(
                f"| {r['source']} | {r['bucket'] or '-'} | {r['asked']} | {r['available_tokens']:,} "
                f"| {r['tokens']:,} | {r['share']:.1%} | {r['epochs']:.2f} |"
            )
        lines.append("")
    lines += ["## all stages", "", "| source | bucket | tokens | epochs | by stage |", "|---|---|---|---|---|"]
    for r in plan.totals():
        by = ", ".join(f"{k} {v:.2f}" for k, v in r["by_stage"].items())
        lines.append(f"| {r['source']} | {r['bucket'] or '-'} | {r['tokens']:,} | {r['epochs']:.2f} | {by} |")
    for split, h in plan.held_out.items():
        lines += ["", f"{split} (per-split.json): {h['tokens']:,} tokens, {h['documents']:,} documents of {', '.join(h['shards'])}"]
    if not plan.held_out:
        lines += ["", "valid, test (per-split.json): the training blend of each stage (no held-out shards named)"]
    return "\n".join(lines) + "\n"


def write_mixture(plan: MixturePlan, output: str | None = None) -> list[str]:
    """Write every stage's blend files, ``mixture.json`` and ``mixture.md``; return their URIs."""
    out = output or plan.output
    fs, base = storage.filesystem(out)
    written = []

    def put(name: str, data: bytes) -> None:
        storage.write_bytes_atomic(fs, storage.join(base, name), data)
        written.append(storage.join(out, name))

    summary = {"name": plan.name, "config": plan.path, "stages": [], "totals": plan.totals(),
               "held_out": {k: {f: v[f] for f in ("shards", "tokens", "documents")} for k, v in plan.held_out.items()}}
    if plan.datasets:
        summary["lineage"] = plan.lineage()
    blends = []
    for st in plan.stages:
        blend = stage_blend(st, plan)
        summary["stages"].append(blend)
        put(f"{st.name}.blend.json", json.dumps(blend, indent=1).encode())
        blends.append((st, written[-1], blend.get("lineage")))
        per_split = {"train": st.data_path, **{k: plan.held_out[k]["data_path"] if k in plan.held_out else st.data_path
                                               for k in ("valid", "test")}}
        put(f"{st.name}.per-split.json", json.dumps(per_split, indent=1).encode())
    put("mixture.json", json.dumps(summary, indent=1).encode())
    put("mixture.md", markdown(plan).encode())
    for st, uri, lin in blends:  # a pointer in each run the blend draws from, for `arcforge status`
        drawn = (lin or {}).get("shards", []) + (lin or {}).get("held_out", [])
        for run in sorted({ds["run"] for ds in drawn if ds.get("run")}):
            try:
                plan.registered.append(lineage.register_blend(run, uri, plan.mixture, st.name))
            except OSError as exc:
                plan.warnings.append(f"could not record {uri} in {run} ({' '.join(str(exc).split())[:200]})")
    return written


def load_blend(path: str) -> tuple[list[str], list[float]]:
    """The ``blend`` of a written ``<stage>.blend.json`` as Megatron's config wants it."""
    fs, p = storage.filesystem(path)
    prefixes, weights = storage.read_json(fs, p)["blend"]
    return list(prefixes), [float(w) for w in weights]
