"""Which files of its own repository a source file imports: tree-sitter reads the imports
(the C preprocessor's ``#include`` lines are read as lines),
``RepoIndex`` resolves them against the repository's paths.

Reading (``imports``, per file, on the workers) gives *specifiers*, the import as written:

* Python: ``a.b`` for ``import a.b``; ``a.b|n`` for ``from a.b import n`` (the submodule
  ``a.b.n`` if the repository has it, else the module ``a.b``); relative imports keep their
  dots (``.x|y``, ``..|m``). Imports inside functions count too.
* JavaScript and TypeScript (``.ts``, ``.tsx``): the string of ``import … from``, ``export … from``, ``import "…"``,
  ``import("…")`` and ``require("…")``.
* C and C++: ``#include "…"``, and ``#include <…>`` kept with its brackets, read line by
  line as the preprocessor does (``c_includes``), not by tree-sitter.
* Java: ``import a.b.C``, ``import a.b.*`` and ``import static a.b.C.m``.
* Go: the import path.

Resolving (``RepoIndex.resolve``, per repository, once all its paths are known) keeps only
what names a file of the repository; everything else (the standard library, third-party
packages) is *external* and counted, not an edge:

* Python: relative imports from the file's package; an absolute name first beside a file
  that is not in a package (a script's directory is on ``sys.path``), then by the module
  name every file has from its chain of ``__init__.py`` packages (``src/pkg/a.py`` is
  ``pkg.a`` when ``src/pkg/__init__.py`` exists); two files with one name: the shorter path.
* JavaScript and TypeScript: ``./`` and ``../`` paths, with the extensions Node and bundlers try and
  ``index`` files; bare package names are external.
* C/C++: ``"…"`` beside the including file, then from the repository's root, then the
  shortest path that ends with the included path (an ``-I`` directory's header); ``<…>``
  only the last way (a project's own ``<pkg/x.h>``; ``<stdio.h>`` is external unless the
  repository has a ``stdio.h``).
* Java: the class's file by package path, then without the last name (a static member or a
  nested class); ``*``: every file of the package.
* Go: every ``.go`` file of the package's directory: the import path less the module path
  of a ``go.mod`` in the repository (read from its ``module`` line), from that ``go.mod``'s
  directory; without a matching ``go.mod``, the longest directory the import path ends with.

What is not read: dynamic imports by computed names, Python's ``importlib`` and ``sys.path``
edits, build-system include paths, Java's same-package references (no import is written).
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from functools import lru_cache
from typing import Any

from arcforge.pipelines.code.languages import JS_LIKE, language_of, parser

_QUERIES: dict[str, str] = {
    "python": """
        (import_statement name: [(dotted_name) @module (aliased_import name: (dotted_name) @module)])
        (import_from_statement module_name: [(dotted_name) (relative_import)] @from
            name: [(dotted_name) @name (aliased_import name: (dotted_name) @name)])
        (import_from_statement module_name: [(dotted_name) (relative_import)] @from (wildcard_import))
        (future_import_statement "__future__" @from name: [(dotted_name) @name (aliased_import name: (dotted_name) @name)])
    """,
    **dict.fromkeys(JS_LIKE, """
        (import_statement source: (string (string_fragment) @path))
        (export_statement source: (string (string_fragment) @path))
        (call_expression function: [(import) (identifier) @fn] arguments: (arguments . (string (string_fragment) @path)))
    """),
    "java": "(import_declaration (scoped_identifier) @name (asterisk)? @star)",
    "go": "(import_spec path: (interpreted_string_literal (interpreted_string_literal_content) @path))",
}
JS_SUFFIXES = ("", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".d.ts",
               "/index.js", "/index.mjs", "/index.jsx", "/index.ts", "/index.tsx")


# the preprocessor's own rule: a directive is a line; comments are not code
_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_C_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*("[^"\n]+"|<[^>\n]+>)', re.M)


def c_includes(text: str) -> list[str]:
    """``#include`` targets of a C or C++ file, line by line as the preprocessor reads them
    (``"a.h"`` as ``a.h``, ``<a.h>`` with its brackets). Not tree-sitter: it parses C without
    preprocessing, and in a macro-heavy header its error recovery can swallow a directive
    (numpy's ``__multiarray_api.h`` loses its one include inside a large ``#if``)."""
    found = [m.group(1) for m in _C_INCLUDE.finditer(_C_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text))]
    return [f[1:-1] if f.startswith('"') else f for f in found]


