"""Programming languages by file extension, their line comments, and their tree-sitter parsers.

The grammars are the per-language wheels (``tree-sitter-python``, ``-javascript``,
``-typescript``, ``-c``, ``-cpp``, ``-java``, ``-go``), pinned in ``requirements.lock``: each ships its compiled grammar,
so nothing is downloaded at run time (``tree-sitter-language-pack`` 1.x would fetch grammars
on first use). A language without a grammar here is still packed, with no import edges.
"""

from __future__ import annotations

import posixpath
from functools import lru_cache
from typing import Any

# extension -> language; the names are GitHub Linguist's, lower-cased
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "tsx",
    ".c": "c", ".h": "c",
    ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".hpp": "c++", ".hh": "c++", ".hxx": "c++",
    ".java": "java", ".go": "go", ".rs": "rust", ".rb": "ruby", ".php": "php", ".cs": "c#",
    ".kt": "kotlin", ".scala": "scala", ".swift": "swift", ".lua": "lua", ".sh": "shell",
    ".r": "r", ".pl": "perl", ".sql": "sql", ".hs": "haskell",
    ".css": "css", ".html": "html", ".htm": "html",
}
_HASH = {"python", "ruby", "shell", "r", "perl"}
_DASH = {"sql", "lua", "haskell"}
# the grammar of each language whose imports are read: "wheel module[:function]" (imported lazily)
GRAMMARS: dict[str, str] = {
    "python": "tree_sitter_python", "javascript": "tree_sitter_javascript", "c": "tree_sitter_c",
    "c++": "tree_sitter_cpp", "java": "tree_sitter_java", "go": "tree_sitter_go",
    "typescript": "tree_sitter_typescript:language_typescript", "tsx": "tree_sitter_typescript:language_tsx",
}
JS_LIKE = ("javascript", "typescript", "tsx")


def language_of(path: str) -> str | None:
    """The language of a file by its extension (case-insensitive), or None."""
    return EXTENSIONS.get(posixpath.splitext(path)[1].lower())


def path_comment(path: str, language: str | None) -> str:
    """The line that names a file where it starts inside a packed repository, in the
    language's own line-comment syntax, so the packed text is still valid code in most
    languages (``#`` for languages without a known syntax: plain text). CSS and HTML have
    only block comments."""
    if language == "css":
        return f"/* {path} */"
    if language == "html":
        return f"<!-- {path} -->"
    if language in _DASH:
        return f"-- {path}"
    if language in _HASH or language is None:
        return f"# {path}"
    return f"// {path}"


@lru_cache(maxsize=None)
def parser(language: str) -> Any:
    """A tree-sitter parser for ``language`` (one per process), or None without a grammar."""
    import importlib

    import tree_sitter

    grammar = GRAMMARS.get(language)
    if grammar is None:
        return None
    module, _, function = grammar.partition(":")
    return tree_sitter.Parser(tree_sitter.Language(getattr(importlib.import_module(module), function or "language")()))


__all__ = ["EXTENSIONS", "GRAMMARS", "JS_LIKE", "language_of", "parser", "path_comment"]
