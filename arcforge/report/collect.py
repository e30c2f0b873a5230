"""Everything the report shows, gathered from a run directory into one JSON-able dict.

The dict is what ``report.json`` holds and what ``html.py`` renders, so the HTML never reads
the run itself and a script can check the same numbers the page shows. It is built from the
run's committed files through the modules that own them (manifests and ``_stats.json`` via
``runtime``, stage states via ``tokenize.staleness``, tokens via ``tokenize.funnel``, blends
via ``run_blends``, dedup clusters via ``dedup.clusters``) rather than re-parsing them here.

Nothing in it depends on when the report is made (no timestamps): the same run gives the
same ``report.json``, byte for byte. A stage that is not committed, or whose numbers cannot
be read, is shown with its state and a note in ``warnings`` instead of failing the report;
only a missing or non-arcforge run directory is an error (``RunDirError``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from typing import Any

import pyarrow.parquet as pq

from arcforge.report.checks import evaluate_run, language_counts
from arcforge.runtime import dataset, storage
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.distribution import read_stats
from arcforge.runtime.versions import package_versions

FORMAT = "arcforge.report/1"
SAMPLE_CHARS = 500  # text shown per sample document
SAMPLE_LINES = 6
KEPT_SAMPLES = 5
REJECTED_SAMPLES = 3  # per reason (``_stats.json`` keeps 10)
CLUSTERS = 3
CONFIG_CHARS = 20_000
PACKAGES = ["arcforge", "pyarrow", "numpy", "pyspark", "ray", "torch", "megatron-core", "dagster", "fasttext",
            "fasttext-wheel", "sentence-transformers", "datasketch", "sentencepiece", "trafilatura", "pydantic"]
_STD_STATS = {"docs_in", "docs_out", "bytes_in", "bytes_out", "dropped", "seconds", "quarantined"}


class RunDirError(ValueError):
    """The path is not a readable arcforge run directory (missing, or no ``_run.json``)."""


def cut_text(text: str | None, chars: int = SAMPLE_CHARS, lines: int = SAMPLE_LINES) -> tuple[str, bool]:
    """The first ``lines`` non-blank lines, at most ``chars`` characters; and whether it was cut."""
    text = text or ""
    kept = [ln for ln in text[: chars * 4].splitlines() if ln.strip()][:lines]
    out = "\n".join(kept)
    out = out[:chars]
    return out, len(out) < len(text.strip())


def _sample(row: dict[str, Any]) -> dict[str, Any]:
    text, cut = cut_text(row.get("text"))
    full = row.get("text_chars")
    out = {"id": row.get("id"), "url": row.get("url"), "text": text, "cut": cut or bool(full and full > len(text)),
           "text_chars": full if full is not None else len(row.get("text") or "")}
    for k in ("detail", "step", "language"):
        if row.get(k) is not None:
            out[k] = str(row[k])[:300]
    return out


def _schema_names(m: dict[str, Any]) -> list[str]:
    try:
        return [f.name for f in dataset.schema_from_b64(m["schema_ipc"])] if m.get("schema_ipc") else []
    except Exception:  # noqa: BLE001 - an unreadable schema only hides the stage's columns
        return []


def _checks(run_dir: str, warnings: list[str]) -> list[dict[str, Any]]:
    try:
        return [dataclasses.asdict(c) for c in evaluate_run(run_dir)]
    except Exception as exc:  # noqa: BLE001 - a failing check module must not hide the report
        warnings.append(f"checks could not be evaluated: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return []


def _stage_states(run_dir: str, info: dict[str, Any], warnings: list[str]) -> tuple[dict[str, tuple[str, str]], str | None]:
    """name -> (state, reason) from ``check_run``; by manifest presence if that fails."""
    try:
        from arcforge.tokenize.staleness import check_run

        states, note = check_run(run_dir)
        return {s.name: (s.state, s.reason) for s in states}, note
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"stage states not checked: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        out = {}
        for st in info.get("stages", []):
            ref = DatasetRef(storage.join(run_dir, st["name"]))
            out[st["name"]] = ("committed", "") if dataset.read_manifest(ref) else ("not run", "")
        return out, None


def _rules(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Filter rules of a ``filter`` stage, or of the ``filter`` steps of a chain."""
    rules = list(params.get("rules") or [])
    for step in params.get("steps") or []:
        if isinstance(step, dict) and step.get("uses") == "filter":
            rules += list((step.get("params") or {}).get("rules") or [])
    return [r for r in rules if isinstance(r, dict)]


