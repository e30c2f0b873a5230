"""UI smoke test: the real dagster-webserver serves the code location's asset graph on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from browser import chromium_page
from conftest import TESTS, _free_port
from test_dagster import small_config


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _wait_until_serving(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180  # the code location imports arcforge and Dagster on 2 cores
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster-webserver exited: {log.read_text()[-2000:]}"
        try:
            loaded = _graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
            entries = loaded["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"dagster-webserver did not serve within 180 s: {log.read_text()[-2000:]}")


def test_the_webserver_serves_the_asset_graph(tmp_path):
    cfg = small_config(tmp_path)
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = dict(os.environ, DAGSTER_HOME=str(home), ARCFORGE_DAGSTER_CONFIG=str(cfg))
    webserver = Path(sys.executable).with_name("dagster-webserver")
    log = tmp_path / "webserver.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(webserver), "-h", "127.0.0.1", "-p", str(port), "-f", str(TESTS.parent / "dags" / "demo.py")],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_serving(port, proc, log)
        nodes = _graphql(port, "{ assetNodes { assetKey { path } hasAssetChecks } }")["data"]["assetNodes"]
        keys = {n["assetKey"]["path"][-1]: n["hasAssetChecks"] for n in nodes}
        assert keys == {"read": False, "stats": False, "keep": True, "after": False, "small_report": False}
        with chromium_page(1400, 900) as (page, _errors):
            page.goto(f"http://127.0.0.1:{port}/asset-groups", wait_until="networkidle", timeout=120_000)
            page.get_by_text("keep").first.wait_for(timeout=60_000)  # the graph (and the sidebar) drew the stage
            png = page.screenshot()
        assert len(png) > 20_000  # a drawn page, not a blank one
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None
