"""quality.buckets on the real local engine, Spark and Ray: weighted percentile cut-offs equal
numpy's, bucket edges, the ensemble max, identical parts on every engine, the cut-offs in
the stats, and a run config from io.read to quality.buckets."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_config
from pydantic import ValidationError

from arcforge.classifiers.buckets import (
    BUCKETS,
    CUTOFFS_FILE,
    BucketParams,
    assign_buckets,
    doc_weights,
    quantile_points,
)
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest, schema_to_b64
from arcforge.runtime.runner import Runner
from arcforge.runtime.tasks import PartitionTask

ENGINES = ("local", "spark", "ray")
WORDS = "the data of a web page about quality and ranking 質量 网页".split()


def _doc(i: int, rng: random.Random, with_tokens: bool) -> dict:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 1, 3, 8, 20, 60])))
    doc = {
        "id": f"d{i:04d}",
        "text": text,
        "source": "web",
        # coarse values: many ties; some nulls and NaN
        "quality_a": None if i % 29 == 0 else math.nan if i % 31 == 0 else rng.randrange(0, 40) / 40,
        "quality_b": None if i % 23 == 0 else round(rng.random(), 3),
    }
    if with_tokens:
        doc["n_tokens"] = None if i % 19 == 0 else rng.randrange(0, 500)
    return doc


def _schema(with_tokens: bool) -> pa.Schema:
    fields = [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("quality_a", pa.float32()),
              ("quality_b", pa.float64())]
    return pa.schema(fields + ([("n_tokens", pa.int64())] if with_tokens else []))


def _numpy_weight(doc: dict, params: BucketParams, with_tokens: bool) -> int:
    if params.weight == "docs":
        return 1
    if params.weight == "chars":
        return len(doc["text"])
    if with_tokens:
        return doc["n_tokens"] or 0
    return math.ceil(len(doc["text"].encode()) / 4)


def numpy_cutoffs(docs: list[dict], params: BucketParams, with_tokens: bool) -> dict[str, list[float]]:
    """The reference: numpy's weighted inverted_cdf percentiles of each score over all rows."""
    out = {}
    for s in params.scores:
        pairs = [(np.float32(d[s]) if s == "quality_a" else d[s], _numpy_weight(d, params, with_tokens)) for d in docs]
        pairs = [(float(v), w) for v, w in pairs if v is not None and not math.isnan(v) and w > 0]
        v, w = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        out[s] = np.quantile(v, quantile_points(params.n_buckets), weights=w, method="inverted_cdf").tolist()
    return out


@pytest.fixture(scope="module")
def ops(engine_ops):
    return engine_ops


class _Borrowed:
    """The module's ops as a context manager that does not close them."""

    def __init__(self, ops):  # noqa: ANN001
        self.ops = ops

    def __enter__(self):  # noqa: ANN204
        return self.ops

    def __exit__(self, *exc):  # noqa: ANN002, ANN204
        return None


def _run_stage(directory: Path, ops, engine: str, parts: list[list[dict]], params: BucketParams, with_tokens: bool,  # noqa: ANN001
               pending: list[int] | None = None, in_schema: pa.Schema | None = None) -> list[dict]:
    """BUCKETS.run(ctx) as the runner calls it, on input parts written as Parquet."""
    directory.mkdir(parents=True, exist_ok=True)
    in_schema = in_schema or _schema(with_tokens)
    out_schema = BUCKETS.schema_for(params, in_schema)
    tasks = []
    for i, rows in enumerate(parts):
        path = directory / f"in-{i}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=in_schema), path)
        tasks.append(PartitionTask("quality.buckets", {}, i, str(path), str(directory / "out"), f"fp{i}", schema_to_b64(out_schema)))
    todo = tasks if pending is None else [t for t in tasks if t.partition in pending]
    ctx = SimpleNamespace(stage=SimpleNamespace(name="buckets", params=params), tasks=tasks, pending=todo,
                          engine=SimpleNamespace(name=engine, ops=lambda: _Borrowed(ops[engine])), on_commit=lambda r: None)
    return sorted(BUCKETS.run(ctx), key=lambda r: r["partition"])


