"""Fused chains: several map steps in one task, one dataset, the text written once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.chain import ChainParams, run_chain
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.documents import ColumnMismatch
from arcforge.runtime.runner import Runner, StageFailed
from arcforge.runtime.stage import MapStage, Output, StageParams, TaskContext

STEPS = {"steps": [
    {"name": "score", "uses": "pipeline_stages:SCORE_LENGTH"},
    {"name": "long", "uses": "filter", "params": {"rules": [{"column": "length", "op": ">=", "value": 15, "reason": "short"}]}},
    {"name": "not_huge", "uses": "filter", "params": {"rules": [{"column": "length", "op": "<", "value": 40, "reason": "long"}]}},
]}


def test_a_chain_runs_its_steps_in_order_with_their_own_counters_and_reasons():
    texts = ["a" * n for n in (5, 20, 50, 30, 10)]
    batch = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(5)], "text": texts})
    ctx = TaskContext()
    out = run_chain(batch, ChainParams.model_validate(STEPS), ctx)
    assert out.kept.column("length").to_pylist() == [20, 30]
    rej = sorted((r["step"], r["reason"], len(r["text"])) for r in out.rejected.to_pylist())
    assert rej == [("long", "short", 5), ("long", "short", 10), ("not_huge", "long", 50)]
    stats = ctx.stats.as_dict()
    assert stats["steps.score.docs_in"] == 5 and stats["steps.score.docs_out"] == 5
    assert stats["steps.long.docs_in"] == 5 and stats["steps.long.dropped.short"] == 2
    assert stats["steps.not_huge.docs_in"] == 3 and stats["steps.not_huge.docs_out"] == 2
    assert stats["steps.long.filter.short"] == 2  # a step's own counters keep their names under its prefix


def test_a_step_that_returns_an_undeclared_column_names_the_step():
    batch = pa.RecordBatch.from_pydict({"id": ["1"], "text": ["hello"]})
    params = ChainParams.model_validate({"steps": [{"name": "sc", "uses": "pipeline_stages:SCORE_LENGTH", "params": {"extra_column": True}}]})
    with pytest.raises(ColumnMismatch, match=r"chain step sc \(test.score_length\) returned column\(s\) \['debug'\]"):
        run_chain(batch, params, TaskContext())


CHAIN = """
  - name: quality
    input: filt
    engine: {engine}
    steps:
      - {{name: score, uses: "pipeline_stages:SCORE_LENGTH"}}
      - {{name: long, uses: filter, params: {{rules: [{{column: length, op: ">=", value: {min_len}, reason: short}}]}}}}
      - {{name: few_words, uses: filter, params: {{rules: [{{column: length, op: "<", value: 40, reason: too_long}}]}}}}
"""

SEPARATE = """
  - {{name: score, uses: "pipeline_stages:SCORE_LENGTH", input: filt}}
  - {{name: long, uses: filter, input: score, params: {{rules: [{{column: length, op: ">=", value: {min_len}, reason: short}}]}}}}
  - {{name: few_words, uses: filter, input: long, params: {{rules: [{{column: length, op: "<", value: 40, reason: too_long}}]}}}}
