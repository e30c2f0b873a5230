"""Datasets across runs: another run's dataset or external Parquet as input, export, and
identical bytes for the same run in two folders."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.documents import docs_table
from arcforge.runtime.runner import Runner

FILTER_ON = """
name: b
storage: {{root: "{root}"}}
stages:
  - {{name: filt, uses: "pipeline_stages:SLOW_FILTER", input: {{dataset: "{uri}"}}, params: {{min_chars: {min_chars}}}}}
"""


def test_another_runs_dataset_is_an_input_and_its_changes_propagate(tmp_path):
    make_line_files(tmp_path / "in", n_files=3, n_lines=30, seed=2)
    (tmp_path / "a.yaml").write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", name="a", min_chars=5))
    Runner(load_plan(tmp_path / "a.yaml")).run()
    upstream = tmp_path / "runs" / "a" / "filt"
    (tmp_path / "b.yaml").write_text(FILTER_ON.format(root=tmp_path / "runs", uri=upstream, min_chars=12))
    first = Runner(load_plan(tmp_path / "b.yaml")).run()[0]
    kept_a = dataset.read_dataset(DatasetRef(str(upstream)), ["id", "text"])
    kept_b = dataset.read_dataset(DatasetRef(str(tmp_path / "runs" / "b" / "filt")), ["id", "text"])
    assert first.manifest["stats"]["docs_in"] == kept_a.num_rows
    assert kept_b.column("text").to_pylist() == [t for t in kept_a.column("text").to_pylist() if len(t) >= 12]
    assert first.manifest["inputs"] == [str(upstream)]
    assert Runner(load_plan(tmp_path / "b.yaml")).run()[0].status == "skipped"
    # a change upstream (another run) changes the parts' fingerprints, so this stage is redone
    (tmp_path / "a.yaml").write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", name="a", min_chars=8))
    Runner(load_plan(tmp_path / "a.yaml")).run()
    assert Runner(load_plan(tmp_path / "b.yaml")).run()[0].status == "ran"


def test_external_parquet_folder_is_an_input(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    rows = [{"id": f"d{i}", "text": "word " * (i % 7), "source": "x"} for i in range(50)]
    pq.write_table(docs_table(rows[:20]), folder / "a.parquet")
    pq.write_table(docs_table(rows[20:]), folder / "b.parquet")
    (tmp_path / "b.yaml").write_text(FILTER_ON.format(root=tmp_path / "runs", uri=folder, min_chars=12))
    result = Runner(load_plan(tmp_path / "b.yaml")).run()[0]
    assert len(result.manifest["parts"]) == 2 and result.manifest["stats"]["docs_in"] == 50
    assert result.manifest["rows"] == sum(len(r["text"]) >= 12 for r in rows)


def test_a_dataset_input_that_is_not_there_is_a_config_error(tmp_path):
    (tmp_path / "b.yaml").write_text(FILTER_ON.format(root=tmp_path / "runs", uri=tmp_path / "nothing", min_chars=1))
    with pytest.raises(ConfigError, match=r"stages\[filt\]\.input\.dataset: .*nothing is neither a committed arcforge dataset"):
        load_plan(tmp_path / "b.yaml")


def test_export_round_trips(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=40, seed=4)
    (tmp_path / "a.yaml").write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", name="a"))
    Runner(load_plan(tmp_path / "a.yaml")).run()
    src = tmp_path / "runs" / "a" / "filt"
    table = dataset.read_dataset(DatasetRef(str(src)))
    for out in ("out.jsonl", "out.jsonl.gz"):
        res = subprocess.run([sys.executable, "-m", "arcforge.cli", "export", str(src), "--format", "jsonl", "-o", str(tmp_path / out)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        opener = gzip.open if out.endswith(".gz") else open
        with opener(tmp_path / out, "rt", encoding="utf-8") as f:
            back = [json.loads(line) for line in f]
        assert back == table.to_pylist()
    res = subprocess.run([sys.executable, "-m", "arcforge.cli", "export", str(src), "--format", "parquet", "-o", str(tmp_path / "pq")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    names = [p["name"] for p in dataset.read_manifest(DatasetRef(str(src)))["parts"]]
    back = pa.concat_tables([pq.read_table(tmp_path / "pq" / n) for n in names])
    assert back.equals(table)
    # the export is itself an input of another run
    (tmp_path / "b.yaml").write_text(FILTER_ON.format(root=tmp_path / "runs", uri=tmp_path / "pq", min_chars=0))
    assert Runner(load_plan(tmp_path / "b.yaml")).run()[0].manifest["rows"] == table.num_rows
    bad = subprocess.run([sys.executable, "-m", "arcforge.cli", "export", str(tmp_path / "in"), "--format", "jsonl", "-o", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a committed dataset" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()


TOKENIZE = """
name: same
storage: {{root: "{root}"}}
stages:
  - {{name: books, uses: text.plain_files, input: {{files: ["{books}/*.txt"]}}, params: {{source: books, split: paragraphs}}}}
  - {{name: wiki, uses: text.wikipedia_dump, input: {{files: ["{wiki}/*.bz2"]}}}}
  - {{name: tokenizer, uses: tokenize.train_spm, input: [books, wiki], params: {{vocab_size: 1000, seed: 0}}}}
  - {{name: shards, uses: tokenize.megatron_shards, input: [books, wiki], artifacts: {{tokenizer: tokenizer}}}}
"""


def test_the_same_run_in_two_folders_writes_the_same_bytes(tmp_path, demo_corpus):
    digests = []
    for folder in ("one", "two/deeper"):
        root = tmp_path / folder
        cfg = tmp_path / f"{folder.replace('/', '_')}.yaml"
        cfg.write_text(TOKENIZE.format(root=root, books=demo_corpus / "books", wiki=demo_corpus / "wiki"))
        results = Runner(load_plan(cfg)).run()
        got = {}
        for r in results:
            got[r.name] = (r.manifest["fingerprint"], [(p["name"], p["sha256"]) for p in r.manifest["parts"]],
                           sorted((f["name"], f["sha256"]) for p in r.manifest["parts"] for f in p.get("files", [])))
        tok = root / "same" / "tokenizer"
        got["tokenizer.files"] = {f.name: f.read_bytes() for f in sorted(tok.iterdir()) if f.is_file() and not f.name.startswith("_")}
        assert str(tmp_path) not in json.dumps({k: v for k, v in got.items() if k != "tokenizer.files"})
        assert all(str(tmp_path).encode() not in b for b in got["tokenizer.files"].values())
        digests.append(got)
    assert digests[0] == digests[1]
    assert digests[0]["shards"][2], "the shards stage publishes .bin/.idx files"
