"""Does curation pay? The whole "curation pays" ablation end to end, on a tiny budget.

In a temporary directory, on the real demo corpus:

1. the two fastText classifiers of ``configs/classifiers/`` (English quality on
   ``labels/quality_en.jsonl``, multilingual edu on ``labels/edu_multilingual.jsonl``), with
   small hyperparameters, through ``arcforge classifiers train``;
2. ``configs/demo.yaml`` reduced: the Wikipedia dump, the docutils JSONL and the multilingual
   JSONL only (no WARCs, no book), no embedding scorer, no packed shards, every stage on the
   local engine except the quality scorers (Ray, as in the demo);
3. ``arcforge mix`` on ``configs/mixture.ablate.yaml`` pointed at that run, each stage keeping
   the sources that have shards there;
4. ``arcforge ablate`` on ``configs/ablate.quality.yaml`` with ``configs/train.tiny.yaml`` as
   its base, cut to a few steps of 64-token sequences.

The asserts are about the mechanics (a row per arm, one budget, finite losses, a held-out
set no arm trains on, bucket epochs that change the blend), never about which arm wins: a
few steps of a proxy cannot tell.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from arcforge.cli import main
from arcforge.runtime import dataset
from arcforge.runtime.dataset import DatasetRef

# two classifiers, a 15-stage pipeline, three proxies: ~35-40 s on 2 cores (not `slow`)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ARMS = ["raw", "curated", "uniform"]
SOURCES = ["wiki", "docs", "multilingual"]  # the demo's input stages this test reads
LEFT_OUT = {"extract", "books", "shards_packed"}  # WARCs and the book: not asked for; packed shards: no arm uses them
ON_RAY = "quality"  # the demo's Ray stage for the classifiers: the models load once per actor
FT_SMALL = {"dim": 16, "bucket": 20000, "epoch": 10}  # fastText in ~2 s per classifier
SEQ, MICRO, GLOBAL, ITERS, EVAL_INTERVAL, EVAL_ITERS = 64, 4, 8, 6, 3, 2


def _load(path: Path) -> dict:
    """A config as written: ${ARCFORGE_RUNS:-runs} and the like stay for the loader to expand."""
    return yaml.safe_load(path.read_text())


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _pipeline(demo: dict) -> dict:
    """configs/demo.yaml with fewer inputs and the embedding scorer left out, on local engines."""
    cfg = {k: v for k, v in demo.items() if k != "stages"}
    cfg["engines"] = {"ray": {}}
    stages = []
    for st in demo["stages"]:
        if st["name"] in LEFT_OUT:
            continue
        st = json.loads(json.dumps(st))
        st["engine"] = "ray" if st["name"] == ON_RAY else "local"
        if st.get("uses") == "dedup.exact":
            st["input"] = [i for i in st["input"] if i not in LEFT_OUT]
        if "steps" in st:
            st["steps"] = [s for s in st["steps"] if s["uses"] != "quality.embedding"]
        if st.get("uses") == "quality.buckets":
            st["params"]["scores"] = [s for s in st["params"]["scores"] if s != "quality_embedding"]
        stages.append(st)
    cfg["stages"] = stages
    return cfg


def _shard_rows(run: Path, stage: str) -> list[dict]:
    """One row per shard of a tokenize.megatron_shards stage, with its absolute prefix."""
    rows = dataset.read_dataset(DatasetRef(str(run / stage))).to_pylist()
    for r in rows:
        r["abs"] = str(run / stage / r["prefix"])
    return rows


def _ids(run: Path, stage: str) -> list[str]:
    return dataset.read_dataset(DatasetRef(str(run / stage)), ["id"]).column("id").to_pylist()


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, demo_corpus, ray_local):
    root = tmp_path_factory.mktemp("quality-ablation")
    mp = pytest.MonkeyPatch()
    mp.setenv("ARCFORGE_RUNS", str(root))
    mp.setenv("ARCFORGE_DEMO_CORPUS", str(demo_corpus))
    try:
        # 1. the two fastText classifiers the quality stage loads, from the repository's configs
        cards = {}
        for name in ("quality_fasttext", "edu_multilingual"):
            cfg = _load(CONFIGS / "classifiers" / f"{name}.yaml")
            assert cfg["kind"] == "fasttext"
            cfg["fasttext"].update(FT_SMALL)
            assert main(["classifiers", "train", str(_write(root / f"{name}.yaml", cfg))]) == 0
            cards[name] = json.loads((root / "classifiers" / name / "model_card.json").read_text())

        # 2. the reduced demo pipeline
        demo = _load(CONFIGS / "demo.yaml")
        pipe = _pipeline(demo)
        assert main(["run", str(_write(root / "demo.yaml", pipe))]) == 0
        run = root / demo["name"]

        # 3. the ablation's blends, each stage drawing only sources that have shards here
        mix = _load(CONFIGS / "mixture.ablate.yaml")
        dropped_sources = {}
        for st in mix["stages"]:
            st["seq_length"] = SEQ
            shards = Path(str(st.get("shards", mix["shards"])).replace("${ARCFORGE_RUNS:-runs}", str(root)))
            have = {r["source"] for r in _shard_rows(shards.parent, shards.name)}
            dropped_sources[st["name"]] = [s["source"] for s in st["sources"] if s["source"] not in have]
            st["sources"] = [s for s in st["sources"] if s["source"] in have]
        assert main(["mix", str(_write(root / "mixture.ablate.yaml", mix))]) == 0
        mix_out = Path(mix["output"].replace("${ARCFORGE_RUNS:-runs}", str(root)))

        # 4. the ablation: train.tiny.yaml as the base, a few 64-token steps per arm
        base = _load(CONFIGS / "train.tiny.yaml")
        base["model"]["seq_length"] = SEQ
        base["batch"] = {"micro_batch_size": MICRO, "global_batch_size": GLOBAL, "warmup_start": None}
        base["log"] = {"print_interval": 0, "plot": False}
        _write(root / "train.tiny.yaml", base)
        ab = _load(CONFIGS / "ablate.quality.yaml")
        assert ab["base"] == "train.tiny.yaml"  # relative to the ablation file: the copy beside it
        ab["overrides"]["train"] = {"iters": ITERS}
        ab["eval"].update({"interval": EVAL_INTERVAL, "iters": EVAL_ITERS})
        assert main(["ablate", str(_write(root / "ablate.quality.yaml", ab)), "-q"]) == 0
        out = Path(ab["output_dir"].replace("${ARCFORGE_RUNS:-runs}", str(root)))
        yield {"root": root, "run": run, "pipe": pipe, "demo": demo, "mix": mix, "mix_out": mix_out,
               "dropped_sources": dropped_sources, "out": out, "cards": cards}
    finally:
        mp.undo()


def _blend(ab, arm: str) -> dict:
    return json.loads((ab["mix_out"] / f"{arm}.blend.json").read_text())


def test_the_reduced_pipeline_is_the_demo_one(ablation):
    demo, pipe = ablation["demo"], ablation["pipe"]
    kinds = [(s["name"], s.get("uses"), [x["uses"] for x in s.get("steps", [])]) for s in demo["stages"] if s["name"] not in LEFT_OUT]
    assert [(s["name"], s.get("uses"), [x["uses"] for x in s.get("steps", [])]) for s in pipe["stages"]] == [
        (n, u, [x for x in steps if x != "quality.embedding"]) for n, u, steps in kinds
    ]
    assert [s["name"] for s in pipe["stages"] if s["engine"] == "ray"] == [ON_RAY]
    # the mixture lost only the sources this test does not feed (WARC pages, the book): every
    # source it does feed reached each arm's shards (docutils' docs are never in curated/uniform)
    assert all(set(d) <= {"web", "books"} for d in ablation["dropped_sources"].values()), ablation["dropped_sources"]
    # both classifiers learned something on their held-out labels (small fastText, real data)
    for card in ablation["cards"].values():
        assert card["metrics"]["roc_auc"] > 0.9, card["name"]


def test_eval_pool_is_disjoint_from_train_pool(ablation):
    run = ablation["run"]
    evals, trains, all_ids = set(_ids(run, "eval_pool")), set(_ids(run, "train_pool")), _ids(run, "near_dedup")
    assert evals and trains and not evals & trains
    assert evals | trains == set(all_ids) and len(all_ids) == len(evals) + len(trains)
    # and the held-out documents, and only they, are in shards_eval; every filter ran downstream of train_pool
    assert sum(r["documents"] for r in _shard_rows(run, "shards_eval")) == len(evals)
    assert sum(r["documents"] for r in _shard_rows(run, "shards_raw")) == len(trains)
    assert set(_ids(run, "buckets")) <= trains


def test_the_eval_blend_draws_only_shards_eval(ablation):
    run = ablation["run"]
    heldout = _blend(ablation, "heldout")
    assert heldout["split"] == "0,100,0"
    eval_prefixes = {r["abs"] for r in _shard_rows(run, "shards_eval")}
    prefixes, weights = heldout["blend"]
    assert prefixes and set(prefixes) <= eval_prefixes
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-6)
    for p in prefixes:
        assert Path(p + ".bin").stat().st_size > 0 and Path(p + ".idx").exists()
    # no training arm draws a held-out shard; raw draws shards_raw, the other two the bucketed shards
    roots = {"raw": run / "shards_raw", "curated": run / "shards", "uniform": run / "shards"}
    for arm in ARMS:
        prefixes = _blend(ablation, arm)["blend"][0]
        assert prefixes and not set(prefixes) & eval_prefixes, arm
        assert all(Path(p).is_relative_to(roots[arm]) for p in prefixes), arm


def test_bucket_epochs_shape_the_curated_blend(ablation):
    run = ablation["run"]
    tokens = {r["abs"]: r["tokens"] for r in _shard_rows(run, "shards")}
    bucket = {r["abs"]: (r["source"], int(r["bucket"])) for r in _shard_rows(run, "shards")}
    cur, uni = _blend(ablation, "curated"), _blend(ablation, "uniform")
    for arm in (cur, uni):
        # shares are tokens / round(budget): they add up to 1 within half a token of the budget
        assert math.isclose(sum(arm["blend"][1]), 1.0, rel_tol=1e-6)
        # dropped buckets (0-4) are listed with no tokens and draw nothing
        low = [r for r in arm["sources"] if r["bucket"] is not None and int(r["bucket"]) <= 4]
        assert low and all(r["dropped"] and r["tokens"] == 0 and r["share"] == 0 for r in low)
        assert all(bucket[p][1] >= 5 for p in arm["blend"][0])
    # the same kept buckets, different proportions
    cur_w, uni_w = dict(zip(*cur["blend"])), dict(zip(*uni["blend"]))
    assert set(cur_w) == set(uni_w)
    assert max(abs(cur_w[p] - uni_w[p]) for p in cur_w) > 0.01
    # uniform: every kept token weighs the same; curated: each token weighs its range's epochs
    per_token = {p: w / tokens[p] for p, w in uni_w.items()}
    assert max(per_token.values()) == pytest.approx(min(per_token.values()), rel=1e-6)
    epochs = {}
    mix_stage = next(s for s in ablation["mix"]["stages"] if s["name"] == "curated")
    for src in mix_stage["sources"]:
        for rng, e in src["buckets"].items():
            lo, _, hi = str(rng).partition("-")
            for b in range(int(lo), int(hi or lo) + 1):
                epochs[(src["source"], b)] = float(e)
    ratio = {p: w / tokens[p] / epochs[bucket[p]] for p, w in cur_w.items()}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-6)
    assert len({epochs[bucket[p]] for p in cur_w}) >= 2  # at least two epoch levels were in play


def test_ablation_table_has_one_row_per_arm_on_one_budget(ablation):
    out = ablation["out"]
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ARMS
    assert [r["data"] for r in rows] == ARMS  # each arm trained on its own blend file
    assert {int(r["tokens"]) for r in rows} == {ITERS * GLOBAL * SEQ}
    assert {int(r["steps"]) for r in rows} == {ITERS}
    for r in rows:
        for col in ("final_train_loss", "final_eval_loss", "best_eval_loss"):
            v = float(r[col])
            assert math.isfinite(v) and 0 < v < 2 * math.log(4000), (r["run"], col, v)
    md = (out / "ablation.md").read_text()
    assert f"{ITERS * GLOBAL * SEQ:,} tokens" in md
    for arm in ARMS:
        assert sum(line.startswith(f"| {arm} ") for line in md.splitlines()) == 1, arm
    # every arm was scored on the same held-out samples, at the same steps
    from arcforge.model.trainlog import read_csv

    evals = {}
    for arm in ARMS:
        log = read_csv(out / "runs" / arm / "train_log.csv")
        evals[arm] = [(e["step"], e["eval_tokens"]) for e in log if e["kind"] == "eval"]
    assert evals["raw"] == evals["curated"] == evals["uniform"]
    assert [s for s, _ in evals["raw"]] == list(range(EVAL_INTERVAL, ITERS + 1, EVAL_INTERVAL))
    assert {t for _, t in evals["raw"]} == {EVAL_ITERS * MICRO * SEQ}
