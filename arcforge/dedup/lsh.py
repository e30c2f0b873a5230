"""The worker-side steps of ``dedup.minhash``: plain functions over Arrow tables.

Each one is what a ``map_tasks``, ``map`` or ``group_reduce`` of the stage runs on a
worker (``arcforge.dedup.fuzzy`` wires them together), so each is tested without an engine.

* ``sign_rows``: one input part -> a band row ``(band, key, node, idh)`` per document and
  band, and one document row ``(band=-1, node, id, tokens, keep_*)`` per document;
* ``bucket_edges``: the members of one LSH bucket -> a *star*: the member with the smallest
  id hash links to every other member (``k - 1`` edges for ``k`` members, never ``k^2``), and
  a self-row ``(hub, hub, k)`` that carries the bucket's size for the report;
* ``shingle_sets`` / ``verify_pairs``: the true Jaccard of each candidate pair from the two
  documents' sorted, distinct 64-bit shingle hashes;
* ``choose_keepers``: each connected component's members in keep-rule order -> the keeper,
  the cluster label (the smallest document id of the cluster) and its size per member.

Node ids are ``partition << 32 | row``: unique, integer, and cheap to route back to the part
that holds the document. They depend on the partitioning, so no decision uses them: the hub
of a bucket is chosen by ``idh`` (xxh3-64 of the document id), the keeper by the keep rule,
which always ends with the id, and the label is the smallest id. So the clusters, keepers and
labels are the same on every engine and for every partitioning of the same documents.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from arcforge.dedup.keep import keep_columns, keep_fields
from arcforge.dedup.minhash import band_keys, minhash
from arcforge.dedup.shingles import shingle_hashes
from arcforge.runtime.globalops import group_index

BANDS = pa.schema([("band", pa.int32()), ("key", pa.int64()), ("node", pa.int64()), ("idh", pa.int64())])
BUCKET_EDGES = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("bucket", pa.int64())])
PAIRS = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
BUCKET_SIZES = pa.schema([("k", pa.int8()), ("size", pa.int64()), ("big", pa.int64()), ("big_docs", pa.int64())])
CANDIDATES = pa.schema([("partition", pa.int32()), ("node", pa.int64())])
SETS = pa.schema([("node", pa.int64()), ("sh", pa.binary())])
SCORED = pa.schema([("src", pa.int64()), ("dst", pa.int64()), ("jaccard", pa.float64())])
MEMBERS = pa.schema([("partition", pa.int32()), ("row", pa.int32()), ("cluster", pa.string()),
                     ("size", pa.int64()), ("keeper", pa.string())])


def signed_schema(rule: list[tuple[str, bool]]) -> pa.Schema:
    """Band rows and document rows in one frame (one pass over the text)."""
    return pa.schema([*BANDS, pa.field("id", pa.string()), pa.field("tokens", pa.int64()), *keep_fields(rule)])


def docs_schema(rule: list[tuple[str, bool]]) -> pa.Schema:
    return pa.schema([pa.field("node", pa.int64()), pa.field("id", pa.string()), pa.field("tokens", pa.int64()),
                      *keep_fields(rule)])


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """xxh3-64 of each id's UTF-8, as int64: the partition-independent order of a bucket."""
    values = pc.cast(ids, pa.string()).to_pylist()
    h = np.fromiter((xxhash.xxh3_64_intdigest(v.encode()) for v in values), dtype=np.uint64, count=len(values))
    return h.view(np.int64)


def node_ids(partition: int, n: int) -> np.ndarray:
    return (np.int64(partition) << np.int64(32)) | np.arange(n, dtype=np.int64)


def sign_rows(
    partition: int, table: pa.Table, *, column: str, ngram: int, normalize: bool, num_perm: int, seed: int,
    bands: int, rows: int, min_tokens: int, rule: list[tuple[str, bool]],
) -> pa.Table:
    """One part's band rows (documents with at least ``min_tokens`` tokens) and document rows."""
    n = table.num_rows
    hv, offsets, counts = shingle_hashes(table.column(column), ngram, normalize, token_counts=True)
    node = node_ids(partition, n)
    idh = id_hashes(table.column("id"))
    signed = np.flatnonzero(counts >= min_tokens)
    per_doc = np.diff(offsets)
    sub_off = np.concatenate([[0], np.cumsum(per_doc[signed])]).astype(np.int64)
    sub_hv = hv[np.repeat(counts >= min_tokens, per_doc)]  # the signed documents' shingles, in order
    keys = band_keys(minhash(sub_hv, sub_off, num_perm, seed), bands, rows)  # (len(signed), bands)
    nb = len(signed) * bands
    band_part = {
        "band": np.tile(np.arange(bands, dtype=np.int32), len(signed)),
        "key": keys.reshape(-1).view(np.int64),
        "node": np.repeat(node[signed], bands),
        "idh": np.repeat(idh[signed], bands),
        "id": pa.nulls(nb, pa.string()),
        "tokens": pa.nulls(nb, pa.int64()),
    }
    fields = keep_fields(rule)
    for f in fields:
        band_part[f.name] = pa.nulls(nb, f.type)
    doc_part = {
        "band": np.full(n, -1, np.int32), "key": np.zeros(n, np.int64), "node": node, "idh": idh,
        "id": pc.cast(table.column("id"), pa.string()), "tokens": counts.astype(np.int64),
    }
    for f, col in zip(fields, keep_columns(table, rule, column)):
        doc_part[f.name] = col
    schema = signed_schema(rule)
    return pa.concat_tables([pa.table(band_part, schema=schema), pa.table(doc_part, schema=schema)])


