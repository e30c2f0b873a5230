"""The trainer's logs: a CSV row per step (and per evaluation), router load per expert as
JSON lines, and a PNG of the curves.

Files in the run's output directory:

* ``train_log.csv``: ``kind=train`` rows (one per optimizer step) and ``kind=eval`` rows
  (one per evaluation); the columns are ``COLUMNS``. Eval rows fill ``step``, ``tokens``,
  ``samples``, ``eval_loss`` and ``eval_tokens``; the other cells are empty.
* ``router_load.jsonl``: per step, the tokens each routed expert of every MoE layer received
  over the step's micro-batches (``{"step", "tokens", "layers": {router name: [counts]}}``).
* ``train_curves.png``: train and eval loss, learning rate, router balance, MTP loss.

Balance numbers (per MoE layer, from the counts ``c`` of its ``E`` experts):
``max/mean = max(c) / mean(c)`` (1 = perfectly balanced, ``E / top_k`` = every token on
the same experts) and the coefficient of variation ``std(c) / mean(c)`` (0 = balanced). The
CSV holds their mean over the MoE layers (MTP layer included) and the worst layer's max/mean.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

COLUMNS = [
    "kind",
    "step",
    "tokens",
    "samples",
    "batch_size",
    "micro_batches",
    "lr",
    "loss",
    "mtp_loss",
    "aux_loss",
    "grad_norm",
    "tokens_per_s",
    "step_seconds",
    "mtp_weight",
    "bias_update_rate",
    "balance_max_mean",
    "balance_max_mean_worst",
    "balance_cv",
    "eval_loss",
    "eval_tokens",
]
CSV_NAME = "train_log.csv"
ROUTER_NAME = "router_load.jsonl"
PLOT_NAME = "train_curves.png"


ROUTER_LOAD_BUFFER = "arcforge_router_load"


def _count_routed(module, args, output) -> None:
    """Forward hook of every ``TopKRouter``: add this forward's tokens per expert to the
    router's own count buffer. One function for all routers and no per-router Python
    constant, so that ``model.compile: layers`` traces the hook into one graph shared by the
    MoE layers (a closure over the router's name made dynamo recompile every layer)."""
    if module.training and torch.is_grad_enabled():
        getattr(module, ROUTER_LOAD_BUFFER).add_(output[1].detach().sum(dim=0).to(torch.long))


class RouterLoad:
    """Counts the tokens routed to each expert by every MoE router during training forwards.

    A forward hook on each ``TopKRouter`` adds ``routing_map.sum(0)`` (tokens per expert) to a
    non-persistent buffer of that router (on the router's device: no sync per forward; not in
    checkpoints) when the model is training with grad enabled, so evaluation does not count,
    and a router runs once with grad per step: in the forward, or (full recompute: the forward
    runs without grad) in the backward's recomputation.
    Independent of the expert-bias machinery, so it works with ``expert_bias`` off too.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        self.routers: dict[str, torch.nn.Module] = {}
        self._handles = []
        for name, mod in model.named_modules():
            if isinstance(mod, TopKRouter):
                # strip wrapper prefixes ("module.") so names match the checkpoint's
                key = name.removeprefix("module.")
                zeros = torch.zeros(mod.config.num_moe_experts, dtype=torch.long, device=mod.weight.device)
                mod.register_buffer(ROUTER_LOAD_BUFFER, zeros, persistent=False)
                self.routers[key] = mod
                self._handles.append(mod.register_forward_hook(_count_routed))

    def take(self) -> dict[str, list[int]]:
        """The counts since the last call (then zeroed); one device-to-host read for all routers."""
        if not self.routers:
            return {}
        counts = [getattr(m, ROUTER_LOAD_BUFFER) for m in self.routers.values()]
        values = torch.stack(counts).tolist()
        torch._foreach_zero_(counts)
        return {k: [int(x) for x in row] for k, row in zip(self.routers, values)}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def balance_stats(layers: dict[str, list[int]]) -> dict[str, float]:
    """Mean over layers of max/mean and CV, and the worst layer's max/mean (NaN without MoE)."""
    ratios, cvs = [], []
    for counts in layers.values():
        t = torch.tensor(counts, dtype=torch.float64)
        mean = float(t.mean())
        if mean <= 0:
            continue
        ratios.append(float(t.max()) / mean)
        cvs.append(float(t.std(unbiased=False)) / mean)
    if not ratios:
        return {"balance_max_mean": math.nan, "balance_max_mean_worst": math.nan, "balance_cv": math.nan}
    return {
        "balance_max_mean": sum(ratios) / len(ratios),
        "balance_max_mean_worst": max(ratios),
        "balance_cv": sum(cvs) / len(cvs),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.7g}"
    return str(v)


class TrainLog:
    """Appends rows to ``train_log.csv`` and ``router_load.jsonl`` in ``out_dir``.

    ``resume_step``: rows after that step (written by a run that stopped after its last
    checkpoint) are dropped, so a resumed run continues the files exactly where its
    checkpoint left them. ``None`` starts fresh files.
    """

    def __init__(self, out_dir: str | os.PathLike, *, resume_step: int | None = None) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / CSV_NAME
        self.router_path = self.dir / ROUTER_NAME
        self.plot_path = self.dir / PLOT_NAME
        if resume_step is None:
            for p in (self.csv_path, self.router_path):
                if p.exists():
                    p.unlink()
        else:
            self._truncate(resume_step)
        new = not self.csv_path.exists()
        self._csv = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=COLUMNS)
        if new:
            self._writer.writeheader()
            self._csv.flush()
        self._router = open(self.router_path, "a")

    def _truncate(self, step: int) -> None:
        if self.csv_path.exists():
            rows = read_csv(self.csv_path)
            keep = [r for r in rows if r["step"] is not None and r["step"] <= step]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                for r in keep:
                    w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
        if self.router_path.exists():
            lines = [ln for ln in self.router_path.read_text().splitlines() if ln.strip()]
            keep_lines = [ln for ln in lines if json.loads(ln)["step"] <= step]
            self.router_path.write_text("".join(ln + "\n" for ln in keep_lines))

    def train_row(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS} | {"kind": "train"})
        self._csv.flush()

    def eval_row(self, step: int, tokens: int, samples: int, loss: float, eval_tokens: int) -> None:
        row = {"step": step, "tokens": tokens, "samples": samples, "eval_loss": loss, "eval_tokens": eval_tokens}
        self._writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS} | {"kind": "eval"})
        self._csv.flush()

    def router_row(self, step: int, tokens: int, layers: dict[str, list[int]]) -> None:
        self._router.write(json.dumps({"step": step, "tokens": tokens, "layers": layers}) + "\n")
        self._router.flush()

    def close(self) -> None:
        self._csv.close()
        self._router.close()


