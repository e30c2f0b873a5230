"""Data ablations: two proxies, one model and token budget, different blends (the clean book
vs a mix dominated by raw, unfiltered Wikipedia XML), scored on one held-out validation set."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from test_train import config, corpus, eval_rows, png_size, train_rows  # noqa: F401 - corpus is a fixture

from arcforge.cli import main
from arcforge.model.ablate import run_configs
from arcforge.runtime.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def ablation_files(corpus, tmp_path: Path, runs: list[dict] | None = None, **extra) -> Path:  # noqa: F811
    base = config(corpus, tmp_path / "unused", **{"train.iters": 24, "batch.warmup_start": None,
                                                  "optimizer.name": "muon", "optimizer.lr": 0.02, "optimizer.min_lr": 2e-3})
    base["data"]["split"] = "90,10,0"  # every run trains on the first 90% of each shard's documents
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(base))
    ab = {
        "name": "clean-vs-raw",
        "output_dir": str(tmp_path / "ablation"),
        "base": "train.yaml",
        "eval": {"data": {"blend": [corpus["books"]], "split": "90,10,0"}, "interval": 8, "iters": 4},
        "runs": runs or [
            {"name": "clean", "data": {"blend": [[corpus["books"], 1.0]]}},
            {"name": "raw", "data": {"blend": [[corpus["wiki"], 0.8], [corpus["books"], 0.2]]}},
        ],
        **extra,
    }
    p = tmp_path / "ablate.yaml"
    p.write_text(yaml.safe_dump(ab))
    return p


def test_ablation_compares_blends_on_one_validation_set(corpus, tmp_path, capsys):  # noqa: F811
    path = ablation_files(corpus, tmp_path)
    assert main(["ablate", str(path), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| clean" in printed and "| raw" in printed
    out = tmp_path / "ablation"
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["clean", "raw"]
    # the same budget for both: 24 steps of 8 sequences of 64 tokens
    assert {int(r["tokens"]) for r in rows} == {24 * 8 * 64} and {int(r["steps"]) for r in rows} == {24}
    for r in rows:
        for col in ("final_train_loss", "final_eval_loss", "best_eval_loss"):
            assert math.isfinite(float(r[col])) and 3 < float(r[col]) < 8
    # each run's own log agrees with the table, and both were scored on the same samples
    evals = {}
    for r in rows:
        log = Path(out / "runs" / r["run"] / "train_log.csv")
        ev = eval_rows(log)
        evals[r["run"]] = ev
        assert [e["step"] for e in ev] == [8, 16, 24]
        assert float(r["final_eval_loss"]) == pytest.approx(ev[-1]["eval_loss"], rel=1e-6)
        assert float(r["final_train_loss"]) == pytest.approx(train_rows(log)[-1]["loss"], rel=1e-6)
    assert [e["eval_tokens"] for e in evals["clean"]] == [e["eval_tokens"] for e in evals["raw"]] == [1024] * 3
    # training on the book itself beats training mostly on raw XML, on held-out book text
    clean, raw = (float(r["best_eval_loss"]) for r in rows)
    assert clean < raw - 0.05, (clean, raw)
    assert float(rows[1]["delta_best_eval"]) == pytest.approx(raw - clean, abs=1e-4)
    md = (out / "ablation.md").read_text()
    assert "| clean **(best)** |" in md and "12,288 tokens" in md
    w, h = png_size(out / "ablation_eval_loss.png")
    assert w > 600 and h > 300 and (out / "ablation_eval_loss.png").stat().st_size > 15_000
    summary = json.loads((out / "ablation.json").read_text())
    assert set(summary["eval_curves"]) == {"clean", "raw"} and len(summary["eval_curves"]["raw"]) == 3


def test_runs_may_differ_only_in_data(corpus, tmp_path):  # noqa: F811
    path = ablation_files(corpus, tmp_path, runs=[
        {"name": "a", "data": {"blend": [corpus["books"]]}},
        {"name": "b", "data": {"blend": [corpus["wiki"]]}, "train": {"iters": 20}},
    ])
    with pytest.raises(ConfigError) as info:
        run_configs(path)
    assert str(info.value) == f"{path}: runs[b].train: unknown key"
    # a run's broken data is reported with the run's name, in one line
    path = ablation_files(corpus, tmp_path, runs=[
        {"name": "a", "data": {"blend": [corpus["books"]]}},
        {"name": "b", "data": {"blend": [corpus["dir"] + "/missing"]}},
    ])
    with pytest.raises(ConfigError) as info:
        run_configs(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path} runs[b]: data.blend: ") and "no Megatron shard" in msg
    # a common validation set is required
    path = ablation_files(corpus, tmp_path, eval={"interval": 5})
    with pytest.raises(ConfigError, match=r"eval\.data: required"):
        run_configs(path)
    _, runs = run_configs(ablation_files(corpus, tmp_path))
    (_, a), (_, b) = runs
    assert a.model_dump(exclude={"data", "name", "output_dir"}) == b.model_dump(exclude={"data", "name", "output_dir"})
