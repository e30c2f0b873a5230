"""Code file filters: arcforge's ``code.file_filter`` against NeMo Curator 1.4.0's filters.

The data is real files of the installed packages (``installed_code_files``: sources, headers,
JSON, YAML, minified JavaScript, HTML, reST, ... of 36 kinds, up to ``--per-kind`` of each).
Both sides decide every file in this process, NeMo Curator's ``PerExtensionFilter``,
``XMLHeaderFilter`` and ``HTMLBoilerplateFilter`` file by file
(``peers/nemo_code_filters.py``), arcforge's rules over one Arrow batch
(``file_reasons``, what the stage's worker runs per batch). It reports the best time of
each, their ratio, and on how many files the keep decisions agree.

    .venv/bin/python benchmarks/bench_code_filters.py [--per-kind 400] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa

from arcforge.pipelines.code.file_filter import FileFilterParams, file_reasons

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "peers")]
from best_of import best_of  # noqa: E402
from nemo_code_filters import installed_code_files, nemo_verdicts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = installed_code_files(per_kind=args.per_kind, unknown=args.per_kind)
    text, paths = pa.array([r["text"] for r in rows], pa.string()), [r["path"] for r in rows]
    chars = sum(len(r["text"]) for r in rows)
    params = FileFilterParams()
    runs = {"arcforge code.file_filter": lambda: file_reasons(text, paths, params),
            "NeMo Curator 1.4.0 (peer)": lambda: nemo_verdicts(rows)}
    best, out = best_of(runs, args.repeat)
    (reasons, _), verdicts = out.values()
    agree = sum((r is None) == (not verdicts[row["id"]]) for row, r in zip(rows, reasons) if row["id"] in verdicts)
    print(f"{len(rows)} files, {chars:,} characters, {sum(r is not None for r in reasons)} dropped; best of {args.repeat}")
    for name, s in best.items():
        print(f"  {name:28s} {s:.3f} s  {chars / s / 1e6:.1f} M chars/s  {len(rows) / s:,.0f} files/s")
    a, b = best.values()
    print(f"  NeMo Curator / arcforge time: {b / a:.2f}x")
    print(f"  the same keep decision: {agree} of {len(verdicts)} non-empty files")


if __name__ == "__main__":
    main()
