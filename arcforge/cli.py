"""The ``arcforge`` command: run pipelines, see their status, inspect datasets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from arcforge.classifiers.cli import register as add_classifiers_parser
from arcforge.model.cli import add_model_parser
from arcforge.model.train_cli import add_train_parser
from arcforge.report.cli import register as add_report_parser
from arcforge.runtime.config import ConfigError
from arcforge.run_cli import add_run_parser

console = Console(stderr=False)
err = Console(stderr=True)


class RichProgress:
    """Turns runner callbacks into one progress bar per stage with live document counts."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: Any = None
        self.docs = 0

    def start_stage(self, name: str, total: int, done: int) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[docs]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar.start()
        self.docs = 0
        self.task = self.bar.add_task(name, total=total, completed=done, docs="")

    def advance(self, record: dict[str, Any]) -> None:
        self.docs += record.get("stats", {}).get("docs_out", 0)
        self.bar.update(self.task, advance=1, docs=f"{self.docs:,} docs out" if self.docs else "")

    def end_stage(self, result: Any) -> None:
        if result.status == "skipped":
            console.print(f"[dim]{result.name:<14} committed already, skipped[/dim]")
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=result.partitions, docs=f"{result.manifest['rows']:,} docs out")
            self.bar.stop()
        self.bar = self.task = None


def _stats_row(name: str, manifest: dict[str, Any] | None, status: str) -> list[str]:
    if manifest is None:
        return [name, status, "", "", "", ""]
    st = manifest.get("stats", {})
    drops = {k.removeprefix("dropped."): v for k, v in st.items() if k.startswith("dropped.")}
    drop_txt = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])) or "-"
    return [
        name,
        status,
        f"{st.get('docs_in', 0):,}",
        f"{st.get('docs_out', manifest.get('rows', 0)):,}",
        drop_txt,
        f"{st.get('seconds', 0):.1f}",
    ]


