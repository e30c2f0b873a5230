"""The catalogue is the one place that names built-in stages: every entry must resolve."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from arcforge import catalog
from arcforge.runtime.stage import Stage, resolve_stage


@pytest.mark.parametrize("name", sorted(catalog.STAGES))
def test_every_builtin_name_resolves_to_the_stage_of_that_name(name: str) -> None:
    stage = resolve_stage(name)
    assert isinstance(stage, Stage)
    assert stage.name == name


def test_unknown_names_are_key_errors() -> None:
    with pytest.raises(KeyError):
        resolve_stage("web.no_such_stage")


def test_the_runtime_imports_no_domain_package() -> None:
    """The ground floor stands alone: only the catalogue names the floors above it."""
    root = Path(catalog.__file__).parent / "runtime"
    upper = ("arcforge.pipelines", "arcforge.dedup", "arcforge.tokenize", "arcforge.model", "arcforge.synth", "arcforge.classifiers")
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(upper)]
    assert offenders == []
