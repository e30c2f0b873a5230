"""The peer of ``code.file_filter``: NeMo Curator 1.4.0's code filters, file by file.

``nemo_keep`` applies ``PerExtensionFilter`` (with NeMo Curator's own ``code_meta.csv``, not
arcforge's copy), ``XMLHeaderFilter`` and, to HTML files, ``HTMLBoilerplateFilter``, as a
NeMo Curator pipeline would chain them. The language and extension handed to
``PerExtensionFilter`` are the table key arcforge picks for the file (``rule_key``): NeMo
Curator takes them from the dataset's columns. ``installed_code_files`` picks the real files
both are run on (tests/test_code_file_filter.py, benchmarks/bench_code_filters.py): source,
headers, data and markup files of the packages installed from ``requirements.lock``.

Run as a script, it times NeMo Curator on a JSONL of ``{id, path, text}`` and prints one
JSON line. Usage: nemo_code_filters.py FILES.jsonl
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import sysconfig
import time
from pathlib import Path


def installed_code_files(per_kind: int = 25, max_bytes: int = 300_000, unknown: int = 12) -> list[dict]:
    """Real files from site-packages: up to ``per_kind`` per table key (spread over the
    sorted paths, so many packages are sampled), plus ``unknown`` files of extensions the
    table lacks; as ``{"id", "path", "text"}`` rows, the path relative to site-packages."""
    from arcforge.pipelines.code.file_filter import rule_key

    root = Path(sysconfig.get_paths()["purelib"])
    by_key: dict[tuple[str, str] | None, list[Path]] = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = Path(d) / f
            if f.endswith((".pyc", ".so")) or not p.is_file() or p.stat().st_size > max_bytes:
                continue
            by_key.setdefault(rule_key(f), []).append(p)
    rows = []
    for key in sorted(by_key, key=str):
        paths = by_key[key]
        n = min(unknown if key is None else per_kind, len(paths))
        picks = [paths[int(i * len(paths) / n)] for i in range(n)]
        for p in picks:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            rel = p.relative_to(root).as_posix()
            rows.append({"id": rel, "path": rel, "text": text})
    return rows


def nemo_verdicts(rows: list[dict]) -> dict[str, set[str]]:
    """id -> the NeMo Curator filters that drop the file (``per_extension``, ``xml_header``,
    ``html_boilerplate``; empty: kept). Empty files are left out: NeMo Curator's fractions
    divide by zero on them."""
    import importlib.util

    from nemo_curator.stages.text.filters.heuristic.code import HTMLBoilerplateFilter, PerExtensionFilter, XMLHeaderFilter

    from arcforge.pipelines.code.file_filter import rule_key

    meta = Path(importlib.util.find_spec("nemo_curator").origin).parent / "utils" / "code_meta.csv"
    xml, html = XMLHeaderFilter(), HTMLBoilerplateFilter()
    per_ext: dict[tuple[str, str], PerExtensionFilter] = {}
    out: dict[str, set[str]] = {}
    for row in rows:
        text, key = row["text"], rule_key(posixpath.basename(row["path"]))
        if not text:
            continue
        failed = set()
        if key is None:
            failed.add("per_extension")  # not in the table: PerExtensionFilter excludes it
        else:
            if key not in per_ext:
                per_ext[key] = PerExtensionFilter(lang=key[0], extension=key[1], metadata_file=str(meta))
            if not per_ext[key].keep_document(per_ext[key].score_document(text)):
                failed.add("per_extension")
        if not xml.keep_document(xml.score_document(text)):
            failed.add("xml_header")
        if key is not None and key[0] == "html" and not html.keep_document(html.score_document(text)):
            failed.add("html_boilerplate")
        out[row["id"]] = failed
    return out


def nemo_keep(rows: list[dict]) -> dict[str, bool]:
    """id -> whether NeMo Curator's code filters keep the file."""
    return {k: not v for k, v in nemo_verdicts(rows).items()}


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        data = [json.loads(line) for line in fh]
    nemo_keep(data[:1])  # build the filters and import everything before timing
    t0, c0 = time.perf_counter(), time.process_time()
    kept = nemo_keep(data)
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                      "files": len(data), "kept": sum(kept.values())}))
