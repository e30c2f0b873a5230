"""``code.repo_pack``: the files of each repository concatenated in dependency order.

GLM-4.5's repo-level code data (its report's pre-training data section) concatenates the
files of one repository into one context, as DeepSeek-Coder does with a dependency
topological sort; no public pipeline ships that step (``../shared/reference/peers.md``).
Written once against ``arcforge.runtime.globalops``, so it runs on the local engine, Spark
and Ray, and no repository's files reach the driver:

1. **Read** (``map_tasks``, one pass over the input parts): each file's repository and path
   (two columns, or one path column whose first ``repo_depth`` directories name the
   repository), its language by extension, and its imports as written (tree-sitter:
   ``arcforge.pipelines.code.imports``).
2. **Pack** (``group_reduce`` on the repository): resolve the imports against the
   repository's own paths, order the files (``repo_order.dependency_order``), and write
   one document per ``max_chars`` of files (``repo_order.chunk_blocks``).
3. **Write** (``finish``): each repository's documents go to the partition of its first
   path, so the output is a pure function of the input.

Each packed document has the input's columns (per-file ones null), ``repo`` and
``repo_files`` (the files it holds); ``url`` is the repository, ``language`` the language
with the most characters in it, ``source`` its first file's, ``metadata`` a JSON object
``{"repo", "paths", "part", "parts"}``. A file with no repository or no path is rejected
(``no_repo``, ``no_path``), and a second file with the path of another in the same
repository is rejected as ``duplicate_path`` (``same_as=<id>``, the smallest id kept).
Stats: ``code.repos``, ``code.packed_docs``, ``code.files_packed``, ``code.import_edges``,
``code.imports_external`` (imports naming nothing in the repository) and
``code.cycles_broken`` (docs/code.md).
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from arcforge.pipelines.code.imports import RepoIndex, go_module, implied_packages, imports
from arcforge.pipelines.code.languages import language_of
from arcforge.pipelines.code.repo_order import chunk_blocks, dependency_order, file_block, join_blocks
from arcforge.runtime import storage
from arcforge.runtime.documents import DOC_SCHEMA, conform, doc_id, rejected_schema, text_bytes, with_columns
from arcforge.runtime.stage import GlobalStage, Resources, StageParams, Stats, split_rejected
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask, commit_partition


class RepoPackParams(StageParams):
    repo: str = "repo"  # the column naming each file's repository
    path: str = "path"  # the column with the file's path inside it
    repo_depth: int | None = Field(None, ge=1)  # set: the repository is the first N directories of `path`
    max_chars: int = Field(1_000_000, ge=1)  # one packed document at most (cut at file boundaries)
    header: bool = True  # start each file with a comment naming its path

    def repo_column(self) -> str:
        """The output column holding the repository: ``repo`` itself, or ``repo`` when the
        repository is read off the path."""
        return "repo" if self.repo_depth is not None else self.repo


FILES = pa.schema([
    ("repo", pa.string()), ("path", pa.string()), ("language", pa.string()), ("imports", pa.list_(pa.string())),
    ("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("partition", pa.int32()), ("row", pa.int32()),
])
# one frame for both results of a repository: its documents (kind "doc") and its rejected files ("drop")
PACKED = pa.schema([
    ("partition", pa.int32()), ("kind", pa.string()), ("row", pa.int32()), ("detail", pa.string()),
    ("repo", pa.string()), ("part", pa.int32()), ("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
    ("language", pa.string()), ("metadata", pa.string()), ("files", pa.int64()), ("edges", pa.int64()),
    ("external", pa.int64()), ("cycles", pa.int64()),
])


def split_repo_path(repo: Any, path: Any, depth: int | None) -> tuple[str | None, str | None]:
    """A file's (repository, path), both None-or-non-empty strings; with ``depth``, read
    off ``path``: ``a/b/src/x.py`` at depth 2 is ``("a/b", "src/x.py")``."""
    path = posixpath.normpath(str(path).replace("\\", "/")).lstrip("/") if path not in (None, "") else None
    if depth is not None:
        parts = path.split("/") if path else []
        if len(parts) <= depth:
            return None, path
        return "/".join(parts[:depth]), "/".join(parts[depth:])
    repo = str(repo) if repo not in (None, "") else None
    return repo, path


def files_table(partition: int, table: pa.Table, params: RepoPackParams) -> pa.Table:
    """Step 1 on one input part: the files with a repository and a path, and their imports."""
    repos = table.column(params.repo).to_pylist() if params.repo_depth is None else [None] * table.num_rows
    rows: dict[str, list] = {name: [] for name in FILES.names}
    for i, (repo, path, id_, text, source) in enumerate(zip(
            repos, table.column(params.path).to_pylist(), table.column("id").to_pylist(),
            table.column("text").to_pylist(), table.column("source").to_pylist())):
        repo, path = split_repo_path(repo, path, params.repo_depth)
        if repo is None or path is None:
            continue
        language = language_of(path)
        for name, value in zip(FILES.names, (repo, path, language, imports(text or "", language), str(id_), text or "",
                                             source, partition, i)):
            rows[name].append(value)
    return pa.table(rows, schema=FILES)


def pack_repo(group: pa.Table, params: RepoPackParams) -> pa.Table:
    """Step 2 on one repository's files: its documents and its rejected duplicate paths."""
    files = sorted(group.to_pylist(), key=lambda f: (f["path"], f["id"], f["partition"], f["row"]))
    kept: dict[str, dict] = {}
    out: list[dict] = []
    for f in files:
        if f["path"] in kept:
            out.append({"partition": f["partition"], "kind": "drop", "row": f["row"],
                        "detail": f"same_as={kept[f['path']]['id']}"})
        else:
            kept[f["path"]] = f
    go_mods = {posixpath.dirname(p): go_module(f["text"]) for p, f in kept.items() if posixpath.basename(p) == "go.mod"}
    python = {p: f["imports"] or [] for p, f in kept.items() if f["language"] == "python"}
    index = RepoIndex(list(kept), {d: m for d, m in go_mods.items() if m}, implied_packages(python))
    deps, external = {}, 0
    for path, f in kept.items():
        deps[path] = set()
        for spec in f["imports"] or ():
            found = index.resolve(path, f["language"], spec)
            deps[path].update(found)
            external += not found
    order = dependency_order(sorted(kept), deps)
    blocks = [file_block(p, kept[p]["text"], kept[p]["language"], params.header) for p in order.paths]
    chunks = chunk_blocks(blocks, params.max_chars)
    repo, home = files[0]["repo"], kept[min(kept)]["partition"]
    for part, idx in enumerate(chunks):
        paths = [order.paths[i] for i in idx]
        chars: Counter[str] = Counter()
        for p in paths:
            if kept[p]["language"]:
                chars[kept[p]["language"]] += len(kept[p]["text"])
        first = part == 0
        out.append({
            "partition": home, "kind": "doc", "repo": repo, "part": part, "id": doc_id("code.repo_pack", repo, str(part)),
            "text": join_blocks([blocks[i] for i in idx]), "source": kept[paths[0]]["source"],
            "language": min(chars, key=lambda k: (-chars[k], k)) if chars else None,
            "metadata": json.dumps({"repo": repo, "paths": paths, "part": part, "parts": len(chunks)},
                                   ensure_ascii=False, separators=(",", ":")),
            "files": len(paths), "edges": order.edges if first else 0, "external": external if first else 0,
            "cycles": order.cycles_broken if first else 0,
        })
    return pa.Table.from_pylist(out, schema=PACKED)


