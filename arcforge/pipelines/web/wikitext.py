"""MediaWiki wikitext to plain text, by regular expressions (``text.wikipedia_dump``).

Not a MediaWiki parser: a fixed sequence of regex rules (``wikitext_to_text``'s docstring
lists them) that keeps the prose, the anchor text of links and, optionally, the TeX of
``<math>`` as ``$...$``, and drops references, templates, tables, files and categories.
Nested constructs are peeled innermost first by repeated passes. Used by
:mod:`arcforge.pipelines.web.sources` and the demo's labels.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable


_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_MATH = re.compile(r"<(math|chem|ce)\b([^>]*?)(?:/>|>(.*?)</\1\s*>)", re.DOTALL | re.IGNORECASE)
# Elements dropped with their content; each also appears self-closing (<ref name="a" />).
_DROP_ELEMENTS = ("ref", "references", "gallery", "timeline", "imagemap", "score", "graph", "mapframe", "templatedata")
_DROP_SELF_CLOSING = re.compile(r"<(?:{})\b[^>]*/\s*>".format("|".join(_DROP_ELEMENTS)), re.IGNORECASE)
_DROP_PAIRED = re.compile(r"<({})\b[^>]*>.*?</\1\s*>".format("|".join(_DROP_ELEMENTS)), re.DOTALL | re.IGNORECASE)
# Innermost constructs: no nested opener or closer inside, so repeated passes peel nesting.
_TEMPLATE = re.compile(r"\{\{((?:(?!\{\{|\}\}).)*)\}\}", re.DOTALL)
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.DOTALL)
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*)\]\]", re.DOTALL)
_EXT_LINK = re.compile(r"\[(?:(?:https?|ftp)://|//|mailto:)[^\s\]]+(?:[ \t]+([^\]\n]*))?\]", re.IGNORECASE)
_LINE_BREAK_TAG = re.compile(r"<(?:br|hr)\b[^>]*>|</?(?:p|div|li|ul|ol|blockquote|center|poem)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_HEADING = re.compile(r"^(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.MULTILINE)
_QUOTES = re.compile(r"'''''|'''|''")
_LIST_MARKER = re.compile(r"^[*#:;]+[ \t]*", re.MULTILINE)
_TABLE_DEBRIS = re.compile(r"^[ \t]*(?:\{\||\|).*$", re.MULTILINE)  # rows of unclosed tables/templates
_HRULE = re.compile(r"^-{4,}[ \t]*$", re.MULTILINE)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\([\s,;:]*\)")
_PAREN_LEADING_PUNCT = re.compile(r"\([\s,;:]+")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([.,;:])(?=\s|$)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_EQUALS, _PIPE = "\ue002", "\ue003"

_HIDDEN_LINK_NS = {"file", "image", "media", "category"}
_TEXT_TEMPLATES = {"math", "mvar", "nowrap", "nobr", "small", "smaller", "big", "var", "em", "strong"}
_RANGE_WORDS = {"to", "-", "–", "and", "or", "by", "x", "×", "+"}


def _positional(inner: str) -> tuple[str, list[str]]:
    """Template name and positional arguments (an argument with '=' is a named one)."""
    name, *args = inner.split("|")
    return name.strip().lower().replace("_", " "), [a.strip() for a in args if "=" not in a]


def _template(m: re.Match[str]) -> str:
    """Most templates (infoboxes, citations, navboxes) are dropped; a few render inline text."""
    inner = m.group(1)
    name, args = _positional(inner)
    if name in ("=", "!"):  # escapes; restored after the surrounding template is parsed
        return _EQUALS if name == "=" else _PIPE
    if name in _TEXT_TEMPLATES and args:
        return args[0]
    if name in ("chem", "chem2", "chemf") and args:  # {{chem|C|n|H|2n+2}} -> CnH2n+2
        return "".join(args)
    if name == "lang" and len(args) >= 2:
        return args[1]
    if name in ("convert", "cvt") and len(args) >= 2:
        if len(args) >= 4 and args[1] in _RANGE_WORDS:
            return " ".join(args[:4])
        return f"{args[0]} {args[1]}"
    return ""


def _link(m: re.Match[str]) -> str:
    """[[target|label]] -> label, [[target]] -> target; files, categories, interlanguage -> ''."""
    target, sep, label = m.group(1).partition("|")
    target = target.strip()
    if target.startswith(":"):  # [[:Category:X]] is a visible link, not a categorisation
        target = target[1:].strip()
    elif ":" in target:
        prefix = target.split(":", 1)[0].strip()
        if prefix.lower() in _HIDDEN_LINK_NS or _INTERLANGUAGE.fullmatch(prefix):
            return ""
    if label:
        return label  # MediaWiki shows everything after the first pipe
    if sep:  # pipe trick: [[Paris, Texas|]] -> Paris
        target = re.sub(r"\s*\([^)]*\)$", "", target.split(":", 1)[-1]).split(",")[0]
    return target


def _repeat(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], s: str, limit: int = 50) -> str:
    """Apply an innermost-construct substitution until nothing nested is left."""
    for _ in range(limit):
        s, n = pattern.subn(repl, s)
        if not n:
            break
    return s


def wikitext_to_text(wikitext: str, *, keep_math: bool = True) -> tuple[str, int]:
    """Plain text of a wikitext page and the number of math formulas kept.

    Rules, in order: comments go; ``<math>`` (and ``<chem>``) is set aside as ``$...$``
    (``$$...$$`` for ``display="block"``) or dropped; references, galleries and similar
    elements go with their content; file, category and interlanguage links go, other
    links keep their anchor text (innermost first, so a file caption's links resolve
    before the file link is dropped); templates and tables go, innermost first, except
    a few that render inline text (``{{math}}``, ``{{nowrap}}``, ``{{lang}}``,
    ``{{convert}}``); external links keep their label; remaining HTML tags go but keep their content;
    headings become plain lines; quote markup, list markers and magic words go;
    HTML entities are decoded and whitespace is tidied.
    """
    maths: list[str] = []

    def set_aside(m: re.Match[str]) -> str:
        body = (m.group(3) or "").strip()
        if not keep_math or not body:
            return ""
        if m.group(1).lower() in ("chem", "ce"):
            body = rf"\ce{{{body}}}"
        display = re.search(r"display\s*=\s*[\"']?block", m.group(2) or "", re.IGNORECASE)
        maths.append(f"$${body}$$" if display else f"${body}$")
        return f"\ue000{len(maths) - 1}\ue001"

    s = _COMMENT.sub("", wikitext)
    s = _MATH.sub(set_aside, s)
    s = _DROP_SELF_CLOSING.sub("", s)
    s = _DROP_PAIRED.sub("", s)
    # Links before templates: a link's pipe inside a template ({{lang|ja|[[a|b]]}}) must
    # not be read as the template's argument separator.
    s = _repeat(_LINK, _link, s)
    s = _repeat(_TEMPLATE, _template, s)
    s = _repeat(_TABLE, "", s)
    s = _TABLE_DEBRIS.sub("", s)
    s = _EXT_LINK.sub(lambda m: m.group(1) or "", s)
    s = _LINE_BREAK_TAG.sub("\n", s)
    s = _ANY_TAG.sub("", s)
    s = _HEADING.sub(lambda m: f"\n{m.group(2)}\n", s)
    s = _QUOTES.sub("", s)
    s = _LIST_MARKER.sub("", s)
    s = _HRULE.sub("", s)
    s = _MAGIC_WORD.sub("", s)
    s = html.unescape(s)
    s = _EMPTY_PARENS.sub("", s)
    s = _PAREN_LEADING_PUNCT.sub("(", s)
    s = _SPACES.sub(" ", s)
    s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    s = "\n".join(line.strip() for line in s.split("\n"))
    s = _BLANK_LINES.sub("\n\n", s).strip()
    s = s.replace(_EQUALS, "=").replace(_PIPE, "|")
    s = _PLACEHOLDER.sub(lambda m: maths[int(m.group(1))], s)
    return s, len(maths)


__all__ = ["wikitext_to_text"]
