"""Real templated pages with a known template label, for evaluating near-duplicate removal.

The demo corpus holds real documentation pages (``sources/django-docs.jsonl.gz``, Django
5.2.8's reST docs, and ``jsonl/docutils-docs.jsonl.gz``). Its Django bundle leaves out
``docs/releases/`` (``arcforge.pipelines.demo.pins``), so the release notes are not there;
the families below are the real templated pages it does hold, each a set of pages written
from one template with different fill, found by a rule on the page (not a hand-picked list):

* ``toctree-index``: Django section index pages, a title, at most a line of intro and a
  ``.. toctree::`` of page names (a page with a toctree, under 800 characters);
* ``server-howto``: Django's "How to use Django with <server>" deployment pages (Daphne,
  Hypercorn, Uvicorn, Gunicorn, uWSGI, mod_wsgi): the same sections, other commands;
* ``relationship-example``: Django's model relationship examples (many-to-many,
  many-to-one, one-to-one): models, then the same walk through the API;
* ``menu-bar``: docutils' ``header*.txt`` include files, a navigation bar with other links.

Every other page of both bundles is ``distinct`` (label None). An ideal near-duplicate
filter removes all but one page of each family and no distinct page.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

SOURCES = (("django-docs", "sources/django-docs.jsonl.gz"), ("docutils-docs", "jsonl/docutils-docs.jsonl.gz"))
_TITLE = re.compile(r"^=+\n(.+)\n=+\n", re.M)


def template_of(source: str, doc_id: str, text: str) -> str | None:
    """The family a page belongs to, or None for a distinct page."""
    if source == "docutils-docs":
        return "menu-bar" if re.fullmatch(r"header\d*\.txt", doc_id) else None
    if ".. toctree::" in text and len(text) < 800:
        return "toctree-index"
    title = _TITLE.search(text)
    if title and title.group(1).strip().startswith("How to use Django with"):
        return "server-howto"
    if doc_id.startswith("topics/db/examples/") and doc_id != "topics/db/examples/index.txt":
        return "relationship-example"
    return None


def templated_set(corpus_dir: str | Path | None = None) -> tuple[list[dict[str, str]], list[str | None]]:
    """``(docs, labels)``: every page of the two bundles as ``{"id", "text", "source"}`` (ids
    prefixed by the bundle) and its family (None: distinct), in file order."""
    if corpus_dir is None:
        from arcforge.pipelines.demo.corpus import demo_corpus_dir

        corpus_dir = demo_corpus_dir()
    docs: list[dict[str, str]] = []
    labels: list[str | None] = []
    for source, rel in SOURCES:
        with gzip.open(Path(corpus_dir) / rel, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if not row.get("text", "").strip():
                    continue
                docs.append({"id": f"{source}/{row['id']}", "text": row["text"], "source": source})
                labels.append(template_of(source, row["id"], row["text"]))
    return docs, labels


def removal_rates(labels: list[str | None], removed: list[bool]) -> dict[str, float]:
    """Share of template clones removed (of the sum over families of size - 1: one page of
    each family should stay) and share of distinct pages removed."""
    fam: dict[str, int] = {}
    fam_removed = 0
    distinct = distinct_removed = 0
    for label, r in zip(labels, removed):
        if label is None:
            distinct += 1
            distinct_removed += int(r)
        else:
            fam[label] = fam.get(label, 0) + 1
            fam_removed += int(r)
    clones = sum(k - 1 for k in fam.values())
    return {
        "clones": clones,
        "clones_removed": fam_removed / clones if clones else 0.0,
        "distinct": distinct,
        "distinct_removed": distinct_removed / distinct if distinct else 0.0,
    }
