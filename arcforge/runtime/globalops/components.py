"""Connected components of a distributed edge list, written once against the Frame primitives.

The large-star / small-star algorithm (Kiveris et al., "Connected Components in MapReduce
and Beyond", SoCC 2014), as BigCode's Spark MinHash dedup runs it:

* **large-star**: for every node ``u``, with ``m`` the smallest of ``u`` and its neighbours,
  link every neighbour ``v > u`` to ``m``;
* **small-star**: for every node ``u``, with ``N`` its neighbours ``v < u`` and ``m = min(N)``,
  link ``u`` and every ``v`` of ``N`` to ``m``.

Each step is a ``group_reduce`` on one endpoint (vectorised over chunks of groups) followed
by an ``aggregate`` on ``(src, dst)`` that removes duplicate edges; edges are kept as
``(larger, smaller)``. The rounds stop when neither step changed the edge set: with ``p`` the
round's input, ``b`` the large-star's output and ``a`` the small-star's,
``|p △ b| + |b △ a| == 0``, each ``|x △ y| = |x| + |y| - 2|x ∩ y|`` (counts, the intersection
an inner join). Comparing only ``a`` with ``b`` (as BigCode's loop does) is not enough: on the
chain 0-1-2-… both steps give the same two interleaved chains and the loop would stop after
one round. At the fixpoint the graph is a forest of stars, each centred on the smallest node
id of its component. Every node of the input is labelled with that id: a node
that is not in the last edge set is a centre, its own component.

Nothing but counts reaches the driver: per round ``|b|``, ``|a|`` and ``|a ∩ b|``, and at
the end one aggregated row (component count and the largest size).

Every round's edge sets stay cached until ``ops.close()``: on Spark, unpersisting a frame
drops the cached data of every cached frame computed from it (Spark re-caches dependants
lazily), so releasing round ``k`` would make round ``k + 1`` recompute the whole lineage.
The cost is the sum of the rounds' edge counts (``stats``) in the engine's cache.

Isolated nodes cannot appear in an edge list: a node is in the output only if it is an
endpoint of some edge; pass ``(x, x)`` to include an isolated node ``x`` (its own component).
Node ids are integers; ``uint64`` ids are mapped to ``int64`` by flipping the top bit (an
order-preserving bijection, so "smallest id" keeps its unsigned meaning) and mapped back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from arcforge.runtime import storage
from arcforge.runtime.globalops import Frame, GlobalOps, group_index, persist
from arcforge.runtime.storage import S3Options

__all__ = ["ORIENTED", "ComponentStats", "connected_components", "oriented_edges"]

_TOP = np.uint64(1 << 63)
EDGES = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
LARGE = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("lw", pa.int64())])
SMALL = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("sw", pa.int64())])
ORIENTED = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("pw", pa.int64())])
NODES = pa.schema([("node", pa.int64()), ("nw", pa.int64())])
LABELS = pa.schema([("node", pa.int64()), ("root", pa.int64())])
RESULT = pa.schema([("node", pa.int64()), ("component", pa.int64())])
SIZES = pa.schema([("component", pa.int64()), ("cw", pa.int64())])
TOTAL = pa.schema([("k", pa.int8()), ("size", pa.int64())])


@dataclass
class ComponentStats:
    """What the driver learnt: per-round edge counts, and one aggregated row at the end."""

    rounds: int = 0
    edges_in: int = 0  # input edges (self-loops and duplicates included)
    large_star_edges: list[int] = field(default_factory=list)  # |b| per round
    small_star_edges: list[int] = field(default_factory=list)  # |a| per round
    changed_edges: list[int] = field(default_factory=list)  # |a △ b| per round (0 in the last)
    nodes: int = 0
    components: int = 0
    largest_component: int = 0


# ---------------------------------------------------------------------------- worker functions


def _ids(col: pa.ChunkedArray | pa.Array, unsigned: bool) -> np.ndarray:
    if col.null_count:
        raise ValueError("connected_components: edges must not have null endpoints")
    if unsigned:
        return (col.to_numpy(zero_copy_only=False).astype(np.uint64) ^ _TOP).view(np.int64)
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False)


def _prepare(table: pa.Table, unsigned: bool) -> pa.Table:
    """The input's (src, dst) as int64 keys (uint64 with the top bit flipped)."""
    return pa.table({"src": _ids(table.column("src"), unsigned), "dst": _ids(table.column("dst"), unsigned)}, schema=EDGES)


