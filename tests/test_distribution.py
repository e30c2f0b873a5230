"""Distribution stats: numbers checked against numpy and collections.Counter on real
data, merges checked against one collector over everything, for many splits, and the
documents checked byte for byte: the same rows give the same bytes."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from fractions import Fraction
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pytest

from arcforge.runtime import rowsamples
from arcforge.runtime import sketch as acc
from arcforge.runtime import distribution as dist
from arcforge.runtime.sketch import exact_sum, sum_value
from arcforge.runtime.dataset import DatasetRef, schema_from_b64, schema_to_b64
from arcforge.runtime.distribution import (
    EXACT_VALUES,
    RELATIVE_ACCURACY,
    DistributionCollector,
    declared_range,
    merge_records,
    read_stats,
    render_status,
    with_range,
    write_stats,
)
from arcforge.runtime.documents import DOC_SCHEMA, rejected_schema, with_columns

RANKS = [r for _, r in dist.QUANTILES]
SCHEMA = with_columns(
    DOC_SCHEMA,
    [
        pa.field("score", pa.float32(), metadata={"arcforge.range": "0,1"}),
        pa.field("weight", pa.float64()),
        pa.field("tokens", pa.int32()),
    ],
)
REJ_SCHEMA = with_columns(rejected_schema(SCHEMA), [pa.field("step", pa.string())])  # step: from REJECT_FIELDS or not
REASONS = ["too_short", "bad_lang", "dup", "rare"]


def kept_table(n: int, seed: int) -> pa.Table:
    """Scores partly outside [0, 1] (below/above), with nulls and NaN; weights over 20
    orders of magnitude (a naive float sum depends on the order); ints with nulls."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0.5, 0.35, n).astype(np.float32)
    score[rng.random(n) < 0.01] = np.nan
    weight = rng.choice([1e-8, 1.0, 3.7, 1e12], n) * rng.random(n)
    weight[rng.random(n) < 0.005] = np.inf
    hosts = [f"site{int(k)}.example.org" for k in rng.zipf(1.5, n) % 400]
    return pa.table(
        {
            "id": [f"doc-{seed}-{i}" for i in range(n)],
            "text": ["é" * int(k) for k in rng.integers(0, 3000, n)],
            "source": ["test"] * n,
            "url": [f"https://{h}/p{i}" if i % 10 else None for i, h in enumerate(hosts)],
            "language": ["en"] * n,
            "metadata": ["{}"] * n,
            "score": pa.array(score, pa.float32(), mask=rng.random(n) < 0.02),
            "weight": pa.array(weight, pa.float64(), mask=rng.random(n) < 0.02),
            "tokens": pa.array(rng.integers(-50, 5000, n).astype(np.int32), pa.int32(), mask=rng.random(n) < 0.05),
        },
        schema=SCHEMA,
    )


def rejected_table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    base = kept_table(n, seed + 1000)
    reasons = rng.choice(REASONS, n, p=[0.5, 0.3, 0.1993, 0.0007]).tolist()
    rej = base.append_column("reason", pa.array(reasons, pa.string()))
    rej = rej.append_column("detail", pa.array([f"detail {i}" for i in range(n)], pa.string()))
    rej = rej.append_column("step", pa.array([f"step{i % 3}" for i in range(n)], pa.string()))
    return rej.cast(REJ_SCHEMA)