def _cutoffs(stats: dict[str, Any], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A buckets stage's cut-offs per score from its stats: ``values`` ``[[bucket, lowest score]]``,
    or, with ``group_by``, ``groups`` (each ``group``, ``docs``, ``values``; most documents first)."""
    group_by = params.get("group_by")
    if isinstance(group_by, list):  # several columns: a group is their values joined by "|"
        group_by = "|".join(group_by)
    out: dict[str, dict[str, Any]] = {}
    for k, v in sorted(stats.items()):
        if not (mm := re.fullmatch(r"buckets\.cutoff\.(.+)\.(\d+)", k)):
            continue
        score, group = mm.group(1), None
        if group_by:  # <score>.<group>: the score is one the stage names (a group may hold dots)
            score = max((s for s in params.get("scores") or [] if mm.group(1).startswith(f"{s}.")), key=len, default=None)
            if score is None:
                continue
            group = mm.group(1)[len(score) + 1:]
        cut = out.setdefault(score, {"values": [], "group_by": group_by, "groups": []})
        if group is None:
            cut["values"].append([int(mm.group(2)), v])
            continue
        g = next((g for g in cut["groups"] if g["group"] == group), None)
        if g is None:
            g = {"group": group, "docs": stats.get(f"buckets.group_docs.{group}"), "values": []}
            cut["groups"].append(g)
        g["values"].append([int(mm.group(2)), v])
    for cut in out.values():
        cut["groups"].sort(key=lambda g: (-(g["docs"] or 0), g["group"]))
    return out


def _funnel_tokens(run_dir: str, warnings: list[str]) -> tuple[dict[str, Any], str | None, str | None]:
    """Tokens per stage and per drop reason from ``tokenize.funnel`` (it needs a committed
    tokenizer stage): (rows by stage, tokenizer stage, why tokens are missing)."""
    try:
        from arcforge.tokenize.funnel import funnel

        rows, _, tok = funnel(run_dir)
    except ValueError:
        return {}, None, "no committed tokenizer stage in this run: tokens are not counted"
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"tokens not counted: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return {}, None, "tokens could not be counted (see warnings)"
    return {r.name: r for r in rows}, tok, None


def _first_lines(ref: DatasetRef, m: dict[str, Any], ids: list[str]) -> dict[str, str]:
    """Text of the given ids in a committed dataset, read part by part with a filter."""
    fs, base = ref.fs()
    out: dict[str, str] = {}
    for p in m.get("parts", []):
        if len(out) == len(ids):
            break
        with fs.open_input_file(storage.join(base, p["name"])) as fh:
            t = pq.read_table(fh, columns=["id", "text"], filters=[("id", "in", ids)])
        out.update({str(i): tx for i, tx in zip(t.column("id").to_pylist(), t.column("text").to_pylist())})
    return out


def _dedup(ref: DatasetRef, name: str, uses: str, m: dict[str, Any]) -> dict[str, Any]:
    from arcforge.dedup.clusters import duplicate_groups, first_line, size_distribution

    stats = m.get("stats", {})
    rej_m = dataset.read_manifest(ref.rejected)
    groups = duplicate_groups(dataset.read_dataset(ref.rejected)) if rej_m and rej_m.get("rows") else {}
    largest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:CLUSTERS]
    keepers = _first_lines(ref, m, [k for k, _ in largest]) if largest else {}
    clusters = [{"size": len(members) + 1, "reason": members[0].get("reason"), "keeper": k,
                 "keeper_line": first_line(keepers.get(k), 160),
                 "removed": [{"id": r.get("id"), "line": first_line(r.get("text"), 160)} for r in members[:5]]}
                for k, members in largest]
    counters = {k: v for k, v in sorted(stats.items()) if k not in _STD_STATS and not k.startswith("dropped.")
                and "cluster_size." not in k}
    return {"stage": name, "uses": uses, "docs_in": stats.get("docs_in"), "dropped": int(stats.get("dropped", 0)),
            "sizes": [[s, n] for s, n in size_distribution(stats, groups)], "clusters": clusters, "counters": counters}


def _blends(run_dir: str, warnings: list[str]) -> list[dict[str, Any]]:
    try:
        from arcforge.tokenize.staleness import run_blends

        found, _ = run_blends(run_dir)
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"blends not read: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return []
    out = []
    for check, data in found:
        if not isinstance(data, dict):
            continue
        rows = [{k: r.get(k) for k in ("source", "bucket", "range", "dropped", "tokens", "available_tokens", "epochs")}
                for r in data.get("sources") or [] if isinstance(r, dict)]
        out.append({"stage": data.get("stage"), "path": check.path, "state": check.state, "tokens": data.get("tokens"),
                    "seq_length": data.get("seq_length"), "sources": rows})
    return sorted(out, key=lambda b: (str(b["stage"]), b["path"]))


def _packages() -> dict[str, str | None]:
    return package_versions(PACKAGES)


def _config(path: str | None) -> dict[str, Any]:
    if not path:
        return {"path": None, "text": None, "note": "_run.json names no config"}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(CONFIG_CHARS + 1)
    except OSError as exc:
        return {"path": path, "text": None, "note": f"not readable here ({type(exc).__name__})"}
    return {"path": path, "text": text[:CONFIG_CHARS], "note": "cut" if len(text) > CONFIG_CHARS else None}


def _open_run(run_dir: str) -> tuple[str, dict[str, Any]]:
    from arcforge.tokenize.lineage import read_run_file

    run = run_dir if storage.is_s3(run_dir) else os.path.abspath(run_dir)
    if not storage.is_s3(run) and not os.path.isdir(run):
        raise RunDirError(f"{run_dir}: no such run directory")
    try:
        info = read_run_file(run)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_dir}: cannot read _run.json ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(info, dict) or not isinstance(info.get("stages"), list):
        raise RunDirError(f"{run_dir}: not an arcforge run directory (no _run.json; give the folder `arcforge run` wrote)")
    return run.rstrip("/"), info


def collect(run_dir: str) -> dict[str, Any]:
    """The report dict of one run (see docs/report.md for every key)."""
    run, info = _open_run(run_dir)
    warnings: list[str] = []
    states, note = _stage_states(run, info, warnings)
    tokens, tok_stage, tok_note = _funnel_tokens(run, warnings)
    stages, funnel, runtime, langs, kept_stage = [], [], [], [], None
    stats_of: dict[str, dict[str, Any]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    thresholds: dict[str, list[dict[str, Any]]] = {}
    cutoffs: dict[str, dict[str, Any]] = {}
    buckets_docs: dict[str, Any] = {}
    dedups, rejected, domains = [], [], None
    for st in info["stages"]:
        name, uses = st["name"], st.get("uses", "?")
        ref = DatasetRef(storage.join(run, name))
        state, reason = states.get(name, ("not run", ""))
        try:
            m = dataset.read_manifest(ref)
        except (OSError, ValueError) as exc:
            m, reason = None, f"manifest unreadable: {exc}"
        if m is None and state in ("committed", "fresh", "stale"):
            state = "not run"
        parts_done = 0 if m else len(dataset.read_commits(ref)) if state != "not run" else 0
        kind = (m or {}).get("kind")
        stages.append({"name": name, "uses": uses, "engine": st.get("engine"), "inputs": list(st.get("inputs") or []),
                       "state": state, "reason": reason, "committed": m is not None, "kind": kind,
                       "parts_done": parts_done})
        if m is None:
            continue
        stats = m.get("stats", {})
        seconds = stats.get("seconds")
        runtime.append({"name": name, "uses": uses, "engine": st.get("engine"), "seconds": seconds,
                        "docs_in": stats.get("docs_in"), "docs_out": stats.get("docs_out"),
                        "docs_per_s": round(stats["docs_in"] / seconds, 3) if seconds and stats.get("docs_in") else None})
        for r in _rules(m.get("params") or {}):
            if isinstance(r.get("value"), (int, float)) and not isinstance(r.get("value"), bool):
                thresholds.setdefault(r["column"], []).append(
                    {"stage": name, "op": r.get("op"), "value": r["value"], "reason": r.get("reason")})
        for score, cut in _cutoffs(stats, m.get("params") or {}).items():
            cutoffs.setdefault(score, {"stage": name, **cut})
        for k, v in sorted(stats.items()):
            if mm := re.fullmatch(r"buckets\.docs\.(\d+)", k):
                buckets_docs.setdefault("stage", name)
                buckets_docs.setdefault("docs", {})[str(int(mm.group(1)))] = int(v)
        if kind == "artifact" or "text" not in _schema_names(m):
            continue
        kept_stage = name
        s = read_stats(ref)
        if s is not None and s.get("fingerprint") not in (None, m.get("fingerprint")):
            warnings.append(f"{name}: _stats.json is from an earlier run (fingerprint differs); distributions left out")
            s = None
        stats_of[name] = s or {}
        tk = tokens.get(name)
        funnel.append({
            "name": name, "docs_in": stats.get("docs_in"), "docs_out": int(m.get("rows", stats.get("docs_out", 0))),
            "bytes_in": stats.get("bytes_in"), "bytes_out": stats.get("bytes_out"),
            "tokens_out": tk.tokens_out.tokens if tk else None, "tokens_estimated": bool(tk and tk.tokens_out.estimated),
            "dropped": {k.removeprefix("dropped."): {"docs": int(v), "tokens": (tk.dropped_tokens[k.removeprefix("dropped.")].tokens
                                                                               if tk and k.removeprefix("dropped.") in tk.dropped_tokens else None)}
                        for k, v in sorted(stats.items()) if k.startswith("dropped.")},
            "quarantined": stats.get("quarantined"),
        })
        try:
            counts = language_counts(ref)
        except Exception as exc:  # noqa: BLE001
            counts = {}
            warnings.append(f"{name}: languages not counted: {type(exc).__name__}: {exc}"[:300])
        if counts and set(counts) - {"null", "unknown", ""}:
            langs.append({"stage": name, "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))})
        for a, d in (s or {}).get("attributes", {}).items():
            if a not in attrs and d.get("count"):
                attrs[a] = {"name": a, "stage": name, **{k: d.get(k) for k in (
                    "type", "count", "nulls", "mean", "min", "max", "quantiles", "quantiles_exact", "histogram",
                    "histogram_exact")}}
        for reason, r in sorted((s or {}).get("rejected_by_reason", {}).items()):
            rejected.append({"stage": name, "reason": reason, "count": r.get("count"),
                             "samples": [_sample(x) for x in (r.get("sample") or [])[:REJECTED_SAMPLES]]})
        if (s or {}).get("domains"):
            domains = {"stage": name, **{k: s["domains"].get(k) for k in ("docs", "exact", "max_error", "top")}}
        if uses.startswith("dedup."):
            try:
                dedups.append(_dedup(ref, name, uses, m))
            except Exception as exc:  # noqa: BLE001
                warnings.append(f"{name}: clusters not read: {type(exc).__name__}: {exc}"[:300])
    scores = []
    for a, d in attrs.items():
        if a in thresholds or a in cutoffs or str(d["type"]) in ("double", "float", "halffloat"):
            scores.append({**d, "thresholds": thresholds.get(a, []), "cutoffs": cutoffs.get(a)})
    kept = _kept_samples(run, kept_stage, warnings) if kept_stage else {"stage": None, "docs": []}
    bucket_info = {"stage": buckets_docs.get("stage"), "docs": buckets_docs.get("docs", {}), "tokens": {},
                   "blends": _blends(run, warnings)}
    try:
        from arcforge.tokenize.funnel import bucket_tokens

        committed = [s["name"] for s in stages if s["committed"]]
        for shard_stage, groups in bucket_tokens(DatasetRef(run), committed).items():
            if any(b != "-" for _, b in groups):
                per: dict[str, dict[str, int]] = {}
                for (src, b), t in sorted(groups.items()):
                    per.setdefault(str(b), {})[str(src)] = int(t)
                bucket_info["tokens"][shard_stage] = per
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"tokens per bucket not read: {type(exc).__name__}: {exc}"[:300])
    return {
        "format": FORMAT,
        "run": {"dir": run, "name": info.get("name"), "config": info.get("config"), "note": note},
        "stages": stages,
        "funnel": {"tokenizer": tok_stage, "note": tok_note, "stages": funnel},
        "languages": langs,
        "scores": scores,
        "buckets": bucket_info,
        "dedup": dedups,
        "domains": domains,
        "samples": {"kept": kept, "rejected": rejected},
        "runtime": {"stages": runtime, "config": _config(info.get("config")), "packages": _packages(),
                    "python": platform.python_version()},
        "checks": _checks(run, warnings),
        "warnings": warnings,
    }


def _kept_samples(run: str, stage: str, warnings: list[str]) -> dict[str, Any]:
    """The first documents of the last document stage's first non-empty part."""
    ref = DatasetRef(storage.join(run, stage))
    m = dataset.read_manifest(ref) or {}
    names = _schema_names(m)
    cols = [c for c in ("id", "url", "language", "text") if c in names]
    fs, base = ref.fs()
    docs: list[dict[str, Any]] = []
    try:
        for p in m.get("parts", []):
            if not p.get("rows"):
                continue
            with fs.open_input_file(storage.join(base, p["name"])) as fh:
                batch = next(pq.ParquetFile(fh).iter_batches(batch_size=KEPT_SAMPLES, columns=cols), None)
            docs = [_sample(r) for r in (batch.to_pylist() if batch is not None else [])]
            break
    except Exception as exc:  # noqa: BLE001
        warnings.append(f"{stage}: kept samples not read: {type(exc).__name__}: {exc}"[:300])
    return {"stage": stage, "docs": docs}


__all__ = ["FORMAT", "RunDirError", "collect", "cut_text"]
