"""The global operations (arcforge.runtime.globalops) on the real local engine, Spark and
Ray Data: every primitive gives the same rows on all three, and the same rows again when
the same input is cut into different partitions."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from arcforge.runtime.dataset import schema_to_b64
from arcforge.runtime.globalops import group_starts
from arcforge.runtime.tasks import PartitionTask

ENGINES = ("local", "spark", "ray")
WORDS = ["alpha", "beta", "gamma", "delta", None]
LUT = {"alpha": 1, "beta": 2, "gamma": 3, "delta": 4}  # broadcast to the workers
N_ROWS = 600


def _rows() -> list[dict]:
    rng = random.Random(7)
    rows = []
    for i in range(N_ROWS):
        value = round(rng.gauss(100, 30), 1) if i % 50 else None  # ties, and some nulls
        rows.append({"id": f"d{i:04d}", "grp": rng.randrange(13), "value": value, "word": WORDS[rng.randrange(5)]})
    rows[3]["value"] = rows[4]["value"] = 1e6  # an outlier far in the tail
    rows[5]["value"] = -0.0
    return rows


IN_SCHEMA = pa.schema([("id", pa.string()), ("grp", pa.int64()), ("value", pa.float64()), ("word", pa.string())])
ROW_SCHEMA = pa.schema(
    [("partition", pa.int32()), ("row", pa.int32()), ("id", pa.string()), ("grp", pa.int64()),
     ("value", pa.float64()), ("word", pa.string()), ("weight", pa.int64())]
)


def _write_parts(directory, parts: list[list[dict]]) -> list[PartitionTask]:
    directory.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i, rows in enumerate(parts):
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=IN_SCHEMA), path)
        tasks.append(PartitionTask("test.globalops", {}, i, str(path), str(directory / "out"), f"fp{i}", schema_to_b64(IN_SCHEMA)))
    return tasks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same rows cut two ways: 4 contiguous parts, and 7 parts of shuffled rows."""
    rows = _rows()
    base = tmp_path_factory.mktemp("globalops")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    return {
        "rows": rows,
        "A": _write_parts(base / "a", [rows[i * 150 : (i + 1) * 150] for i in range(4)]),
        "B": _write_parts(base / "b", [shuffled[i::7] for i in range(7)]),
    }


@pytest.fixture(scope="module")
def ops(engine_ops):
    return engine_ops


# ---------------------------------------------------------------------------- worker functions (imported by workers)


def tag_rows(task: PartitionTask, table: pa.Table, lut, bonus: int) -> pa.Table:  # noqa: ANN001
    n = table.num_rows
    weights = [lut.value.get(w, 0) + bonus for w in table.column("word").to_pylist()]
    return pa.table(
        {"partition": pa.array([task.partition] * n, pa.int32()), "row": pa.array(range(n), pa.int32()),
         "id": table.column("id"), "grp": table.column("grp"), "value": table.column("value"),
         "word": table.column("word"), "weight": pa.array(weights, pa.int64())},
        schema=ROW_SCHEMA,
    )


GROUP_SCHEMA = pa.schema([("grp", pa.int64()), ("n", pa.int64()), ("first_id", pa.string()), ("ids", pa.string()), ("weight", pa.int64())])


def summarise_group(group: pa.Table) -> pa.Table:
    ids = group.column("id").to_pylist()
    grp = group.column("grp")[0].as_py()
    return pa.table({"grp": [grp], "n": [len(ids)], "first_id": [ids[0]], "ids": [",".join(ids)],
                     "weight": [sum(group.column("weight").to_pylist())]}, schema=GROUP_SCHEMA)


def summarise_groups(groups: pa.Table) -> pa.Table:
    starts = group_starts(groups, ["grp"])
    ends = np.append(starts[1:], groups.num_rows)
    return pa.concat_tables([summarise_group(groups.slice(int(s), int(e - s))) for s, e in zip(starts, ends)])