def _corpus(n: int, seed: int, with_tokens: bool, n_parts: int) -> tuple[list[dict], list[list[dict]]]:
    rng = random.Random(seed)
    docs = [_doc(i, rng, with_tokens) for i in range(n)]
    return docs, [docs[i::n_parts] for i in range(n_parts)]


# ---------------------------------------------------------------------------- pure functions


def test_bucket_edges_ties_and_missing_scores():
    cuts = [0.2, 0.5, 0.5, 0.9]  # a tie between two cut-offs: bucket 2 is empty
    scores = pa.array([0.0, 0.19999, 0.2, 0.3, 0.5, 0.89, 0.9, 1.0, None, math.nan, -math.inf, math.inf])
    assert assign_buckets(scores, cuts).tolist() == [0, 0, 1, 1, 3, 3, 4, 4, 0, 0, 0, 4]
    assert assign_buckets(pa.array([0.3, None]), []).tolist() == [0, 0]  # no cut-offs: one bucket
    assert assign_buckets(pa.array([3, 7], pa.int64()), [5.0]).tolist() == [0, 1]


def test_weights_and_params():
    t = pa.table({"text": ["", "abcd", "abcde", "网页", None], "n_tokens": pa.array([1, 2.6, None, 0, 5], pa.float64())})
    assert doc_weights(t, BucketParams(scores=["s"]), "ceil(text_bytes/4)").to_pylist() == [0, 1, 2, 2, 0]
    assert doc_weights(t, BucketParams(scores=["s"], weight="chars"), "chars").to_pylist() == [0, 4, 5, 2, 0]
    assert doc_weights(t, BucketParams(scores=["s"], weight="docs"), "docs").to_pylist() == [1] * 5
    assert doc_weights(t, BucketParams(scores=["s"]), "n_tokens").to_pylist() == [1, 3, 0, 0, 5]
    assert quantile_points(4) == [0.25, 0.5, 0.75]
    with pytest.raises(ValidationError, match="overwrite a score"):
        BucketParams(scores=["bucket"])
    with pytest.raises(ValidationError, match="twice"):
        BucketParams(scores=["a", "a"])
    with pytest.raises(ValidationError):
        BucketParams(scores=["a"], n_buckets=1)
    schema = BUCKETS.schema_for(BucketParams(scores=["quality_a", "quality_b"]), _schema(False))
    assert schema.names[-3:] == ["bucket_quality_a", "bucket_quality_b", "bucket"]
    assert schema.field("bucket").type == pa.int32()
    assert schema.field("bucket").metadata == {b"arcforge.range": b"0,19"}


# ---------------------------------------------------------------------------- the stage on every engine