def _files(task: PartitionTask, table: pa.Table, params: RepoPackParams) -> pa.Table:
    return files_table(task.partition, table, params)


def write_part(table: pa.Table, packed: pa.Table, params: RepoPackParams, schema: pa.Schema, stats: Stats) -> tuple[pa.Table, pa.Table | None]:
    """Step 3 on one partition: (the packed documents whose home it is, its rejected files)."""
    repos = table.column(params.repo).to_pylist() if params.repo_depth is None else [None] * table.num_rows
    reasons: list[str | None] = []
    for repo, path in zip(repos, table.column(params.path).to_pylist()):
        repo, path = split_repo_path(repo, path, params.repo_depth)
        reasons.append("no_path" if path is None else "no_repo" if repo is None else None)
    details: list[str | None] = [None] * table.num_rows
    drops = packed.filter(pc.equal(packed.column("kind"), "drop"))
    for row, detail in zip(drops.column("row").to_pylist(), drops.column("detail").to_pylist()):
        reasons[row], details[row] = "duplicate_path", detail
    out = split_rejected(table, reasons, details)
    docs = packed.filter(pc.equal(packed.column("kind"), "doc")).sort_by([("repo", "ascending"), ("part", "ascending")])
    for name, column in (("code.packed_docs", None), ("code.files_packed", "files"), ("code.import_edges", "edges"),
                         ("code.imports_external", "external"), ("code.cycles_broken", "cycles")):
        stats.update(name, docs.num_rows if column is None else int(pc.sum(docs.column(column)).as_py() or 0))
    stats.update("code.repos", int(pc.sum(pc.equal(docs.column("part"), 0)).as_py() or 0))
    columns = {name: docs.column(name) for name in ("id", "text", "source", "language", "metadata")}
    columns.update({"url": docs.column("repo"), params.repo_column(): docs.column("repo"), "repo_files": docs.column("files")})
    kept = conform(pa.table(columns), schema)
    rejected = conform(out.rejected, rejected_schema(schema)) if out.rejected is not None else None
    return kept, rejected