def _endpoints(table: pa.Table) -> pa.Table:
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    nodes = np.concatenate([src, dst])
    return pa.table({"node": nodes, "nw": np.ones(len(nodes), np.int64)}, schema=NODES)


def oriented_edges(table: pa.Table) -> pa.Table:
    """Each edge as (larger, smaller), self-loops dropped: the form every round's edges take."""
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    keep = src != dst
    hi, lo = np.maximum(src, dst)[keep], np.minimum(src, dst)[keep]
    return pa.table({"src": hi, "dst": lo, "pw": np.ones(len(hi), np.int64)}, schema=ORIENTED)


def _both_directions(table: pa.Table) -> pa.Table:
    """Each edge as (u, v) and (v, u), self-loops dropped: every node's whole neighbourhood."""
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return pa.table({"src": np.concatenate([src, dst]), "dst": np.concatenate([dst, src])}, schema=EDGES)


def _large_star(groups: pa.Table) -> pa.Table:
    """Whole neighbourhoods, sorted by (src, dst): link each neighbour v > u to min(u, N(u))."""
    src, dst = groups.column("src").to_numpy(), groups.column("dst").to_numpy()
    _, first = group_index(groups, ["src"])
    m = np.minimum(src, dst[first])
    keep = dst > src
    return pa.table({"src": dst[keep], "dst": m[keep], "lw": np.ones(int(keep.sum()), np.int64)}, schema=LARGE)


def _small_star(groups: pa.Table) -> pa.Table:
    """Edges (u, v), v < u, grouped by u and sorted by v: link u and each v to m = min(N(u))."""
    src, dst = groups.column("src").to_numpy(), groups.column("dst").to_numpy()
    starts, first = group_index(groups, ["src"])
    m = dst[first]
    keep = dst != m
    out_src = np.concatenate([src[starts], dst[keep]])
    out_dst = np.concatenate([m[starts], m[keep]])
    return pa.table({"src": out_src, "dst": out_dst, "sw": np.ones(len(out_src), np.int64)}, schema=SMALL)


def _labels(table: pa.Table) -> pa.Table:
    return pa.table({"node": table.column("src"), "root": table.column("dst")}, schema=LABELS)


def _resolve(table: pa.Table) -> pa.Table:
    """A node without a label is the centre of its star: its own component."""
    node = table.column("node")
    return pa.table({"node": node, "component": pc.coalesce(table.column("root"), node)}, schema=RESULT)


def _sizes(table: pa.Table) -> pa.Table:
    return pa.table({"component": table.column("component"), "cw": np.ones(table.num_rows, np.int64)}, schema=SIZES)


def _total(table: pa.Table) -> pa.Table:
    return pa.table({"k": np.zeros(table.num_rows, np.int8), "size": table.column("cw_sum")}, schema=TOTAL)


def _edge_cols(table: pa.Table) -> pa.Table:
    return table.select(["src", "dst"])


def _round_dir(directory: str, round_no: int) -> str:
    return storage.join(directory, f"round-{round_no:03d}")


def _last_round(directory: str, s3: dict) -> tuple[int, dict] | None:
    """The last round whose checkpoint finished, and its marker's facts (the stats then)."""
    fs, path = storage.filesystem(directory, S3Options(**s3))
    if not storage.exists(fs, path):
        return None
    rounds = sorted((int(i.base_name[6:]) for i in fs.get_file_info(pafs.FileSelector(path))
                     if i.type == pafs.FileType.Directory and re.fullmatch(r"round-\d{3,}", i.base_name)), reverse=True)
    for r in rounds:
        marker = persist.done(_round_dir(directory, r), s3)
        if marker is not None:
            return r, marker["facts"]
    return None


def _restore(table: pa.Table, out: pa.Schema) -> pa.Table:
    cols = [(c.to_numpy().view(np.uint64) ^ _TOP) for c in (table.column("node"), table.column("component"))]
    return pa.table(cols, schema=out)


# ---------------------------------------------------------------------------- the driver


