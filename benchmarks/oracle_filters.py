"""Agreement of arcforge's heuristic filters with datatrove's on real documents.

datatrove 0.10.1 (a test dependency) is the oracle: for every document, each arcforge
stage and the datatrove filter with the same rules must make the same decision (keep,
or reject for the same reason) and, for C4's line cleaning, leave the same text.
``tests/test_datatrove_agreement.py`` asserts at least 99.5% per rule on a fixed sample;
run this file to print the table that ``docs/quality.md`` reports::

    .venv/bin/python benchmarks/oracle_filters.py            # every document (~31k)
    .venv/bin/python benchmarks/oracle_filters.py --n 12000  # the test's sample

The documents are the demo corpus's real text, cut into many sizes (see
``oracle_documents``), so short, long, clean and list-like documents all occur.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rule:
    """One arcforge stage and the datatrove filter that implements the same rules."""

    stage: str  # arcforge catalog name
    datatrove: str  # class name in datatrove.pipeline.filters
    params: dict[str, Any]
    compares_text: bool = False  # the filter rewrites text (C4's line cleaning)


RULES = (
    Rule("web.gopher_quality", "GopherQualityFilter", {}),
    Rule("web.gopher_repetition", "GopherRepetitionFilter", {}),
    Rule("web.c4_quality", "C4QualityFilter", {}, compares_text=True),
    Rule("web.fineweb_quality", "FineWebQualityFilter", {}),
)


def oracle_documents(corpus: Path, n: int | None = None, *, pages: bool = False) -> list[str]:
    """The demo corpus's real documents (docutils docs, Botchan's paragraphs, Wikipedia
    articles) and their sections cut at blank lines into groups of 1, 3 and 8 paragraphs;
    with ``pages``, also the ~170 real crawled pages of trafilatura's and htmldate's test
    caches, each twice: trafilatura's main text, and every visible line of the page (menus,
    footers, cookie banners: what a crawl without extraction holds). ``n`` picks a fixed
    sample (the smallest blake2b digests of the texts)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_read import corpus_docs

    docs = [t for _, t in corpus_docs(corpus)]
    out = list(docs)
    for text in docs:
        paras = [p for p in text.split("\n\n") if p.strip()]
        if len(paras) < 4:
            continue
        for size in (1, 3, 8):
            out += ["\n\n".join(paras[i:i + size]) for i in range(0, len(paras), size)]
    extra: list[str] = []
    if pages:
        from arcforge.pipelines.demo.labels.pages import load_pages

        for page in load_pages(corpus):
            extra += [t for t in (page.main, "\n".join(page.lines)) if t.strip()]
    have = set(out)
    extra = [t for t in dict.fromkeys(extra) if t not in have]
    out = list(dict.fromkeys(out))  # the same text twice would count twice
    if n is not None and n - len(extra) < len(out):  # every page is in a sample; corpus documents fill it
        out = sorted(out, key=lambda t: hashlib.blake2b(t.encode("utf-8", "surrogatepass")).digest())[:n - len(extra)]
    out += extra
    return out


Decision = tuple[str | None, str | None]  # (reason or None, text when the filter rewrites it)


def datatrove_decisions(rule: Rule, texts: list[str]) -> list[Decision]:
    import datatrove.pipeline.filters as filters
    from datatrove.data import Document

    f = getattr(filters, rule.datatrove)(**rule.params)
    out: list[Decision] = []
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        r = f.filter(doc)
        reason = None if r is True else (r[1] if isinstance(r, tuple) else "rejected")
        out.append((reason, doc.text if rule.compares_text and reason is None else None))
    return out


def _datatrove_all(rules: tuple[Rule, ...], texts: list[str]) -> list[list[Decision]]:
    return [datatrove_decisions(r, texts) for r in rules]


def datatrove_decisions_all(rules: tuple[Rule, ...], texts: list[str], workers: int = 2) -> dict[str, list[Decision]]:
    """datatrove's decisions for every rule, the texts split over ``workers`` fresh processes
    (spawned, so a caller holding a JVM or Ray is not forked): datatrove's filters run in pure
    Python, about 20 s per rule on the 12,000-document sample on one core."""
    if workers <= 1 or len(texts) < 2 * workers:
        return {r.stage: datatrove_decisions(r, texts) for r in rules}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunks = [texts[w::workers] for w in range(workers)]  # strided: the long pages sit at the end
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_datatrove_all, [rules] * workers, chunks))
    out: dict[str, list[Decision]] = {}
    for k, r in enumerate(rules):
        merged: list[Decision] = [(None, None)] * len(texts)
        for w, part in enumerate(parts):
            merged[w::workers] = part[k]
        out[r.stage] = merged
    return out


