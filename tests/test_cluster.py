"""Cluster mode: the demo pipeline on a Spark standalone cluster and a two-node Ray cluster.

A Spark master with two one-core workers and a Ray head plus one more Ray node, all on
127.0.0.1, are started here; ``arcforge run`` (a subprocess, as a user runs it) is pointed
at them with ``engines.spark.master`` / ``engines.ray.address``, and its committed outputs
must equal those of the embedded engines (local Spark, local Ray) row for row and byte for
byte. docs/cluster.md has the same commands as a try-out recipe.

Everything started here runs in its own process group and is stopped by pid in the
fixture's teardown, even when the test fails. ``ray stop`` is not used: it kills every
Ray process on the machine, including the test session's own local Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
BIN = Path(sys.executable).parent  # the venv's bin: ray, arcforge


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class Processes:
    """Processes this test started, each leading its own process group, stopped by pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(self.logs / f'{name}.log')}")

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{_tail(self.logs / f'{n}.log', 800)}" for n, _ in self.procs)
                raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{logs}")
            time.sleep(0.5)

    def stop(self) -> None:
        import psutil  # a dependency of ray

        # Everything each leader spawned, noted before the leaders go: Ray starts its workers
        # and detached actors in process groups of their own, under the raylet.
        started: list[psutil.Process] = []
        for _, proc in self.procs:
            try:
                leader = psutil.Process(proc.pid)
                started += [leader, *leader.children(recursive=True)]
            except psutil.Error:
                pass
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in self.procs:  # what is left of each group (a Spark executor, a Ray daemon)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        _, alive = psutil.wait_procs(started, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass


class Clusters:
    """A Spark standalone master with two workers and a two-node Ray cluster on 127.0.0.1."""

    def __init__(self, work: Path, ray_tmp: Path) -> None:
        self.work = work
        self.ray_tmp = ray_tmp
        self.procs = Processes(work)
        self.spark_port, self.spark_ui = _free_port(), _free_port()
        self.ray_port = _free_port()
        self.spark_master = f"spark://127.0.0.1:{self.spark_port}"
        self.ray_address = f"127.0.0.1:{self.ray_port}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            PYSPARK_PYTHON=sys.executable,  # the same interpreter on the master, the workers and the driver
            PYSPARK_DRIVER_PYTHON=sys.executable,
            SPARK_LOCAL_IP="127.0.0.1",
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM stops a Ray node at once, not after 30 s
        )
        self.env = env

    def spark_status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.spark_ui}/json/", timeout=5) as resp:
            return json.load(resp)

    def _spark_up(self, workers: int) -> bool:
        try:
            return self.spark_status()["aliveworkers"] >= workers
        except (OSError, ValueError):  # not listening yet, or (seen once, at start) an HTML page at /json/
            return False

    def _ray_cpus(self) -> float:
        out = subprocess.run([str(BIN / "ray"), "status", "--address", self.ray_address], capture_output=True,
                             text=True, env=self.env, timeout=60)
        for line in out.stdout.splitlines():  # " 0.0/2.0 CPU"
            if line.strip().endswith(" CPU") and "/" in line:
                return float(line.split("/")[1].split()[0])
        return 0.0

    def launch(self) -> None:
        """Start everything; wait only until the master and the Ray head take registrations."""
        from pyspark.find_spark_home import _find_spark_home

        spark_class = str(Path(_find_spark_home()) / "bin" / "spark-class")
        self.procs.spawn("spark-master", [
            spark_class, "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(self.spark_port), "--webui-port", str(self.spark_ui),
        ], self.env)
        ray_common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                      "--object-store-memory", str(200 * 1024 * 1024), "--min-worker-port", "0",
                      "--max-worker-port", "0", "--dashboard-agent-listen-port"]
        self.procs.spawn("ray-head", [
            str(BIN / "ray"), "start", "--head", "--port", str(self.ray_port), "--temp-dir", str(self.ray_tmp),
            "--include-dashboard", "false", "--dashboard-port", str(_free_port()), "--disable-usage-stats",
            *ray_common, str(_free_port()),
        ], self.env)
        # `ray start` writes the head's address into its temp dir once the head is up
        self.procs.wait_for("Spark master", lambda: self._spark_up(0))
        self.procs.wait_for("Ray head", lambda: (self.ray_tmp / "ray_current_cluster").exists())
        for i in (1, 2):
            self.procs.spawn(f"spark-worker-{i}", [
                spark_class, "org.apache.spark.deploy.worker.Worker", self.spark_master,
                "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
                "--webui-port", str(_free_port()), "--work-dir", str(self.work / f"spark-worker-{i}"),
            ], self.env)
        self.procs.spawn("ray-node-2", [
            str(BIN / "ray"), "start", "--address", self.ray_address, *ray_common, str(_free_port()),
        ], self.env)

    def wait_ready(self) -> None:
        self.procs.wait_for("two Spark workers", lambda: self._spark_up(2))
        self.procs.wait_for("two Ray nodes", lambda: self._ray_cpus() >= 2)

    def stop(self) -> None:
        self.procs.stop()


