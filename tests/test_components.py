"""Connected components (arcforge.runtime.globalops.components) on the real local engine, Spark
and Ray: graphs with known components, and a random graph checked against scipy, give the same
(node, component = smallest node id) table on every engine and for every input partitioning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components as scipy_components

from arcforge.runtime.globalops.components import connected_components

ENGINES = ("local", "spark", "ray")


@pytest.fixture(scope="module")
def ops(engine_ops):
    return engine_ops


def _edges(pairs, dtype=pa.int64(), shuffle_seed=None) -> pa.Table:
    pairs = list(pairs)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(pairs))
        pairs = [pairs[i] for i in order]
    return pa.table({"src": pa.array([p[0] for p in pairs], dtype), "dst": pa.array([p[1] for p in pairs], dtype)})


def _run(ops, table: pa.Table, parts: int = 1, checkpoint=None, **kw):  # noqa: ANN001, ANN202
    """Components of ``table``'s edges; with ``checkpoint`` (a directory) each round's edges go
    through Parquet files there, which Spark needs for more than a few rounds."""
    frame, stats = connected_components(ops, ops.from_arrow(table, num_partitions=parts),
                                        checkpoint_dir=None if checkpoint is None else str(checkpoint), **kw)
    return frame.collect(), stats


def _table(labels: dict[int, int], dtype=pa.int64()) -> pa.Table:
    nodes = sorted(labels)
    return pa.table({"node": pa.array(nodes, dtype), "component": pa.array([labels[n] for n in nodes], dtype)})


def _scipy_labels(pairs) -> dict[int, int]:
    """The reference: scipy's components, each labelled with its smallest node id."""
    src, dst = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    nodes = np.unique(np.concatenate([src, dst]))
    g = sp.coo_matrix((np.ones(len(src)), (np.searchsorted(nodes, src), np.searchsorted(nodes, dst))), shape=(len(nodes),) * 2)
    _, lab = scipy_components(g, directed=False)
    smallest = {}
    for v, c in zip(nodes.tolist(), lab.tolist()):
        smallest.setdefault(c, v)  # nodes ascending: the first seen is the smallest
    return {v: smallest[c] for v, c in zip(nodes.tolist(), lab.tolist())}


# ---------------------------------------------------------------------------- graphs with known components