def arcforge_decisions(rule: Rule, texts: list[str], batch_rows: int = 1000) -> list[Decision]:
    from arcforge.runtime.stage import TaskContext, resolve_stage

    stage = resolve_stage(rule.stage)
    params = stage.params(**rule.params)
    out: dict[int, Decision] = {}
    for start in range(0, len(texts), batch_rows):
        chunk = texts[start:start + batch_rows]
        batch = pa.record_batch({"id": pa.array([str(start + i) for i in range(len(chunk))]), "text": pa.array(chunk)})
        res = stage.fn(batch, params, TaskContext())
        kept = res.kept if isinstance(res.kept, pa.Table) else pa.Table.from_batches([res.kept])
        for i, t in zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()):
            out[int(i)] = (None, t if rule.compares_text else None)
        if res.rejected is not None:
            for i, why in zip(res.rejected.column("id").to_pylist(), res.rejected.column("reason").to_pylist()):
                out[int(i)] = (why, None)
    return [out[i] for i in range(len(texts))]


@dataclass
class Agreement:
    rule: Rule
    documents: int
    same: int
    by_reason: dict[str, tuple[int, int]]  # reason -> (same, documents either side gave it)
    differences: list[tuple[Decision, Decision, str]]  # (datatrove, arcforge, text)

    @property
    def share(self) -> float:
        return self.same / self.documents if self.documents else 1.0

    def worst(self) -> float:
        """The lowest agreement over the reasons (and keeping), the figure the goal is about."""
        return min((s / n for s, n in self.by_reason.values() if n), default=1.0)


def agreement(rule: Rule, texts: list[str], theirs: list[Decision] | None = None) -> Agreement:
    """arcforge's decisions against datatrove's (``theirs``, computed here when not given)."""
    theirs = theirs if theirs is not None else datatrove_decisions(rule, texts)
    ours = arcforge_decisions(rule, texts)
    by_reason: dict[str, tuple[int, int]] = {}
    for why in {d[0] for d in theirs} | {d[0] for d in ours}:
        rows = [i for i in range(len(texts)) if theirs[i][0] == why or ours[i][0] == why]
        by_reason[why or "kept"] = (sum(theirs[i] == ours[i] for i in rows), len(rows))
    diffs = [(theirs[i], ours[i], texts[i]) for i in range(len(texts)) if theirs[i] != ours[i]]
    return Agreement(rule, len(texts), len(texts) - len(diffs), by_reason, diffs)


def print_table(results: list[Agreement], show: int = 5, out: Callable[[str], None] = print) -> None:
    out("| stage | datatrove | documents | agreement | lowest per reason |")
    out("|---|---|---|---|---|")
    for r in results:
        out(f"| `{r.rule.stage}` | `{r.rule.datatrove}` | {r.documents:,} | {r.share:.4%} | {r.worst():.4%} |")
    for r in results:
        out(f"\n{r.rule.stage}: " + ", ".join(f"{k} {s}/{n}" for k, (s, n) in sorted(r.by_reason.items())))
        kinds = Counter((a[0], b[0]) for a, b, _ in r.differences)
        for (a, b), c in kinds.most_common():
            out(f"  datatrove {a or 'kept'} vs arcforge {b or 'kept'}: {c}")
        for a, b, text in r.differences[:show]:
            out(f"    e.g. {a[0]} / {b[0]}: {text[:160]!r}")


def main() -> None:
    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="a fixed sample of this many documents")
    ap.add_argument("--rule", action="append", help="only these stages")
    args = ap.parse_args()
    corpus = Path(fetch_demo_corpus(quiet=True))
    texts = oracle_documents(corpus, args.n, pages=True)
    rules = [r for r in RULES if not args.rule or r.stage in args.rule]
    print(f"{len(texts):,} documents")
    theirs = datatrove_decisions_all(tuple(rules), texts)
    print_table([agreement(r, texts, theirs[r.stage]) for r in rules])


if __name__ == "__main__":
    main()
