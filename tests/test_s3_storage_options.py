"""S3 as configured, and through an outage: a real S3-compatible server (moto) on 127.0.0.1.

* The endpoint is given only in the config (no AWS_ENDPOINT_URL anywhere): the
  whole chain (documents, tokenizer, shards, mixture) must reach it. An access
  that fell back to the default AWS endpoint would fail here (no network).
* The server goes away for about 10 s in the middle of a stage: tasks retry
  with backoff, and the run completes with the same output as without it.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import boto3
import pytest
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner
from arcforge.runtime.storage import S3Options


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def private_s3(monkeypatch):
    """A server of this test's own, so stopping it cannot disturb other tests."""
    from moto.server import ThreadedMotoServer

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    port = _port()
    box = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False), "port": port}
    box["server"].start()
    yield box
    box["server"].stop()


def _upload_inputs(tmp_path, endpoint: str, bucket: str, n_files: int) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for f in make_line_files(tmp_path / "in", n_files=n_files, n_lines=40, seed=21):
        s3.upload_file(str(f), bucket, f"inputs/{f.name}")


def test_endpoint_from_the_config_reaches_every_access(tmp_path, private_s3):
    endpoint = f"http://127.0.0.1:{private_s3['port']}"
    _upload_inputs(tmp_path, endpoint, "cfg-only", 3)
    assert "AWS_ENDPOINT_URL" not in os.environ
    extra = """
  - {name: tokenizer, uses: tokenize.train_spm, input: dedup, params: {vocab_size: 320, seed: 0}}
  - {name: shards, uses: tokenize.megatron_shards, input: dedup, artifacts: {tokenizer: tokenizer}}
"""
    text = pipeline_yaml("UNUSED", "s3://cfg-only/inputs/*.txt", extra=extra)
    text = text.replace('storage: {root: "UNUSED"}', f'storage: {{root: "s3://cfg-only/runs", s3: {{endpoint_url: "{endpoint}", retries: 1}}}}')
    (tmp_path / "run.yaml").write_text(text)
    results = Runner(load_plan(tmp_path / "run.yaml")).run()
    assert [r.status for r in results] == ["ran"] * 5
    shards = dataset.read_dataset(DatasetRef("s3://cfg-only/runs/t/shards", S3Options(endpoint_url=endpoint)))
    assert sum(shards.column("documents").to_pylist()) == results[2].manifest["rows"]

    from arcforge.tokenize.mixture import load_mixture, write_mixture

    (tmp_path / "mix.yaml").write_text(f"""
name: m
storage: {{s3: {{endpoint_url: "{endpoint}"}}}}
shards: s3://cfg-only/runs/t/shards
output: s3://cfg-only/runs/t/mixture
stages:
  - {{name: s1, seq_length: 64, tokens: 1K, sources: [{{source: lines, weight: 1}}]}}
""")
    written = write_mixture(load_mixture(tmp_path / "mix.yaml"))
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="cfg-only")["Contents"]}
    assert {w.removeprefix("s3://cfg-only/") for w in written} <= keys

    # the trainer's data: the blend and its shards on S3 are fetched into the data cache
    from arcforge.model.train import load_train_config

    (tmp_path / "train.yaml").write_text(f"""
output_dir: {tmp_path / "train"}
storage: {{s3: {{endpoint_url: "{endpoint}"}}}}
model: {{preset: proxy-tiny, overrides: {{vocab_size: 320}}, seq_length: 32}}
data: {{blend_file: "s3://cfg-only/runs/t/mixture/s1.blend.json", tokenizer: null}}
batch: {{micro_batch_size: 2, global_batch_size: 2}}
train: {{iters: 1}}
""")
    plan = load_train_config(tmp_path / "train.yaml")._data_plan
    local = plan.train_blend[0]
    assert local and all(p.startswith(str(tmp_path / "train" / "data_cache" / "shards")) for p in local)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for p in local:
        name = p.rsplit("/", 1)[-1]
        key = next(k for k in keys if k.endswith(f"/{name}.bin"))
        assert open(p + ".bin", "rb").read() == s3.get_object(Bucket="cfg-only", Key=key)["Body"].read()


def test_a_ten_second_server_outage_mid_stage_is_ridden_out(tmp_path, private_s3):
    endpoint = f"http://127.0.0.1:{private_s3['port']}"
    _upload_inputs(tmp_path, endpoint, "outage", 6)
    text = pipeline_yaml("UNUSED", "s3://outage/inputs/*.txt", seconds=0.7)
    text = text.replace('storage: {root: "UNUSED"}', f'storage: {{root: "s3://outage/runs", s3: {{endpoint_url: "{endpoint}"}}}}')
    (tmp_path / "run.yaml").write_text(text)
    Runner(load_plan(tmp_path / "run.yaml")).run(only="lines")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    outage = {}

    def restart_after_first_commit() -> None:
        from moto.server import ThreadedMotoServer

        deadline = time.time() + 120
        while time.time() < deadline:
            got = s3.list_objects_v2(Bucket="outage", Prefix="runs/t/filt/_commits/").get("KeyCount", 0)
            if got:
                break
            time.sleep(0.1)
        private_s3["server"].stop()
        outage["start"] = time.time()
        time.sleep(10)
        private_s3["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=private_s3["port"], verbose=False)
        private_s3["server"].start()
        outage["end"] = time.time()

    thread = threading.Thread(target=restart_after_first_commit)
    thread.start()
    result = Runner(load_plan(tmp_path / "run.yaml")).run(only="filt")[0]
    thread.join()
    assert outage["end"] - outage["start"] >= 10
    done_at = max(float(o["LastModified"].timestamp()) for o in s3.list_objects_v2(Bucket="outage", Prefix="runs/t/filt/_commits/")["Contents"])
    assert done_at > outage["start"], "the outage must fall inside the stage"
    assert result.manifest["stats"]["docs_in"] == 240 and len(result.manifest["parts"]) == 6

    (tmp_path / "clean.yaml").write_text(pipeline_yaml(str(tmp_path / "local"), f"{tmp_path}/in/*.txt"))
    clean = Runner(load_plan(tmp_path / "clean.yaml")).run(only="lines") and Runner(load_plan(tmp_path / "clean.yaml")).run(only="filt")[0]
    got = dataset.read_dataset(DatasetRef("s3://outage/runs/t/filt", S3Options(endpoint_url=endpoint)), ["id", "text"])
    want = dataset.read_dataset(DatasetRef(str(tmp_path / "local" / "t" / "filt")), ["id", "text"])
    assert got.equals(want) and clean.manifest["rows"] == result.manifest["rows"]
