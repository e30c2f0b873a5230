"""``arcforge ablate``: train the same proxy on different data blends, compare on one
validation set.

An ablation YAML names a base training config and two or more runs that differ **only in
their data** (``runs[].data`` replaces the base's blend; everything else, model, batch plan,
token budget, optimizer, seed, is shared). Every run is evaluated on the same validation set
(``eval.data``, required), so their validation losses are comparable::

    name: filter-ablation
    output_dir: runs/ablate-tiny
    base: train.tiny.yaml           # relative to this file
    overrides: {train: {iters: 30}} # deep-merged into the base for every run (optional)
    eval:                           # the common validation set and schedule
      data: {blend_file: runs/demo/mixture/pretrain_1_general.blend.json, split: "99,1,0"}
      interval: 10
      iters: 4
    runs:
      - name: filtered
        data: {blend_file: ...}
      - name: unfiltered
        data: {blend: [[runs/.../web-00000, 1.0], ...]}

Writes, in ``output_dir``: ``runs/<name>/`` (each run's trainer output: CSV, plot,
checkpoints; a re-run resumes or skips finished runs), ``ablation.md`` and ``ablation.csv``
(final train loss, final and best validation loss, tokens, steps), ``ablation.json`` and
``ablation_eval_loss.png`` (validation-loss curves against tokens).
"""

from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from arcforge.model.train import TrainResult, parse_train_config, train
from arcforge.runtime.config import ConfigError, read_yaml, validate_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AblateRun(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: dict[str, Any] = Field(min_length=1)  # replaces the base's blend / blend_file; other data keys merge


class AblateConfig(_Strict):
    name: str = Field("ablation", pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str
    base: str  # a train config, relative to this file's directory
    overrides: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any]  # an eval section with data: the common validation set
    runs: list[AblateRun] = Field(min_length=2)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def run_configs(path: str | os.PathLike) -> tuple[AblateConfig, list[tuple[str, Any]]]:
    """The ablation config and each run's validated ``TrainConfig`` (all checked before any
    training starts; one-line ``ConfigError``)."""
    path = str(path)
    data = read_yaml(path)
    cfg = validate_mapping(AblateConfig, data, path, "output_dir, base, eval, runs")
    names = [r.name for r in cfg.runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: runs: run names must be unique")
    if "data" not in cfg.eval:
        raise ConfigError(f"{path}: eval.data: required: the common validation set every run is scored on")
    base_path = cfg.base if os.path.isabs(cfg.base) else os.path.join(os.path.dirname(path) or ".", cfg.base)
    base = read_yaml(base_path)
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path}: expected a training config mapping")
    for k in ("eval", "output_dir", "name"):
        if k in cfg.overrides:
            raise ConfigError(f"{path}: overrides.{k}: set by the ablation itself")
    base = _merge(base, cfg.overrides)
    out = []
    for run in cfg.runs:
        d = copy.deepcopy(base)
        run_data = dict(run.data)
        data_sec = dict(d.get("data") or {})
        if "blend" in run_data or "blend_file" in run_data:
            data_sec.pop("blend", None)
            data_sec.pop("blend_file", None)
        data_sec.update(run_data)
        d["data"] = data_sec
        d["eval"] = copy.deepcopy(cfg.eval)
        d["name"] = f"{cfg.name}.{run.name}"
        d["output_dir"] = os.path.join(cfg.output_dir, "runs", run.name)
        ck = dict(d.get("checkpoint") or {})
        ck["dir"] = None
        d["checkpoint"] = ck
        data_sec.setdefault("cache_dir", os.path.join(cfg.output_dir, "data_cache"))
        out.append((run.name, parse_train_config(d, f"{path} runs[{run.name}]")))
    return cfg, out


def _describe(tc) -> str:
    if tc.data.blend_file:
        return os.path.basename(tc.data.blend_file).removesuffix(".json").removesuffix(".blend")
    items = [(x, None) if isinstance(x, str) else (x[0], x[1]) for x in tc.data.blend or []]
    total = sum(w if w is not None else 1.0 for _, w in items)
    names = [os.path.basename(p) + (f" {(w if w is not None else 1.0) / total:.0%}" if len(items) > 1 else "") for p, w in items]
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def write_report(cfg: AblateConfig, rows: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]],
                 train_curves: dict[str, list[tuple[int, float]]]) -> list[Path]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["run", "data", "tokens", "steps", "final_train_loss", "final_eval_loss", "best_eval_loss", "delta_best_eval"]
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(r[k], 6) if isinstance(r[k], float) else r[k]) for k in cols})
    best = min(r["best_eval_loss"] for r in rows)
    lines = [
        f"# ablation {cfg.name}",
        "",
        f"Same model and token budget ({rows[0]['tokens']:,} tokens, {rows[0]['steps']} steps) for every run; "
        "validation loss on the common validation set (`eval.data`), nats per token.",
        "",
        "| run | data | tokens | final train loss | final val loss | best val loss | Δ best val vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **(best)**" if r["best_eval_loss"] == best else ""
        lines.append(
            f"| {r['run']}{mark} | {r['data']} | {r['tokens']:,} | {r['final_train_loss']:.4f} | "
            f"{r['final_eval_loss']:.4f} | {r['best_eval_loss']:.4f} | {r['delta_best_eval']:+.4f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps({"name": cfg.name, "runs": rows, "eval_curves": curves}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, pts in curves.items():
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    axes[0].set_title("validation loss (common validation set)")
    for name, pts in train_curves.items():
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], label=name, alpha=0.8)
    axes[1].set_title("train loss (each run's own data)")
    for a in axes:
        a.set_xlabel("tokens")
        a.set_ylabel("cross-entropy (nats)")
        a.legend()
    fig.suptitle(f"ablation {cfg.name}")
    png = out / "ablation_eval_loss.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [out / "ablation.md", out / "ablation.csv", out / "ablation.json", png]


