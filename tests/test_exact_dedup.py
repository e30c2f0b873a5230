"""Exact dedup's pure functions: normalisation, grouping, and a deterministic keeper."""

from __future__ import annotations

import random

from arcforge.dedup.exact import ExactDedupParams, drop_rows, find_duplicates, hash_table, normalize_text
from arcforge.runtime.documents import docs_table


def test_normalisation():
    assert normalize_text("  Hello\n\tWORLD ") == "hello world"
    assert normalize_text("ｆｕｌｌ width") == "full width"  # NFKC
    assert normalize_text("Hi, there!", ExactDedupParams(strip_punctuation=True)) == "hi there"
    assert normalize_text("Hi, there!") != normalize_text("Hi there")


def _parts(rows_per_part):
    return [docs_table([{"id": i, "text": t, "source": "s"} for i, t in rows]) for rows in rows_per_part]


def test_keeper_is_smallest_id_whatever_the_partitioning():
    rows = [(f"id{n:03d}", random.Random(n).choice(["a b", "A  B", "c", "d", "C"])) for n in range(60)]
    kept_sets = []
    for n_parts in (1, 3, 7):
        shuffled = rows[:]
        random.Random(n_parts).shuffle(shuffled)
        parts = _parts([shuffled[i::n_parts] for i in range(n_parts)])
        import pyarrow as pa

        drops = find_duplicates(pa.concat_tables([hash_table(t, i, ExactDedupParams()) for i, t in enumerate(parts)]))
        kept = []
        for i, t in enumerate(parts):
            out = drop_rows(t, drops.get(i, {}))
            kept += out.kept.column("id").to_pylist()
            if out.rejected is not None:
                assert set(out.rejected.column("reason").to_pylist()) == {"exact_duplicate"}
        kept_sets.append(sorted(kept))
    assert kept_sets[0] == kept_sets[1] == kept_sets[2]
    groups = {}
    for i, t in rows:
        groups.setdefault(normalize_text(t), []).append(i)
    assert kept_sets[0] == sorted(min(v) for v in groups.values())
