"""``web.gopher_quality``: Gopher's quality rules (Rae et al. 2021), as datatrove's
``GopherQualityFilter`` (datatrove 0.2.0) applies them, as one map stage.

Rules, order and reason names are datatrove's; the first failing rule rejects the row and
its ``detail`` gives the measured value. Words are NLTK's ``word_tokenize`` tokens
(Punkt sentences, then the Treebank/NLTK word rules), which this module re-implements
without NLTK: the word rules exactly, the Punkt sentence split approximately (a token
ending in a period ends a sentence unless it is a known abbreviation, an initial, an
ellipsis or a number before a lower-case word), since only that decides whether a
sentence-final period becomes its own token.

Per row (Python): the word tokenization and the per-word measures (non-symbol words,
their mean length, alphabetic words, stop words). Vectorised (pyarrow / numpy): the
``#``, ``...`` and ``…`` counts, line splitting and the bullet / end-ellipsis line counts,
and every threshold comparison.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from arcforge.runtime.stage import MapStage, Output, Resources, StageParams, TaskContext, split_rejected

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # datatrove's list

PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)  # datatrove.utils.text.PUNCTUATION: a word made only of these is a symbol
PUNCTUATION_SET = frozenset(PUNCTUATION)

THRESHOLDS = (
    "min_doc_words", "max_doc_words", "min_avg_word_length", "max_avg_word_length",
    "max_symbol_word_ratio", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
    "max_non_alpha_words_ratio", "min_stop_words",
)


class GopherOverride(BaseModel):
    """Some of the thresholds for one language; an unset field keeps the stage's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_doc_words: int | None = None
    max_doc_words: int | None = None
    min_avg_word_length: float | None = None
    max_avg_word_length: float | None = None
    max_symbol_word_ratio: float | None = None
    max_bullet_lines_ratio: float | None = None
    max_ellipsis_lines_ratio: float | None = None
    max_non_alpha_words_ratio: float | None = None
    min_stop_words: int | None = None
    stop_words: tuple[str, ...] | None = None


class GopherQualityParams(StageParams):
    """datatrove's defaults; ``None`` (or 0, as datatrove tests truthiness) disables a rule."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = STOP_WORDS
    language_overrides: dict[str, GopherOverride] = {}

    def for_language(self, language: str | None) -> GopherQualityParams:
        over = self.language_overrides.get(language) if language is not None else None
        if over is None:
            return self
        return self.model_copy(update={k: getattr(over, k) for k in over.model_fields_set})


# --- NLTK's word rules (nltk.tokenize.destructive.NLTKWordTokenizer), re-implemented ---
_STARTING_QUOTES = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r"^\""), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
]
_ENDING_QUOTES = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_PUNCT = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*+)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
]
_PARENS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DASHES = (re.compile(r"--"), r" -- ")
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b", r"(?i)\b(gon)(?#X)(na)\b",
    r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b", r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)",
    r"(?i) ('t)(?#X)(is)\b", r"(?i) ('t)(?#X)(was)\b",
)]


def treebank_words(sentence: str) -> list[str]:
    """NLTK's word rules on one sentence."""
    text = sentence
    for rx, sub in _STARTING_QUOTES:
        text = rx.sub(sub, text)
    for rx, sub in _PUNCT:
        text = rx.sub(sub, text)
    text = _PARENS[0].sub(_PARENS[1], text)
    text = _DASHES[0].sub(_DASHES[1], text)
    text = " " + text + " "
    for rx, sub in _ENDING_QUOTES:
        text = rx.sub(sub, text)
    for rx in _CONTRACTIONS:
        text = rx.sub(r" \1 \2 ", text)
    return text.split()


# --- an approximation of Punkt's English sentence split ---
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr messrs inc ltd co corp cie bros vs jan feb aug sep sept oct nov dec "
    "mon tues wed fri gen col maj adm lt sen rep reps ave ft mg yr chg cos ok pa ga va vt ky ala "
    "ariz calif colo conn fla ill kan mich minn nev okla ore tenn wash wis u.s u.s.a u.k u.n "
    "u.s.s.r d.c n.y n.j p.m a.m ph.d m.b.a".split()
)
SENT_STARTERS = frozenset(
    "most he since so both these it nevertheless this indeed however instead under similarly some "
    "though while when in despite although nonetheless thus there if the nor separately moreover "
    "but they yet many according sales among meanwhile even i".split()
)
_CANDIDATE = re.compile(r"\S*[.?!](?=(?:[?!)\";}\]\*:@\'\({\[])|\s+(\S+))")
_NUMBER = re.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_LEAD = re.compile(r"^[\"'(\[{<«“‘`]+")
_TRAIL = re.compile(r"[\"')\]}>»”’]*")