@lru_cache(maxsize=None)
def _query(language: str) -> Any:
    import tree_sitter

    return tree_sitter.Query(parser(language).language, _QUERIES[language])


def imports(text: str, language: str | None) -> list[str]:
    """The import specifiers of one file, in source order, without repeats (module docstring);
    ``[]`` for a language without a grammar or a query."""
    if language in ("c", "c++"):
        return list(dict.fromkeys(c_includes(text)))
    if language not in _QUERIES or not text:
        return []
    import tree_sitter

    tree = parser(language).parse(text.encode("utf-8", "surrogatepass"))
    found: list[str] = []
    for _, caps in sorted(tree_sitter.QueryCursor(_query(language)).matches(tree.root_node),
                          key=lambda m: min(n.start_byte for nodes in m[1].values() for n in nodes)):
        if "fn" in caps and caps["fn"][0].text != b"require":
            continue
        if language == "python" and "from" in caps:
            base = caps["from"][0].text.decode()
            names = [n.text.decode() for n in caps.get("name", [])]
            found += [f"{base}|{n}" for n in names] or [base]
        elif language == "java":
            name = caps["name"][0].text.decode()
            found.append(f"{name}.*" if "star" in caps else name)
        else:
            key = "module" if "module" in caps else "path"
            found += [n.text.decode() for n in caps[key]]
    return list(dict.fromkeys(found))