def connected_components(
    ops: GlobalOps,
    edges: Frame,
    *,
    max_rounds: int = 100,
    checkpoint_dir: str | None = None,
    checkpoint_parts: int = 8,
    checkpoint_s3: dict | None = None,
    resume: bool = False,
    on_round: Callable[[ComponentStats], None] | None = None,
) -> tuple[Frame, ComponentStats]:
    """Label every endpoint of ``edges`` (integer columns ``src``, ``dst``; other columns are
    ignored; undirected; self-loops and duplicates allowed) with the smallest node id of its
    connected component. Returns a frame of ``(node, component)``, one row per distinct node,
    of type ``uint64`` when either input column is ``uint64`` and ``int64`` otherwise, and the
    run's :class:`ComponentStats`. Raises ``RuntimeError`` if the rounds have not converged
    after ``max_rounds`` (a chain of n nodes, the worst case, needs O(log² n)).

    ``checkpoint_dir`` (a directory every worker can write and read; ``checkpoint_s3``: the
    ``S3Options`` fields for it, no credentials): each round's edges are written there as
    ``checkpoint_parts`` Parquet files and read back (``persist.persist``), so a frame's
    lineage is one round deep and the previous round's frames are released. Spark needs it
    beyond a few rounds: its plans nest every cached frame's plan, and their text (built for
    every query) grows exponentially with the rounds (a 40-node chain: 7 rounds in 35 s, then
    an out-of-memory driver). Without it nothing is released until ``ops.close()`` (see the
    module docstring).

    ``resume=True`` (with ``checkpoint_dir``): the rounds start after the last round whose
    checkpoint finished there, with the stats it recorded; the caller vouches that the
    directory holds rounds of these same ``edges`` (``persist.WorkDir`` binds it to the
    stage's fingerprint). The result and the stats equal an uninterrupted call's.

    ``on_round(stats)`` is called on the driver after every round (progress reports)."""
    types = [edges.schema.field(c).type for c in ("src", "dst")]
    if not all(pa.types.is_integer(t) for t in types):
        raise TypeError(f"connected_components: src and dst must be integer columns, not {types}")
    if resume and checkpoint_dir is None:
        raise ValueError("connected_components: resume needs a checkpoint_dir")
    unsigned = any(t == pa.uint64() for t in types)
    s3 = checkpoint_s3 or {}
    start = edges.map(_prepare, EDGES, args=(unsigned,)).cache()
    last = _last_round(checkpoint_dir, s3) if resume else None
    if last is not None:
        stats = ComponentStats(**last[1])
        prev = persist.load(ops, _round_dir(checkpoint_dir, last[0]), EDGES, s3)
        n_prev = stats.small_star_edges[-1]
    else:
        stats = ComponentStats(edges_in=start.count())
        prev = start.map(oriented_edges, ORIENTED).aggregate(["src", "dst"], [("pw", "sum")]).cache()
        n_prev = prev.count()
    while not stats.changed_edges or stats.changed_edges[-1] != 0:
        if stats.rounds >= max_rounds:
            raise RuntimeError(f"connected_components: no convergence in {max_rounds} rounds (changed: {stats.changed_edges})")
        stats.rounds += 1
        b = prev.map(_both_directions, EDGES).group_reduce(["src"], _large_star, LARGE, batched=True)
        b = b.aggregate(["src", "dst"], [("lw", "sum")]).cache()
        a = b.group_reduce(["src"], _small_star, SMALL, batched=True).aggregate(["src", "dst"], [("sw", "sum")]).cache()
        nb, na = b.count(), a.count()
        changed = (n_prev + nb - 2 * b.join(prev, ["src", "dst"]).count()) + (nb + na - 2 * a.join(b, ["src", "dst"]).count())
        stats.large_star_edges.append(nb)
        stats.small_star_edges.append(na)
        stats.changed_edges.append(changed)
        if checkpoint_dir is not None:
            fresh = persist.persist(ops, a.map(_edge_cols, EDGES), _round_dir(checkpoint_dir, stats.rounds),
                                    key="src", parts=checkpoint_parts, s3=s3, facts=asdict(stats))
            for frame in (b, a, prev):
                frame.release()
            a = fresh
        prev, n_prev = a, na  # without a checkpoint nothing is released: see the module docstring
        if on_round is not None:
            on_round(stats)
    nodes = start.map(_endpoints, NODES).aggregate(["node"], [("nw", "sum")])
    result = nodes.join(prev.map(_labels, LABELS), ["node"], how="left").map(_resolve, RESULT).cache()
    total = result.map(_sizes, SIZES).aggregate(["component"], [("cw", "sum")]).map(_total, TOTAL)
    row = total.aggregate(["k"], [("size", "max"), ("size", "count"), ("size", "sum")]).collect().to_pylist()
    if row:
        stats.largest_component, stats.components, stats.nodes = row[0]["size_max"], row[0]["size_count"], row[0]["size_sum"]
    if unsigned:
        out = pa.schema([("node", pa.uint64()), ("component", pa.uint64())])
        return result.map(_restore, out, args=(out,)), stats
    return result, stats