"""


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def _text_bytes(path: Path) -> int:
    return sum(len(t.encode()) for f in sorted(path.rglob("*.parquet")) for t in pq.read_table(f, columns=["text"]).column("text").to_pylist())


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_a_chain_writes_the_text_once_and_equals_its_steps_run_apart(tmp_path: Path, engine: str):
    make_line_files(tmp_path / "in", n_files=3, n_lines=60)
    files = f"{tmp_path}/in/*.txt"
    chained, apart = tmp_path / "chained", tmp_path / "apart"
    (tmp_path / "a.yaml").write_text(pipeline_yaml(str(chained), files, min_chars=0, extra=CHAIN.format(engine=engine, min_len=15)))
    (tmp_path / "b.yaml").write_text(pipeline_yaml(str(apart), files, min_chars=0, extra=SEPARATE.format(min_len=15)))
    res = Runner(load_plan(tmp_path / "a.yaml")).run()
    Runner(load_plan(tmp_path / "b.yaml")).run()
    kept = dataset.read_dataset(DatasetRef(str(chained / "t" / "quality")))
    kept_apart = dataset.read_dataset(DatasetRef(str(apart / "t" / "few_words")))
    assert kept.to_pylist() == kept_apart.to_pylist() and kept.num_rows > 0
    # rejected rows: the same rows and reasons, each naming the step that dropped it
    rej = dataset.read_dataset(DatasetRef(str(chained / "t" / "quality" / "rejected")))
    assert {(r["id"], r["reason"], r["step"]) for r in rej.to_pylist()} == {
        (r["id"], r["reason"], step)
        for step in ("long", "few_words")
        for r in dataset.read_dataset(DatasetRef(str(apart / "t" / step / "rejected"))).to_pylist()
    }
    # the text is written once: the chain's dataset holds the kept text plus the rejects' text, no more
    quality = chained / "t" / "quality"
    written = _text_bytes(quality)
    assert written == sum(len(t.encode()) for t in dataset.read_dataset(DatasetRef(str(chained / "t" / "filt"))).column("text").to_pylist())
    assert _bytes(quality) < _bytes(apart / "t" / "score") + _bytes(apart / "t" / "long") + _bytes(apart / "t" / "few_words")
    stats = res[-1].manifest["stats"]
    assert stats["steps.long.dropped.short"] + stats["steps.few_words.dropped.too_long"] == stats["dropped"]


def test_a_chain_step_reading_a_column_nothing_declares_is_a_config_error(tmp_path: Path):
    make_line_files(tmp_path / "in", n_files=1, n_lines=5)
    cfg = tmp_path / "c.yaml"
    bad = CHAIN.format(engine="local", min_len=3).replace("column: length, op: \">=\"", "column: lenght, op: \">=\"")
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", extra=bad))
    with pytest.raises(ConfigError) as exc:
        load_plan(cfg)
    assert str(exc.value).startswith(f"{cfg}: stages[quality].steps[long]: filter reads column(s) ['lenght']")
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt",
                                 extra=CHAIN.format(engine="local", min_len=3).replace("op: \"<\"", "op: \"<<\"")))
    with pytest.raises(ConfigError, match=r"stages\[quality\]\.steps\[few_words\]\.params\.rules"):
        load_plan(cfg)
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt",
                                 extra=CHAIN.format(engine="local", min_len=3).replace("name: long, uses: filter", "name: long, uses: dedup.exact")))
    with pytest.raises(ConfigError, match=r"steps\[long\]\.uses: dedup.exact is a global stage; a chain's steps must be map stages"):
        load_plan(cfg)


def test_a_step_param_change_reruns_the_chain_only(tmp_path: Path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=30)
    cfg = tmp_path / "c.yaml"
    for min_len, expect in ((15, ["ran"] * 4), (15, ["skipped"] * 4), (20, ["skipped"] * 3 + ["ran"])):
        cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", min_chars=0, extra=CHAIN.format(engine="local", min_len=min_len)))
        assert [r.status for r in Runner(load_plan(cfg)).run()] == expect


def test_a_step_that_raises_on_many_rows_trips_the_threshold_naming_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    make_line_files(tmp_path / "in", n_files=1, n_lines=40)
    poison = (tmp_path / "in" / "f00.txt").read_text().splitlines()[3]
    monkeypatch.setenv("ARCFORGE_TEST_FAIL_ON", poison)  # SCORE_LENGTH raises on this row: the batch, then that row
    cfg = tmp_path / "c.yaml"
    chain = CHAIN.format(engine="local", min_len=1).replace("input: filt", "input: lines\n    max_error_fraction: 0")
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", min_chars=0, max_error_fraction=1.0, extra=chain))
    with pytest.raises(StageFailed, match=r"stage quality failed: 1 of 40 rows \(2.5%\) raised in step score \(test.score_length\)"):
        Runner(load_plan(cfg)).run()


READ_THEN_FILTER = """
name: r
storage: {{root: "{root}"}}
stages:
  - name: docs
    uses: io.read
    input: {{files: ["{inputs}"]}}
    steps:
      - {{name: stats, uses: text.stats}}
      - {{name: words, uses: filter, params: {{rules: [{{column: n_words, op: ">=", value: 4, reason: few_words}}]}}}}
