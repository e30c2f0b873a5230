"""The small protocol between the one training loop (``train_loop.Trainer``) and a device backend.

The loop owns everything that is the same on every device: the config, the step plan and the
schedules, the data (``trainer.train_batches`` / ``trainer.eval_batches``), the counters,
checkpoints and RNG states, logging and router-load statistics. A backend owns the process
set-up, the model and optimizer, and one optimizer step:

* ``init(trainer)``: process groups and devices; sets ``trainer.rank``, ``trainer.world`` and
  ``trainer.dp`` (data-parallel size), before the step plan is made.
* ``build(trainer)``: sets ``trainer.model`` (what checkpoints hold, possibly wrapped: the loop
  unwraps ``.module``) and ``trainer.optimizer`` (``param_groups`` with ``base_lr``, which the
  loop scales by the LR schedule).
* ``train_step(trainer, batch_size, rates)``: one optimizer step over samples
  ``trainer.consumed ...`` (gradient accumulation, clipping, the optimizer, then the
  loss-free balancing update at ``rates.bias_rate`` with ``megatron_model.expert_bias_update``),
  returning the row: ``batch_size``, ``micro_batches``, ``loss``, ``mtp_loss``, ``aux_loss``
  (``losses.step_losses``), ``grad_norm``, ``step_seconds``; the loop adds the rest.
* ``evaluate(trainer) -> (mean main-LM loss per target token, target tokens)`` on the first
  ``eval.iters`` micro-batches of ``trainer.eval_batches`` (per data-parallel rank).
* ``optimizer_state(trainer)`` / ``load_optimizer(trainer, state)``: for checkpoints.
* ``close(trainer)``: release what ``init``/``build`` took (may do nothing).

Two implementations: ``backend_cpu.CpuBackend`` (tested) and ``backend_megatron.MegatronBackend``
(CUDA; see docs/train.md for what has and has not run on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from arcforge.model.train_loop import Trainer


@dataclass(frozen=True)
class StepRates:
    """The schedules' values for one step (set on the model config by the loop already)."""

    lr: float
    mtp_weight: float
    bias_rate: float


@runtime_checkable
class Backend(Protocol):
    name: str

    def init(self, trainer: Trainer) -> None: ...

    def build(self, trainer: Trainer) -> None: ...

    def train_step(self, trainer: Trainer, batch_size: int, rates: StepRates) -> dict[str, Any]: ...

    def evaluate(self, trainer: Trainer) -> tuple[float, int]: ...

    def optimizer_state(self, trainer: Trainer) -> dict[str, Any]: ...

    def load_optimizer(self, trainer: Trainer, state: dict[str, Any]) -> None: ...

    def close(self, trainer: Trainer) -> None: ...


def get_backend(device: str) -> Backend:
    """``cpu`` -> ``CpuBackend``; ``cuda`` -> ``MegatronBackend``."""
    if device == "cpu":
        from arcforge.model.backend_cpu import CpuBackend

        return CpuBackend()
    if device == "cuda":
        from arcforge.model.backend_megatron import MegatronBackend

        return MegatronBackend()
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