def _is_break(token: str, nxt: str | None) -> bool:
    if not token.endswith("."):
        return True  # ? and !
    stem = _LEAD.sub("", token)[:-1].lower()
    if stem.endswith(".") or stem == "":
        return False  # an ellipsis ("...") is no break for the word rules
    nxt_clean = _LEAD.sub("", nxt or "")
    first = nxt_clean[:1]
    starter = first.isupper() and nxt_clean.lower().rstrip(".,;:!?") in SENT_STARTERS
    if stem in ABBREVIATIONS or stem.rsplit("-", 1)[-1] in ABBREVIATIONS:
        return starter
    if len(stem) == 1 and stem.isalpha():
        return False  # an initial
    if _NUMBER.match(stem):
        return not first.islower()
    return True


def sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _CANDIDATE.finditer(text):
        if _is_break(m.group(0), m.group(1)):
            end = m.end()
            end += len(_TRAIL.match(text, end).group(0))
            out.append(text[start:end])
            start = end
    out.append(text[start:])
    return [s for s in (s.strip() for s in out) if s]


def word_tokenize(text: str) -> list[str]:
    """NLTK's ``word_tokenize`` (English), as this module reproduces it."""
    return [w for s in sentences(text) for w in treebank_words(s)]


# --- the measures and the rules ---
def _word_measures(texts: list[str | None], stop_words: frozenset[str]) -> np.ndarray:
    """Per row: n_words, n_non_symbol_words, mean non-symbol word length, alpha words, stop words."""
    out = np.zeros((len(texts), 5), dtype=np.float64)
    for i, text in enumerate(texts):
        words = word_tokenize(text or "")
        lengths = [len(w) for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
        out[i] = (
            len(words),
            len(lengths),
            (sum(lengths) / len(lengths)) if lengths else np.nan,
            sum(any(c.isalpha() for c in w) for w in words),
            sum(w in stop_words for w in words),
        )
    return out


_LINE_BREAKS = r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\x{2028}\x{2029}]"  # str.splitlines()