class RepoIndex:
    """The files of one repository, indexed to resolve specifiers to paths."""

    def __init__(self, paths: list[str], go_modules: dict[str, str] | None = None,
                 packages: set[str] | None = None) -> None:
        """``go_modules``: the directory of each ``go.mod`` -> its module path (``go_module``);
        ``packages``: directories known to be Python packages without an ``__init__.py`` among
        ``paths`` (``implied_packages``)."""
        self.paths = set(paths)
        self.go_modules = dict(sorted((go_modules or {}).items()))
        self.by_dir: dict[str, list[str]] = defaultdict(list)
        for p in sorted(self.paths):
            self.by_dir[posixpath.dirname(p)].append(p)
        self.packages = {posixpath.dirname(p) for p in self.paths if posixpath.basename(p) == "__init__.py"}
        self.packages |= packages or set()
        self.modules: dict[str, list[str]] = defaultdict(list)
        for p in sorted(self.paths, key=_shortest):
            if language_of(p) == "python":
                self.modules[self._module_name(p)].append(p)

    def _module_name(self, path: str) -> str:
        d, stem = posixpath.dirname(path), posixpath.splitext(posixpath.basename(path))[0]
        parts = [] if stem == "__init__" else [stem]
        while d in self.packages:
            parts.insert(0, posixpath.basename(d))
            d = posixpath.dirname(d)
        return ".".join(parts)

    def resolve(self, path: str, language: str | None, spec: str) -> list[str]:
        """The repository's files that ``spec``, read in ``path``, names (``[]``: external)."""
        d = posixpath.dirname(path)
        if language == "python":
            found = self._python(d, spec)
        elif language in JS_LIKE:
            found = self._first([_join(d, spec) + s for s in JS_SUFFIXES]) if spec.startswith((".", "/")) else []
        elif language in ("c", "c++") and spec.startswith("<"):  # searched for in the -I directories only
            found = self._ending(spec.strip("<>"))
        elif language in ("c", "c++"):
            found = self._first([_join(d, spec), posixpath.normpath(spec)]) or self._ending(spec)
        elif language == "java":
            found = self._java(spec)
        elif language == "go":
            found = self._go(spec)
        else:
            found = []
        return [f for f in found if f != path]

    def _first(self, candidates: list[str]) -> list[str]:
        return next(([c] for c in candidates if c in self.paths), [])

    def _ending(self, rel: str) -> list[str]:
        rel = posixpath.normpath(rel)
        hits = [p for p in self.paths if p == rel or p.endswith("/" + rel)]
        return [min(hits, key=_shortest)] if hits else []

    def _python(self, d: str, spec: str) -> list[str]:
        base, _, name = spec.partition("|")
        names = [f"{base}.{name}" if base and not base.endswith(".") else base + name, base] if name else [base]
        for full in names:
            if full.startswith("."):  # relative to the importing file's package
                level = len(full) - len(full.lstrip("."))
                root = d
                for _ in range(level - 1):
                    root = posixpath.dirname(root)
                rest = full[level:].replace(".", "/")
                stem = posixpath.join(root, rest) if rest else root
                found = self._first([f"{stem}.py", f"{stem}/__init__.py"] if rest else [f"{stem}/__init__.py"])
            else:
                rel = full.replace(".", "/")
                found = [] if d in self.packages else self._first([_join(d, f"{rel}.py"), _join(d, f"{rel}/__init__.py")])
                found = found or self.modules.get(full, [])[:1]
                if not found and "." in full:  # a package whose __init__.py the data lacks (or a namespace package)
                    found = self._ending(f"{rel}.py") or self._ending(f"{rel}/__init__.py")
            if found:
                return found
        return []

    def _java(self, spec: str) -> list[str]:
        if spec.endswith(".*"):
            package = spec[:-2].replace(".", "/")
            return [p for dd, files in sorted(self.by_dir.items()) if dd == package or dd.endswith("/" + package)
                    for p in files if p.endswith(".java")]
        parts = spec.split(".")
        for n in range(len(parts), 1, -1):
            found = self._ending("/".join(parts[:n]) + ".java")
            if found:
                return found
        return []

    def _go(self, spec: str) -> list[str]:
        for root, module in self.go_modules.items():
            if spec == module or spec.startswith(module + "/"):
                package = posixpath.normpath(posixpath.join(root, spec[len(module) + 1:]))
                return [p for p in self.by_dir.get("" if package == "." else package, []) if p.endswith(".go")]
        dirs = [dd for dd in self.by_dir if dd and (spec == dd or spec.endswith("/" + dd))]
        if not dirs:
            return []
        best = max(dirs, key=lambda dd: (len(dd), dd))
        return [p for p in self.by_dir[best] if p.endswith(".go")]


def implied_packages(specs: dict[str, list[str]]) -> set[str]:
    """The directories that relative imports show to be Python packages (``from . import x``
    in ``a/b/c.py``: ``a/b``; ``from .. import x``: ``a/b`` and ``a``), for data where an empty
    ``__init__.py`` was dropped as an empty document."""
    found: set[str] = set()
    for path, ss in specs.items():
        for spec in ss:
            d, level = posixpath.dirname(path), len(spec) - len(spec.lstrip("."))
            for _ in range(level):
                found.add(d)
                d = posixpath.dirname(d)
    return found - {""}


def go_module(go_mod: str) -> str | None:
    """The module path a ``go.mod`` declares (its ``module`` line), or None."""
    for line in go_mod.splitlines():
        words = line.split("//")[0].split()
        if len(words) == 2 and words[0] == "module":
            return words[1].strip('"')
    return None


def _join(d: str, rel: str) -> str:
    """``rel`` read from directory ``d`` (a leading ``/``: from the repository's root)."""
    return posixpath.normpath(rel.lstrip("/") if rel.startswith("/") else posixpath.join(d, rel))


def _shortest(path: str) -> tuple[int, int, str]:
    return path.count("/"), len(path), path


__all__ = ["RepoIndex", "c_includes", "go_module", "implied_packages", "imports"]
