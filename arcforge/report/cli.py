"""``arcforge report RUN_DIR [-o report.html] [--compare OTHER_RUN_DIR]``.

Writes one self-contained HTML page and ``report.json`` (the same numbers, for scripts)
beside it, and prints the page's path. A path that is not a run directory is one line on
stderr and exit code 2, like a config error; everything else about a run (stages not
committed, stale, unreadable parts) is shown in the report rather than failing it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from arcforge.runtime import storage


def _write(path: str, text: str) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a report."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(run_dir: str, output: str | None = None, compare_with: str | None = None) -> tuple[str, str]:
    """Write the HTML report and ``report.json`` beside it; return both absolute paths.

    Raises ``RunDirError`` (one line) for a path that is not a run directory. Used by the
    command and by the Dagster code location's report asset."""
    from arcforge.report.collect import RunDirError, collect
    from arcforge.report.compare import compare
    from arcforge.report.html import render

    if output is None and storage.is_s3(run_dir):
        raise RunDirError(f"{run_dir}: give -o FILE for a run on S3 (the report is written locally)")
    report = collect(run_dir)
    other = collect(compare_with) if compare_with else None
    out = os.path.abspath(output or os.path.join(report["run"]["dir"], "report.html"))
    comparison = compare(report, other) if other is not None else None
    doc: dict[str, Any] = dict(report)
    if comparison is not None:
        doc["compare"] = comparison
    _write(out, render(report, comparison))
    json_path = os.path.join(os.path.dirname(out), "report.json")
    _write(json_path, json.dumps(doc, indent=1, sort_keys=True, default=str, allow_nan=False) + "\n")
    return out, json_path


def cmd_report(args: argparse.Namespace) -> int:
    from arcforge.report.collect import RunDirError

    try:
        out, _ = write_report(args.run_dir, args.output, args.compare)
    except RunDirError as exc:
        print(f"arcforge report: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="one self-contained HTML data-quality report of a run (and report.json beside it)")
    p.add_argument("run_dir", help="a run directory (<root>/<run>, the folder holding _run.json)")
    p.add_argument("-o", "--output", metavar="FILE", help="the HTML file to write (default: RUN_DIR/report.html); "
                   "report.json is written in the same folder")
    p.add_argument("--compare", metavar="OTHER_RUN_DIR", help="another run to compare with (e.g. the same config with "
                   "a different threshold): differences are highlighted in a Compare section")
    p.set_defaults(fn=cmd_report)