def by_word(group: pa.Table) -> pa.Table:
    """Groups on a key with nulls; the group's order is (word, value, id) on every engine."""
    word = group.column("word")[0].as_py()
    ids = ",".join(group.column("id").to_pylist())
    return pa.table({"word": pa.array([word], pa.string()), "ids": [ids]})


def sum_value(task: PartitionTask, rows: pa.Table, tag: str) -> dict:
    ids = rows.column("id").to_pylist() if rows.num_rows else []
    digest = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    return {"partition": task.partition, "name": f"part-{task.partition:05d}", "rows": rows.num_rows, "ids": digest, "tag": tag,
            "columns": rows.column_names}


# ---------------------------------------------------------------------------- reference results in plain Python


def _frames(ops, tasks, lut_value=LUT):
    return ops.map_tasks(tasks, tag_rows, ROW_SCHEMA, read=["id", "grp", "value", "word"], args=(ops.broadcast(lut_value), 10))


def _per_engine(fn):
    return {e: fn(e) for e in ENGINES}


def _same(results: dict, drop: tuple[str, ...] = ()) -> None:
    tables = {e: t.drop_columns(list(drop)) if drop else t for e, t in results.items()}
    assert tables["spark"].equals(tables["local"]), (tables["local"].slice(0, 5).to_pylist(), tables["spark"].slice(0, 5).to_pylist())
    assert tables["ray"].equals(tables["local"]), (tables["local"].slice(0, 5).to_pylist(), tables["ray"].slice(0, 5).to_pylist())


# ---------------------------------------------------------------------------- the primitives


def test_map_tasks_reads_parts_and_sees_the_broadcast(ops, data):
    got = _per_engine(lambda e: _frames(ops[e], data["A"]).collect())
    _same(got)
    t = got["local"]
    assert t.num_rows == N_ROWS
    want = sorted((r["id"], LUT.get(r["word"], 0) + 10) for r in data["rows"])
    assert sorted(zip(t.column("id").to_pylist(), t.column("weight").to_pylist())) == want
    assert t.schema == ROW_SCHEMA
    assert ops["spark"].map_tasks(data["A"], tag_rows, ROW_SCHEMA, read=["id", "grp", "value", "word"],
                                  args=(ops["spark"].broadcast(LUT), 10)).count() == N_ROWS


def test_group_reduce_is_the_same_on_every_engine_and_partitioning(ops, data):
    def run(e, cut, batched):
        frame = _frames(ops[e], data[cut])
        fn = summarise_groups if batched else summarise_group
        return frame.group_reduce(["grp"], fn, GROUP_SCHEMA, order_by=["id"], batched=batched).collect()

    per_group = _per_engine(lambda e: run(e, "A", False))
    _same(per_group)
    _same(_per_engine(lambda e: run(e, "B", True)))
    assert run("local", "B", True).equals(per_group["local"])
    # the reference: one row per group, members in id order
    groups = defaultdict(list)
    for r in data["rows"]:
        groups[r["grp"]].append(r)
    want = sorted(
        (g, len(rs), min(r["id"] for r in rs), ",".join(sorted(r["id"] for r in rs)), sum(LUT.get(r["word"], 0) + 10 for r in rs))
        for g, rs in groups.items()
    )
    assert [tuple(r.values()) for r in per_group["local"].to_pylist()] == want


def test_group_reduce_orders_a_group_canonically_with_null_keys(ops, data):
    schema = pa.schema([("word", pa.string()), ("ids", pa.string())])
    got = _per_engine(lambda e: _frames(ops[e], data["B"]).group_reduce(["word"], by_word, schema, order_by=["value", "id"]).collect())
    _same(got)
    rows = {r["word"]: r["ids"].split(",") for r in got["local"].to_pylist()}
    assert set(rows) == set(WORDS)  # None is a group of its own
    for word, ids in rows.items():
        members = [r for r in data["rows"] if r["word"] == word]
        key = [((r["value"] is not None, r["value"] if r["value"] is not None else 0.0), r["id"]) for r in members]
        assert ids == [i for _, i in sorted(key)]  # value ascending, nulls first, then id


