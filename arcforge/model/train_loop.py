"""The one training loop of ``arcforge train`` (both devices) and what it needs around it.

``Trainer`` owns the step plan (``step_batch_sizes``: batch-size warm-up), the schedules
(``lr_at``, ``mtp_weight_at``, ``bias_rate_at``: pure functions of the step / tokens seen,
so a resumed run recomputes them exactly), the data, the counters, checkpoints and RNG
states, evaluation and checkpoint timing, the CSV / JSONL / plot logs and the router-load
statistics. A ``backend.Backend`` (CPU or megatron GPU) owns the process set-up, the model,
the optimizer and one optimizer step.

Reproducibility: the data order depends only on the number of samples consumed (sample ``i``
of the run is ``dataset[i]``), and checkpoints hold the model (with the routers' expert
bias), the optimizer state, the step, the consumed samples and every RNG state, so a resumed
run continues the uninterrupted run's loss curve (tests/test_train.py checks it).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcforge.model.backend import Backend, StepRates, get_backend
from arcforge.model.checkpoint import expert_kind, list_checkpoints, rng_state, set_rng_state
from arcforge.model.train_config import TrainConfig, load_train_config
from arcforge.runtime.config import ConfigError

TRAINER_FORMAT = "arcforge.train/1"

# ---- the step plan ------------------------------------------------------------------------


def step_batch_sizes(cfg: TrainConfig, dp: int = 1) -> list[int]:
    """Sequences per optimizer step for every step of the run (batch warm-up included)."""
    from arcforge.model.schedule import batch_size_at

    b = cfg.batch
    seq = cfg.model.seq_length
    inc = b.micro_batch_size * dp
    start = b.warmup_start or b.global_batch_size
    sizes: list[int] = []
    tokens = 0
    limit = 50_000_000
    while True:
        if cfg.train.iters is not None and len(sizes) >= cfg.train.iters:
            break
        if cfg.train.tokens is not None and tokens >= cfg.train.tokens:
            break
        bs = batch_size_at(tokens, start=start, end=b.global_batch_size, ramp_tokens=b.warmup_tokens, increment=inc)
        bs = max(inc, (bs // inc) * inc)
        sizes.append(bs)
        tokens += bs * seq
        if len(sizes) > limit:
            raise ConfigError(f"{cfg._path}: train.tokens: more than {limit:,} steps; raise the batch size")
    return sizes


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    from arcforge.model.schedule import cosine_lr

    o = cfg.optimizer
    return cosine_lr(step, max_lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_iters, total_steps=o.decay_iters or total_steps)


def mtp_weight_at(cfg: TrainConfig, arch, tokens: int) -> float:
    if cfg.mtp.switch_tokens is not None and tokens >= cfg.mtp.switch_tokens:
        return cfg.mtp.later_weight
    return arch.mtp_loss_weight


def bias_rate_at(cfg: TrainConfig, arch, tokens: int) -> float:
    if cfg.balance.bias_update_until_tokens is not None and tokens >= cfg.balance.bias_update_until_tokens:
        return 0.0
    return arch.bias_update_rate


# the sections whose change makes a checkpoint's trajectory meaningless to continue
_RESUME_KEYS = ("model", "data", "batch", "seed")
# (recompute and compile, with its options, change memory and time, not the trajectory; older
# checkpoints do not name them)
_RESUME_IGNORED = {"data": ("cache_dir", "check_token_ids", "allow_stale"), "model": ("recompute", "compile", "compile_options")}


def _resume_view(config: dict[str, Any], key: str) -> Any:
    v = config.get(key)
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if k not in _RESUME_IGNORED.get(key, ())}
    return v


# ---- the trainer --------------------------------------------------------------------------


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    tokens: int
    final_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    tokens_per_s: float | None  # mean over the steps of this invocation after the first
    csv: str
    plot: str | None
    checkpoint: str | None
    resumed_from: int | None = None
    eval_curve: list[tuple[int, float]] = field(default_factory=list)


class Trainer:
    """Builds the model, data and optimizer of a ``TrainConfig`` and runs its steps."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = True, verbose: bool | None = None,
                 backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.verbose = (cfg.log.print_interval > 0) if verbose is None else verbose
        self.gpu = cfg.device == "cuda"
        self.backend = backend or get_backend(cfg.device)
        self.arch = cfg.arch()
        self.rank, self.world, self.dp = 0, 1, 1

    def say(self, msg: str) -> None:
        if self.verbose and self.rank == 0:
            print(msg, flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        import numpy as np

        from arcforge.model.train_data import build_batches, check_data_files
        from arcforge.model.trainlog import RouterLoad

        cfg = self.cfg
        self.data_plan = cfg._data_plan or check_data_files(cfg, cfg._path)
        self.backend.init(self)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        self.plan = step_batch_sizes(cfg, self.dp)
        self.total_steps = len(self.plan)
        self.total_samples = sum(self.plan)
        self.eval_samples = cfg.eval.iters * cfg.batch.micro_batch_size * self.dp
        data = build_batches(cfg, self.data_plan, self.arch.vocab_size, train_samples=self.total_samples,
                             eval_samples=self.eval_samples, say=self.say)
        self.train_batches, self.eval_batches, self.eval_dropped = data.train, data.eval, data.eval_dropped
        self.backend.build(self)
        self.router_load = RouterLoad(self.model)
        self.step = 0
        self.consumed = 0
        self.tokens = 0
        self.resumed_from = None
        if self.resume:
            self._load_latest()
        else:  # starting over: older checkpoints would otherwise be taken for this run's
            for _, old in list_checkpoints(cfg.checkpoint_dir, self._ckpt_rank()):
                old.unlink(missing_ok=True)

    def _ckpt_rank(self) -> int | None:
        return None if self.world == 1 else self.rank

    def _config_dump(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def _ckpt_path(self, step: int) -> Path:
        name = f"step_{step:07d}.pt" if self.world == 1 else f"step_{step:07d}-rank{self.rank:05d}.pt"
        return Path(self.cfg.checkpoint_dir) / name

    def _load_latest(self) -> None:
        from arcforge.model.checkpoint import load_checkpoint, load_model_state

        found = list_checkpoints(self.cfg.checkpoint_dir, self._ckpt_rank())
        if not found:
            return
        step, path = found[-1]
        state, arch, extra = load_checkpoint(path)
        if extra.get("trainer") != TRAINER_FORMAT:
            raise ConfigError(f"{self.cfg._path}: checkpoint.dir: {path} was not written by arcforge train")
        saved = extra.get("config", {})
        now = self._config_dump()
        for k in _RESUME_KEYS:
            if _resume_view(saved, k) != _resume_view(now, k):
                raise ConfigError(
                    f"{self.cfg._path}: {k}: differs from the checkpoint {path.name} in {self.cfg.checkpoint_dir}; "
                    "use --no-resume (or another checkpoint.dir) to start over"
                )
        if arch != self.arch:
            raise ConfigError(f"{self.cfg._path}: model: the checkpoint {path.name} holds a different architecture")
        have, want = expert_kind(state.keys()), expert_kind(_unwrap(self.model).state_dict().keys())
        if have != want:  # grouped and sequential experts name their weights differently
            raise ConfigError(f"{self.cfg._path}: kernels.experts: the checkpoint {path.name} holds {have} experts and "
                              f"this run builds {want} ones; set kernels.experts: {have}, or use --no-resume to start over")
        load_model_state(_unwrap(self.model), state)
        self.backend.load_optimizer(self, extra["optimizer"])
        set_rng_state(extra["rng"])
        self.step = int(extra["step"])
        self.consumed = int(extra["consumed_samples"])
        self.tokens = int(extra["tokens"])
        self.resumed_from = self.step
        self.say(f"resumed from {path} (step {self.step}, {self.tokens:,} tokens)")

    def save(self) -> Path:
        from arcforge.model.checkpoint import save_checkpoint

        extra = {
            "trainer": TRAINER_FORMAT,
            "step": self.step,
            "consumed_samples": self.consumed,
            "tokens": self.tokens,
            "optimizer": self.backend.optimizer_state(self),
            "rng": rng_state(),
            "config": self._config_dump(),
        }
        path = save_checkpoint(self._ckpt_path(self.step), _unwrap(self.model), self.arch, extra)
        for _, old in list_checkpoints(self.cfg.checkpoint_dir, self._ckpt_rank())[: -self.cfg.checkpoint.keep]:
            old.unlink(missing_ok=True)
        return path

    # -- steps -------------------------------------------------------------------------------

    def _set_schedules(self) -> StepRates:
        lr = lr_at(self.cfg, self.step, self.total_steps)
        factor = lr / self.cfg.optimizer.lr
        for g in self.optimizer.param_groups:
            g["lr"] = g.get("base_lr", self.cfg.optimizer.lr) * factor
        mtp_w = mtp_weight_at(self.cfg, self.arch, self.tokens)
        rate = bias_rate_at(self.cfg, self.arch, self.tokens)
        config = _unwrap(self.model).config
        config.mtp_loss_scaling_factor = mtp_w  # megatron reads it at every forward
        config.moe_router_bias_update_rate = rate  # for readers; the backends pass the rate explicitly
        return StepRates(lr, mtp_w, rate)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (the backend's), with this step's schedules."""
        rates = self._set_schedules()
        row = self.backend.train_step(self, self.plan[self.step], rates)
        mtp = bool(self.arch.mtp_layers)
        row.update(lr=rates.lr, mtp_weight=rates.mtp_weight if mtp else None, bias_update_rate=rates.bias_rate,
                   tokens_per_s=row["batch_size"] * self.cfg.model.seq_length / row["step_seconds"])
        if not mtp:
            row["mtp_loss"] = None
        return row

    def evaluate(self) -> tuple[float, int]:
        """Mean main-LM loss per target token over the same ``eval.iters`` micro-batches."""
        return self.backend.evaluate(self)

    def advance(self, log) -> dict[str, Any]:
        """One optimizer step with its bookkeeping: counters, router load, CSV/JSONL rows,
        progress line (evaluation and checkpoints are ``run``'s)."""
        from arcforge.model.trainlog import balance_stats

        cfg = self.cfg
        row = self.train_step()
        self.consumed += row["batch_size"]
        self.tokens += row["batch_size"] * cfg.model.seq_length
        self.step += 1
        layers = self.router_load.take()
        row.update(step=self.step, tokens=self.tokens, samples=self.consumed, **balance_stats(layers))
        if log is not None:
            log.train_row(row)
            log.router_row(self.step, self.tokens, layers)
        pi = cfg.log.print_interval
        if pi and (self.step % pi == 0 or self.step == 1):
            self.say(f"step {self.step}/{self.total_steps} tokens {self.tokens:,} loss {row['loss']:.4f} "
                     f"lr {row['lr']:.3g} grad {row['grad_norm']:.3g} {row['tokens_per_s']:,.0f} tok/s "
                     f"balance {row['balance_max_mean']:.2f}")
        return row

    def run(self, max_steps: int | None = None) -> TrainResult:
        """Train to the end of the plan (or ``max_steps`` more steps), then checkpoint."""
        from arcforge.model.trainlog import TrainLog, plot_curves, read_csv

        cfg = self.cfg
        if not hasattr(self, "model"):
            self.setup()
        log = TrainLog(cfg.output_dir, resume_step=self.step if self.resumed_from is not None else None) if self.rank == 0 else None
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        speeds = []
        last_eval_step = None
        ckpt_path = None
        self.say(f"{cfg.name}: {self.arch.name} ({self.arch.total_params(include_mtp=True):,} params), "
                 f"{self.total_steps} steps, {sum(self.plan) * cfg.model.seq_length:,} tokens, device {cfg.device}")
        try:
            while self.step < stop:
                row = self.advance(log)
                speeds.append(row["tokens_per_s"])
                at_end = self.step == self.total_steps
                if self.eval_batches is not None and ((cfg.eval.interval and self.step % cfg.eval.interval == 0) or at_end):
                    loss, n = self.evaluate()
                    last_eval_step = self.step
                    if log is not None:
                        log.eval_row(self.step, self.tokens, self.consumed, loss, n)
                    self.say(f"step {self.step}: eval loss {loss:.4f} ({n:,} tokens)")
                if (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0) or self.step == stop:
                    ckpt_path = self.save()
                    if log is not None and cfg.log.plot:
                        plot_curves(log.csv_path, log.plot_path, title=f"{cfg.name} ({self.arch.name})")
        finally:
            if log is not None:
                log.close()
        # a run resumed at its end: make sure the final evaluation and the plot exist
        from arcforge.model.trainlog import CSV_NAME, PLOT_NAME

        csv_path = Path(cfg.output_dir) / CSV_NAME
        png = Path(cfg.output_dir) / PLOT_NAME
        rows = read_csv(csv_path) if csv_path.exists() else []
        if (self.rank == 0 and self.step == self.total_steps and self.eval_batches is not None and last_eval_step is None
                and not any(r["kind"] == "eval" and r["step"] == self.step for r in rows)):
            loss, n = self.evaluate()
            with _Appender(cfg.output_dir) as lg:
                lg.eval_row(self.step, self.tokens, self.consumed, loss, n)
            rows = read_csv(csv_path)
        if self.rank == 0 and cfg.log.plot and rows and (not png.exists() or ckpt_path is None):
            plot_curves(csv_path, png, title=f"{cfg.name} ({self.arch.name})")
        train_rows = [r for r in rows if r["kind"] == "train"]
        eval_rows = [r for r in rows if r["kind"] == "eval"]
        if ckpt_path is None:
            found = list_checkpoints(cfg.checkpoint_dir, self._ckpt_rank())
            ckpt_path = found[-1][1] if found else None
        return TrainResult(
            output_dir=cfg.output_dir,
            steps=self.step,
            tokens=self.tokens,
            final_loss=train_rows[-1]["loss"] if train_rows else None,
            final_eval_loss=eval_rows[-1]["eval_loss"] if eval_rows else None,
            best_eval_loss=min(r["eval_loss"] for r in eval_rows) if eval_rows else None,
            tokens_per_s=(sum(speeds[1:]) / len(speeds[1:])) if len(speeds) > 1 else (speeds[0] if speeds else None),
            csv=str(csv_path),
            plot=str(png) if png.exists() else None,
            checkpoint=str(ckpt_path) if ckpt_path else None,
            resumed_from=self.resumed_from,
            eval_curve=[(r["step"], r["eval_loss"]) for r in eval_rows],
        )

    def close(self) -> None:
        if hasattr(self, "router_load"):
            self.router_load.remove()
        self.backend.close(self)


class _Appender:
    """Appends eval rows to an existing ``train_log.csv`` (for a run resumed at its end)."""

    def __init__(self, out_dir: str) -> None:
        from arcforge.model.trainlog import TrainLog

        self._log = TrainLog(out_dir, resume_step=10**12)

    def __enter__(self):
        return self._log

    def __exit__(self, *exc: Any) -> None:
        self._log.close()


def _unwrap(model):
    return getattr(model, "module", model)


@contextmanager
def started(cfg: TrainConfig, *, resume: bool, verbose: bool | None) -> Iterator[Trainer]:
    """A set-up ``Trainer`` with the config's CPU thread count; closed (and threads restored) after."""
    import torch

    threads = torch.get_num_threads()
    if cfg.threads is not None and cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg, resume=resume, verbose=verbose)
    try:
        trainer.setup()
        yield trainer
    finally:
        trainer.close()
        torch.set_num_threads(threads)


def train(cfg: TrainConfig | str | os.PathLike, *, resume: bool = True, max_steps: int | None = None,
          verbose: bool | None = None) -> TrainResult:
    """Train a config (or a YAML path); resume from the latest checkpoint unless ``resume=False``."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_train_config(cfg)
    with started(cfg, resume=resume, verbose=verbose) as trainer:
        return trainer.run(max_steps=max_steps)


