"""Reading YAML configs: ``${VAR}`` expansion and one-line errors.

Shared by run configs, mixtures, training and ablation configs: every problem becomes
one line, ``FILE: KEY.PATH: what was expected``, before any engine starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration problem, already formatted as one line for the user."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def builtin_variables() -> dict[str, str]:
    """Variables every config may use without setting them (the environment overrides)."""
    from arcforge import catalog

    return catalog.builtin_variables()


def expand_env(text: str) -> str:
    """``${VAR}`` and ``${VAR:-default}``, so configs can point at caches and buckets."""
    builtins = builtin_variables() if "${ARCFORGE_" in text else {}

    def sub(m: re.Match[str]) -> str:
        val = os.environ.get(m.group(1), builtins.get(m.group(1)))
        if val is None:
            if m.group(2) is None:
                raise KeyError(m.group(1))
            return m.group(2)
        return val

    return _ENV.sub(sub, text)


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location, naming stages by their name where possible."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and item < len(node) and isinstance(node[item], dict) else None
            parts[-1] = f"{parts[-1]}[{name or item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts)


def first_error(path: str, exc: ValidationError, data: Any, prefix: str = "") -> ConfigError:
    # An unknown key is usually a typo that also explains any "missing" error: report it first.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = _loc(tuple(x for x in err["loc"] if x not in ("FilesInput", "DatasetInput", "str", "list[str]")), data)
    key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "<top>")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    got = err.get("input")
    suffix = f" (got {got!r})" if err["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict) else ""
    return ConfigError(f"{path}: {key}: {msg}{suffix}")


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Read a YAML file with ``${VAR}`` expansion; every problem is one ConfigError line.

    Shared by run configs, mixtures, training and ablation configs."""
    path = str(path)
    try:
        raw = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        raw = expand_env(raw)
    except KeyError as exc:
        raise ConfigError(f"{path}: environment variable ${{{exc.args[0]}}} is not set and has no default") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


M = TypeVar("M", bound=BaseModel)


def validate_mapping(model: type[M], data: Any, path: str, keys: str) -> M:
    """Validate a parsed YAML mapping into ``model``; the first problem becomes one line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {keys}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise first_error(path, exc, data) from None