def ablate(path: str | os.PathLike, *, resume: bool = True, verbose: bool | None = None) -> dict[str, Any]:
    """Train every run of an ablation config, then write the comparison table and plot."""
    from arcforge.model.trainlog import read_csv

    cfg, runs = run_configs(path)
    results: dict[str, TrainResult] = {}
    for name, tc in runs:
        if verbose is not False:
            print(f"== ablation {cfg.name}: run {name} ({_describe(tc)})", flush=True)
        results[name] = train(tc, resume=resume, verbose=verbose)
    tokens = {r.tokens for r in results.values()}
    if len(tokens) != 1:
        raise RuntimeError(f"ablation runs ended with different token counts: { {n: r.tokens for n, r in results.items()} }")
    rows, curves, train_curves = [], {}, {}
    first = None
    for name, tc in runs:
        r = results[name]
        log = read_csv(r.csv)
        curves[name] = [(x["tokens"], x["eval_loss"]) for x in log if x["kind"] == "eval"]
        train_curves[name] = [(x["tokens"], x["loss"]) for x in log if x["kind"] == "train"]
        if r.best_eval_loss is None:
            raise RuntimeError(f"run {name} logged no validation loss")
        first = r.best_eval_loss if first is None else first
        rows.append({
            "run": name, "data": _describe(tc), "tokens": r.tokens, "steps": r.steps,
            "final_train_loss": r.final_loss, "final_eval_loss": r.final_eval_loss,
            "best_eval_loss": r.best_eval_loss, "delta_best_eval": r.best_eval_loss - first,
            "output_dir": r.output_dir,
        })
    files = write_report(cfg, rows, curves, train_curves)
    return {"config": cfg, "rows": rows, "files": [str(f) for f in files], "results": results}


__all__ = ["AblateConfig", "ablate", "run_configs", "write_report"]