def _num(v: str) -> float | int | str | None:
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() and v.lower() != "nan" else f


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``train_log.csv`` with numbers parsed (empty cells are ``None``)."""
    with open(path, newline="") as f:
        return [{k: (v if k == "kind" else _num(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """Four panels against tokens: train/eval loss (and MTP loss), learning rate, router
    balance (max/mean and CV), gradient norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval" and r["eval_loss"] is not None]

    def col(rs: Iterable[dict[str, Any]], k: str) -> list[float]:
        return [math.nan if r[k] is None else float(r[k]) for r in rs]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    x = col(train, "tokens")
    ax = axes[0][0]
    ax.plot(x, col(train, "loss"), label="train loss (main LM)")
    if any(r["mtp_loss"] is not None for r in train):
        ax.plot(x, col(train, "mtp_loss"), label="MTP loss", alpha=0.6)
    if evals:
        ax.plot(col(evals, "tokens"), col(evals, "eval_loss"), "o-", label="eval loss")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    ax = axes[0][1]
    ax.plot(x, col(train, "lr"))
    ax.set_ylabel("learning rate")
    ax = axes[1][0]
    ax.plot(x, col(train, "balance_max_mean"), label="max/mean (mean over layers)")
    ax.plot(x, col(train, "balance_max_mean_worst"), label="max/mean (worst layer)", alpha=0.6)
    ax.plot(x, col(train, "balance_cv"), label="CV (mean over layers)")
    ax.set_ylabel("router load balance")
    ax.legend()
    ax = axes[1][1]
    ax.plot(x, col(train, "grad_norm"))
    ax.set_ylabel("gradient norm (before clipping)")
    for a in axes[1]:
        a.set_xlabel("tokens")
    for a in axes[0]:
        a.set_xlabel("tokens")
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


__all__ = ["COLUMNS", "RouterLoad", "TrainLog", "balance_stats", "plot_curves", "read_csv"]