def test_aggregate_builtins(ops, data):
    aggs = [("value", "min"), ("value", "max"), ("weight", "sum"), ("value", "count"), ("id", "min"), ("weight", "mean")]
    got = _per_engine(lambda e: _frames(ops[e], data["A"]).aggregate(["grp"], aggs).collect())
    _same(got)
    assert _frames(ops["ray"], data["B"]).aggregate(["grp"], aggs).collect().equals(got["local"])
    for row in got["local"].to_pylist():
        members = [r for r in data["rows"] if r["grp"] == row["grp"]]
        values = [r["value"] for r in members if r["value"] is not None]
        assert row["value_min"] == min(values) and row["value_max"] == max(values)
        assert row["value_count"] == len(values)
        assert row["weight_sum"] == sum(LUT.get(r["word"], 0) + 10 for r in members)
        assert row["id_min"] == min(r["id"] for r in members)
        assert row["weight_mean"] == pytest.approx(row["weight_sum"] / len(members))


def test_join_inner_and_left(ops, data):
    labels = pa.table({"grp": pa.array([g for g in range(13) if g % 3], pa.int64()),
                       "label": [f"g{g}" for g in range(13) if g % 3]})
    for how in ("inner", "left"):
        got = _per_engine(lambda e: _frames(ops[e], data["A"]).join(ops[e].from_arrow(labels, 2), ["grp"], how).collect())
        _same(got)
        assert _frames(ops["spark"], data["B"]).join(ops["spark"].from_arrow(labels), ["grp"], how).collect().drop_columns(
            ["partition", "row"]).sort_by("id").equals(got["local"].drop_columns(["partition", "row"]).sort_by("id"))
        t = got["local"]
        assert t.column_names == [*ROW_SCHEMA.names, "label"]
        want = sorted((r["id"], f"g{r['grp']}" if r["grp"] % 3 else None) for r in data["rows"] if how == "left" or r["grp"] % 3)
        assert sorted(zip(t.column("id").to_pylist(), t.column("label").to_pylist())) == want


QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.995, 1.0]


def test_exact_quantiles_equal_numpy(ops, data):
    values = np.array([r["value"] for r in data["rows"] if r["value"] is not None], dtype=np.float64)
    want = np.nanquantile(values, QS).tolist()
    got = _per_engine(lambda e: _frames(ops[e], data["A"]).quantiles("value", QS))
    for e in ENGINES:
        assert got[e] == want, e  # the same floats, not approximately
    assert _frames(ops["ray"], data["B"]).quantiles("value", QS) == want
    # integer columns, and a column with a single distinct value
    grp = np.array([r["grp"] for r in data["rows"]], dtype=np.float64)
    assert _frames(ops["local"], data["B"]).quantiles("grp", QS) == np.quantile(grp, QS).tolist()
    one = ops["ray"].from_arrow(pa.table({"v": [2.5] * 7}))
    assert one.quantiles("v", [0.3, 1.0]) == [2.5, 2.5]
    empty = ops["local"].from_arrow(pa.table({"v": pa.array([None], pa.float64())}))
    assert all(np.isnan(empty.quantiles("v", [0.5])))


def test_approximate_quantiles_are_within_their_rank_error(ops, data):
    values = np.sort(np.array([r["value"] for r in data["rows"] if r["value"] is not None], dtype=np.float64))
    n, eps = len(values), 0.02
    got = _per_engine(lambda e: _frames(ops[e], data["A"]).quantiles("value", QS, exact=False, rank_error=eps))
    assert got["spark"] == got["local"] == got["ray"]
    assert _frames(ops["spark"], data["B"]).quantiles("value", QS, exact=False, rank_error=eps) == got["local"]
    for q, x in zip(QS, got["local"]):
        assert x in values  # a value of the column
        lo, hi = np.searchsorted(values, x, "left"), np.searchsorted(values, x, "right") - 1  # its ranks
        target = q * (n - 1)
        assert lo - eps * n <= target <= hi + eps * n, (q, x, lo, hi, target)