@pytest.fixture(scope="module")
def clusters(tmp_path_factory) -> Iterator[Clusters]:
    work = tmp_path_factory.mktemp("clusters")
    # Ray's socket paths must stay under 108 bytes: a short directory, not pytest's tmp_path
    ray_tmp = Path(tempfile.mkdtemp(prefix="afray-", dir="/tmp"))
    cl = Clusters(work, ray_tmp)
    try:
        cl.launch()
        yield cl
    finally:
        cl.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _cluster_config(path: Path, root: Path, cl: Clusters) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())  # ${ARCFORGE_DEMO_CORPUS} is left for arcforge to expand
    cfg["storage"]["root"] = str(root)
    cfg["engines"] = {"spark": {"master": cl.spark_master}, "ray": {"address": cl.ray_address}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _without_timings(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not k.endswith("seconds")}


def _assert_same_outputs(embedded: Path, cluster: Path) -> int:
    """Every committed dataset (stages and their rejected/) and artifact, compared; returns the count."""
    manifests = sorted(embedded.rglob("_manifest.json"))
    assert len(manifests) >= 39  # 20 stages, 19 of them (all but the tokenizer) with a rejected/ dataset
    for ma in manifests:
        rel = ma.parent.relative_to(embedded)
        mb = cluster / rel / "_manifest.json"
        assert mb.exists(), f"{rel} is not committed on the clusters"
        a, b = json.loads(ma.read_text()), json.loads(mb.read_text())
        assert (a["kind"], a["fingerprint"], a["rows"]) == (b["kind"], b["fingerprint"], b["rows"]), rel
        assert _without_timings(a.get("stats", {})) == _without_timings(b.get("stats", {})), rel
        assert a.get("errors") == b.get("errors"), rel
        if a["kind"] == "artifact":
            assert [f["name"] for f in a["files"]] == [f["name"] for f in b["files"]], rel
            for f in a["files"]:
                assert (ma.parent / f["name"]).read_bytes() == (mb.parent / f["name"]).read_bytes(), (rel, f["name"])
            continue
        assert [p["name"] for p in a["parts"]] == [p["name"] for p in b["parts"]], rel
        for pa_, pb in zip(a["parts"], b["parts"]):
            ta, tb = pq.read_table(ma.parent / pa_["name"]), pq.read_table(mb.parent / pb["name"])
            assert ta.schema == tb.schema and ta.equals(tb), (rel, pa_["name"])
            # files a part owns: the Megatron .bin/.idx shards
            assert [f["name"] for f in pa_.get("files", [])] == [f["name"] for f in pb.get("files", [])], rel
            for f in pa_.get("files", []):
                assert (ma.parent / f["name"]).read_bytes() == (mb.parent / f["name"]).read_bytes(), (rel, f["name"])
    return len(manifests)


def test_demo_on_spark_and_ray_clusters_equals_the_embedded_run(clusters, demo_corpus, demo_run, tmp_path):
    t0 = time.monotonic()
    # 1. The embedded run: the session's run of configs/demo.yaml (local Spark and Ray, in this
    #    process), made while the cluster workers booted. Both runs load the classifiers from
    #    ${ARCFORGE_RUNS}/classifiers: the same files.
    embedded, results = demo_run
    assert len(results) == 20

    # 2. The same config pointed at the clusters, run by the CLI as a user would.
    clusters.wait_ready()
    cfg = _cluster_config(tmp_path / "cluster.yaml", tmp_path / "cluster", clusters)
    env = {**clusters.env, "ARCFORGE_DEMO_CORPUS": str(demo_corpus), "ARCFORGE_RUNS": str(embedded.parent)}
    t1 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=480)
    t_cluster = time.monotonic() - t1
    run = tmp_path / "cluster" / "demo"
    logs = "".join(_tail(p, 4000) for p in sorted((run / "_logs").glob("*.log")))
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n{logs}"
    assert "outputs:" in out.stdout

    # 3. The work really ran on the clusters: an executor on each Spark worker ran tasks, and the
    #    driver joined the Ray cluster (Ray keeps a core-driver log in that cluster's session).
    apps = clusters.spark_status()["completedapps"]
    assert [a["name"] for a in apps] == ["arcforge"], apps
    for i in (1, 2):
        stderrs = (clusters.work / f"spark-worker-{i}").glob(f"{apps[0]['id']}/*/stderr")  # one per executor
        assert any("Finished task" in e.read_text(errors="replace") for e in stderrs), f"worker {i} ran no task"
    session_logs = clusters.ray_tmp / "session_latest" / "logs"
    assert list(session_logs.glob("python-core-driver-*")), "the run never joined the Ray cluster"

    # 4. Same committed outputs: kept and rejected rows of every stage, fingerprints, shard bytes.
    n = _assert_same_outputs(embedded, run)
    print(f"\ncluster test: waited {t1 - t0:.0f} s for the clusters, cluster run {t_cluster:.0f} s, "
          f"{n} datasets/artifacts identical, total {time.monotonic() - t0:.0f} s")
