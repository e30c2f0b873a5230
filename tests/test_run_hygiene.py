"""What a user sees when a run meets trouble: each case gives its one-line answer.

Real CLI processes on real engines: an input that vanishes after planning, a
second run into a locked directory (stopping, or waiting with --wait), a stale lock, Ctrl-C in the middle of a
Spark stage, an unwritable storage root, a reader that raises, and --dry-run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from pipeline_stages import make_line_files, pipeline_yaml, signal_after_commits

from arcforge.runtime import dataset
from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runlock import LOCK_FILE, RunLock
from arcforge.runtime.runner import Runner


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arcforge.cli", *args], capture_output=True, text=True, timeout=timeout)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def test_vanished_input_is_quarantined_and_the_run_goes_on(tmp_path):
    files = make_line_files(tmp_path / "in", n_files=3, n_lines=20, seed=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt"))
    plan = load_plan(cfg)  # planned with three files
    files[1].unlink()  # gone before its task opens it (deleted by a crawler's retention job, say)
    results = Runner(plan).run(only="lines")
    manifest = results[0].manifest
    assert manifest["stats"]["dropped.unreadable_input"] == 1
    assert manifest["rows"] == sum(1 for f in (files[0], files[2]) for ln in f.read_text().splitlines() if ln.strip())
    assert any("unreadable" in e and "f01.txt" in e for e in manifest["errors"])
    rej = dataset.read_dataset(DatasetRef(str(tmp_path / "runs" / "t" / "lines" / "rejected")))
    assert rej.column("reason").to_pylist() == ["unreadable_input"]
    assert "FileNotFoundError" in rej.column("detail")[0].as_py()


def test_second_run_into_a_locked_directory_says_who_holds_it(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt"))
    runner = Runner(load_plan(cfg))
    with RunLock(runner.run_ref, str(cfg)):  # this test process is the live holder
        out = _run("run", str(cfg))
        assert out.returncode == 3, out.stderr
        lines = _lines(out.stderr)
        assert len(lines) == 1 and "another run holds this run directory" in lines[0]
        assert f"pid {os.getpid()}" in lines[0] and socket.gethostname() in lines[0]
        assert not (tmp_path / "runs" / "t" / "lines").exists(), "the second run must not start any work"
    assert not (tmp_path / "runs" / "t" / LOCK_FILE).exists(), "the holder removes its lock"


def test_a_run_with_wait_queues_behind_the_holder(tmp_path):
    """``--wait SECONDS``: a second run waits for the live holder instead of stopping (as the
    Dagster steps of runs started together do), and gives up with the same line after SECONDS."""
    make_line_files(tmp_path / "in", n_files=2, n_lines=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt"))
    lock = RunLock(Runner(load_plan(cfg)).run_ref, str(cfg))
    lock.acquire()
    try:
        short = _run("run", str(cfg), "--wait", "1")
        assert short.returncode == 3, short.stderr
        assert "another run holds this run directory" in short.stderr and "(waited 1 s)" in short.stderr
        waiter = subprocess.Popen([sys.executable, "-m", "arcforge.cli", "run", str(cfg), "--wait", "300"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = ""
        while "another run holds" not in first:
            first = waiter.stderr.readline()
            assert first, "the waiting run ended without saying that it waits"
        assert "waiting up to 300 s" in first and f"pid {os.getpid()}" in first
        assert not (tmp_path / "runs" / "t" / "lines").exists(), "nothing starts while it waits"
    finally:
        lock.release()
    out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, out + err
    assert dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "t" / "dedup"))) is not None


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    lock = tmp_path / "runs" / "t" / LOCK_FILE
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "x", "started": 1, "heartbeat": 1}))
    out = _run("run", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"took over the lock of a run that stopped (pid {dead.pid}" in out.stderr
    assert dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "t" / "dedup"))) is not None
    assert not lock.exists()


def test_ctrl_c_mid_spark_stage_prints_one_line_and_resumes(tmp_path):
    make_line_files(tmp_path / "in", n_files=8, n_lines=20, seed=5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", filt_engine="spark", seconds=1.5))
    commits = tmp_path / "runs" / "t" / "filt" / "_commits"
    proc = subprocess.Popen(
        [sys.executable, "-m", "arcforge.cli", "run", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    signal_after_commits(proc, commits, 2, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    said = [ln for ln in _lines(stdout + stderr) if "arcforge:" in ln]
    assert len(said) == 1 and "interrupted during stage filt" in said[0] and "Re-run" in said[0], stdout + stderr
    assert "Traceback" not in stdout + stderr and "py4j" not in stdout + stderr
    assert "lines (committed)" in said[0] and "filt (" in said[0]
    assert not (tmp_path / "runs" / "t" / LOCK_FILE).exists()

    again = _run("run", str(cfg), timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert dataset.read_manifest(DatasetRef(str(tmp_path / "runs" / "t" / "filt")))["stats"]["docs_in"] == 160


def test_unwritable_storage_root_is_one_config_line(tmp_path):
    make_line_files(tmp_path / "in", n_files=1, n_lines=5)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for root in ("/proc/arcforge-runs", str(blocker / "runs")):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(pipeline_yaml(root, f"{tmp_path}/in/*.txt"))
        out = _run("run", str(cfg))
        assert out.returncode == 2, out.stderr
        lines = _lines(out.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"{cfg}: storage.root: cannot write to {root}/t"), lines


def test_a_failing_reader_is_one_line_naming_stage_partition_and_input(tmp_path):
    make_line_files(tmp_path / "in", n_files=3, n_lines=5)
    (tmp_path / "in" / "f01.txt").write_text("fine\nPOISON\n")
    cfg = tmp_path / "c.yaml"
    text = pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", lines_engine="spark")
    cfg.write_text(text.replace('"pipeline_stages:LINES"', '"pipeline_stages:STRICT_LINES"'))
    out = _run("run", str(cfg))
    assert out.returncode == 1
    lines = [ln for ln in _lines(out.stderr) if ln.startswith("arcforge:")]
    assert lines[0].startswith("arcforge: stage lines, partition 1 (f01.txt) failed: ValueError: the reader cannot handle POISON")
    assert "traceback in" in lines[0]
    assert "Traceback" not in out.stdout + out.stderr and "Py4J" not in out.stderr
    log = lines[0].rsplit("traceback in ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()


def test_dry_run_plans_without_running(tmp_path):
    make_line_files(tmp_path / "in", n_files=3, n_lines=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt"))
    out = _run("run", str(cfg), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "runs 3 partitions" in out.stdout and "runs after its inputs" in out.stdout
    assert not (tmp_path / "runs" / "t" / "lines").exists()
    Runner(load_plan(cfg)).run(only="lines")
    out = _run("run", str(cfg), "--dry-run")
    assert "committed, skipped" in out.stdout and "runs 3 partitions" in out.stdout  # filt now plannable


def test_a_stage_failing_on_many_rows_is_one_line(tmp_path):
    make_line_files(tmp_path / "in", n_files=2, n_lines=20, seed=8)
    poison = (tmp_path / "in" / "f00.txt").read_text().splitlines()[0]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(pipeline_yaml(str(tmp_path / "runs"), f"{tmp_path}/in/*.txt", min_chars=0))
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "ARCFORGE_TEST_FAIL_ON": poison})
    assert out.returncode == 1
    said = [ln for ln in _lines(out.stderr) if ln.startswith("arcforge:")]
    assert said[0].startswith("arcforge: stage filt failed: ") and "first error: ValueError: poisoned record" in said[0]
    log = said[0].rsplit("traceback in ", 1)[1].rstrip(")")
    assert "slow_filter" in open(log).read() and "Traceback" not in out.stderr
