"""Installed package versions, for the records that say what produced a result (model cards,
the run report): None for a package that is not installed."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