def summary_table(rows: list[list[str]], title: str) -> Table:
    table = Table(title=title)
    for col in ("stage", "status", "docs in", "docs out", "dropped by reason", "task s"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def report_errors(results: list[Any]) -> None:
    """Files a stage reported (corrupt, unreadable) without stopping the run."""
    for r in results:
        for e in r.manifest.get("errors", []):
            short = e if len(e) <= 200 else e[:200] + "… (full text in the stage manifest)"
            console.print(f"[yellow]reported[/yellow] {r.name}: {short}", markup=True, highlight=False)


def cmd_status(args: argparse.Namespace) -> int:
    from arcforge.runtime import dataset, storage
    from arcforge.runtime.dataset import DatasetRef
    from arcforge.runtime.runner import RUN_FILE

    run = DatasetRef(args.run_dir)
    fs, base = run.fs()
    run_file = storage.join(base, RUN_FILE)
    if not storage.exists(fs, run_file):
        err.print(f"{args.run_dir}: not an arcforge run directory (no {RUN_FILE})")
        return 2
    info = storage.read_json(fs, run_file)
    rows = []
    for st in info["stages"]:
        ref = run.child(st["name"])
        manifest = dataset.read_manifest(ref)
        if manifest is not None:
            rows.append(_stats_row(st["name"], manifest, "committed"))
        else:
            n = len(dataset.read_commits(ref))
            rows.append([st["name"], f"not committed ({n} parts done)" if n else "not run", "", "", "", ""])
    console.print(summary_table(rows, f"run {info['name']}"))
    _print_distributions(run, [st["name"] for st in info["stages"]])
    from arcforge.report import checks
    from arcforge.tokenize.staleness import out_of_date, read_lineage, status_lines

    lin = read_lineage(args.run_dir, args.blends)
    for line in status_lines(lin):  # input files -> stages -> blends, stale marked
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    outcomes = checks.evaluate_run(args.run_dir)
    for line in checks.status_lines(args.run_dir, outcomes) + [report_pointer(args.run_dir)]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if args.check:
        found = out_of_date(lin) + [f"check {o.stage}.{o.name} failed" for o in outcomes if o.blocking and o.passed is False]
        if found:
            console.print(f"status --check: {len(found)} problem{'s' if len(found) != 1 else ''}: " + "; ".join(found),
                          markup=False, highlight=False, soft_wrap=True)
            return 1
        console.print("status --check: every stage and blend is current and every blocking check passed",
                      markup=False, highlight=False)
    return 0


def report_pointer(run_dir: str) -> str:
    """Where the run's HTML report is, or how to write it."""
    from arcforge.runtime import storage

    fs, base = storage.filesystem(run_dir.rstrip("/"))
    path = storage.join(base, "report.html")
    if storage.exists(fs, path):
        return f"report: {run_dir.rstrip('/')}/report.html (re-write it with `arcforge report {run_dir}`)"
    return f"report: none yet; `arcforge report {run_dir}` writes {run_dir.rstrip('/')}/report.html"


def _print_distributions(run: Any, stages: list[str]) -> None:
    """Each committed stage's ``_stats.json`` in a few lines (a stale one is skipped)."""
    from arcforge.runtime import dataset
    from arcforge.runtime.distribution import read_stats, render_status

    for name in stages:
        ref = run.child(name)
        manifest, stats = dataset.read_manifest(ref), read_stats(ref)
        if manifest is None or stats is None or stats.get("fingerprint") not in (None, manifest.get("fingerprint")):
            continue
        for line in render_status(stats):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        for line in bucket_lines(manifest.get("stats", {})) + code_lines(manifest.get("stats", {})):
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def bucket_lines(stats: dict[str, Any]) -> list[str]:
    """A bucket stage's cut-offs per score and its documents per ensemble bucket."""
    cuts: dict[str, list[float]] = {}
    for k, v in sorted(stats.items()):
        if k.startswith("buckets.cutoff."):
            cuts.setdefault(k.removeprefix("buckets.cutoff.").rsplit(".", 1)[0], []).append(v)
    lines = [f"  cut-offs {score}: " + " ".join(f"{c:.4g}" for c in values) for score, values in cuts.items()]
    docs = {k.rsplit(".", 1)[1]: v for k, v in stats.items() if k.startswith("buckets.docs.")}
    if docs:
        lines.append("  docs per bucket: " + ", ".join(f"{int(b)}: {n:,}" for b, n in sorted(docs.items()) if n))
    return lines


def code_lines(stats: dict[str, Any]) -> list[str]:
    """A ``code.repo_pack`` stage's repositories, files and imports, a ``code.git_commits``
    stage's commits (docs/code.md)."""
    if "git.repositories" in stats:
        g = {k.removeprefix("git."): int(v) for k, v in stats.items() if k.startswith("git.")}
        return [f"  commits: {g.get('commits', 0):,} from {g['repositories']:,} repositories "
                f"({g.get('files_changed', 0):,} file changes); merges skipped: {g.get('merges_skipped', 0):,}"]
    if "code.repos" not in stats:
        return []
    n = {k.removeprefix("code."): int(v) for k, v in stats.items() if k.startswith("code.")}
    return [f"  repositories: {n['repos']:,} ({n.get('files_packed', 0):,} files in {n.get('packed_docs', 0):,} documents); "
            f"imports: {n.get('import_edges', 0):,} between files of a repository, {n.get('imports_external', 0):,} external; "
            f"{n.get('cycles_broken', 0):,} files placed in an import cycle before a file they import"]


def cmd_inspect(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from arcforge.runtime import dataset, storage
    from arcforge.runtime.dataset import DatasetRef

    ref = DatasetRef(args.path)
    fs, base = ref.fs()
    if storage.exists(fs, storage.join(base, dataset.MANIFEST)):
        table = dataset.read_dataset(ref)
        origin = f"{len(dataset.read_manifest(ref)['parts'])} committed parts"
    elif storage.exists(fs, base) and base.endswith(".parquet"):
        with fs.open_input_file(base) as f:
            table = pq.read_table(f)
        origin = "one Parquet file"
    else:
        err.print(f"{args.path}: neither a committed dataset (no {dataset.MANIFEST}) nor a Parquet file")
        return 2
    console.print(f"[bold]{args.path}[/bold]: {table.num_rows:,} rows in {origin}")
    console.print(str(table.schema))
    for row in table.slice(0, args.rows).to_pylist():
        shown = {k: (v[: args.width] + "…" if isinstance(v, str) and len(v) > args.width else v) for k, v in row.items()}
        console.print_json(json.dumps(shown, default=str, ensure_ascii=False))
    if origin != "one Parquet file" and args.clusters:
        from arcforge.dedup.clusters import cluster_lines

        for line in cluster_lines(ref, table, args.clusters, min(args.width, 120)):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from arcforge.runtime.export import export

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        rows = export(args.path, args.output, args.format, columns)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"arcforge export: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    console.print(f"wrote {rows:,} rows to {args.output}", highlight=False)
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from pathlib import Path

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    path = fetch_demo_corpus(Path(args.dest) if args.dest else None)
    print(path)
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from arcforge.tokenize.mixture import load_mixture, write_mixture

    plan = load_mixture(args.config)  # every budget, weight, epoch cap and shard checked first
    for st in plan.stages:
        table = Table(title=f"{st.name}: {st.tokens:,} tokens, seq_length {st.seq_length}, cap {st.max_epochs:g} epochs")
        for col in ("source", "bucket", "asked", "available", "tokens", "share", "epochs"):
            table.add_column(col, justify="left" if col in ("source", "bucket", "asked") else "right")
        for r in st.table():
            table.add_row(r["source"], r["bucket"] or "-", r["asked"], f"{r['available_tokens']:,}", f"{r['tokens']:,}",
                          f"{r['share']:.1%}", f"{r['epochs']:.2f}")
        console.print(table)
    for path in write_mixture(plan, args.out):
        console.print(f"wrote {path}")
    for ds in plan.lineage()["shards"]:  # what the blends were mixed from (checked by status and train)
        arts = "".join(f", {a['stage']} {(a['fingerprint'] or '-')[:12]}" for a in (ds["artifacts"] or {}).values())
        console.print(f"lineage: {ds['uri']} ({ds['stage']} {(ds['fingerprint'] or '-')[:12]}{arts})",
                      markup=False, highlight=False, soft_wrap=True)
    for ref in plan.registered:
        console.print(f"recorded {ref}", markup=False, highlight=False, soft_wrap=True)
    for w in plan.warnings:
        err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_funnel(args: argparse.Namespace) -> int:
    from arcforge.tokenize.funnel import funnel, render

    rows, buckets, tok = funnel(args.run_dir, tokenizer=args.tokenizer, exact_mb=args.exact_mb)
    for line in render(rows, buckets, tok):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arcforge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    s = sub.add_parser("status", help="show each stage of a run: committed or not, rows in and out")
    s.add_argument("run_dir")
    s.add_argument("--blends", metavar="DIR", action="append", default=[],
                   help="also check the *.blend.json files under DIR (repeatable); blends registered by "
                   "arcforge mix in RUN_DIR/_blends/ and those in RUN_DIR's own folders are always checked")
    s.add_argument("--check", action="store_true",
                   help="exit 1 when a stage is stale, incomplete or not run, a blend is stale or gone, or a "
                   "blocking check failed (for scripts and schedulers); 0 when everything is current")
    s.set_defaults(fn=cmd_status)
    i = sub.add_parser("inspect", help="schema, row count and sample rows of a dataset or Parquet file")
    i.add_argument("path")
    i.add_argument("-n", "--rows", type=int, default=3)
    i.add_argument("--width", type=int, default=160, help="truncate strings to this many characters")
    i.add_argument("--clusters", type=int, default=3, metavar="N",
                   help="for a dedup stage: the cluster-size distribution and the N largest clusters (0: none)")
    i.set_defaults(fn=cmd_inspect)
    m = sub.add_parser("mix", help="turn a mixture config into Megatron data blends and an epochs table")
    m.add_argument("config")
    m.add_argument("--out", metavar="DIR", help="where to write the blends (default: the mixture's output)")
    m.set_defaults(fn=cmd_mix)
    e = sub.add_parser("export", help="write a committed dataset as JSONL (one file) or Parquet (one file per part)")
    e.add_argument("path", help="a committed dataset: a stage directory of a run, or its rejected/")
    e.add_argument("--format", choices=("jsonl", "parquet"), required=True)
    e.add_argument("-o", "--output", required=True, help="a .jsonl[.gz|.zst] file, or a folder for Parquet")
    e.add_argument("--columns", help="comma-separated columns to keep (default: all)")
    e.set_defaults(fn=cmd_export)
    c = sub.add_parser("corpus", help="fetch the pinned demo corpus into the cache and print its path")
    c.add_argument("--dest")
    c.set_defaults(fn=cmd_corpus)
    f = sub.add_parser("funnel", help="documents and tokens per stage, drops by reason, tokens per quality bucket")
    f.add_argument("run_dir")
    f.add_argument("--tokenizer", metavar="STAGE", help="the tokenizer artifact stage (default: the run's first)")
    f.add_argument("--exact-mb", type=float, default=256, help="tokenize every document of datasets up to this size")
    f.set_defaults(fn=cmd_funnel)
    add_model_parser(sub)
    add_train_parser(sub)
    add_classifiers_parser(sub)
    add_report_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
