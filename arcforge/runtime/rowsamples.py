"""Samples of rejected documents per reason and the top URL hosts, for the distribution stats.

Both merge deterministically; see ``accumulators.py`` and ``docs/stats.md``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from arcforge.runtime.sketch import DOMAINS_LG_MAX_K, DOMAINS_TASK_CAP, SAMPLE_SIZE, SAMPLE_TEXT_CHARS


# ---------------------------------------------------------------- rejected samples


def sample_key(row: dict[str, Any]) -> tuple[str, str]:
    """The order of the reservoir: blake2b of the id first, then the whole row (a total
    order, so the 10 smallest of a union are the 10 smallest of the parts' 10 smallest)."""
    return id_hash(row.get("id")), json.dumps(row, sort_keys=True, ensure_ascii=False)


def id_hash(doc_id: str | None) -> str:
    return hashlib.blake2b((doc_id or "").encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def smallest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return heapq.nsmallest(SAMPLE_SIZE, rows, key=sample_key)


class RejectAccumulator:
    """Drop counts by reason and, per reason, the ``SAMPLE_SIZE`` rejected documents with
    the smallest blake2b(id): the same rows whatever the partitioning."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        reasons = ["null" if r is None else r for r in table.column("reason").to_pylist()]
        self.counts.update(reasons)
        ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
        hashes = [id_hash(i) for i in ids]
        by_reason: dict[str, list[int]] = {}
        for i, r in enumerate(reasons):
            by_reason.setdefault(r, []).append(i)
        for reason, idx in by_reason.items():
            current = self.samples.get(reason, [])
            # rows whose id hash is above the 10th smallest cannot enter the sample; only
            # the others are materialised (ties on the hash are settled by the full key)
            threshold = heapq.nsmallest(SAMPLE_SIZE, [hashes[i] for i in idx] + [id_hash(r.get("id")) for r in current])[-1]
            candidates = [i for i in idx if hashes[i] <= threshold]
            self.samples[reason] = smallest(current + sample_rows(table, candidates))

    def to_state(self) -> dict[str, Any]:
        return {r: {"count": self.counts[r], "sample": self.samples.get(r, [])} for r in sorted(self.counts)}

    @staticmethod
    def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        rows: dict[str, list[dict[str, Any]]] = {}
        for st in states:
            for reason, entry in st.items():
                counts[reason] += entry["count"]
                rows.setdefault(reason, []).extend(entry["sample"])
        return {r: {"count": counts[r], "sample": smallest(rows.get(r, []))} for r in sorted(counts)}


def sample_rows(table: pa.Table, indices: list[int]) -> list[dict[str, Any]]:
    """id, url, text prefix, text length, detail (and step where the table has one)."""
    if not indices:
        return []
    sub = table.take(pa.array(indices, pa.int64()))
    names = set(sub.column_names)

    def col(name: str) -> list[Any]:
        return sub.column(name).to_pylist() if name in names else [None] * sub.num_rows

    texts = col("text")
    steps = col("step")
    out = []
    for i, (doc, url, text, detail) in enumerate(zip(col("id"), col("url"), texts, col("detail"))):
        row = {
            "id": doc,
            "url": url,
            "text": text[:SAMPLE_TEXT_CHARS] if isinstance(text, str) else None,
            "text_chars": len(text) if isinstance(text, str) else None,
            "detail": detail,
        }
        if "step" in names:
            row["step"] = steps[i]
        out.append(row)
    return out


# ---------------------------------------------------------------- domains

# scheme, optional userinfo, then the host (a bracketed IPv6 literal or up to ':', '/', '?', '#')
_HOST = r"(?i)^\s*https?://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#\s]*)"


def url_hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lower-cased hosts of the http(s) URLs (others dropped), trailing dot and IPv6 brackets
    removed: ``urllib.parse.urlsplit(url).hostname`` without a trailing dot."""
    hosts = pc.struct_field(pc.extract_regex(urls, _HOST), "host")
    if isinstance(hosts, pa.ChunkedArray):
        hosts = hosts.combine_chunks()
    hosts = pc.utf8_trim(pc.utf8_rtrim(pc.utf8_lower(hosts.drop_null()), "."), "[]")  # [::1] -> ::1, as urlsplit
    return hosts.filter(pc.greater(pc.utf8_length(hosts), 0))


def _ranked(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


class DomainAccumulator:
    """Kept documents per URL host.

    A task counts hosts exactly; should it see more than ``DOMAINS_TASK_CAP`` distinct
    hosts, it prunes its counter the Misra-Gries way (subtract the count of the
    ``DOMAINS_TASK_CAP // 2 + 1``-th host from all, drop those at zero) and adds what it
    subtracted to ``error``. Its state keeps the ``2**DOMAINS_LG_MAX_K`` hosts with the
    largest counts (ties by name) and, as ``tail``, the largest count it left out. So in
    a task, for every host, ``listed <= true <= listed + error (+ tail if not listed)``.
    The merge sums the listed counts and the bounds: it does not depend on the order of
    the states, and the result depends on how the rows were split only where a task's
    ``tail`` or ``error`` is non-zero."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.upper: dict[str, int] = {}  # merged only: each listed host's upper bound
        self.docs = 0
        self.error = 0  # task: Misra-Gries subtractions; merged: the largest upper - lower
        self.tail = 0

    def add(self, urls: pa.Array | pa.ChunkedArray) -> None:
        hosts = url_hosts(urls)
        if len(hosts) == 0:
            return
        self.docs += len(hosts)
        vc = pc.value_counts(hosts)
        counts = self.counts
        for host, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            counts[host] = counts.get(host, 0) + n
        if len(counts) > DOMAINS_TASK_CAP:
            keep = DOMAINS_TASK_CAP // 2
            cut = heapq.nlargest(keep + 1, counts.values())[-1]
            self.counts = {h: n - cut for h, n in counts.items() if n > cut}
            self.error += cut

    def to_state(self) -> dict[str, Any] | None:
        if not self.docs:
            return None
        ranked = _ranked(self.counts)
        keep = 1 << DOMAINS_LG_MAX_K
        tail = ranked[keep][1] if len(ranked) > keep else 0
        return {"docs": self.docs, "hosts": [[h, n] for h, n in ranked[:keep]], "tail": tail, "error": self.error}

    @classmethod
    def merge_states(cls, states: list[dict[str, Any] | None]) -> DomainAccumulator:
        """Lower bound of a host: the sum of its listed counts; upper bound: that plus
        every state's ``error`` plus the ``tail`` of every state that does not list it."""
        acc = cls()
        listed_tails: Counter[str] = Counter()
        tails = errors = 0
        for st in states:
            if not st:
                continue
            acc.docs += st["docs"]
            tails += st["tail"]
            errors += st["error"]
            for host, n in st["hosts"]:
                acc.counts[host] = acc.counts.get(host, 0) + n
                listed_tails[host] += st["tail"]
        acc.error = tails + errors  # also bounds the count of a host listed nowhere
        acc.upper = {h: n + acc.error - listed_tails[h] for h, n in acc.counts.items()}
        return acc

    def describe(self, top: int) -> dict[str, Any] | None:
        if not self.docs:
            return None
        ranked = _ranked(self.counts)[:top]
        keep = 1 << DOMAINS_LG_MAX_K
        return {
            "docs": self.docs,
            "exact": self.error == 0,
            "max_error": self.error,
            "epsilon": 1 / (keep + 1) + 1 / (DOMAINS_TASK_CAP // 2 + 1),
            "lg_max_k": DOMAINS_LG_MAX_K,
            "top": [{"domain": h, "docs": n, "lower_bound": n, "upper_bound": self.upper.get(h, n)} for h, n in ranked],
        }