def random_cuts(n: int, parts: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``parts`` contiguous slices of [0, n), some possibly empty."""
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    bounds = [0, *cuts.tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def collect(kept: pa.Table, rejected: pa.Table, rng: np.random.Generator | None, parts: int = 1) -> dict:
    """Per-partition collectors fed in random batch sizes, their records passed through
    JSON (as they sit in commit records), then merged."""
    records = []
    kcuts = random_cuts(kept.num_rows, parts, rng) if rng is not None else [(0, kept.num_rows)]
    rcuts = random_cuts(rejected.num_rows, parts, rng) if rng is not None else [(0, rejected.num_rows)]
    for (k0, k1), (r0, r1) in zip(kcuts, rcuts):
        c = DistributionCollector(SCHEMA, "score")
        for table, add, (a, b) in ((kept, c.add_kept, (k0, k1)), (rejected, c.add_rejected, (r0, r1))):
            pos = a
            while pos < b:
                size = int(rng.integers(1, 2000)) if rng is not None else b - a
                add(table.slice(pos, min(size, b - pos)))
                pos += size
        records.append(json.loads(json.dumps(c.to_record(), allow_nan=False)))
    return merge_records(records, SCHEMA, "score")


def finite(values: list) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def test_declared_range_histogram_is_numpys_and_moments_are_exact():
    kept = kept_table(20_000, 1)
    stats = collect(kept, rejected_table(10, 2), np.random.default_rng(0), parts=5)
    values = finite(kept.column("score").to_pylist())
    raw = kept.column("score").to_pylist()
    a = stats["attributes"]["score"]
    counts, edges = np.histogram(values, bins=20, range=(0.0, 1.0))
    assert a["histogram"]["range"] == "declared" and a["histogram_exact"] is True
    assert a["histogram"]["counts"] == counts.tolist()
    assert a["histogram"]["edges"] == edges.tolist()
    assert a["histogram"]["below"] == int((values < 0).sum()) > 0
    assert a["histogram"]["above"] == int((values > 1).sum()) > 0
    assert a["count"] == len(values) == sum(a["histogram"]["counts"]) + a["histogram"]["below"] + a["histogram"]["above"]
    assert a["nulls"] == sum(v is None for v in raw) > 0
    assert a["non_finite"] == sum(v is not None and v != v for v in raw) > 0
    assert (a["min"], a["max"]) == (float(values.min()), float(values.max()))
    assert a["mean"] == float(sum(Fraction(float(v)) for v in values) / len(values))
    assert stats["docs"] == 20_000 and stats["rejected"] == 10


def test_exact_sum_is_exact_over_twenty_orders_of_magnitude():
    rng = np.random.default_rng(3)
    floats = rng.choice([1e-300, 1e-8, 1.0, 1e12, -1e12, 5e-324], 5000) * rng.random(5000)
    assert sum_value(exact_sum(floats)) == sum(Fraction(float(v)) for v in floats)
    ints = rng.integers(-(2**62), 2**62, 3000)
    assert sum_value(exact_sum(ints)) == sum(int(v) for v in ints)
    unsigned = rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64)
    assert sum_value(exact_sum(unsigned)) == sum(int(v) for v in unsigned)


def collect_column(values: np.ndarray, pa_type: pa.DataType, parts: int, seed: int = 0) -> dict:
    """One column split into ``parts`` random partitions fed in random batches, records
    through JSON, merged in a random order: the attribute's description."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([pa.field("x", pa_type)])
    records = []
    for lo, hi in random_cuts(len(values), parts, rng):
        c = DistributionCollector(schema, "s")
        pos = lo
        while pos < hi:
            size = int(rng.integers(1, 30_000))
            c.add_kept(pa.table({"x": pa.array(values[pos : min(pos + size, hi)], pa_type)}, schema=schema))
            pos += size
        records.append(json.loads(json.dumps(c.to_record(), allow_nan=False)))
    records = [records[i] for i in rng.permutation(len(records))]
    return merge_records(records, schema, "s")["attributes"]["x"]


def _distribution(kind: str, n: int) -> tuple[np.ndarray, pa.DataType]:
    rng = np.random.default_rng(4)
    if kind == "lognormal":
        return rng.lognormal(0, 2, n), pa.float64()
    if kind == "uniform":
        return rng.uniform(0, 1, n), pa.float64()
    if kind == "signed_with_zeros":  # negatives, positives, 10% zeros (both signs of zero)
        v = rng.standard_t(3, n) * 50
        v[rng.random(n) < 0.05] = 0.0
        v[rng.random(n) < 0.05] = -0.0
        return v, pa.float64()
    if kind == "float32":
        return rng.gamma(2.0, 3.0, n).astype(np.float32), pa.float32()
    if kind == "int_lengths":  # text-length-like: skewed non-negative integers
        return np.rint(rng.lognormal(7, 1.2, n)).astype(np.int64), pa.int64()
    if kind == "int_small":  # few distinct small integers, negatives included
        return rng.integers(-40, 60, n), pa.int32()
    raise AssertionError(kind)


def edge_slack(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per bin: the values within ``(gamma - 1) * |e|`` (the width of the sketch bucket
    holding ``e``) of one of its interior edges ``e``: only those may be misplaced."""
    near = np.array([int((np.abs(values - e) <= (acc.GAMMA - 1) * abs(e) * (1 + 1e-9)).sum()) for e in edges[1:-1]])
    return np.r_[0, near] + np.r_[near, 0]


@pytest.mark.parametrize("kind", ["lognormal", "uniform", "signed_with_zeros", "float32", "int_lengths", "int_small"])
def test_quantiles_within_relative_error_of_numpy(kind):
    n = 100_000
    values, pa_type = _distribution(kind, n)
    a = collect_column(values, pa_type, parts=7)
    assert a["quantiles_exact"] is False and a["relative_error"] == RELATIVE_ACCURACY and a["collapsed_below"] is None
    assert a["count"] == n and a["min"] == values.min() and a["max"] == values.max()
    exact = np.quantile(values.astype(np.float64), RANKS, method="inverted_cdf")
    got = np.array([a["quantiles"][name] for name, _ in dist.QUANTILES])
    rounding = 0.5 if values.dtype.kind in "iu" else 0.0
    assert np.all(np.abs(got - exact) <= RELATIVE_ACCURACY * np.abs(exact) * (1 + 1e-9) + rounding), (got, exact)
    if values.dtype.kind in "iu":
        assert np.all(got == np.rint(got))  # integer columns report integers
    # the histogram over [min, max] comes from the buckets: a count is off at most by
    # the values in the buckets of its edges, and much less where they are spread evenly
    counts, edges = np.histogram(values.astype(np.float64), bins=20)
    h = a["histogram"]
    assert a["histogram_exact"] is False and h["range"] == "observed" and h["edges"] == edges.tolist()
    assert sum(h["counts"]) == n
    diff = np.abs(np.array(h["counts"]) - counts)
    slack = edge_slack(values.astype(np.float64), edges)
    assert np.all(diff <= slack) and diff.sum() <= 0.2 * slack.sum() + 2, (diff, slack)
    if kind == "int_small":  # |x| < 100: a bucket holds at most one integer, so nothing is approximate
        assert got.tolist() == exact.tolist() and h["counts"] == counts.tolist()


def test_quantiles_do_not_depend_on_partitioning_batching_or_merge_order():
    values, pa_type = _distribution("signed_with_zeros", 50_000)
    first = collect_column(values, pa_type, parts=1)
    for seed in range(4):
        again = collect_column(values, pa_type, parts=int(np.random.default_rng(seed).integers(2, 12)), seed=seed)
        assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


@pytest.mark.parametrize("n", [10, 1_000])
def test_negative_zero_is_zero_whichever_comes_first(n):
    """min(0.0, -0.0) is whichever comes first: without care min/max, the kept values and
    so the document's bytes would depend on the order of the rows."""
    docs = set()
    for zeros in (np.r_[np.zeros(n), -np.zeros(n)], np.r_[-np.zeros(n), np.zeros(n)]):
        for parts in (1, 3):
            a = collect_column(zeros, pa.float64(), parts=parts, seed=parts)
            docs.add(json.dumps(a, sort_keys=True))
    assert len(docs) == 1
    a = json.loads(docs.pop())
    assert str(a["min"]) == str(a["max"]) == str(a["quantiles"]["p50"]) == "0.0"


def test_keys_and_values_are_the_ddsketch_logarithmic_mapping():
    ddsketch_mapping = pytest.importorskip("ddsketch.mapping")
    mapping = ddsketch_mapping.LogarithmicMapping(RELATIVE_ACCURACY)
    rng = np.random.default_rng(11)
    values = np.concatenate([
        10.0 ** rng.uniform(-300, 300, 20_000),  # every magnitude
        rng.integers(1, 100_000, 20_000).astype(np.float64),  # integers
        rng.lognormal(0, 2, 20_000),
        [1.0, 2.0, 0.5, 1e-300, 1e300, np.finfo(np.float64).max, acc.MIN_INDEXABLE * 1.0001],
    ])  # fmt: skip
    assert acc.GAMMA == mapping.gamma and acc.MIN_INDEXABLE == mapping.min_possible
    keys = acc.bucket_keys(values)
    assert keys.tolist() == [mapping.key(float(v)) for v in values]
    reps = acc.bucket_values(keys)
    finite = np.isfinite(reps)
    assert finite[:-3].all()
    want = np.array([mapping.value(int(k)) for k in keys[finite]])
    assert np.allclose(reps[finite], want, rtol=1e-12, atol=0)
    assert np.all(np.abs(reps[finite] - values[finite]) <= RELATIVE_ACCURACY * values[finite] * (1 + 1e-12))


def test_values_on_bucket_boundaries_get_their_keys_by_comparison_not_by_log():
    """Bucket k holds (fl(gamma**(k-1)), fl(gamma**k)]: a boundary and the next float up
    land in k and k + 1 whatever np.log rounds to (what keeps keys the same on every CPU)."""
    lo, hi = -69_000, 69_000
    bounds = acc.bucket_bounds(lo, hi)
    keys = np.arange(lo, hi + 1)
    assert np.all(np.diff(bounds) > 0) and np.isfinite(bounds).all()
    assert acc.bucket_keys(bounds).tolist() == keys.tolist()
    assert acc.bucket_keys(np.nextafter(bounds, np.inf)).tolist() == (keys + 1).tolist()
    assert acc.bucket_keys(np.nextafter(bounds, 0)).tolist() == keys.tolist()
    assert acc.bucket_keys(np.array([1.0])).tolist() == [0]


def test_collapsed_buckets_are_partition_independent_and_stated():
    """Magnitudes over 40 orders: the lowest buckets collapse (MAX_BUCKETS per sign)."""
    rng = np.random.default_rng(12)
    values = 10.0 ** rng.uniform(-20, 20, 60_000) * rng.choice([-1.0, 1.0], 60_000)
    whole = collect_column(values, pa.float64(), parts=1)
    assert collect_column(values, pa.float64(), parts=9, seed=3) == whole
    bound = whole["collapsed_below"]
    assert bound is not None and 1e-20 < bound < 1e20
    exact = np.quantile(values, RANKS, method="inverted_cdf")
    got = np.array([whole["quantiles"][name] for name, _ in dist.QUANTILES])
    ok = np.where(np.abs(exact) > bound, np.abs(got - exact) <= RELATIVE_ACCURACY * np.abs(exact) * (1 + 1e-9),
                  np.abs(got - exact) <= bound * (1 + 1e-9))  # fmt: skip
    assert ok.all(), (got, exact, bound)


def test_state_is_small_and_the_same_bytes_for_any_batching():
    values = np.random.default_rng(13).lognormal(0, 2, 100_000)
    schema = pa.schema([pa.field("x", pa.float64())])
    states = []
    for batch in (100_000, 4_096, 777):
        c = DistributionCollector(schema, "s")
        for i in range(0, len(values), batch):
            c.add_kept(pa.table({"x": values[i : i + batch]}, schema=schema))
        states.append(json.dumps(c.to_record(), sort_keys=True))
    assert states[0] == states[1] == states[2]
    state = json.loads(states[0])["attributes"]["x"]
    assert state["values"] is None and state["sketch"]["neg"] is None
    assert len(json.dumps(state)) < 6_000


@pytest.mark.parametrize("n", [1, 7, 150, 200])
def test_small_n_quantiles_and_histograms_are_exact(n):
    rng = np.random.default_rng(n)
    schema = pa.schema([pa.field("x", pa.float64()), pa.field("k", pa.int64())])
    x, k = rng.normal(size=n).round(1), rng.integers(0, 9, n)
    records = []
    for lo, hi in random_cuts(n, 3, rng):
        c = DistributionCollector(schema, "s")
        c.add_kept(pa.table({"x": x[lo:hi], "k": k[lo:hi]}, schema=schema))
        records.append(c.to_record())
    stats = merge_records(records, schema, "s")
    for name, values in (("x", x), ("k", k)):
        a = stats["attributes"][name]
        assert a["quantiles_exact"] is True and a["histogram_exact"] is True and a["relative_error"] == 0
        assert [a["quantiles"][q] for q, _ in dist.QUANTILES] == np.quantile(values, RANKS, method="inverted_cdf").tolist()
        counts, edges = np.histogram(values, bins=20)
        assert a["histogram"]["counts"] == counts.tolist()
        assert a["histogram"]["edges"] == edges.tolist()
    assert stats["attributes"]["k"]["min"] == int(k.min()) and isinstance(stats["attributes"]["k"]["min"], int)


def test_one_value_more_than_the_exact_limit_is_estimated():
    x = np.random.default_rng(3).normal(size=EXACT_VALUES + 1)
    a = collect_column(x, pa.float64(), parts=3)
    assert a["quantiles_exact"] is False and a["histogram_exact"] is False and a["relative_error"] == RELATIVE_ACCURACY
    exact = np.quantile(x, RANKS, method="inverted_cdf")
    got = np.array([a["quantiles"][q] for q, _ in dist.QUANTILES])
    assert np.all(np.abs(got - exact) <= RELATIVE_ACCURACY * np.abs(exact) * (1 + 1e-9))


EXACT_KEYS = ("count", "nulls", "non_finite", "mean", "min", "max")


@pytest.mark.parametrize("n_kept,n_rej", [(120, 60), (12_000, 5_000)])
def test_merged_records_equal_one_collector_for_any_split(n_kept, n_rej):
    kept, rejected = kept_table(n_kept, 5), rejected_table(n_rej, 6)
    whole = collect(kept, rejected, None)
    small = n_kept <= EXACT_VALUES
    for seed in range(6):
        rng = np.random.default_rng(seed)
        merged = collect(kept, rejected, rng, parts=int(rng.integers(2, 9)))
        # the same rows give the same document, byte for byte, however they were split
        assert merged["partitions"] > 1
        assert json.dumps({**merged, "partitions": 1}, sort_keys=True) == json.dumps(whole, sort_keys=True)
        assert (merged["docs"], merged["rejected"]) == (whole["docs"], whole["rejected"]) == (n_kept, n_rej)
        assert merged["rejected_by_reason"] == whole["rejected_by_reason"]
        assert merged["domains"] == whole["domains"] and merged["domains"]["exact"] is True
        for name, a in whole["attributes"].items():
            b = merged["attributes"][name]
            assert {k: b[k] for k in EXACT_KEYS} == {k: a[k] for k in EXACT_KEYS}, name
            if name == "score" or small:  # declared range, or few enough values for the sketch to hold them all
                assert b["histogram"] == a["histogram"], name
            if small:
                assert b["quantiles"] == a["quantiles"], name
            assert sum(b["histogram"]["counts"]) + b["histogram"]["below"] + b["histogram"]["above"] == b["count"]
    tc = whole["attributes"]["text_chars"]
    lengths = [len(t) for t in kept.column("text").to_pylist()]
    assert (tc["count"], tc["min"], tc["max"]) == (n_kept, min(lengths), max(lengths))
    assert tc["mean"] == float(Fraction(sum(lengths), n_kept))
    tokens = [t for t in kept.column("tokens").to_pylist() if t is not None]
    assert whole["attributes"]["tokens"]["mean"] == float(Fraction(sum(tokens), len(tokens)))


def expected_samples(rejected: pa.Table) -> dict[str, list[str]]:
    by_reason: dict[str, list[str]] = {}
    for doc, reason in zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist()):
        by_reason.setdefault(reason, []).append(doc)
    key = lambda d: hashlib.blake2b(d.encode(), digest_size=16).digest()  # noqa: E731
    return {r: sorted(ids, key=key)[:10] for r, ids in by_reason.items()}


def test_reservoir_samples_are_the_smallest_hashes_whatever_the_partitioning():
    rejected = rejected_table(8_000, 7)
    expected = expected_samples(rejected)
    counts = Counter(rejected.column("reason").to_pylist())
    assert 0 < counts["rare"] < 10  # a reason with fewer rows than the sample keeps them all
    samples = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        stats = collect(kept_table(0, 0), rejected, rng, parts=int(rng.integers(1, 12)))
        by_reason = stats["rejected_by_reason"]
        assert {r: e["count"] for r, e in by_reason.items()} == dict(counts)
        assert {r: [s["id"] for s in e["sample"]] for r, e in by_reason.items()} == expected
        samples.append(by_reason)
    assert all(s == samples[0] for s in samples)
    rows = {r["id"]: r for r in rejected.to_pylist()}
    for entry in samples[0].values():
        assert len(entry["sample"]) <= 10
        for s in entry["sample"]:
            src = rows[s["id"]]
            assert s["text"] == src["text"][:500] and len(s["text"]) <= 500 and s["text_chars"] == len(src["text"])
            assert (s["url"], s["detail"], s["step"]) == (src["url"], src["detail"], src["step"])


def expected_host(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.hostname.rstrip(".")


def domain_stats(urls: list[str | None]) -> dict:
    schema = pa.schema([pa.field("url", pa.string())])
    c = DistributionCollector(schema, "s")
    for i in range(0, len(urls), 777):
        c.add_kept(pa.table({"url": urls[i : i + 777]}, schema=schema))
    return merge_records([c.to_record()], schema, "s")["domains"]


def test_top_domains_agree_with_a_counter():
    rng = np.random.default_rng(8)
    forms = [
        "https://{h}/a?b=1", "http://{h}", "HTTPS://{H}/x", "http://user:pw@{h}:8080/p", "https://{h}./",
        "ftp://{h}/file", "/data/{h}/file.txt", "{h}/no-scheme", None,
    ]  # fmt: skip
    urls = []
    for k in rng.zipf(1.3, 30_000) % 500:
        h = f"host{k}.example.com"
        form = forms[int(rng.integers(0, len(forms)))]
        urls.append(None if form is None else form.format(h=h, H=h.upper()))
    urls += ["https://[2001:db8::1]:443/x", "http://10.0.0.1/y"]
    expected = Counter(h for h in map(expected_host, urls) if h)
    d = domain_stats(urls)
    assert d["exact"] is True and d["max_error"] == 0 and d["docs"] == sum(expected.values())
    top = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    assert [(t["domain"], t["docs"]) for t in d["top"]] == top
    assert all(t["lower_bound"] == t["docs"] == t["upper_bound"] for t in d["top"])
    assert [t["domain"] for t in domain_stats(urls[-2:])["top"]] == ["10.0.0.1", "2001:db8::1"]


def test_top_domains_with_more_distinct_hosts_than_the_sketch_holds_stay_within_bounds():
    rng = np.random.default_rng(9)
    heavy = {f"heavy{i}.org": 3000 - 120 * i for i in range(22)}
    hosts = [h for h, n in heavy.items() for _ in range(n)] + [f"tail{i}.net" for i in range(6000)]
    urls = [f"https://{hosts[i]}/" for i in rng.permutation(len(hosts))]
    truth = Counter(hosts)
    d = domain_stats(urls)
    assert d["exact"] is False and 0 < d["max_error"] <= d["epsilon"] * d["docs"]
    assert d["docs"] == len(urls) and len(d["top"]) == 20
    for t in d["top"]:
        assert t["lower_bound"] <= truth[t["domain"]] <= t["upper_bound"]
        assert t["upper_bound"] - t["lower_bound"] <= d["max_error"]
    true_top = sorted(heavy, key=lambda h: -heavy[h])
    gap_safe = [h for h in true_top if heavy[h] - 2 * d["max_error"] > heavy[true_top[20]]]
    assert set(gap_safe) <= {t["domain"] for t in d["top"]} and len(gap_safe) >= 10


def test_stats_round_trip_through_a_local_stage_directory(tmp_path):
    ref = DatasetRef(str(tmp_path / "run" / "score"))
    assert read_stats(ref) is None
    stats = collect(kept_table(500, 10), rejected_table(200, 11), np.random.default_rng(1), parts=3)
    write_stats(ref, stats)
    assert (tmp_path / "run" / "score" / dist.STATS_FILE).is_file()
    assert read_stats(ref) == stats
    assert not [p for p in (tmp_path / "run" / "score").iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError):  # strict JSON: NaN is refused, the old file stays
        write_stats(ref, {**stats, "docs": float("nan")})
    assert read_stats(ref) == stats


def test_stats_round_trip_on_s3(s3_endpoint):
    import boto3

    from arcforge.runtime.storage import S3Options

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="arcforge-stats")
    ref = DatasetRef("s3://arcforge-stats/run/score", S3Options(endpoint_url=s3_endpoint, retries=0))
    assert read_stats(ref) is None
    stats = collect(kept_table(300, 12), rejected_table(50, 13), None)
    write_stats(ref, stats)
    assert read_stats(ref) == stats


def test_declared_range_survives_the_task_schema_and_malformed_ranges_are_refused():
    schema = schema_from_b64(schema_to_b64(SCHEMA))  # how a task receives its output schema
    assert declared_range(schema.field("score")) == (0.0, 1.0)
    assert declared_range(with_range(pa.field("q", pa.float64()), -2.5, 7)) == (-2.5, 7.0)
    assert declared_range(schema.field("weight")) is None
    for bad in ("1", "a,b", "1,0", "0,inf", "0,1,2"):
        with pytest.raises(ValueError, match="arcforge.range"):
            DistributionCollector(pa.schema([pa.field("x", pa.float64(), metadata={"arcforge.range": bad})]), "s")
    attrs = dist.described_attributes(SCHEMA)
    assert list(attrs) == ["text_chars", "score", "weight", "tokens"]


def test_merge_refuses_other_stages_and_counts_missing_records():
    c = DistributionCollector(SCHEMA, "score")
    c.add_kept(kept_table(50, 14))
    kll_era = {"format": "arcforge.stats.partial/1", "stage": "score", "docs": 7}  # committed before the DDSketch
    stats = merge_records([c.to_record(), None, {}, kll_era], SCHEMA, "score", fingerprint="abc")
    assert (stats["partitions"], stats["partitions_without_stats"], stats["docs"]) == (4, 3, 50)
    assert stats["fingerprint"] == "abc" and stats["format"] == dist.FORMAT and stats["stage"] == "score"
    with pytest.raises(ValueError, match="stage"):
        merge_records([c.to_record()], SCHEMA, "other")
    with pytest.raises(ValueError, match="format"):
        merge_records([{**c.to_record(), "format": "arcforge.stats.partial/9"}], SCHEMA, "score")
    empty = merge_records([], SCHEMA, "score")
    assert empty["docs"] == 0 and empty["attributes"]["score"]["quantiles"] is None and empty["domains"] is None
    json.dumps(empty, allow_nan=False)


def test_render_status_lists_docs_reasons_and_deciles():
    stats = collect(kept_table(3_000, 15), rejected_table(400, 16), np.random.default_rng(2), parts=4)
    lines = render_status(stats)
    assert lines[0] == "score: 3,000 docs kept, 400 rejected"
    reasons = stats["rejected_by_reason"]
    assert all(f"{r} {e['count']:,}" in lines[1] for r, e in reasons.items())
    for name, a in stats["attributes"].items():
        line = next(ln for ln in lines if ln.strip().startswith(name + " "))
        assert f"p50 {dist._num(a['quantiles']['p50'])}" in line and "p10" in line and "p90" in line
    assert any(ln.strip().startswith("top domains") for ln in lines)


def test_top_domains_over_many_tasks_stay_within_bounds_whatever_the_merge_order(monkeypatch):
    """Tasks with more distinct hosts than a state lists (1024), one of them pruning its
    counter mid-way (a small DOMAINS_TASK_CAP): bounds hold, the merge order does not matter."""
    monkeypatch.setattr(rowsamples, "DOMAINS_TASK_CAP", 3000)
    rng = np.random.default_rng(17)
    heavy = {f"heavy{i}.org": 2500 - 90 * i for i in range(25)}
    hosts = np.array([h for h, n in heavy.items() for _ in range(n)] + [f"tail{i % 9000}.net" for i in range(20_000)])
    hosts = hosts[rng.permutation(len(hosts))]
    truth = Counter(hosts.tolist())
    schema = pa.schema([pa.field("url", pa.string())])
    records = []
    bounds = [0, 9_000, 30_000, 52_000, len(hosts)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        c = DistributionCollector(schema, "s")
        for i in range(lo, hi, 1000):
            c.add_kept(pa.table({"url": [f"https://{h}/" for h in hosts[i : min(i + 1000, hi)]]}, schema=schema))
        records.append(c.to_record())
    assert any(r["domains"]["error"] > 0 for r in records)  # a task pruned its counter
    assert all(len(r["domains"]["hosts"]) == 1024 and r["domains"]["tail"] > 0 for r in records)
    d = merge_records(records, schema, "s")["domains"]
    assert d["exact"] is False and 0 < d["max_error"] <= d["epsilon"] * d["docs"] and d["docs"] == len(hosts)
    assert merge_records(records[::-1], schema, "s")["domains"] == d
    assert len(d["top"]) == 20
    for t in d["top"]:
        assert t["lower_bound"] == t["docs"] <= truth[t["domain"]] <= t["upper_bound"]
        assert t["upper_bound"] - t["lower_bound"] <= d["max_error"]
    true_top = sorted(truth, key=lambda h: (-truth[h], h))
    gap_safe = [h for h in true_top[:20] if truth[h] - d["max_error"] > truth[true_top[20]]]
    assert set(gap_safe) <= {t["domain"] for t in d["top"]} and len(gap_safe) >= 10
