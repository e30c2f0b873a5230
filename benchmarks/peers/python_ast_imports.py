"""The peer of arcforge's Python import reader: the standard library's ``ast``.

It turns a file into the same specifiers as ``arcforge.pipelines.code.imports.imports``
(``a.b``, ``a.b|n``, ``.x|y``, in source order, without repeats), so the two can be
compared file by file (tests/test_code_repo_pack.py) and timed (benchmarks/bench_imports.py).
"""

from __future__ import annotations

import ast
import warnings


def ast_imports(text: str) -> list[str] | None:
    """Every import of a Python file as a specifier; None for a file ``ast`` cannot parse."""
    try:
        with warnings.catch_warnings():
            for category in (SyntaxWarning, DeprecationWarning):  # "invalid escape sequence" in old strings
                warnings.simplefilter("ignore", category)
            tree = ast.parse(text)
    except SyntaxError:
        return None
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
                   key=lambda n: (n.lineno, n.col_offset))
    found: list[str] = []
    for n in nodes:
        if isinstance(n, ast.Import):
            found += [a.name for a in n.names]
        else:
            base = "." * n.level + (n.module or "")
            names = [a.name for a in n.names if a.name != "*"]
            found += [f"{base}|{a}" for a in names] or [base]
    return list(dict.fromkeys(found))