@pytest.mark.parametrize("weight,with_tokens", [("tokens", False), ("tokens", True), ("chars", False), ("docs", False)])
def test_cutoffs_equal_numpy_and_parts_are_identical_on_every_engine(tmp_path, ops, weight, with_tokens):
    params = BucketParams(scores=["quality_a", "quality_b"], weight=weight)
    docs, parts = _corpus(700, 3, with_tokens, 4)
    want = numpy_cutoffs(docs, params, with_tokens)
    engines = ENGINES if weight == "tokens" else ("local",)
    shas = {}
    for e in engines:
        records = _run_stage(tmp_path / e, ops, e, parts, params, with_tokens)
        assert [r["partition"] for r in records] == [0, 1, 2, 3]
        report = json.loads((tmp_path / e / "out" / CUTOFFS_FILE).read_text())
        assert report["cutoffs"] == want, e  # the same floats as numpy, not approximately
        assert report["weight_source"] == ("n_tokens" if with_tokens else {"tokens": "ceil(text_bytes/4)"}.get(weight, weight))
        assert [f["name"] for f in records[0]["files"]] == [CUTOFFS_FILE] and not records[1]["files"]
        for s in params.scores:  # the cut-offs in the first partition's stats, as the manifest sums them
            assert [records[0]["stats"][f"buckets.cutoff.{s}.{k:02d}"] for k in range(1, 20)] == [round(c, 6) for c in want[s]]
        assert not any(k.startswith("buckets.cutoff") for r in records[1:] for k in r["stats"])
        shas[e] = [r["sha256"] for r in records]
        out = pa.concat_tables(pq.read_table(tmp_path / e / "out" / f"part-{i:05d}.parquet") for i in range(4))
        assert out.num_rows == len(docs)  # nothing dropped
        rows = {r["id"]: r for r in out.to_pylist()}
        for d in docs:
            r = rows[d["id"]]
            for s in params.scores:
                v = d[s]
                v = None if v is None else float(np.float32(v)) if s == "quality_a" else v
                expect = 0 if v is None or math.isnan(v) else sum(c <= v for c in want[s])
                assert r[f"bucket_{s}"] == expect, (e, s, v)
            assert r["bucket"] == max(r["bucket_quality_a"], r["bucket_quality_b"])  # the ensemble
        counts = {k: v for k, v in _sum_stats(records).items() if k.startswith("buckets.docs.")}
        assert sum(counts.values()) == len(docs)
        assert counts == {f"buckets.docs.{k:02d}": n for k, n in zip(*np.unique(out.column("bucket").to_numpy(), return_counts=True))}
    assert all(shas[e] == shas["local"] for e in engines)  # byte-identical parts


def _sum_stats(records: list[dict]) -> dict:
    from arcforge.runtime.dataset import sum_stats

    return sum_stats(records)


def test_each_bucket_holds_an_equal_share_of_the_weight(tmp_path, ops):
    """Distinct scores: every bucket of one classifier holds ~1/20 of the tokens."""
    rng = random.Random(8)
    docs = [{"id": f"d{i}", "text": "w " * rng.randrange(1, 400), "source": "web", "quality_a": rng.random(),
             "quality_b": None} for i in range(2000)]
    params = BucketParams(scores=["quality_a"], prefix="b_", bucket_column="ens")
    _run_stage(tmp_path, ops, "ray", [docs[:700], docs[700:]], params, False)
    out = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "out").glob("part-*.parquet")))
    w = np.array([math.ceil(len(t.encode()) / 4) for t in out.column("text").to_pylist()])
    b = out.column("b_quality_a").to_numpy()
    shares = np.bincount(b, weights=w, minlength=20) / w.sum()
    assert np.all(np.abs(shares - 0.05) < 0.005), shares
    assert out.column("ens").to_pylist() == b.tolist()


def test_resume_writes_only_pending_parts_with_the_same_cutoffs(tmp_path, ops):
    params = BucketParams(scores=["quality_a", "quality_b"])
    docs, parts = _corpus(300, 5, False, 3)
    full = _run_stage(tmp_path / "a", ops, "spark", parts, params, False)
    some = _run_stage(tmp_path / "b", ops, "spark", parts, params, False, pending=[1, 2])
    assert [r["partition"] for r in some] == [1, 2]
    assert [r["sha256"] for r in some] == [r["sha256"] for r in full[1:]]
    assert not (tmp_path / "b" / "out" / CUTOFFS_FILE).exists()  # partition 0's record holds it