def _write(task: PartitionTask, packed: pa.Table, params: RepoPackParams) -> dict[str, Any]:
    started = time.time()
    fs, path = storage.filesystem(task.input_uri, S3Options(**task.s3))
    table = storage.read_parquet(fs, path)
    stats = Stats()
    stats.update("docs_in", table.num_rows)
    stats.update("bytes_in", text_bytes(table))
    kept, rejected = write_part(table, packed, params, task.schema, stats)
    return commit_partition(task, kept, rejected, stats, started)


class RepoPack(GlobalStage[RepoPackParams]):
    """Repository-level packing (module docstring), on local, Spark and Ray."""

    def required_columns(self, params: RepoPackParams) -> list[str]:
        return ["id", "text", "source", params.path, *([params.repo] if params.repo_depth is None else [])]

    def schema_for(self, params: RepoPackParams, input_schema: pa.Schema | None) -> pa.Schema:
        return with_columns(input_schema or DOC_SCHEMA,
                            (pa.field(params.repo_column(), pa.string()), pa.field("repo_files", pa.int64())))

    def run(self, ctx: Any) -> list[dict[str, Any]]:
        if not ctx.pending:
            return []
        params: RepoPackParams = ctx.stage.params
        read = list(dict.fromkeys(self.required_columns(params)))
        with ctx.engine.ops() as ops:
            files = ops.map_tasks(ctx.tasks, _files, FILES, read=read, args=(params,), resources=self.resources)
            packed = files.group_reduce(["repo"], pack_repo, PACKED, order_by=["path", "id"], args=(params,))
            return ops.finish(ctx.pending, _write, rows=packed, key="partition", args=(params,),
                              on_commit=ctx.on_commit, resources=self.resources)


REPO_PACK = RepoPack(
    "code.repo_pack",
    RepoPackParams,
    resources=Resources(cpus=1),
    engine="spark",
    doc="Each repository's files concatenated in dependency order (tree-sitter imports; local, Spark, Ray).",
)

__all__ = ["REPO_PACK", "RepoPackParams", "files_table", "pack_repo", "split_repo_path", "write_part"]
