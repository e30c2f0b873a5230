"""The per-step loss columns of ``train_log.csv``, computed the same way on both backends.

Per micro-batch the model yields three numbers (``megatron_model.lm_loss`` on CPU, megatron's
schedules and loss trackers on GPU):

* the main LM loss: masked mean cross-entropy over the micro-batch's target tokens;
* the MTP loss per depth: masked mean cross-entropy of that depth (unweighted);
* the aux balance loss: the unweighted sequence-level aux loss, summed over MoE layers (and
  over aux-loss kinds, if several are on).

A step's row is the mean over its micro-batches and over the data-parallel ranks (each rank
runs the same number of micro-batches), so ``step_losses`` takes *sums*: over the step's
micro-batches, then (after an all-reduce SUM) over the DP ranks, and divides by
``micro_batches * dp_size``. This is also what megatron's trackers hold once read correctly:
``MTPLossLoggingHelper.tracker["values"]`` and ``get_moe_layer_wise_logging_tracker()[name]
["values"]`` *add* every micro-batch's value and are never reset by megatron-core itself (its
``training.py`` does that when logging), so a reader must reset them once per step
(``reset_loss_trackers``) and divide by the number of micro-batches. The GPU path did neither
(issue 12, finding 3: MTP loss 8.4 per micro-batch logged as 33.7, then growing every step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def step_losses(lm_sum: float, mtp_sums: Sequence[float], aux_sum: float | None, *, micro_batches: int,
                dp_size: int = 1) -> dict[str, float | None]:
    """The row values ``loss``, ``mtp_loss``, ``aux_loss`` of one optimizer step.

    ``lm_sum``: per-micro-batch main-LM losses summed over the step's micro-batches and DP ranks;
    ``mtp_sums``: the same per MTP depth (empty: no MTP, ``mtp_loss`` is None); ``aux_sum``: the
    per-micro-batch aux losses (summed over layers) summed the same way (None: not tracked).
    Each becomes a mean over ``micro_batches * dp_size`` micro-batches; ``mtp_loss`` is then
    the mean over depths.
    """
    if micro_batches <= 0 or dp_size <= 0:
        raise ValueError(f"micro_batches and dp_size must be positive (got {micro_batches}, {dp_size})")
    n = micro_batches * dp_size
    mtp = [float(v) / n for v in mtp_sums]
    return {
        "loss": float(lm_sum) / n,
        "mtp_loss": sum(mtp) / len(mtp) if mtp else None,
        "aux_loss": None if aux_sum is None else float(aux_sum) / n,
    }


@dataclass
class LossSums:
    """Accumulates per-micro-batch values over one step (one rank); ``row`` reduces them."""

    lm: float = 0.0
    mtp: list[float] = field(default_factory=list)
    aux: float = 0.0
    micro_batches: int = 0

    def add(self, lm: float, mtp: Sequence[float] = (), aux: Mapping[str, float] | float = 0.0) -> None:
        if self.micro_batches and len(mtp) != len(self.mtp):
            raise ValueError(f"{len(mtp)} MTP depths in this micro-batch, {len(self.mtp)} before")
        if not self.mtp:
            self.mtp = [0.0] * len(mtp)
        self.lm += float(lm)
        self.mtp = [a + float(b) for a, b in zip(self.mtp, mtp)]
        self.aux += float(sum(aux.values()) if isinstance(aux, Mapping) else aux)
        self.micro_batches += 1

    def row(self, dp_size: int = 1) -> dict[str, float | None]:
        return step_losses(self.lm, self.mtp, self.aux, micro_batches=self.micro_batches, dp_size=dp_size)


def sum_micro_batches(per_micro: Iterable[tuple[float, Sequence[float], Mapping[str, float] | float]]) -> LossSums:
    """``LossSums`` of ``(lm, mtp per depth, aux)`` tuples, one per micro-batch."""
    sums = LossSums()
    for lm, mtp, aux in per_micro:
        sums.add(lm, mtp, aux)
    return sums


# ---- megatron-core's process-global loss trackers ------------------------------------------


def reset_loss_trackers(model: Any = None) -> None:
    """Empty megatron's MTP and MoE aux-loss trackers (call before every step's first forward).

    ``clear()`` rather than megatron's ``clear_aux_losses_tracker()`` /
    ``MTPLossLoggingHelper.clean_loss_in_tracker()``, which zero the tensors in place: the
    tensors are sized by the first model that wrote them (its layer count), so a process that
    builds another model (tests, ablations) would index past them; megatron recreates them on
    the next write, on the device of that write.

    Given the ``model`` that writes next (its ``config``), the aux-loss entries sized for it
    (``num_layers + mtp_num_layers``, megatron's rule) are kept and zeroed in place instead,
    and the entries its routers will write are created now (``aux_loss_names``), as
    megatron's ``save_to_aux_losses_tracker`` would on their first write: then no layer
    creates an entry, from the first forward on, and the compiled MoE layers
    (``model.compile``) share one graph from their first call (a layer that created the entry
    would compile a graph of its own).
    """
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    MTPLossLoggingHelper.tracker.clear()
    tracker = get_moe_layer_wise_logging_tracker()
    config = getattr(model, "config", None)
    if config is None:
        tracker.clear()
        return
    size = config.num_layers + (getattr(config, "mtp_num_layers", None) or 0)
    for name in list(tracker):
        values = tracker[name].get("values")
        if values is None or values.numel() != size:
            del tracker[name]
        else:
            values.zero_()
    names = aux_loss_names(model)
    if names:
        import torch

        device = next(model.parameters()).device
        for name in names:
            if name not in tracker:  # megatron's first write: zeros(num_layers) on the loss's device
                tracker[name] = {"values": torch.zeros(size, device=device), "reduce_group": None,
                                 "avg_group": None, "reduce_group_has_dp": False}


# megatron-core 0.16.1's router: the tracker entry each load-balancing type writes
# (``TopKRouter._apply_aux_loss`` / ``_apply_seq_aux_loss`` / ``_apply_global_aux_loss``)
AUX_LOSS_ENTRIES = {"aux_loss": "load_balancing_loss", "seq_aux_loss": "seq_load_balancing_loss",
                    "global_aux_loss": "global_load_balancing_loss"}


def aux_loss_names(model: Any) -> list[str]:
    """The aux-loss tracker entries ``model``'s routers write in a training forward: one per
    load-balancing type with a positive coefficient, and ``z_loss`` when ``moe_z_loss_coeff``
    is set (``tests/test_loss_reporting.py`` checks the list against what a forward writes)."""
    from megatron.core.transformer.moe.router import TopKRouter

    router = next((m for m in model.modules() if isinstance(m, TopKRouter)), None)
    if router is None:  # no MoE layer here (a dense model, or a pipeline stage of dense layers)
        return []
    names = [entry for kind, entry in AUX_LOSS_ENTRIES.items() if router.get_aux_loss_coeff(kind) > 0]
    if router.config.moe_z_loss_coeff is not None:
        names.append("z_loss")
    return names


def tracker_mtp_values(depths: int, device: Any = None):
    """The MTP tracker's per-depth sums since the last reset, a float32 tensor of ``depths``
    entries (zeros where nothing was recorded, e.g. on a pipeline stage without the MTP block)."""
    import torch
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    values = MTPLossLoggingHelper.tracker.get("values")
    if values is None:
        return torch.zeros(depths, dtype=torch.float32, device=device)
    out = values.detach().float()
    return out.to(device) if device is not None else out


def tracker_aux_total(device: Any = None):
    """The aux-loss tracker's sum over kinds and layers since the last reset (0-d float32)."""
    import torch
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    total = torch.zeros((), dtype=torch.float32, device=device)
    for entry in get_moe_layer_wise_logging_tracker().values():
        if "values" in entry:
            total = total + entry["values"].detach().float().sum().to(total.device)
    return total
