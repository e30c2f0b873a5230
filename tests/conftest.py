"""Shared fixtures: one real Spark session and one real local Ray per test session.

Environment that workers must inherit (the interpreter, the test-stage module
path, S3 credentials for the loopback server) is set here at import time,
before any engine starts, because Spark's and Ray's workers copy the driver's
environment when they are launched.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "arcforge-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "arcforge-test-secret-DO-NOT-LOG")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def spark():
    from arcforge.runtime.config import SparkConfig
    from arcforge.runtime.engines.spark_engine import build_session

    session = build_session(SparkConfig(master="local[2]"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus() -> Path:
    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    return fetch_demo_corpus(quiet=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def write_random_shard(prefix: str, n_docs: int, seed: int = 0) -> str:
    """A Megatron .bin/.idx of random token ids (4..2047, 20-200 per document, each ended by eod 2),
    written with megatron-core's own builder; returns the prefix."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(n_docs):
        arr = np.append(rng.integers(4, 2048, size=int(rng.integers(20, 200))), 2).astype(np.uint16)
        builder.add_document(arr, [len(arr)])
    builder.finalize(prefix + ".idx")
    return prefix


def tiny_train_config(tmp_path: Path, prefix: str, name: str, *, kernels: dict | None = None, **sections):
    """A validated proxy-tiny CPU train config on ``prefix`` (seq 32, micro 2, global 4, 2
    AdamW steps, one thread, silent); ``kernels`` and other ``sections`` are merged in."""
    from arcforge.model.train_config import parse_train_config

    data = {"name": name, "output_dir": str(tmp_path / name), "seed": 5, "threads": 1,
            "model": {"preset": "proxy-tiny", "seq_length": 32},
            "data": {"blend": [prefix], "split": "100,0,0"},
            "batch": {"micro_batch_size": 2, "global_batch_size": 4},
            "train": {"iters": 2}, "optimizer": {"name": "adamw", "lr": 1e-3},
            "log": {"print_interval": 0, "plot": False}}
    if kernels is not None:
        data["kernels"] = kernels
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return parse_train_config(data, f"{name}.yaml")


STEP_KEYS = ("loss", "mtp_loss", "aux_loss", "grad_norm", "balance_max_mean")


def assert_same_steps(a, b, steps: int = 2, *, rel: float = 2e-5, keys=STEP_KEYS) -> None:
    """Two started trainers take ``steps`` steps each; every logged value in ``keys`` agrees."""
    import pytest

    for _ in range(steps):
        ra, rb = a.advance(None), b.advance(None)
        for key in keys:
            assert rb[key] == pytest.approx(ra[key], rel=rel), key


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# The demo's three classifiers (configs/classifiers/), trained once per session on the demo
# corpus's labels with smaller settings (fastText dim 16, 20k buckets; MiniLM reading 128
# characters), so that tests can run configs/demo.yaml, whose quality stage loads them from
# ${ARCFORGE_RUNS}/classifiers/.
DEMO_CLASSIFIERS = {
    "quality_fasttext": {"fasttext": {"dim": 16, "bucket": 20000, "epoch": 10}},
    "quality_embedding": {"max_chars": 128},
    "edu_multilingual": {"fasttext": {"dim": 16, "bucket": 20000, "epoch": 10}},
}


@pytest.fixture(scope="session")
def demo_classifiers(tmp_path_factory, demo_corpus) -> Path:
    """A folder holding ``classifiers/<name>/`` for the demo's three classifiers; copy it
    (``install_demo_classifiers``) under the ARCFORGE_RUNS of a run of configs/demo.yaml."""
    import yaml

    from arcforge.cli import main

    root = tmp_path_factory.mktemp("demo-classifiers")
    mp = pytest.MonkeyPatch()
    mp.setenv("ARCFORGE_RUNS", str(root))
    mp.setenv("ARCFORGE_DEMO_CORPUS", str(demo_corpus))
    try:
        for name, changes in DEMO_CLASSIFIERS.items():
            cfg = yaml.safe_load((TESTS.parent / "configs" / "classifiers" / f"{name}.yaml").read_text())
            for key, value in changes.items():
                cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            assert main(["classifiers", "train", str(path)]) == 0
    finally:
        mp.undo()
    return root


def install_demo_classifiers(trained: Path, runs_root: Path) -> None:
    import shutil

    shutil.copytree(trained / "classifiers", runs_root / "classifiers", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_corpus, demo_classifiers, spark, ray_local):
    """configs/demo.yaml run once per session, in this process on the session's Spark and Ray
    (ARCFORGE_RUNS = the returned root's parent, which holds the classifiers): the slice tests
    read it, and the cluster test compares the clusters' run with it."""
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.runner import Runner

    root = tmp_path_factory.mktemp("demo")
    install_demo_classifiers(demo_classifiers, root)
    mp = pytest.MonkeyPatch()
    mp.setenv("ARCFORGE_RUNS", str(root))
    mp.setenv("ARCFORGE_DEMO_CORPUS", str(demo_corpus))
    try:
        results = {r.name: r for r in Runner(load_plan(TESTS.parent / "configs" / "demo.yaml")).run()}
    finally:
        mp.undo()
    return root / "demo", results


@pytest.fixture(scope="module")
def engine_ops(spark, ray_local):
    """The global operations of each engine, on the session's Spark and Ray: {name: ops}."""
    from arcforge.runtime.config import RayConfig, SparkConfig
    from arcforge.runtime.engines.local import LocalEngine
    from arcforge.runtime.engines.ray_engine import RayEngine
    from arcforge.runtime.engines.spark_engine import SparkEngine

    found = {"local": LocalEngine().ops(), "spark": SparkEngine(SparkConfig(master="local[2]")).ops(), "ray": RayEngine(RayConfig()).ops()}
    yield found
    for o in found.values():
        o.close()
