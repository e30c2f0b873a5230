"""A whole run against a real S3-compatible server on 127.0.0.1 (moto), on Spark and Ray workers."""

from __future__ import annotations

import subprocess
import sys

import boto3
from pipeline_stages import make_line_files, pipeline_yaml

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner
from arcforge.runtime.storage import S3Options


def test_s3_run_matches_local_and_never_stores_credentials(tmp_path, s3_endpoint, spark, ray_local, monkeypatch):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="arcforge-test")
    make_line_files(tmp_path / "in", n_files=3, n_lines=30, seed=11)
    for f in sorted((tmp_path / "in").glob("*.txt")):
        s3.upload_file(str(f), "arcforge-test", f"inputs/{f.name}")
    storage_block = f'storage: {{root: "s3://arcforge-test/runs", s3: {{endpoint_url: "{s3_endpoint}"}}}}'
    s3_yaml = pipeline_yaml("UNUSED", "s3://arcforge-test/inputs/*.txt", lines_engine="spark", filt_engine="ray", dedup_engine="spark")
    s3_yaml = s3_yaml.replace('storage: {root: "UNUSED"}', storage_block)
    (tmp_path / "s3.yaml").write_text(s3_yaml)
    (tmp_path / "local.yaml").write_text(pipeline_yaml(str(tmp_path / "local"), f"{tmp_path}/in/*.txt"))

    s3_results = Runner(load_plan(tmp_path / "s3.yaml")).run()
    local_results = Runner(load_plan(tmp_path / "local.yaml")).run()
    s3_opts = S3Options(endpoint_url=s3_endpoint)
    for a, b in zip(s3_results, local_results):
        assert a.manifest["rows"] == b.manifest["rows"]
        assert a.manifest["stats"]["docs_out"] == b.manifest["stats"]["docs_out"]
        # same rows in the same parts; only the url column differs (it names the input file)
        for pa_, pb in zip(a.manifest["parts"], b.manifest["parts"]):
            ta = dataset.read_dataset(DatasetRef(f"s3://arcforge-test/runs/t/{a.name}", s3_opts), ["id", "text"])
            tb = dataset.read_dataset(DatasetRef(str(tmp_path / "local" / "t" / b.name)), ["id", "text"])
            assert ta.equals(tb)
    assert s3_results[1].manifest["stats"]["dropped.too_short"] > 0

    ref = DatasetRef("s3://arcforge-test/runs/t/dedup", s3_opts)
    assert dataset.read_dataset(ref).num_rows == s3_results[2].manifest["rows"]
    # re-running against S3 resumes from the manifests there
    assert [r.status for r in Runner(load_plan(tmp_path / "s3.yaml")).run()] == ["skipped"] * 3

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="arcforge-test", Prefix="runs/")["Contents"]]
    assert "runs/t/dedup/_manifest.json" in keys and "runs/t/filt/rejected/part-00000.parquet" in keys
    for key in keys:
        body = s3.get_object(Bucket="arcforge-test", Key=key)["Body"].read()
        assert b"arcforge-test-secret-DO-NOT-LOG" not in body and b"arcforge-test-key" not in body

    # the CLI reads S3 the same way (endpoint from the environment)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "status", "s3://arcforge-test/runs/t"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("committed") == 3
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "inspect", "s3://arcforge-test/runs/t/dedup", "-n", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{s3_results[2].manifest['rows']} rows" in out.stdout