def _weighted_table() -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Ties, -0.0, nulls and NaN in the values; zero, null and very heavy weights. Returns the
    table and the (value, weight) numpy sees: the rows with a value and a positive weight."""
    rng = random.Random(11)
    values, weights = [], []
    for i in range(400):
        values.append(None if i % 37 == 0 else math.nan if i % 41 == 0 else float(rng.randrange(-5, 30)) / 4)
        weights.append(None if i % 53 == 0 else 0 if i % 7 == 0 else rng.randrange(1, 9))
    values[10], weights[10] = 1e9, 10**12  # one value outweighs everything else
    values[11], weights[11] = -0.0, 3
    t = pa.table({"v": pa.array(values, pa.float64()), "w": pa.array(weights, pa.int64())})
    keep = [i for i in range(400) if values[i] is not None and not math.isnan(values[i]) and weights[i]]
    return t, np.array([values[i] for i in keep]), np.array([weights[i] for i in keep])


WQS = [0.0, 1e-12, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.95, 0.999999, 1.0]


def test_weighted_quantiles_equal_numpy_inverted_cdf(ops, data):
    t, v, w = _weighted_table()
    want = np.quantile(v, WQS, weights=w, method="inverted_cdf").tolist()
    assert want[-3] == 1e9 and want[0] < 0  # the heavy value takes all but the bottom sliver
    got = _per_engine(lambda e: ops[e].from_arrow(t, 3).quantiles("v", WQS, weights="w"))
    for e in ENGINES:
        assert got[e] == want, e
    for e in ("local", "ray"):  # every rank found by counting, none by the fetch
        assert ops[e].from_arrow(t, 3).quantiles_by(["v"], WQS, weights="w", fetch_rows=0) == {"v": want}, e
    # without the heavy row: every cut point inside the ties, on both partitionings
    light = t.filter(pc.less(t.column("v"), 1e8))
    lv, lw = v[v < 1e8], w[v < 1e8]
    qs = [k / 20 for k in range(21)]
    want = np.quantile(lv, qs, weights=lw, method="inverted_cdf").tolist()
    for e in ENGINES:
        assert ops[e].from_arrow(light, 4).quantiles("v", qs, weights="w") == want, e
    # the row-tagged frames of the module, cut two ways; weights there are 10..14
    rows = [r for r in data["rows"] if r["value"] is not None]
    rv = np.array([r["value"] for r in rows])
    rw = np.array([LUT.get(r["word"], 0) + 10 for r in rows])
    want = np.quantile(rv, QS, weights=rw, method="inverted_cdf").tolist()
    assert _frames(ops["spark"], data["A"]).quantiles("value", QS, weights="weight") == want
    assert _frames(ops["ray"], data["B"]).quantiles("value", QS, weights="weight") == want
    # weights of 1 are the unweighted inverted_cdf; the exact q*W boundaries land on a value
    ones = pa.table({"v": pa.array([3.0, 1.0, 2.0, 2.0, 5.0]), "w": pa.array([1] * 5, pa.int64())})
    qs = [0.0, 0.2, 0.2000001, 0.4, 0.6, 0.8, 1.0]
    assert ops["local"].from_arrow(ones).quantiles("v", qs, weights="w") == [1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 5.0]
    assert ops["local"].from_arrow(ones).quantiles("v", qs, weights="w") == np.quantile(
        [3.0, 1.0, 2.0, 2.0, 5.0], qs, method="inverted_cdf").tolist()


def test_quantiles_by_column_and_group_equal_numpy_per_series(ops, data):
    """Two columns within the groups of a string column (a null group, a group left out, a
    group with no rows), weighted and not, in one selection: each series gives numpy's floats
    over its own rows, on every engine and partitioning, and what ``quantiles`` gives alone."""
    rows = data["rows"]
    groups = ["alpha", None, "delta", "zeta"]  # gamma and beta count nowhere; zeta has no rows

    def numpy_cuts(group, column, weighted):
        sel = [r for r in rows if r["word"] == group and r[column] is not None]
        if not sel:
            return None
        v = np.array([r[column] for r in sel], dtype=np.float64)
        if not weighted:
            return np.quantile(v, QS).tolist()
        w = np.array([LUT.get(r["word"], 0) + 10 for r in sel])
        return np.quantile(v, QS, weights=w, method="inverted_cdf").tolist()

    for weights, engines in (("weight", ENGINES), (None, ("local",))):  # Spark's jobs cost ~1 s each: once
        got = {e: _frames(ops[e], data["A"]).quantiles_by(["value", "grp"], QS, by="word", groups=groups, weights=weights)
               for e in engines}
        assert all(got[e] == got["local"] for e in engines)
        assert _frames(ops["ray"], data["B"]).quantiles_by(["value", "grp"], QS, by="word", groups=groups,
                                                           weights=weights) == got["local"]
        assert sorted(got["local"], key=str) == sorted(((g, c) for g in groups for c in ("value", "grp")), key=str)
        for (group, column), cuts in got["local"].items():
            want = numpy_cuts(group, column, weights is not None)
            if want is None:
                assert all(np.isnan(cuts)), (group, column)
            else:
                assert cuts == want, (group, column, weights)
    # counted to the end, without the last pass that fetches the rows of the open ranges
    assert _frames(ops["spark"], data["B"]).quantiles_by(["value", "grp"], QS, by="word", groups=groups,
                                                         fetch_rows=0) == got["local"]
    both = _frames(ops["ray"], data["A"]).quantiles_by(["value", "grp"], QS, weights="weight")
    for column in ("value", "grp"):
        assert both[column] == _frames(ops["local"], data["B"]).quantiles(column, QS, weights="weight")
    with pytest.raises(TypeError, match="string column"):
        _frames(ops["local"], data["A"]).quantiles_by(["value"], QS, by="grp", groups=["1"])


def test_weighted_quantiles_edge_cases(ops):
    zero = pa.table({"v": pa.array([1.0, 2.0]), "w": pa.array([0, None], pa.int64())})
    assert all(np.isnan(ops["spark"].from_arrow(zero).quantiles("v", [0.0, 1.0], weights="w")))
    one = pa.table({"v": pa.array([7.5, 1.0]), "w": pa.array([5, 0], pa.int64())})
    assert ops["ray"].from_arrow(one).quantiles("v", [0.0, 0.5, 1.0], weights="w") == [7.5, 7.5, 7.5]
    with pytest.raises(TypeError, match="integer column"):
        ops["local"].from_arrow(pa.table({"v": [1.0], "w": [0.5]})).quantiles("v", [0.5], weights="w")
    with pytest.raises(ValueError, match="negative"):
        ops["local"].from_arrow(pa.table({"v": [1.0, 2.0], "w": [1, -1]})).quantiles("v", [0.5], weights="w")


def test_approximate_weighted_quantiles(ops):
    t, v, w = _weighted_table()
    light = t.filter(pc.less(t.column("v"), 1e8))
    lv, lw = v[v < 1e8], w[v < 1e8]
    order = np.argsort(lv, kind="stable")
    sv, cum = lv[order], np.cumsum(lw[order])
    total, eps = int(cum[-1]), 0.05
    got = _per_engine(lambda e: ops[e].from_arrow(light, 3).quantiles("v", WQS, exact=False, rank_error=eps, weights="w"))
    assert got["spark"] == got["local"] == got["ray"]
    for q, x in zip(WQS, got["local"]):
        assert x in sv
        first = cum[np.searchsorted(sv, x, "left") - 1] if x > sv[0] else 0  # weight below x
        last = cum[np.searchsorted(sv, x, "right") - 1] - 1  # the last weighted rank of x
        target = max(math.ceil(q * total), 1) - 1
        assert first - eps * total <= target <= last + eps * total, (q, x)


def test_finish_hands_each_task_its_rows(ops, data):
    tasks = data["B"]
    pending = [t for t in tasks if t.partition != 2]  # partition 2 is committed already
    results, reported = {}, {}
    for e in ENGINES:
        o = ops[e]
        rows = _frames(o, tasks).map(_big_values, ROW_SCHEMA)
        seen = []
        results[e] = sorted(o.finish(pending, sum_value, rows=rows, key="partition", args=("x",), on_commit=seen.append),
                            key=lambda r: r["partition"])
        reported[e] = sorted(seen, key=lambda r: r["partition"])
    assert results["spark"] == results["local"] == results["ray"]
    for e in ENGINES:
        assert reported[e] == results[e]  # on_commit saw every record once
    by_part = Counter(r["partition"] for r in _rows_of(data, tasks) if r["value"] is not None and r["value"] > 120)
    assert [r["partition"] for r in results["local"]] == [t.partition for t in pending]
    assert {r["partition"]: r["rows"] for r in results["local"]} == {t.partition: by_part.get(t.partition, 0) for t in pending}
    assert all(r["columns"] == ROW_SCHEMA.names for r in results["local"])
    # without rows every task still runs, with an empty table
    for e in ENGINES:
        recs = ops[e].finish(pending[:2], sum_value, args=("y",))
        assert sorted(r["rows"] for r in recs) == [0, 0]


def test_finish_gives_tasks_without_rows_an_empty_table(ops, data):
    none = _per_engine(lambda e: sorted(
        ops[e].finish(data["A"], sum_value, rows=_frames(ops[e], data["A"]).map(_no_rows, ROW_SCHEMA), args=("z",)),
        key=lambda r: r["partition"]))
    assert none["local"] == none["spark"] == none["ray"]
    assert [r["rows"] for r in none["local"]] == [0, 0, 0, 0]


def _big_values(t: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return t.filter(pc.fill_null(pc.greater(t.column("value"), 120.0), False))


def _no_rows(t: pa.Table) -> pa.Table:
    return t.slice(0, 0)


def _rows_of(data, tasks):
    out = []
    for t in tasks:
        for r in pq.read_table(t.input_uri).to_pylist():
            out.append({**r, "partition": t.partition})
    return out


def test_a_failing_task_names_its_partition(ops, data):
    for e in ("local", "spark"):
        with pytest.raises(Exception, match="ARCFORGE_TASK_FAILED") as info:
            ops[e].map_tasks(data["A"][:1], _fails, ROW_SCHEMA).count()
        assert '"partition": 0' in str(info.value)


def _fails(task: PartitionTask) -> pa.Table:
    raise ValueError("broken input")


def test_exact_dedup_is_one_algorithm(tmp_path, ops):
    """dedup.exact's run(ctx) on the primitives: the keepers equal the reference grouping."""
    from types import SimpleNamespace

    from arcforge.dedup.exact import EXACT_DEDUP, ExactDedupParams, find_duplicates, hash_table
    from arcforge.runtime.documents import DOC_SCHEMA, docs_table

    rng = random.Random(5)
    texts = ["Same text", "same  TEXT", "other", "Other!", "x", "y y"]
    parts = [[{"id": f"{p}-{i}", "text": rng.choice(texts), "source": "s"} for i in range(20)] for p in range(3)]
    tables = [docs_table(rows) for rows in parts]
    ref = find_duplicates(pa.concat_tables([hash_table(t, i, ExactDedupParams()) for i, t in enumerate(tables)]))
    for e in ENGINES:
        d = tmp_path / e
        d.mkdir()
        tasks = []
        for i, t in enumerate(tables):
            pq.write_table(t, d / f"in-{i}.parquet")
            tasks.append(PartitionTask("dedup.exact", {}, i, str(d / f"in-{i}.parquet"), str(d / "out"), f"fp{i}", schema_to_b64(DOC_SCHEMA)))
        engine = SimpleNamespace(name=e, ops=lambda e=e: _Borrowed(ops[e]))
        ctx = SimpleNamespace(stage=SimpleNamespace(params=ExactDedupParams()), tasks=tasks, pending=tasks, engine=engine,
                              on_commit=lambda r: None)
        records = EXACT_DEDUP.run(ctx)
        assert sorted(r["partition"] for r in records) == [0, 1, 2]
        for i in range(3):
            rej = pq.read_table(d / "out" / "rejected" / f"part-{i:05d}.parquet") if ref.get(i) else None
            got = {} if rej is None else dict(zip(rej.column("id").to_pylist(), rej.column("detail").to_pylist()))
            want = {tables[i].column("id")[row].as_py(): f"duplicate_of={k}" for row, k in ref.get(i, {}).items()}
            assert got == want, e


