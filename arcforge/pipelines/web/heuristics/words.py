"""Words, as every heuristic filter counts them: one tokenization per document, shared.

**The rule.** A row's language is its ``language`` column (ISO code; ``zh-Hans`` counts as
``zh``) or, without one, its script: more Han/kana than other letters is ``ja`` (any kana)
or ``zh``, more Hangul than other letters ``ko``, anything else ``en`` (datatrove's default).

* ``zh``, ``ja``: every Han, Hiragana or Katakana character is a word; the other runs
  between them are split on whitespace (datatrove uses jieba / SudachiPy, which this
  project does not ship; one character per word is the usual CJK proxy).
* ``ko``: whitespace-separated words (Korean puts spaces between words).
* every other language: ``spacy.blank(lang)``'s tokenizer, whitespace tokens dropped, as
  datatrove 0.10.1's ``SpaCyTokenizer`` (its English tokenizer); a code spaCy does not
  know uses ``spacy.blank("xx")``.

spaCy splits text at whitespace first and tokenizes each run on its own, so this module
tokenizes each *distinct* run once per process (a cache of run -> word ids) and builds a
batch's words with Arrow and numpy: split at whitespace, dictionary-encode the runs, look
up the new ones, gather. Words are ids into a process-wide vocabulary that holds, per
word, its length, whether it is all punctuation (datatrove's ``PUNCTUATION_SET``) and
whether it has a letter; the filters compute every measure over those arrays.

**Sharing.** ``tokenize`` remembers the words of the last batch it was asked for, per
document (text and mode). In a fused chain ``web.gopher_quality`` -> ``web.gopher_repetition``
the second step gets the rows the first kept, so it finds every document there and
tokenizes nothing; ``web.c4_quality`` rewrites the text, so ``web.fineweb_quality`` after it
tokenizes the new text, but only through the run cache (no spaCy call for a known run).
Both caches are per process and bounded (cleared past ``MAX_TYPES`` entries).

**Stop words.** ``en``: datatrove's eight Gopher stop words; another language:
``stopwordsiso``'s list, for ``zh``/``ja`` only its one-character entries (words are
characters there); a language without a list: the Gopher list (what datatrove applies).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from arcforge.pipelines.web.heuristics import clean_text, language_key

GOPHER_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
# datatrove.utils.text.PUNCTUATION and TERMINAL_PUNCTUATION (0.10.1)
PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)
TERMINAL_PUNCTUATION = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a\u104b"
    "\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa"
    "\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c"
    "\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f"
    "\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56"
    "\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be"
    "\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de"
    "\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3"
    "\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2"
    "\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d\U0001173e"
    "\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8"
    "\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
PUNCTUATION_SET = frozenset(PUNCTUATION) | TERMINAL_PUNCTUATION  # a word made only of these is a symbol

CJK_LANGS = ("zh", "ja")
MAX_TYPES = 4_000_000  # words or runs per process before the caches start over
_CJK = "\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff" \
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
_CJK_SPLIT = re.compile(f"[{_CJK}]|[^{_CJK}]+")
_AFFIX_RUN = re.compile(r"^\W*|\W*$")


def tokenizer_mode(language: str | None) -> str:
    lang = language_key(language) or "en"
    if lang in CJK_LANGS:
        return "cjk"
    if lang == "ko":
        return "space"
    return f"spacy:{lang}"


@lru_cache(maxsize=None)
def stop_words(language: str | None) -> frozenset[str]:
    lang = language_key(language) or "en"
    if lang == "en":
        return GOPHER_STOP_WORDS
    import stopwordsiso

    if not stopwordsiso.has_lang(lang):
        return GOPHER_STOP_WORDS
    words = frozenset(stopwordsiso.stopwords(lang))
    return frozenset(w for w in words if len(w) == 1) if lang in CJK_LANGS else words


class _Grow:
    """A numpy array that grows by doubling (the vocabulary's per-word columns)."""

    def __init__(self, dtype: type) -> None:
        self.a, self.n = np.zeros(1024, dtype), 0

    def extend(self, values: list) -> None:
        while self.n + len(values) > len(self.a):
            self.a = np.concatenate([self.a, np.zeros_like(self.a)])
        self.a[self.n:self.n + len(values)] = values
        self.n += len(values)

    @property
    def view(self) -> np.ndarray:
        return self.a[: self.n]


class Vocab:
    """Process-wide word types and what the rules need of each."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: list[str] = []
        self.length, self.symbol, self.alpha = _Grow(np.int64), _Grow(np.bool_), _Grow(np.bool_)
        self._stop: dict[object, _Grow] = {}
        self.runs: dict[str, dict[str, int]] = {}  # mode -> run -> run id
        self.run_start, self.run_count, self.run_words = _Grow(np.int64), _Grow(np.int64), _Grow(np.int64)

    def word_ids(self, words: list[str]) -> list[int]:
        new = [w for w in dict.fromkeys(words) if w not in self.ids]
        if new:
            base = len(self.words)
            self.ids.update({w: base + i for i, w in enumerate(new)})
            self.words += new
            self.length.extend([len(w) for w in new])
            self.symbol.extend([all(c in PUNCTUATION_SET for c in w) for w in new])
            self.alpha.extend([any(c.isalpha() for c in w) for w in new])
        ids = self.ids
        return [ids[w] for w in words]

    def stop_mask(self, words: frozenset[str]) -> np.ndarray:
        return self.mask(words, words.__contains__)

    def mask(self, key: object, predicate) -> np.ndarray:  # noqa: ANN001
        """``predicate(word)`` for every word, computed once per word and ``key``."""
        grow = self._stop.setdefault(key, _Grow(np.bool_))
        if grow.n < len(self.words):
            grow.extend([predicate(w) for w in self.words[grow.n:]])
        return grow.view

    def add_runs(self, mode: str, runs: list[str], words: list[list[str]]) -> list[int]:
        table = self.runs.setdefault(mode, {})
        base = self.run_count.n
        flat = [w for ws in words for w in ws]
        counts = [len(ws) for ws in words]
        starts = (self.run_words.n + np.concatenate([[0], np.cumsum(counts)[:-1]])).tolist() if runs else []
        self.run_words.extend(self.word_ids(flat))
        self.run_start.extend(starts)
        self.run_count.extend(counts)
        table.update({r: base + i for i, r in enumerate(runs)})
        return [base + i for i in range(len(runs))]


VOCAB = Vocab()
_LAST: dict[tuple[str, str], np.ndarray] = {}  # the last batch's words per (mode, text)
COUNTS = {"rows_tokenized": 0, "rows_reused": 0}  # per process: how often _LAST saved the work


def _reset_if_large() -> None:
    global VOCAB
    if len(VOCAB.words) > MAX_TYPES or VOCAB.run_count.n > MAX_TYPES:
        VOCAB = Vocab()
        _LAST.clear()


@lru_cache(maxsize=None)
def _spacy(lang: str):  # noqa: ANN202
    import spacy

    try:
        return spacy.blank(lang)
    except Exception:  # noqa: BLE001 - a code spaCy has no rules for (or whose rules need a package)
        return spacy.blank("xx")


def _run_words(mode: str, runs: list[str]) -> list[list[str]]:
    """Words of whitespace-free runs, for one mode (spaCy: one call for all the runs,
    joined by spaces, since it tokenizes each run on its own anyway)."""
    if mode == "cjk":
        return [_CJK_SPLIT.findall(r) for r in runs]
    if mode == "space":
        return [[r] for r in runs]
    out: list[list[str]] = [[] for _ in runs]
    easy = []
    for i, r in enumerate(runs):
        if len(r) > 1000 and sum(len(m) for m in _AFFIX_RUN.findall(r)) > 100:
            out[i] = re.findall(r"\w+|\S", r)  # spaCy's affix loop is quadratic on such runs
        else:
            easy.append(i)
    if easy:
        nlp = _spacy(mode.split(":", 1)[1])
        starts = np.cumsum([0] + [len(runs[i]) + 1 for i in easy[:-1]])
        with nlp.memory_zone():
            doc = nlp.tokenizer(" ".join(runs[i] for i in easy))
            texts = [t.text for t in doc]
            where = np.searchsorted(starts, [t.idx for t in doc], side="right") - 1
        for k, t in zip(where.tolist(), texts):
            out[easy[k]].append(t)
    return out


def _tokenize_runs(text: pa.Array, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(word ids, words per row) for rows of one run-local mode, vectorised over the batch."""
    pieces = pc.utf8_split_whitespace(text)  # Arrow's whitespace is str.isspace()'s (checked in the tests)
    flat = pc.list_flatten(pieces)
    parents = pc.list_parent_indices(pieces)
    real = pc.greater(pc.utf8_length(flat), 0)
    flat, parents = flat.filter(real), parents.filter(real).to_numpy()
    encoded = pc.dictionary_encode(flat)
    uniq = encoded.dictionary.to_pylist()
    table = VOCAB.runs.setdefault(mode, {})
    run_ids = [table.get(r, -1) for r in uniq]
    missing = [i for i, r in enumerate(run_ids) if r < 0]
    if missing:
        new = [uniq[i] for i in missing]
        for i, rid in zip(missing, VOCAB.add_runs(mode, new, _run_words(mode, new))):
            run_ids[i] = rid
    rid = np.asarray(run_ids, dtype=np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]
    count, start = VOCAB.run_count.view[rid], VOCAB.run_start.view[rid]
    total = int(count.sum())
    gather = np.repeat(start - (np.cumsum(count) - count), count) + np.arange(total, dtype=np.int64)
    per_row = np.bincount(parents, weights=count, minlength=len(text)).astype(np.int64)
    return VOCAB.run_words.view[gather], per_row


class Words:
    """One batch's words: ``ids`` (vocabulary ids, row after row) and ``offsets``."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets
        self.counts = np.diff(offsets)
        self.parents = np.repeat(np.arange(len(self.counts)), self.counts)
        self.vocab = VOCAB

    def per_row(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.parents, weights=values, minlength=len(self.counts))

    def lengths(self) -> np.ndarray:
        return self.vocab.length.view[self.ids]

    def select(self, rows: np.ndarray) -> Words:
        """The words of some rows (ascending indices), as their own batch."""
        if len(rows) == len(self.counts):
            return self
        keep = np.zeros(len(self.counts), dtype=bool)
        keep[rows] = True
        return Words(self.ids[keep[self.parents]], np.concatenate([[0], np.cumsum(self.counts[rows])]))

    def row(self, i: int) -> list[str]:
        return [self.vocab.words[j] for j in self.ids[self.offsets[i]:self.offsets[i + 1]]]


def tokenize(text: pa.Array, modes: list[str], remember: bool = True) -> Words:
    """Words of every row (null rows have none), each row in its mode; ``remember``: keep
    them as the last batch's (see the module doc)."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    _reset_if_large()
    texts = text.to_pylist()
    keys = [(m, t or "") for m, t in zip(modes, texts)]
    found = [_LAST.get(k) for k in keys]
    todo: dict[str, list[int]] = {}
    for i, f in enumerate(found):
        if f is None:
            todo.setdefault(keys[i][0], []).append(i)
    COUNTS["rows_reused"] += len(keys) - sum(len(r) for r in todo.values())
    for mode, rows in todo.items():
        COUNTS["rows_tokenized"] += len(rows)
        ids, counts = _tokenize_runs(text.take(pa.array(rows, pa.int64())), mode)
        ends = np.cumsum(counts)
        for i, a, b in zip(rows, (ends - counts).tolist(), ends.tolist()):
            found[i] = ids[a:b]
    if remember:
        _LAST.clear()
        _LAST.update(zip(keys, found))
    counts = np.asarray([len(f) for f in found], dtype=np.int64)
    ids = np.concatenate(found) if found else np.zeros(0, np.int64)
    return Words(ids.astype(np.int64, copy=False), np.concatenate([[0], np.cumsum(counts)]))


def split_words(text: str, language: str | None = "en") -> list[str]:
    """One document's words (tests, inspection); the stages use ``tokenize``."""
    return tokenize(clean_text([text]), [tokenizer_mode(language)]).row(0)

