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


def test_url_normalisation_and_documents_without_a_url():
    from arcforge.dedup.exact import UrlDedupParams, normalize_url

    assert normalize_url("HTTP://Example.COM:80/a/b/?q=1#top") == "http://example.com/a/b?q=1"
    assert normalize_url("https://example.com:443/") == normalize_url("https://example.com") == "https://example.com"
    assert normalize_url("https://example.com:8443/x") == "https://example.com:8443/x"
    assert normalize_url("https://e.com/a?utm=1", drop_query=True) == "https://e.com/a"
    assert normalize_url("https://e.com/A") != normalize_url("https://e.com/a")  # paths are case-sensitive
    rows = [{"id": f"u{i}", "text": f"t{i}", "source": "s", "url": u}
            for i, u in enumerate(["http://a.org/x/", "HTTP://A.org/x", None, None, "", "http://a.org/y"])]
    table = docs_table(rows)
    hashes = hash_table(table, 0, UrlDedupParams())
    assert hashes.column("id").to_pylist() == ["u0", "u1", "u5"]  # no URL: never grouped
    drops = find_duplicates(hashes)
    out = drop_rows(table, drops[0], "duplicate_url")
    assert out.kept.column("id").to_pylist() == ["u0", "u2", "u3", "u4", "u5"]
    assert out.rejected.column("detail").to_pylist() == ["duplicate_of=u0"]
    assert out.rejected.column("reason").to_pylist() == ["duplicate_url"]


def test_url_dedup_stage_on_the_local_engine(tmp_path):
    import json

    from arcforge.runtime import dataset
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.dataset import DatasetRef
    from arcforge.runtime.runner import Runner

    (tmp_path / "in").mkdir()
    for p, urls in enumerate([["http://a.org/1", "http://b.org/"], ["http://A.org/1#x", None, "http://b.org"]]):
        with open(tmp_path / "in" / f"p{p}.jsonl", "w") as f:
            for i, u in enumerate(urls):
                f.write(json.dumps({"id": f"p{p}-{i}", "text": f"page {p} {i}", "url": u}) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""name: t
storage: {{root: {tmp_path / 'runs'}}}
stages:
  - {{name: read, uses: io.read, input: {{files: ["{tmp_path}/in/*.jsonl"]}}, engine: local}}
  - {{name: urls, uses: dedup.url, input: read, engine: local}}
""")
    Runner(load_plan(cfg)).run()
    ref = DatasetRef(str(tmp_path / "runs" / "t" / "urls"))
    assert sorted(dataset.read_dataset(ref).column("id").to_pylist()) == ["p0-0", "p0-1", "p1-1"]
    assert dataset.read_manifest(ref)["stats"]["dropped.duplicate_url"] == 2
