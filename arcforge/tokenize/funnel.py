"""``arcforge funnel RUN``: documents and tokens through every stage, drops by reason, tokens per bucket.

The runtime already counts documents and drops per reason for every stage (its
``_manifest.json`` stats). What it cannot count is tokens, since the tokenizer is trained
inside the run: the funnel loads the run's tokenizer artifact and counts the tokens of each
document stage's output and of its rejects per reason. Up to ``exact_mb`` of text per
dataset every document is tokenized; above it, every ``k``-th part is, and the count is
scaled by the bytes of the parts read (marked ``≈``), so the report stays cheap at scale.

Tokens per quality bucket come from the shards stages' own rows (exact token counts of
what was written), grouped by source and bucket.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from arcforge.runtime import dataset, storage
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import RUN_FILE

MB = 1 << 20


@dataclass
class Count:
    tokens: int = 0
    estimated: bool = False

    def render(self) -> str:
        return ("≈" if self.estimated else "") + f"{self.tokens:,}"


@dataclass
class StageFunnel:
    name: str
    kind: str
    docs_in: int | None
    docs_out: int
    tokens_out: Count
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> documents
    dropped_tokens: dict[str, Count] = field(default_factory=dict)  # reason -> tokens


def _parts(ref: DatasetRef) -> list[tuple[str, int]]:
    """(uri, bytes) of a dataset's Parquet parts, in name order."""
    fs, base = ref.fs()
    if not storage.exists(fs, base):
        return []
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    return sorted((i.path, i.size or 0) for i in infos if i.path.endswith(".parquet"))