def test_group_by_gives_each_language_its_own_percentiles_on_every_engine(tmp_path, ops):
    """English pages score high and Chinese ones low on one classifier (as an English model
    scores them): corpus-wide percentiles put Chinese in the bottom buckets; with ``group_by:
    language`` each language (and the rows without one) fills its own buckets, by numpy's
    percentiles over that language's rows alone."""
    rng = random.Random(4)
    langs = ["en"] * 300 + ["zh"] * 200 + [None] * 60
    docs = []
    for i, lang in enumerate(langs):
        base = {"en": 0.6, "zh": 0.0, None: 0.3}[lang]
        docs.append({"id": f"d{i:04d}", "text": "page " * rng.randrange(1, 80), "source": "web", "language": lang,
                     "quality_a": None if i % 37 == 0 else float(np.float32(base + 0.4 * rng.random())),
                     "quality_b": round(rng.random(), 3)})
    in_schema = pa.schema([*_schema(False), ("language", pa.string())])
    parts = [docs[i::3] for i in range(3)]
    flat = BucketParams(scores=["quality_a"])
    _run_stage(tmp_path / "flat", ops, "local", parts, flat, False, in_schema=in_schema)
    out = pa.concat_tables(pq.read_table(tmp_path / "flat" / "out" / f"part-{i:05d}.parquet") for i in range(3)).to_pylist()
    assert max(r["bucket"] for r in out if r["language"] == "zh") < 10  # corpus-wide: Chinese in the bottom half

    params = BucketParams(scores=["quality_a", "quality_b"], group_by="language")
    shas = {}
    for e in ENGINES:
        records = _run_stage(tmp_path / e, ops, e, parts, params, False, in_schema=in_schema)
        report = json.loads((tmp_path / e / "out" / CUTOFFS_FILE).read_text())
        assert report["group_by"] == "language" and "cutoffs" not in report
        assert [g["group"] for g in report["groups"]] == [None, "en", "zh"]
        for g in report["groups"]:
            assert g["cutoffs"] == numpy_cutoffs([d for d in docs if d["language"] == g["group"]], params, False), (e, g["group"])
        zh = next(g for g in report["groups"] if g["group"] == "zh")["cutoffs"]["quality_a"]
        assert [records[0]["stats"][f"buckets.cutoff.quality_a.zh.{k:02d}"] for k in range(1, 20)] == [round(c, 6) for c in zh]
        assert "buckets.cutoff.quality_b.(null).01" in records[0]["stats"]
        rows = pa.concat_tables(pq.read_table(tmp_path / e / "out" / f"part-{i:05d}.parquet") for i in range(3)).to_pylist()
        for lang in ("en", "zh", None):
            mine = [r for r in rows if r["language"] == lang]
            cuts = next(g for g in report["groups"] if g["group"] == lang)["cutoffs"]["quality_a"]
            assert all(r["bucket_quality_a"] == (0 if r["quality_a"] is None else sum(c <= r["quality_a"] for c in cuts)) for r in mine)
            assert max(r["bucket_quality_a"] for r in mine) == 19 and min(r["bucket_quality_a"] for r in mine) == 0
        shas[e] = [r["sha256"] for r in records]
    assert shas["spark"] == shas["local"] == shas["ray"]
    with pytest.raises(ValueError, match="group_by 'language' has 3 values, more than max_groups 2"):
        _run_stage(tmp_path / "many", ops, "local", parts, BucketParams(scores=["quality_a"], group_by="language", max_groups=2),
                   False, in_schema=in_schema)
    with pytest.raises(ValueError, match="group_by column 'quality_b' is double, expected a string"):
        _run_stage(tmp_path / "num", ops, "local", parts, BucketParams(scores=["quality_a"], group_by="quality_b"), False,
                   in_schema=in_schema)
    with pytest.raises(ValidationError, match="group_by: 'quality_a' is a score"):
        BucketParams(scores=["quality_a"], group_by="quality_a")


