"""What a global stage keeps for a resumed run (arcforge.runtime.globalops.persist): the work
directory bound to a fingerprint (local disk and a real S3 server), per-task results read back
instead of computed, and whole frames with their markers, on the local engine, Spark and Ray."""

from __future__ import annotations

import uuid

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arcforge.runtime import storage
from arcforge.runtime.dataset import schema_to_b64
from arcforge.runtime.globalops import persist
from arcforge.runtime.globalops.persist import WorkDir, memo_map_tasks
from arcforge.runtime.storage import S3Options
from arcforge.runtime.tasks import PartitionTask

ENGINES = ("local", "spark", "ray")
IN = pa.schema([("n", pa.int64()), ("word", pa.string())])
OUT = pa.schema([("n", pa.int64()), ("sq", pa.int64()), ("partition", pa.int32())])


@pytest.fixture(scope="module")
def ops(engine_ops):
    return engine_ops


def _tasks(directory, n_parts: int = 3) -> list[PartitionTask]:
    directory.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(n_parts):
        path = directory / f"in-{i}.parquet"
        pq.write_table(pa.table({"n": list(range(i * 10, i * 10 + 7)), "word": [f"w{i}"] * 7}, schema=IN), path)
        tasks.append(PartitionTask("test.persist", {}, i, str(path), str(directory / "out"), f"fp{i}", schema_to_b64(IN)))
    return tasks


def _square(task: PartitionTask, table: pa.Table, calls: str) -> pa.Table:
    """The per-task function; each call leaves a file in ``calls`` (the workers are other processes)."""
    with open(f"{calls}/{task.partition}-{uuid.uuid4().hex}", "w"):
        pass
    n = table.column("n").to_numpy()
    return pa.table({"n": n, "sq": n * n, "partition": pa.array([task.partition] * len(n), pa.int32())}, schema=OUT)


def _calls(directory) -> list[int]:
    return sorted(int(p.name.split("-")[0]) for p in directory.iterdir())


@pytest.mark.parametrize("engine", ENGINES)
def test_memo_map_tasks_computes_each_task_once(ops, tmp_path, engine):
    tasks, calls, memo = _tasks(tmp_path / "in"), tmp_path / "calls", str(tmp_path / "memo")
    calls.mkdir()
    frame, present = memo_map_tasks(ops[engine], tasks, _square, OUT, memo, read=["n"], args=(str(calls),))
    first = frame.collect()
    assert present == 0 and _calls(calls) == [0, 1, 2] and first.num_rows == 21
    assert first.column("sq").to_pylist() == [n * n for n in first.column("n").to_pylist()]
    (tmp_path / "memo" / "part-00001.parquet").unlink()  # as if the run was killed before that task's file
    frame, present = memo_map_tasks(ops[engine], tasks, _square, OUT, memo, read=["n"], args=(str(calls),))
    assert present == 2 and frame.collect().equals(first)
    assert _calls(calls) == [0, 1, 1, 2]  # only the missing task ran again


@pytest.mark.parametrize("engine", ENGINES)
def test_persist_then_load_gives_the_same_rows_and_the_facts(ops, tmp_path, engine):
    table = pa.table({"src": list(range(50)), "dst": [i // 3 for i in range(50)]}, schema=pa.schema([("src", pa.int64()), ("dst", pa.int64())]))
    directory = str(tmp_path / "step")
    assert persist.done(directory, {}) is None
    with pytest.raises(FileNotFoundError, match="the step was not finished"):
        persist.load(ops[engine], directory, table.schema, {})
    back = persist.persist(ops[engine], ops[engine].from_arrow(table, 2), directory, key="src", parts=4, s3={},
                           facts={"pairs": 50})
    assert back.collect().equals(table)
    assert persist.done(directory, {}) == {"parts": 4, "facts": {"pairs": 50}}
    assert persist.load(ops[engine], directory, table.schema, {}).collect().equals(table)
    names = sorted(p.name for p in (tmp_path / "step").iterdir())
    assert names == ["_done.json", *(f"part-{i:05d}.parquet" for i in range(4))]
    for i in range(4):  # rows routed by the key
        part = pq.read_table(tmp_path / "step" / f"part-{i:05d}.parquet")
        assert all(v % 4 == i for v in part.column("src").to_pylist())


def _workdir_cycle(work: WorkDir, fs, base: str) -> None:  # noqa: ANN001
    assert work.open("fp-a") is False  # nothing there
    storage.write_bytes_atomic(fs, storage.join(base, "step", "x.bin"), b"kept")
    assert work.open("fp-a") is True  # the same fingerprint: an interrupted run's work stays
    assert storage.read_bytes(fs, storage.join(base, "step", "x.bin")) == b"kept"
    assert work.open("fp-b") is False  # another fingerprint: cleared
    assert not storage.exists(fs, storage.join(base, "step", "x.bin"))
    assert storage.read_json(fs, storage.join(base, "_key.json")) == {"key": "fp-b"}
    work.remove()
    assert not storage.exists(fs, storage.join(base, "_key.json"))
    work.remove()  # removing nothing is fine


def test_workdir_is_bound_to_one_fingerprint_on_disk(tmp_path):
    uri = str(tmp_path / "stage" / "_work")
    fs, base = storage.filesystem(uri)
    _workdir_cycle(WorkDir(uri, {}), fs, base)


def test_workdir_is_bound_to_one_fingerprint_on_s3(s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="arcforge-persist")
    s3 = {"endpoint_url": s3_endpoint}
    uri = "s3://arcforge-persist/run/stage/_work"
    fs, base = storage.filesystem(uri, S3Options(**s3))
    _workdir_cycle(WorkDir(uri, s3), fs, base)
