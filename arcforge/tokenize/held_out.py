"""A mixture's held-out blends (``valid:``, ``test:``) for Megatron's per-split files.

Megatron's ``--per-split-data-args-path`` takes a blend per split. A mixture names held-out
``tokenize.megatron_shards`` stages for validation and test (the demo: ``shards_eval``, 5% of
documents drawn before any filter); every shard in them is weighted by its share of the
tokens, as the stages' own blends are. A stage that training draws from is refused, since
validating on trained text says nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from arcforge.runtime.config import ConfigError


def held_out_blends(path: str, spec: Any, stages: list[Any], load: Callable[[str, str], dict[Any, Any]]) -> dict[str, dict[str, Any]]:
    """``{"valid": ..., "test": ...}`` (each: ``shards``, ``tokens``, ``documents`` and the flat
    ``data_path``) for the splits the mixture names; ``test`` defaults to ``valid``.
    ``load(key, uri)`` gives a committed shards stage's groups (``mixture.load_groups``)."""
    trained = {os.path.normpath(g.shards_uri) for st in stages for a in st.allocations for g in a.groups}
    out: dict[str, dict[str, Any]] = {}
    for split in ("valid", "test"):
        given = getattr(spec, split)
        if given is None:
            continue
        uris = [given] if isinstance(given, str) else list(given)
        shards, tokens, documents = [], 0, 0
        for i, uri in enumerate(uris):
            key = split if isinstance(given, str) else f"{split}[{i}]"
            if os.path.normpath(uri) in trained:
                raise ConfigError(f"{path}: {key}: {uri} is a shards stage that training draws from; "
                                  "held-out shards must be another tokenize.megatron_shards stage")
            for g in sorted(load(key, uri).values(), key=lambda g: g.group):
                for s in g.shards:
                    if s.tokens:
                        shards.append(s)
                        tokens, documents = tokens + s.tokens, documents + s.documents
        if not tokens:
            raise ConfigError(f"{path}: {split}: {', '.join(uris)} hold no tokens")
        data_path = [x for s in shards for x in (f"{s.tokens / tokens:.10g}", s.prefix)]  # shares, as the stages' blends
        out[split] = {"shards": uris, "tokens": tokens, "documents": documents, "data_path": data_path}
    if "valid" in out and "test" not in out:
        out["test"] = out["valid"]
    return out


__all__ = ["held_out_blends"]