def count_tokens(tok: Any, ref: DatasetRef, *, by: str | None = None, exact_mb: float = 256) -> dict[str | None, Count]:
    """Tokens of the ``text`` column of a dataset, in total or per value of column ``by``."""
    parts = _parts(ref)
    total = sum(b for _, b in parts)
    step = max(1, int(total // (exact_mb * MB)) + (1 if total > exact_mb * MB else 0))
    fs, _ = ref.fs()
    out: dict[str | None, Count] = defaultdict(Count)
    read_bytes = 0
    for i, (uri, size) in enumerate(parts):
        if i % step:
            continue
        read_bytes += size
        with fs.open_input_file(uri) as fh:
            cols = ["text"] + ([by] if by else [])
            table = pq.read_table(fh, columns=cols)
        texts = table.column("text").to_pylist()
        keys = table.column(by).to_pylist() if by else [None] * len(texts)
        for key, ids in zip(keys, tok.encode_batch([t or "" for t in texts], num_threads=2)):
            out[key].tokens += len(ids)
    if step > 1 and read_bytes:
        for c in out.values():
            c.tokens, c.estimated = round(c.tokens * total / read_bytes), True
    return dict(out)


def stage_names(run: DatasetRef) -> list[str]:
    """The run's stages in config order (``_run.json``), or, for stages run one by one
    without it, every folder with a committed manifest in the order they were created."""
    fs, base = run.fs()
    run_file = storage.join(base, RUN_FILE)
    if storage.exists(fs, run_file):
        return [st["name"] for st in storage.read_json(fs, run_file)["stages"]]
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type == pafs.FileType.Directory:
            name = info.path.rstrip("/").rsplit("/", 1)[-1]
            m = dataset.read_manifest(run.child(name))
            if m is not None:
                found.append((m.get("created", 0), name))
    return [name for _, name in sorted(found)]


def find_tokenizer(run: DatasetRef, names: list[str]) -> str | None:
    """The run's first committed tokenizer artifact (a stage whose manifest meta has a model sha)."""
    for name in names:
        m = dataset.read_manifest(run.child(name))
        if m and m.get("kind") == "artifact" and (m.get("meta") or {}).get("model_sha256"):
            return name
    return None


def stage_funnel(run: DatasetRef, name: str, manifest: dict[str, Any], tok: Any, exact_mb: float) -> StageFunnel | None:
    """A document stage's row of the funnel; None for stages whose rows are not documents."""
    names = [f.name for f in dataset.schema_from_b64(manifest["schema_ipc"])] if manifest.get("schema_ipc") else []
    if manifest.get("kind") == "artifact" or "text" not in names:
        return None
    stats = manifest.get("stats", {})
    dropped = {k.removeprefix("dropped."): int(v) for k, v in stats.items() if k.startswith("dropped.")}
    ref = run.child(name)
    out = count_tokens(tok, ref, exact_mb=exact_mb).get(None, Count())
    rejected = count_tokens(tok, ref.rejected, by="reason", exact_mb=exact_mb) if dropped else {}
    return StageFunnel(name, manifest.get("kind", ""), stats.get("docs_in"), int(manifest.get("rows", 0)), out,
                       dropped, {str(k): v for k, v in rejected.items()})


def bucket_tokens(run: DatasetRef, names: list[str]) -> dict[str, dict[tuple[str, str], int]]:
    """Per shards stage: tokens written per (source, bucket), from the stage's own rows."""
    out: dict[str, dict[tuple[str, str], int]] = {}
    for name in names:
        ref = run.child(name)
        m = dataset.read_manifest(ref)
        if not m or not m.get("schema_ipc"):
            continue
        names = {f.name for f in dataset.schema_from_b64(m["schema_ipc"])}
        if not {"group", "source", "bucket", "tokens"} <= names:
            continue
        table = dataset.read_dataset(ref, ["source", "bucket", "tokens"])
        groups = table.group_by(["source", "bucket"]).aggregate([("tokens", "sum")])
        out[name] = {
            (s, b if b not in (None, "") else "-"): int(t)
            for s, b, t in zip(*(groups.column(c).to_pylist() for c in ("source", "bucket", "tokens_sum")))
        }
    return out


def funnel(run_dir: str, *, tokenizer: str | None = None, exact_mb: float = 256) -> tuple[list[StageFunnel], dict[str, Any], str | None]:
    """Every document stage's funnel row, tokens per bucket, and the tokenizer stage used."""
    from arcforge.tokenize.spm import Tokenizer

    run = DatasetRef(run_dir)
    names = stage_names(run)
    tok_stage = tokenizer or find_tokenizer(run, names)
    if tok_stage is None:
        raise ValueError(f"{run_dir}: no committed tokenizer stage to count tokens with (give --tokenizer STAGE)")
    tok = Tokenizer.load(run.child(tok_stage).uri)
    rows = []
    for name in names:
        m = dataset.read_manifest(run.child(name))
        if m is not None and (row := stage_funnel(run, name, m, tok, exact_mb)) is not None:
            rows.append(row)
    return rows, bucket_tokens(run, names), tok_stage


def render(rows: list[StageFunnel], buckets: dict[str, Any], tok_stage: str | None) -> list[str]:
    """The funnel as Markdown-style lines (what the CLI prints)."""
    lines = [f"funnel (tokens by the run's tokenizer `{tok_stage}`; ≈ marks a sampled estimate)", "",
             "| stage | docs in | docs out | tokens out | dropped: docs (tokens) by reason |", "|---|---|---|---|---|"]
    for r in rows:
        drops = ", ".join(
            f"{k} {v:,} ({r.dropped_tokens.get(k, Count()).render()})" for k, v in sorted(r.dropped.items(), key=lambda kv: -kv[1])
        )
        din = f"{r.docs_in:,}" if r.docs_in is not None else "-"
        lines.append(f"| {r.name} | {din} | {r.docs_out:,} | {r.tokens_out.render()} | {drops or '-'} |")
    for stage, groups in buckets.items():
        if all(b == "-" for _, b in groups):
            continue
        lines += ["", f"tokens per bucket ({stage}; 0 = lowest quality)", "", *bucket_table(groups)]
    return lines


def bucket_table(groups: dict[tuple[str, str], int]) -> list[str]:
    """Buckets as rows (highest first), sources as columns, with each bucket's share."""
    sources = sorted({s for s, _ in groups})
    buckets = sorted({b for _, b in groups}, key=lambda b: -_as_int(b))
    total = sum(groups.values()) or 1
    out = ["| bucket | " + " | ".join(sources) + " | all | share |", "|---" * (len(sources) + 3) + "|"]
    for b in buckets:
        row = [groups.get((s, b), 0) for s in sources]
        out.append(f"| {b} | " + " | ".join(f"{t:,}" for t in row) + f" | {sum(row):,} | {sum(row) / total:.1%} |")
    col = [sum(groups.get((s, b), 0) for b in buckets) for s in sources]
    out.append("| all | " + " | ".join(f"{t:,}" for t in col) + f" | {sum(col):,} | 100.0% |")
    return out


def _as_int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        return -1


__all__ = ["Count", "StageFunnel", "bucket_tokens", "count_tokens", "funnel", "render"]