class _Borrowed:
    """The module's ops, used as a context manager without closing them."""

    def __init__(self, ops):  # noqa: ANN001
        self.ops = ops

    def __enter__(self):  # noqa: ANN204
        return self.ops

    def __exit__(self, *exc):  # noqa: ANN002, ANN204
        return None


def _first_part_only(t: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return t.filter(pc.equal(t.column("partition"), 0))


def test_frames_with_empty_blocks(ops, data):
    """Most blocks empty (Ray Data passes an empty block through a map with its old schema)."""
    labels = pa.table({"grp": pa.array(range(13), pa.int64()), "label": [f"g{g}" for g in range(13)]})

    def run(e):
        frame = _frames(ops[e], data["B"]).map(_first_part_only, ROW_SCHEMA)
        grouped = frame.group_reduce(["grp"], summarise_group, GROUP_SCHEMA, order_by=["id"]).collect()
        counted = frame.aggregate(["grp"], [("weight", "sum"), ("id", "count")]).collect()
        joined = frame.join(ops[e].from_arrow(labels), ["grp"], "left").collect()
        recs = ops[e].finish(data["B"], sum_value, rows=frame, args=("e",))
        return grouped, counted, joined, sorted(recs, key=lambda r: r["partition"])

    got = _per_engine(run)
    for i in range(3):
        _same({e: got[e][i] for e in ENGINES})
    assert got["spark"][3] == got["local"][3] == got["ray"][3]
    assert [r["rows"] for r in got["local"][3]] == [len(pq.read_table(data["B"][0].input_uri))] + [0] * 6


def test_whole_groups_recuts_a_sorted_stream():
    """The Spark side of group_reduce: tables cut anywhere become tables of whole groups."""
    from arcforge.runtime.globalops.common import whole_groups

    rng = random.Random(1)
    keys = sorted((rng.choice([None, 1, 2, 3, 5, 8]) for _ in range(500)), key=lambda k: (k is not None, k or 0))  # nulls first
    table = pa.table({"k": pa.array(keys, pa.int64()), "i": pa.array(range(500), pa.int64())})
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, 500), rng.randrange(0, 30)))
        pieces = [table.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, 500])]
        out = list(whole_groups(pieces, ["k"]))
        assert pa.concat_tables(out).equals(table)
        seen = [set(t.column("k").to_pylist()) for t in out]
        for a, b in zip(seen, seen[1:]):
            assert not a & b  # no group is split over two tables


def count_group(group: pa.Table) -> pa.Table:
    return pa.table({"k": group.column("k").slice(0, 1), "n": [group.num_rows], "first": group.column("i").slice(0, 1)})


def test_a_group_larger_than_an_arrow_batch(ops):
    """Spark hands Python 1024 rows per Arrow batch: a group of 2500 rows spans three."""
    keys = [7] * 2500 + list(range(100))
    table = pa.table({"k": pa.array(keys, pa.int64()), "i": pa.array(range(len(keys))[::-1], pa.int64())})
    schema = pa.schema([("k", pa.int64()), ("n", pa.int64()), ("first", pa.int64())])
    got = _per_engine(lambda e: ops[e].from_arrow(table, 3).group_reduce(["k"], count_group, schema, order_by=["i"]).collect())
    _same(got)
    assert {r["k"]: r["n"] for r in got["local"].to_pylist()}[7] == 2501
    assert {r["k"]: r["first"] for r in got["local"].to_pylist()}[7] == min(i for k, i in zip(keys, range(len(keys))[::-1]) if k == 7)