"""


def test_steps_fuse_after_a_reader_so_reading_and_filtering_write_one_dataset(tmp_path: Path):
    import json

    rows = [{"id": str(i), "text": " ".join(["w"] * (i % 7))} for i in range(50)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "r.yaml"
    cfg.write_text(READ_THEN_FILTER.format(root=tmp_path / "runs", inputs=tmp_path / "in.jsonl"))
    res = Runner(load_plan(cfg)).run()
    run = tmp_path / "runs" / "r"
    assert [p.name for p in run.iterdir() if p.is_dir()] == ["docs"]
    kept = dataset.read_dataset(DatasetRef(str(run / "docs")))
    assert sorted(kept.column("id").to_pylist(), key=int) == [r["id"] for r in rows if r["text"].count("w") >= 4]
    assert kept.column("n_words").to_pylist() == [t.count("w") for t in kept.column("text").to_pylist()]
    rej = dataset.read_dataset(DatasetRef(str(run / "docs" / "rejected"))).to_pylist()
    # the reader's own rejects (empty text) have no step; the fused step's name theirs
    assert {(r["reason"], r["step"]) for r in rej} == {("empty_text", None), ("few_words", "words")}
    assert len(rej) + kept.num_rows == 50
    stats = res[0].manifest["stats"]
    assert stats["docs_in"] == 50 and stats["steps.words.docs_in"] == 50 - 8
    assert stats["steps.words.dropped.few_words"] == len(rej) - 8 == stats["dropped.few_words"]
    # a step param change re-runs the stage (reader and steps are one task)
    cfg.write_text(cfg.read_text().replace("value: 4", "value: 5"))
    assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran"]


# ------------------------------------------------------------------------------ param-dependent steps
# Quality scorers name their column by their params (quality_<name>) and load a model per worker;
# both are real models trained here on the demo corpus: Botchan's passages ("book") vs
# paragraphs of the docutils documentation ("docs").


def _passages(root: Path) -> dict[str, list[str]]:
    import gzip
    import json

    lines = [ln.strip() for ln in (root / "books" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines()]
    body = lines[40:-400]  # past the Gutenberg header, before its licence
    book = [p for p in (" ".join(body[i : i + 4]) for i in range(0, len(body) - 4, 4)) if len(p) >= 150]
    docs: list[str] = []
    with gzip.open(root / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            docs += [p for p in json.loads(line)["text"].split("\n\n") if len(p) >= 150][:4]
    return {"book": book[:120], "docs": docs[:120]}


def _train(root: Path, kind: str, texts: dict[str, list[str]], extra: str) -> Path:
    import json

    from arcforge.classifiers.spec import load_train_config
    from arcforge.classifiers.train import train_classifier

    data = root / f"{kind}.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for label, ts in texts.items() for t in ts))
    cfg = root / f"{kind}.yaml"
    cfg.write_text(f'name: book_vs_docs\nkind: {kind}\ndata: {{files: ["{data}"], text_key: text, label_key: label}}\n'
                   f"positive: book\nholdout: 0.25\nseed: 3\nmax_chars: 256\noutput: {root / kind}\n{extra}")
    train_classifier(load_train_config(cfg))
    return root / kind


@pytest.fixture(scope="module")
def scorers(tmp_path_factory, demo_corpus):
    """A fastText and an embedding classifier, and 3 input files of 20 unseen passages each."""
    import json

    root = tmp_path_factory.mktemp("scorers")
    texts = _passages(demo_corpus)
    ft = _train(root, "fasttext", {k: v[:80] for k, v in texts.items()}, "fasttext: {dim: 16, bucket: 20000, epoch: 20, lr: 0.5}\n")
    emb = _train(root, "embedding", {k: v[:30] for k, v in texts.items()}, "embedding: {device: cpu, batch_size: 32}\n")
    unseen = [t for pair in zip(texts["book"][80:110], texts["docs"][80:110]) for t in pair]
    (root / "in").mkdir()
    for i in range(3):
        rows = unseen[i * 20 : (i + 1) * 20]
        (root / "in" / f"d{i}.jsonl").write_text("".join(json.dumps({"id": f"d{i}-{j}", "text": t}) + "\n" for j, t in enumerate(rows)))
    return {"ft": ft, "emb": emb, "inputs": f"{root}/in/*.jsonl"}


SCORERS = [
    {"name": "ft", "uses": "quality.fasttext", "params": {"model": "{ft}", "name": "ft"}},
    {"name": "emb", "uses": "quality.embedding", "params": {"model": "{emb}", "name": "emb", "device": "cpu"}},
    {"name": "keep", "uses": "filter", "params": {"rules": [
        {"column": "quality_ft", "op": ">=", "value": 0.5, "reason": "low_ft"},
        {"column": "quality_emb", "op": ">=", "value": 0.5, "reason": "low_emb"}]}},
]


def _scorer_yaml(root: Path, scorers: dict, engine: str, fused: bool) -> str:
    import json

    steps = json.loads(json.dumps(SCORERS).replace("{ft}", str(scorers["ft"])).replace("{emb}", str(scorers["emb"])))
    head = f'name: s\nstorage: {{root: "{root}"}}\nengines: {{ray: {{num_cpus: 2}}}}\nstages:\n' \
           f'  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{scorers["inputs"]}"]}}}}\n'
    if fused:
        return head + f"  - {{name: quality, input: docs, engine: {engine}, steps: {json.dumps(steps)}}}\n"
    body, prev = "", "docs"
    for s in steps:
        body += f"  - {{name: {s['name']}, uses: {s['uses']}, input: {prev}, engine: {engine}, params: {json.dumps(s['params'])}}}\n"
        prev = s["name"]
    return head + body


def test_quality_scorers_fuse_into_a_chain_on_local_and_ray_as_they_run_apart(tmp_path: Path, scorers, ray_local):
    from arcforge.runtime.chain import CHAIN as CHAIN_STAGE
    from arcforge.runtime.stage import Resources

    (tmp_path / "apart.yaml").write_text(_scorer_yaml(tmp_path / "apart", scorers, "local", fused=False))
    Runner(load_plan(tmp_path / "apart.yaml")).run()
    apart = tmp_path / "apart" / "s"
    kept_apart = dataset.read_dataset(DatasetRef(str(apart / "keep")))
    rej_apart = dataset.read_dataset(DatasetRef(str(apart / "keep" / "rejected")))
    assert 0 < kept_apart.num_rows < 60 and {r["reason"] for r in rej_apart.to_pylist()} >= {"low_ft"}
    for engine in ("local", "ray"):
        cfg = tmp_path / f"{engine}.yaml"
        cfg.write_text(_scorer_yaml(tmp_path / engine, scorers, engine, fused=True))
        plan = load_plan(cfg)
        quality = plan.stages[1]
        # the plan knows the params-named columns and asks each step for its resources
        assert quality.schema.names[-2:] == ["quality_ft", "quality_emb"]
        assert quality.schema.field("quality_emb").metadata == {b"arcforge.range": b"0,1"}
        assert CHAIN_STAGE.resources_for(quality.params) == Resources(cpus=1, gpus=0)
        assert [r.status for r in Runner(plan).run()] == ["ran", "ran"]
        run = tmp_path / engine / "s" / "quality"
        kept = dataset.read_dataset(DatasetRef(str(run)))
        assert kept.to_pylist() == kept_apart.to_pylist(), engine  # same rows, same scores, same order
        rej = dataset.read_dataset(DatasetRef(str(run / "rejected"))).to_pylist()
        assert sorted((r["id"], r["reason"], r["step"]) for r in rej) == sorted((r["id"], r["reason"], "keep") for r in rej_apart.to_pylist())
        stats = dataset.read_manifest(DatasetRef(str(run)))["stats"]
        assert stats["steps.ft.docs_in"] == stats["steps.emb.docs_out"] == 60 and stats["steps.keep.docs_out"] == kept.num_rows


class CountParams(StageParams):
    marker_dir: str


def _count_setup(params: CountParams, artifacts: dict[str, str]) -> str:
    """Leaves one file per call: how many times workers loaded this step's 'model'."""
    import os
    import uuid

    marker = Path(params.marker_dir) / f"setup-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    marker.write_text("")
    return marker.name


