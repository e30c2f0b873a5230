"""Real templated pages with a known template label, for evaluating near-duplicate removal.

The main labelled set is Django 5.2.8's release notes (``docs/releases/*.txt``, the demo
corpus's ``sources/django-releases.jsonl.gz``, 367 pages). Most patch releases (``X.Y.Z``)
are one of a few templates with other fill: a title, a date, one intro sentence ("Django
2.2.5 fixes several bugs in 2.2.4."), then ``CVE-...`` sections and/or a ``Bugfixes`` list.
The family is decided by a rule on the page (``release_family``), not a hand-picked list:

* only a patch-release page (id ``X.Y.Z.txt``) can be in a family; its *intro* is the
  first paragraph after the title, the date and a "Welcome to ..." line;
* security: the intro says it fixes security issue(s) (``security issue(s)``,
  ``security-related``, ``security fix``, ``the <n>th security release``; a mention of
  "a regression in the X security release" does not count);
* bug: the intro mentions ``bug(s)``, ``bugfix``, ``regression(s)``, a ``packaging
  error/problem`` or ``release problems``;
* family ``security`` (security, no bug: 102 pages), ``bugfix`` (bug, no security: 139)
  or ``security+bugfix`` (both, a third family: 93 pages: CVE sections then a Bugfixes list);
* an intro that says neither falls back on the body: a ``Bugfixes`` heading makes it
  ``bugfix`` (the three "fixes a compatibility / potential log injection issue" pages);
* everything else is distinct (label None): the 26 feature releases (``0.95.txt``,
  ``X.Y.txt``: long, each its own content, though from 1.4 on they open with one
  "Welcome to Django X.Y! These release notes cover ..." paragraph), ``index.txt``,
  ``security.txt`` (the CVE archive), ``1.0-porting-guide.txt`` and the four patch pages
  that fit no rule (1.3.3, 1.3.4, 1.7.8, 2.2.17): 33 distinct release pages in all. One
  is a known miss: 1.3.4 is a security release whose intro ("This is the fourth release
  in the Django 1.3 series.") does not say so; its text is 1.4.2's with another version.

Extra distinct pages: every page of the Django docs (``sources/django-docs.jsonl.gz``) and
the docutils docs (``jsonl/docutils-docs.jsonl.gz``), except the few that are themselves
templated, kept as four small families by the earlier rules (labelling them distinct would
count removing a real near-copy as an error):

* ``toctree-index``: Django section index pages (a ``.. toctree::``, under 800 characters);
* ``server-howto``: "How to use Django with <server>" deployment pages;
* ``relationship-example``: ``topics/db/examples/*`` (many-to-many, many-to-one, one-to-one);
* ``menu-bar``: docutils' ``header*.txt`` navigation-bar include files.

With the demo corpus v3: 694 pages, 362 in 7 families (355 clones), 332 distinct (33
release pages, 299 docs pages); ``templated_set`` gives the exact counts. An ideal
near-duplicate filter removes all but one page of each family and no distinct page.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

SOURCES = (
    ("django-releases", "sources/django-releases.jsonl.gz"),
    ("django-docs", "sources/django-docs.jsonl.gz"),
    ("docutils-docs", "jsonl/docutils-docs.jsonl.gz"),
)
RELEASE_FAMILIES = ("bugfix", "security", "security+bugfix")
_TITLE = re.compile(r"^=+\n(.+)\n=+\n", re.M)
_HEAD = re.compile(r"\A=+\n.+\n=+\n+(?:\*[^*\n]+\*\n+)?")  # title, then the *date* line
_PATCH = re.compile(r"\d+\.\d+\.\d+\.txt")
_SEC = re.compile(r"security[- ](?:issues?|related|fix(?:es)?|regression)|\bthe \w+ security release\b", re.I)
_BUG = re.compile(r"\b(?:bugs?|bugfix|regressions?|packaging (?:error|problem)|release problems)\b", re.I)
_AFTER_SEC_RELEASE = re.compile(r"in the [\d.]+ security release")
_BUGFIXES = re.compile(r"^Bugfixes\n=+$", re.M)


def release_intro(text: str) -> str:
    """The first paragraph after the title, the date and a "Welcome to ..." line, on one line."""
    head = _HEAD.match(text)
    for para in re.split(r"\n\s*\n", text[head.end():] if head else text):
        if para.strip() and not para.startswith("Welcome to"):
            return " ".join(para.split())
    return ""


def release_family(doc_id: str, text: str) -> str | None:
    """``bugfix``, ``security``, ``security+bugfix`` or None (module docstring)."""
    if not _PATCH.fullmatch(doc_id):
        return None
    intro = _AFTER_SEC_RELEASE.sub("", release_intro(text))
    sec, bug = bool(_SEC.search(intro)), bool(_BUG.search(intro))
    if not (sec or bug):
        bug = bool(_BUGFIXES.search(text))
    if sec and bug:
        return "security+bugfix"
    return "security" if sec else "bugfix" if bug else None


def template_of(source: str, doc_id: str, text: str) -> str | None:
    """The family a page belongs to, or None for a distinct page."""
    if source == "django-releases":
        return release_family(doc_id, text)
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
    """``(docs, labels)``: every page of the three bundles as ``{"id", "text", "source"}`` (ids
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
    each family should stay; a family counts at most size - 1 removals, so removing every
    page of a family is not scored above 100%) and share of distinct pages removed."""
    fam: dict[str, int] = {}
    fam_removed: dict[str, int] = {}
    distinct = distinct_removed = 0
    for label, r in zip(labels, removed):
        if label is None:
            distinct += 1
            distinct_removed += int(r)
        else:
            fam[label] = fam.get(label, 0) + 1
            fam_removed[label] = fam_removed.get(label, 0) + int(r)
    clones = sum(k - 1 for k in fam.values())
    hit = sum(min(fam_removed[f], k - 1) for f, k in fam.items())
    return {
        "clones": clones,
        "clones_removed": hit / clones if clones else 0.0,
        "distinct": distinct,
        "distinct_removed": distinct_removed / distinct if distinct else 0.0,
    }