def band_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.greater_equal(table.column("band"), 0)).select(BANDS.names)


def doc_rows(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.filter(pc.less(table.column("band"), 0)).select(schema.names)


def bucket_edges(groups: pa.Table) -> pa.Table:
    """Whole buckets sorted by (band, key, idh, node): star edges from each bucket's first
    member, and one ``(hub, hub, size)`` row per bucket of two or more."""
    node = groups.column("node").to_numpy()
    starts, first = group_index(groups, ["band", "key"])
    sizes = np.diff(np.append(starts, len(node)))
    member = np.arange(len(node)) != first
    multi = sizes >= 2
    src = np.concatenate([node[first[member]], node[starts[multi]]])
    dst = np.concatenate([node[member], node[starts[multi]]])
    size = np.concatenate([np.zeros(int(member.sum()), np.int64), sizes[multi].astype(np.int64)])
    return pa.table({"src": src, "dst": dst, "bucket": size}, schema=BUCKET_EDGES)


def bucket_sizes(table: pa.Table, limit: int) -> pa.Table:
    """The size rows of ``bucket_edges`` for one aggregate: size, and whether above ``limit``."""
    size = table.column("bucket").to_numpy()
    size = size[size > 0]
    big = size > limit
    return pa.table({"k": np.zeros(len(size), np.int8), "size": size, "big": big.astype(np.int64),
                     "big_docs": np.where(big, size, 0)}, schema=BUCKET_SIZES)


def candidate_nodes(table: pa.Table) -> pa.Table:
    nodes = np.unique(np.concatenate([table.column("src").to_numpy(), table.column("dst").to_numpy()]))
    return pa.table({"partition": (nodes >> 32).astype(np.int32), "node": nodes}, schema=CANDIDATES)


def shingle_sets(partition: int, table: pa.Table, rows: np.ndarray, *, column: str, ngram: int, normalize: bool) -> pa.Table:
    """The sorted distinct shingle hashes of the given rows, as bytes of uint64."""
    sub = table.column(column).take(pa.array(rows, pa.int64()))
    hv, offsets = shingle_hashes(sub, ngram, normalize)
    sets = [np.unique(hv[offsets[i]:offsets[i + 1]]).tobytes() for i in range(len(rows))]
    node = (np.int64(partition) << np.int64(32)) | np.asarray(rows, np.int64)
    return pa.table({"node": node, "sh": pa.array(sets, pa.binary())}, schema=SETS)


def set_jaccard(a: bytes, b: bytes) -> float:
    x, y = np.frombuffer(a, np.uint64), np.frombuffer(b, np.uint64)
    if not len(x) and not len(y):
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


def verify_pairs(table: pa.Table) -> pa.Table:
    """(src, dst, sh_src, sh_dst) -> (src, dst, true Jaccard)."""
    a, b = table.column("sh_src").to_pylist(), table.column("sh_dst").to_pylist()
    jac = np.fromiter((set_jaccard(x, y) for x, y in zip(a, b)), dtype=np.float64, count=len(a))
    return pa.table({"src": table.column("src"), "dst": table.column("dst"), "jaccard": jac}, schema=SCORED)


def choose_keepers(groups: pa.Table) -> pa.Table:
    """Whole components sorted by (component, keep_*, ...): the first row of each is its keeper."""
    starts, first = group_index(groups, ["component"])
    sizes = np.diff(np.append(starts, groups.num_rows))
    group_no = np.searchsorted(starts, np.arange(groups.num_rows), side="right") - 1
    ids = groups.column("id").combine_chunks() if isinstance(groups.column("id"), pa.ChunkedArray) else groups.column("id")
    labels = pa.table({"g": group_no, "id": ids}).group_by("g").aggregate([("id", "min")]).sort_by("g")
    node = groups.column("node").to_numpy()
    return pa.table(
        {
            "partition": (node >> 32).astype(np.int32),
            "row": (node & np.int64(0xFFFFFFFF)).astype(np.int32),
            "cluster": labels.column("id_min").take(pa.array(group_no)),
            "size": sizes[group_no].astype(np.int64),
            "keeper": ids.take(pa.array(first)),
        },
        schema=MEMBERS,
    )