def test_group_by_several_columns_gives_a_group_per_combination(tmp_path, ops):
    """``group_by: [language, source]``: one group per combination of values (a null value
    spelled ``(null)``), each bucketed by numpy's percentiles over its rows alone."""
    rng = random.Random(6)
    docs = []
    for i in range(480):
        lang, src = ["en", "zh", None][i % 3], ["web", "books"][(i // 3) % 2]
        docs.append({"id": f"d{i:04d}", "text": "page " * rng.randrange(1, 60), "source": src, "language": lang,
                     "quality_a": float(np.float32({"en": 0.6, "zh": 0.0, None: 0.3}[lang] + 0.4 * rng.random())),
                     "quality_b": round(rng.random(), 3)})
    in_schema = pa.schema([*_schema(False), ("language", pa.string())])
    params = BucketParams(scores=["quality_a"], group_by=["language", "source"])
    parts = [docs[i::2] for i in range(2)]
    records = _run_stage(tmp_path / "g", ops, "local", parts, params, False, in_schema=in_schema)
    report = json.loads((tmp_path / "g" / "out" / CUTOFFS_FILE).read_text())
    assert report["group_by"] == ["language", "source"]
    names = ["(null)|books", "(null)|web", "en|books", "en|web", "zh|books", "zh|web"]
    assert [g["group"] for g in report["groups"]] == names and all(g["docs"] == 80 for g in report["groups"])
    rows = pa.concat_tables(pq.read_table(tmp_path / "g" / "out" / f"part-{i:05d}.parquet") for i in range(2)).to_pylist()
    for g in report["groups"]:
        lang, src = (None if x == "(null)" else x for x in g["group"].split("|"))
        mine = [d for d in docs if d["language"] == lang and d["source"] == src]
        assert g["cutoffs"] == numpy_cutoffs(mine, params, False)
        got = [r for r in rows if r["language"] == lang and r["source"] == src]
        assert max(r["bucket"] for r in got) == 19 and min(r["bucket"] for r in got) == 0
    assert records[0]["stats"]["buckets.group_docs.zh|web"] == 80
    assert "buckets.cutoff.quality_a.(null)|books.01" in records[0]["stats"]
    with pytest.raises(ValidationError, match="must name one or more distinct columns"):
        BucketParams(scores=["quality_a"], group_by=["language", "language"])
    with pytest.raises(ValidationError, match="group_by: 'quality_a' is a score"):
        BucketParams(scores=["quality_a"], group_by=["language", "quality_a"])


# ---------------------------------------------------------------------------- a run config


RUN = """
name: q
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}, ray: {{num_cpus: 2}}}}
stages:
  - {{name: docs, uses: io.read, input: {{files: ["{inputs}"]}}, engine: local, params: {{source: web, keep: [quality_a, quality_b], partition_mb: 0.01}}}}
  - {{name: buckets, uses: quality.buckets, input: docs, engine: {engine}, params: {{scores: [{scores}], n_buckets: 10}}}}
"""


def test_a_run_reads_scores_and_writes_buckets(tmp_path, spark, ray_local, capsys):
    rng = random.Random(2)
    docs = [d for d in (_doc(i, rng, False) for i in range(400)) if d["text"]]  # io.read rejects empty texts
    for d in docs:
        d["quality_a"] = None if d["quality_a"] is None or math.isnan(d["quality_a"]) else d["quality_a"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(d) + "\n" for d in docs))
    want = numpy_cutoffs(docs, BucketParams(scores=["quality_b"], n_buckets=10), False)
    shas = {}
    for engine in ("local", "ray"):
        cfg = write_config(tmp_path / f"{engine}.yaml", RUN.format(root=tmp_path / engine, inputs=inputs, engine=engine,
                                                                    scores="quality_a, quality_b"))
        results = Runner(load_plan(cfg)).run()
        assert [r.status for r in results] == ["ran", "ran"]
        ref = DatasetRef(str(tmp_path / engine / "q" / "buckets"))
        manifest = read_manifest(ref)
        assert len(manifest["parts"]) > 1 and manifest["rows"] == len(docs)
        stats = manifest["stats"]
        assert [stats[f"buckets.cutoff.quality_b.{k:02d}"] for k in range(1, 10)] == [round(c, 6) for c in want["quality_b"]]
        assert sum(v for k, v in stats.items() if k.startswith("buckets.docs.")) == len(docs)
        report = json.loads((tmp_path / engine / "q" / "buckets" / CUTOFFS_FILE).read_text())
        assert report["cutoffs"]["quality_b"] == want["quality_b"] and report["n_buckets"] == 10
        assert CUTOFFS_FILE in [f["name"] for p in manifest["parts"] for f in p["files"]]
        table = read_dataset(ref)
        assert set(table.column("bucket").to_pylist()) <= set(range(10))
        shas[engine] = [p["sha256"] for p in manifest["parts"]]
        assert [r.status for r in Runner(load_plan(cfg)).run()] == ["skipped", "skipped"]
    assert shas["ray"] == shas["local"]
    # `arcforge status` shows the cut-offs and the documents per bucket
    from arcforge.cli import main

    assert main(["status", str(tmp_path / "local" / "q")]) == 0
    out = capsys.readouterr().out
    assert "cut-offs quality_b: " + " ".join(f"{c:.4g}" for c in want["quality_b"]) in out
    assert "docs per bucket: " in out
    # a score column that no upstream stage declares is a config error before anything runs
    bad = write_config(tmp_path / "bad.yaml", RUN.format(root=tmp_path / "bad", inputs=inputs, engine="local", scores="quality_c"))
    with pytest.raises(ConfigError, match=r"stages\[buckets\]: quality.buckets reads column\(s\) \['quality_c'\]"):
        load_plan(bad)


def test_grouped_cutoffs_reach_status_and_the_report(tmp_path, capsys):
    """A run with ``group_by``: the report's score card draws the largest group's cut-offs and
    tabulates every group's, from the manifest stats alone; ``arcforge status`` lists them."""
    from arcforge.cli import main
    from arcforge.report.collect import collect
    from arcforge.report.html import render

    rng = random.Random(5)
    docs = [d for d in (_doc(i, rng, False) for i in range(300)) if d["text"]]
    for i, d in enumerate(docs):
        d["quality_a"] = None if d["quality_a"] is None or math.isnan(d["quality_a"]) else d["quality_a"]
        d["lang"] = "en" if i % 3 else "zh.hans"  # a dot in a group name, parsed by the score name
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(d) + "\n" for d in docs))
    text = RUN.format(root=tmp_path, inputs=inputs, engine="local", scores="quality_a, quality_b")
    text = text.replace("keep: [quality_a, quality_b]", "keep: [quality_a, quality_b, lang]").replace("n_buckets: 10", "n_buckets: 10, group_by: lang")
    assert [r.status for r in Runner(load_plan(write_config(tmp_path / "g.yaml", text))).run()] == ["ran", "ran"]
    report = json.loads((tmp_path / "q" / "buckets" / CUTOFFS_FILE).read_text())
    en = next(g for g in report["groups"] if g["group"] == "en")
    assert en["docs"] == sum(d["lang"] == "en" for d in docs)

    r = collect(str(tmp_path / "q"))
    cut = next(s for s in r["scores"] if s["name"] == "quality_b")["cutoffs"]
    assert cut["stage"] == "buckets" and cut["group_by"] == "lang" and cut["values"] == []
    assert [(g["group"], g["docs"]) for g in cut["groups"]] == [("en", en["docs"]), ("zh.hans", len(docs) - en["docs"])]
    assert cut["groups"][0]["values"] == [[k, round(c, 6)] for k, c in enumerate(en["cutoffs"]["quality_b"], start=1)]
    html = render(r)
    card = html[html.index('data-score="quality_b"'):]
    card = card[:card.index('<div class="card score"') if '<div class="card score"' in card else len(card)]
    assert card.count('class="cutoff"') == 9 and "lang en: bucket 9 starts at" in card
    assert f"per lang (2 groups); dashed: en, the largest ({en['docs']} docs)" in card
    table = card[card.index('class="cutoffs-by-group"'):]
    assert "<th>lang</th>" in table and '<th class="n">bucket 1 from</th>' in table and '<th class="n">bucket 9 from</th>' in table
    assert table.index("<td>en</td>") < table.index("<td>zh.hans</td>")

    assert main(["status", str(tmp_path / "q")]) == 0
    assert "cut-offs quality_b.zh.hans: " in capsys.readouterr().out