def _known_graph() -> tuple[list[tuple[int, int]], dict[int, int]]:
    """A disjoint union of a long chain, a star, a clique, self-loops and repeated edges."""
    pairs, want = [], {}
    chain = list(range(1000, 1200))  # 200 nodes, edges in both orientations
    pairs += [(a, b) if i % 3 else (b, a) for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    want.update({n: 1000 for n in chain})
    leaves = list(range(5000, 5031))  # star centred on 5015: the component is named after leaf 5000
    pairs += [(5015, leaf) for leaf in leaves if leaf != 5015]
    want.update({n: 5000 for n in leaves})
    clique = list(range(300, 312))
    pairs += [(a, b) for a in clique for b in clique if a < b]
    want.update({n: 300 for n in clique})
    pairs += [(7, 7), (8, 8), (8, 8)]  # isolated nodes, passed as self-edges
    want.update({7: 7, 8: 8})
    pairs += [(10, 9), (9, 10), (10, 9), (9, 9), (11, 10), (11, 11)]  # duplicates, reversed, self-loops on linked nodes
    want.update({9: 9, 10: 9, 11: 9})
    pairs += [(60, 50), (40, 60), (20, 40)]  # a path whose smallest id is at the end
    want.update({60: 20, 50: 20, 40: 20, 20: 20})
    return pairs, want


# Spark runs the random graph below (a 262-node component, checked against scipy); the
# hand-built graphs run on local and Ray, to keep Spark's ~5 s per round out of the suite twice.
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_known_components_on_local_and_ray(ops, engine, tmp_path):
    pairs, want = _known_graph()
    got, stats = _run(ops[engine], _edges(pairs, shuffle_seed=1), parts=3, checkpoint=tmp_path / "ckpt")
    assert got.equals(_table(want)), got.to_pylist()[:20]
    assert got.schema == pa.schema([("node", pa.int64()), ("component", pa.int64())])
    assert stats.nodes == len(want) == got.num_rows
    assert stats.components == len(set(want.values())) == 7
    assert stats.largest_component == 200
    assert stats.edges_in == len(pairs)
    assert stats.changed_edges[-1] == 0 and all(c > 0 for c in stats.changed_edges[:-1])
    assert stats.rounds == len(stats.large_star_edges) == len(stats.small_star_edges) > 2  # the chain needs several


@pytest.mark.parametrize("engine", ENGINES)
def test_random_graph_matches_scipy_and_ignores_partitioning(ops, engine, tmp_path):
    rng = np.random.default_rng(11)
    pairs = [(int(a), int(b)) for a, b in zip(rng.integers(0, 400, 330), rng.integers(0, 400, 330))]
    pairs += [(int(a), int(b)) for a, b in zip(rng.integers(1000, 1040, 60), rng.integers(1000, 1040, 60))]  # a dense part
    want = _table(_scipy_labels(pairs))
    four, stats4 = _run(ops[engine], _edges(pairs, shuffle_seed=5), parts=4, checkpoint=tmp_path / "four")
    assert four.equals(want)
    stats = stats4
    if engine != "spark":  # Spark's jobs cost ~1 s each; one partitioning there, two elsewhere
        one, stats = _run(ops[engine], _edges(pairs), parts=1, checkpoint=tmp_path / "one")
        assert one.equals(want), (one.slice(0, 10).to_pylist(), want.slice(0, 10).to_pylist())
        assert stats.large_star_edges == stats4.large_star_edges and stats.rounds == stats4.rounds  # sets, not orders
    sizes = np.unique(want.column("component").to_numpy(), return_counts=True)[1]
    assert stats.components == len(sizes) > 1 and stats.largest_component == sizes.max()


# ---------------------------------------------------------------------------- the algorithm itself (local engine)


def test_sorted_chain_needs_more_than_one_round(ops):
    """On 0-1-2-…-199 the large-star and the small-star give the same edges in round one (two
    interleaved chains); a loop that only compared those two would stop there, wrong."""
    got, stats = _run(ops["local"], _edges((i, i + 1) for i in range(199)))
    assert got.equals(_table({i: 0 for i in range(200)}))
    assert stats.rounds > 3 and stats.components == 1 and stats.largest_component == 200
    with pytest.raises(RuntimeError, match="no convergence in 2 rounds"):
        _run(ops["local"], _edges((i, i + 1) for i in range(199)), max_rounds=2)


def test_checkpointing_changes_nothing_but_the_files(ops, tmp_path):
    pairs, want = _known_graph()
    plain, stats = _run(ops["local"], _edges(pairs), parts=2)
    spilled, stats2 = _run(ops["local"], _edges(pairs), parts=2, checkpoint=tmp_path / "ckpt", checkpoint_parts=3)
    assert plain.equals(_table(want)) and spilled.equals(plain) and stats2 == stats
    rounds = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert rounds == [f"round-{k:03d}" for k in range(1, stats.rounds + 1)]
    files = sorted(p.name for p in (tmp_path / "ckpt" / rounds[-1]).iterdir())
    assert files == ["_done.json", *(f"part-{i:05d}.parquet" for i in range(3))]


class _Stop(Exception):
    pass


# local and Ray: the resume logic is written once on the ops, and Spark's persist/load of the
# rounds is tested in test_persist.py (a Spark variant here cost ~30 s of the suite's 25 minutes)
@pytest.mark.parametrize("engine", ("local", "ray"))
def test_resume_from_the_last_finished_round_equals_an_uninterrupted_call(ops, tmp_path, engine):
    """A call stopped after round 2 (the driver raising in ``on_round``, as a kill would stop it
    after that round's checkpoint), then ``resume=True`` on the same directory: the rounds go
    on from 3, and the labels and stats are an uninterrupted call's. A round whose marker is
    missing (killed while writing it) is done again."""
    perm = np.random.default_rng(3).permutation(30)
    pairs = list(zip(perm[:-1].tolist(), perm[1:].tolist()))  # one chain in random id order: 6 rounds
    clean, stats = _run(ops["local"], _edges(pairs), parts=2)  # labels and stats are the same on every engine
    assert stats.rounds >= 4

    def stop_after_two(s):  # noqa: ANN001, ANN202
        if s.rounds == 2:
            raise _Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        _run(ops[engine], _edges(pairs), parts=2, checkpoint=ckpt, on_round=stop_after_two)
    (ckpt / "round-002" / "_done.json").unlink()  # as if killed while round 2's files were written
    seen = []
    resumed, stats2 = _run(ops[engine], _edges(pairs), parts=2, checkpoint=ckpt, resume=True,
                           on_round=lambda s: seen.append(s.rounds))
    assert seen[0] == 2 and seen[-1] == stats.rounds
    assert resumed.equals(clean) and resumed.equals(_table(_scipy_labels(pairs))) and stats2 == stats
    seen.clear()
    again, stats3 = _run(ops[engine], _edges(pairs), parts=2, checkpoint=ckpt, resume=True, on_round=seen.append)
    assert seen == [] and again.equals(clean) and stats3 == stats  # every round finished: none is run again
    with pytest.raises(ValueError, match="resume needs a checkpoint_dir"):
        _run(ops[engine], _edges(pairs), resume=True)


def test_star_converges_in_one_round(ops):
    got, stats = _run(ops["local"], _edges((0, i) for i in range(1, 40)))
    assert got.equals(_table({i: 0 for i in range(40)}))
    assert stats.rounds == 1 and stats.large_star_edges == [39] and stats.changed_edges == [0]


@pytest.mark.parametrize("seed", range(6))
def test_random_sparse_graphs_match_scipy(ops, seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(20, 300)), int(rng.integers(10, 400))
    pairs = [(int(a), int(b)) for a, b in zip(rng.integers(0, n, m), rng.integers(0, n, m))]
    perm = rng.permutation(150)
    pairs += [(int(a), int(b) + 10_000) for a, b in zip(perm[:-1] + 10_000, perm[1:])]  # a chain in random id order
    got, _ = _run(ops["local"], _edges(pairs), parts=2)
    assert got.equals(_table(_scipy_labels(pairs)))


@pytest.mark.parametrize("engine", ["local", "ray"])  # Spark has no unsigned types: its frames cannot hold uint64
def test_uint64_ids_keep_their_unsigned_order(ops, engine):
    top = 2**63
    pairs = [(2**64 - 1, top), (5, top + 1), (top, top), (top + 7, 2**64 - 1)]
    got, stats = _run(ops[engine], _edges(pairs, pa.uint64()))
    want = {5: 5, top + 1: 5, top: top, 2**64 - 1: top, top + 7: top}
    assert got.equals(_table(want, pa.uint64())), got.to_pylist()
    assert stats.components == 2 and stats.largest_component == 3


def test_other_columns_are_ignored_and_types_checked(ops):
    t = _edges([(3, 4), (4, 5)]).append_column("weight", pa.array([0.5, 0.7]))
    got, _ = _run(ops["local"], t.cast(pa.schema([("src", pa.int32()), ("dst", pa.int32()), ("weight", pa.float64())])))
    assert got.equals(_table({3: 3, 4: 3, 5: 3}))
    with pytest.raises(TypeError, match="integer"):
        _run(ops["local"], pa.table({"src": [1.0], "dst": [2.0]}))


def test_no_edges(ops):
    got, stats = _run(ops["local"], _edges([]))
    assert got.num_rows == 0 and stats.rounds == 1 and stats.components == 0 and stats.largest_component == 0