def _count_fn(batch: pa.RecordBatch, params: CountParams, ctx: TaskContext) -> Output:
    assert ctx.state is not None and ctx.state.startswith("setup-")  # its own setup's result, not another step's
    return Output(kept=batch)


COUNTED = MapStage("test.counted_setup", CountParams, _count_fn, setup=_count_setup)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_steps_setup_loads_once_per_worker_not_per_partition(tmp_path: Path, engine: str, request):
    """Six partitions through a reader with fused steps (two with a setup): on local one
    process loads each step once; on Ray each pool actor (2 CPUs: at most 2) does."""
    import json

    if engine == "ray":
        request.getfixturevalue("ray_local")
    for i in range(6):
        (tmp_path / f"in{i}.jsonl").write_text("".join(json.dumps({"id": f"{i}-{j}", "text": f"doc {i} {j}"}) + "\n" for j in range(5)))
    marks = {n: tmp_path / n for n in ("a", "b")}
    for m in marks.values():
        m.mkdir()
    steps = [{"name": n, "uses": "test_chain:COUNTED", "params": {"marker_dir": str(m)}} for n, m in marks.items()]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'name: c\nstorage: {{root: "{tmp_path / "runs"}"}}\nstages:\n'
                   f'  - {{name: docs, uses: io.read, engine: {engine}, input: {{files: ["{tmp_path}/in*.jsonl"]}}, steps: {json.dumps(steps)}}}\n')
    res = Runner(load_plan(cfg)).run()
    assert res[0].manifest["rows"] == 30 and len(res[0].manifest["parts"]) == 6
    loads = {n: len(list(m.iterdir())) for n, m in marks.items()}
    assert loads == {"a": 1, "b": 1} if engine == "local" else 1 <= loads["a"] == loads["b"] <= 2, loads
