"""What ``arcforge inspect`` shows for a dedup stage: cluster sizes and sample clusters.

Every dedup stage (``dedup.exact``, ``dedup.url``, ``dedup.minhash``, ``dedup.semantic``)
writes each removed document to ``rejected/`` with ``duplicate_of=<keeper id>`` in its detail,
so one view serves them all: a cluster is a keeper and the documents that name it. The size
distribution comes from the stage's ``minhash.cluster_size.<bin>`` counters when it has them
(all clusters, counted by the workers) and is otherwise counted here from ``rejected/``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime import dataset
from arcforge.runtime.dataset import DatasetRef

_KEEPER = re.compile(r"duplicate_of=(\S+)")


def first_line(text: str | None, width: int) -> str:
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    return line[:width] + ("…" if len(line) > width else "")


def duplicate_groups(rejected: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """keeper id -> its removed duplicates (rows of ``rejected`` naming a keeper)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    cols = [c for c in ("id", "text", "detail", "reason") if c in rejected.column_names]
    for row in rejected.select(cols).to_pylist():
        m = _KEEPER.search(row.get("detail") or "")
        if m:
            groups.setdefault(m.group(1), []).append(row)
    return groups


def size_distribution(stats: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> list[tuple[str, int]]:
    """(cluster size or bin, number of clusters), smallest first."""
    binned = sorted((k.removeprefix("minhash.cluster_size."), int(v)) for k, v in stats.items()
                    if k.startswith("minhash.cluster_size."))
    if binned:
        return [(b.lstrip("0").replace("-0", "-") or "0", n) for b, n in binned]
    sizes = Counter(len(members) + 1 for members in groups.values())
    return [(str(s), n) for s, n in sorted(sizes.items())]


def cluster_lines(ref: DatasetRef, kept: pa.Table, n_clusters: int = 3, width: int = 100) -> list[str]:
    """The report's lines; empty when the stage removed no duplicate."""
    fs, base = ref.rejected.fs()
    from arcforge.runtime import storage

    if not storage.exists(fs, storage.join(base, dataset.MANIFEST)):
        return []
    groups = duplicate_groups(dataset.read_dataset(ref.rejected))
    if not groups:
        return []
    stats = dataset.read_manifest(ref).get("stats", {})
    dist = size_distribution(stats, groups)
    lines = ["duplicate clusters by size (clusters): " + ", ".join(f"{s}: {n:,}" for s, n in dist)]
    largest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:n_clusters]
    wanted = pa.array([k for k, _ in largest], pa.string())
    keepers = {r["id"]: r.get("text") for r in kept.filter(pc.is_in(pc.cast(kept.column("id"), pa.string()), wanted))
               .select([c for c in ("id", "text") if c in kept.column_names]).to_pylist()}
    for keeper, members in largest:
        label = members[0].get("reason", "duplicate")
        lines.append(f"cluster of {len(members) + 1} ({label}), kept {keeper}: {first_line(keepers.get(keeper), width)}")
        for m in members[:5]:
            lines.append(f"    removed {m['id']}: {first_line(m.get('text'), width)}")
        if len(members) > 5:
            lines.append(f"    … and {len(members) - 5} more")
    return lines