def _line_measures(text: pa.Array) -> dict[str, np.ndarray]:
    n = len(text)
    num = lambda a: np.asarray(pc.fill_null(a, 0).to_numpy(zero_copy_only=False), dtype=np.float64)  # noqa: E731
    hashes = num(pc.count_substring(text, "#"))
    dots = num(pc.count_substring(text, "...")) + num(pc.count_substring(text, "…"))
    # splitlines() drops the empty piece after a final line break; arrow keeps it
    trimmed_end = pc.replace_substring_regex(text, f"(?:{_LINE_BREAKS})$", "", max_replacements=1)
    lines = pc.split_pattern_regex(trimmed_end, _LINE_BREAKS)
    flat = pc.list_flatten(lines)
    parents = pc.list_parent_indices(lines).to_numpy()
    empty_doc = np.asarray(pc.fill_null(pc.equal(pc.utf8_length(text), 0), True).to_numpy(zero_copy_only=False), dtype=bool)
    real = ~empty_doc[parents]  # "" has no lines for splitlines(), one empty piece for arrow
    left = pc.utf8_ltrim(flat, " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
                         "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
    right = pc.utf8_rtrim(flat, " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
                          "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
    b = lambda a: np.asarray(a.to_numpy(zero_copy_only=False), dtype=bool)  # noqa: E731
    bullet = (b(pc.starts_with(left, "•")) | b(pc.starts_with(left, "-"))) & real
    ell = (b(pc.ends_with(right, "...")) | b(pc.ends_with(right, "…"))) & real
    return {
        "hashes": hashes,
        "ellipsis": dots,
        "n_lines": np.bincount(parents, weights=real, minlength=n),
        "bullet_lines": np.bincount(parents, weights=bullet, minlength=n),
        "ellipsis_lines": np.bincount(parents, weights=ell, minlength=n),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def gopher_reasons(text: pa.Array, params: GopherQualityParams, language: pa.Array | None = None) -> tuple[list, list]:
    """(reason or None, detail or None) per row, datatrove's rules in datatrove's order."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(text)
    texts = text.to_pylist()
    langs = language.to_pylist() if language is not None else [None] * n
    reasons = np.full(n, None, dtype=object)
    details = np.full(n, None, dtype=object)
    lines = _line_measures(text)
    groups: dict[object, list[int]] = {}
    for i, lang in enumerate(langs):
        groups.setdefault(lang if lang in params.language_overrides else None, []).append(i)
    for lang, rows in groups.items():
        p = params.for_language(lang)
        idx = np.asarray(rows, dtype=np.int64)
        wm = _word_measures([texts[i] for i in rows], frozenset(p.stop_words))
        n_words, n_ns, avg, alpha, stops = wm.T
        lm = {k: v[idx] for k, v in lines.items()}
        checks = [
            ("gopher_short_doc", p.min_doc_words, lambda t: n_ns < t, n_ns, "non_symbol_words"),
            ("gopher_long_doc", p.max_doc_words, lambda t: n_ns > t, n_ns, "non_symbol_words"),
            ("gopher_below_avg_threshold", p.min_avg_word_length, lambda t: avg < t, avg, "avg_word_length"),
            ("gopher_above_avg_threshold", p.max_avg_word_length, lambda t: avg > t, avg, "avg_word_length"),
            ("gopher_too_many_hashes", p.max_symbol_word_ratio,
             lambda t: _ratio(lm["hashes"], n_words) > t, _ratio(lm["hashes"], n_words), "hash_word_ratio"),
            ("gopher_too_many_ellipsis", p.max_symbol_word_ratio,
             lambda t: _ratio(lm["ellipsis"], n_words) > t, _ratio(lm["ellipsis"], n_words), "ellipsis_word_ratio"),
            ("gopher_too_many_bullets", p.max_bullet_lines_ratio,
             lambda t: _ratio(lm["bullet_lines"], lm["n_lines"]) > t, _ratio(lm["bullet_lines"], lm["n_lines"]),
             "bullet_lines_ratio"),
            ("gopher_too_many_end_ellipsis", p.max_ellipsis_lines_ratio,
             lambda t: _ratio(lm["ellipsis_lines"], lm["n_lines"]) > t, _ratio(lm["ellipsis_lines"], lm["n_lines"]),
             "ellipsis_lines_ratio"),
            ("gopher_below_alpha_threshold", p.max_non_alpha_words_ratio,
             lambda t: _ratio(alpha, n_words) < t, _ratio(alpha, n_words), "alpha_word_ratio"),
            ("gopher_enough_stop_words", p.min_stop_words, lambda t: stops < t, stops, "stop_words"),
        ]
        open_ = np.ones(len(rows), dtype=bool)
        for why, threshold, fails, value, label in checks:
            if not threshold:  # datatrove tests truthiness: None and 0 disable a rule
                continue
            with np.errstate(invalid="ignore"):
                hit = np.asarray(fails(threshold), dtype=bool) & open_
            for j in np.flatnonzero(hit):
                v = value[j]
                reasons[idx[j]] = why
                details[idx[j]] = f"{label}={int(v) if float(v).is_integer() else round(float(v), 6)} (threshold {threshold})"
            open_ &= ~hit
    return reasons.tolist(), details.tolist()


def gopher_quality(batch: pa.RecordBatch, params: GopherQualityParams, ctx: TaskContext) -> Output:
    names = batch.schema.names
    language = batch.column("language") if "language" in names and params.language_overrides else None
    reasons, details = gopher_reasons(batch.column("text"), params, language)
    for r in reasons:
        if r is not None:
            ctx.stats.update(f"filter.{r}")
    return split_rejected(batch, reasons, details)


GOPHER_QUALITY = MapStage(
    "web.gopher_quality",
    GopherQualityParams,
    gopher_quality,
    requires=("text",),
    resources=Resources(cpus=1),
    engine="local",
    doc="Gopher's quality rules as datatrove's GopherQualityFilter applies them (reasons gopher_*).",
)
