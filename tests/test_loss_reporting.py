"""The per-step loss columns (``arcforge.model.losses``), as pure functions and against
megatron-core 0.16.1's real MTP and aux-loss trackers (issue 12, finding 3: on GPU the logged
MTP/aux losses were summed over micro-batches and never reset between steps)."""

from __future__ import annotations

import math

import pytest
import torch

from arcforge.model.losses import LossSums, reset_loss_trackers, step_losses, sum_micro_batches, tracker_aux_total, tracker_mtp_values

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def test_step_losses_average_over_micro_batches_and_dp_ranks():
    # 2 DP ranks x 4 micro-batches; sums over both ranks' micro-batches
    row = step_losses(8 * 6.0, [8 * 8.0, 8 * 9.0], 8 * 4.0, micro_batches=4, dp_size=2)
    assert row == {"loss": 6.0, "mtp_loss": 8.5, "aux_loss": 4.0}
    assert step_losses(3.0, [], None, micro_batches=3)["mtp_loss"] is None
    assert step_losses(3.0, [], None, micro_batches=3)["aux_loss"] is None
    with pytest.raises(ValueError):
        step_losses(1.0, [], 0.0, micro_batches=0)


def test_loss_sums_match_the_cpu_columns_meaning():
    """mean over micro-batches; MTP: mean over depths; aux: summed over layers and kinds."""
    per_micro = [(6.0, [8.0, 9.0], {"seq_load_balancing_loss": 4.0, "z_loss": 0.5}),
                 (5.0, [7.0, 8.0], {"seq_load_balancing_loss": 3.0, "z_loss": 0.5})]
    row = sum_micro_batches(per_micro).row()
    assert row["loss"] == pytest.approx(5.5)
    assert row["mtp_loss"] == pytest.approx((8.0 + 9.0 + 7.0 + 8.0) / 4)
    assert row["aux_loss"] == pytest.approx(4.0)
    # the same numbers from two DP ranks that each saw one micro-batch
    a, b = LossSums(), LossSums()
    a.add(*per_micro[0])
    b.add(*per_micro[1])
    both = step_losses(a.lm + b.lm, [x + y for x, y in zip(a.mtp, b.mtp)], a.aux + b.aux, micro_batches=1, dp_size=2)
    assert both == pytest.approx(row)
    with pytest.raises(ValueError):
        a.add(1.0, [1.0], 0.0)  # a different number of MTP depths


@pytest.fixture(scope="module")
def megatron_trackers():
    from arcforge.model import cpu_compat

    cpu_compat.apply(0, force=True)  # the MTP tracker allocates on torch.cuda.current_device()
    from megatron.core.transformer.moe.moe_utils import save_to_aux_losses_tracker
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    def micro_batch(mtp: list[float], aux_per_layer: list[float]) -> None:
        """What one training forward of megatron 0.16.1 writes: GPTModel adds each depth's
        masked mean MTP CE, every MoE router its unweighted aux loss (layer numbers from 1)."""
        for depth, v in enumerate(mtp):
            MTPLossLoggingHelper.save_loss_to_tracker(torch.tensor(v), depth, len(mtp))
        for layer, v in enumerate(aux_per_layer, start=1):
            save_to_aux_losses_tracker("seq_load_balancing_loss", torch.tensor(v), layer, len(aux_per_layer))

    reset_loss_trackers()
    yield micro_batch
    reset_loss_trackers()


def test_gpu_reporting_bug_is_fixed(megatron_trackers):
    """proxy-100m on GPU: 4 micro-batches per step, MTP CE 8.4 per micro-batch. Read without a
    reset and without dividing (the old GPU path: ``mtp_loss_values()`` once per step), the
    column reads 33.6, 67.2, 100.8: summed over micro-batches and accumulated over steps. With
    one reset per step and ``step_losses`` it reads 8.4 every step, as the CPU column does."""
    from arcforge.model.megatron_model import aux_loss_values, mtp_loss_values

    micro, steps, mtp_ce, aux = 4, 3, 8.4, [1.0, 1.5]  # two MoE layers: 2.5 per micro-batch
    old_mtp, old_aux, new_rows = [], [], []
    reset_loss_trackers()
    for _ in range(steps):  # the old path: never reset
        for _ in range(micro):
            megatron_trackers([mtp_ce], aux)
        old_mtp.append(sum(mtp_loss_values()) / len(mtp_loss_values()))
        old_aux.append(sum(aux_loss_values().values()))
    assert old_mtp == pytest.approx([33.6, 67.2, 100.8], rel=1e-6)
    assert old_aux == pytest.approx([10.0, 20.0, 30.0], rel=1e-6)
    for _ in range(steps):  # the fixed path: reset, run the micro-batches, read once, reduce
        reset_loss_trackers()
        for _ in range(micro):
            megatron_trackers([mtp_ce], aux)
        mtp = tracker_mtp_values(1).tolist()
        new_rows.append(step_losses(micro * 6.0, mtp, float(tracker_aux_total()), micro_batches=micro, dp_size=1))
    for row in new_rows:
        assert row["mtp_loss"] == pytest.approx(mtp_ce, rel=1e-6)
        assert row["aux_loss"] == pytest.approx(2.5, rel=1e-6)
        assert row["loss"] == pytest.approx(6.0)


def test_tracker_readers_when_nothing_was_recorded(megatron_trackers):
    """A pipeline stage without the MTP block or MoE layers contributes zeros of the right size."""
    reset_loss_trackers()
    assert tracker_mtp_values(2).tolist() == [0.0, 0.0]
    assert float(tracker_aux_total()) == 0.0
    megatron_trackers([2.0, 3.0], [0.5])
    assert tracker_mtp_values(2).tolist() == [2.0, 3.0]
    assert math.isclose(float(tracker_aux_total()), 0.5)
    reset_loss_trackers()
    assert tracker_mtp_values(2).tolist() == [0.0, 0.0]


def test_logged_lm_loss_survives_megatrons_in_place_division():
    """megatron-core 0.16.1's schedule divides the returned loss in place by the number of
    micro-batches; the GPU backend's ``lm loss`` must be the undivided mean (the GPU check found
    the logged loss at exactly 1/2 of the CPU loss with 2 micro-batches per step)."""
    from types import SimpleNamespace

    from megatron.core.pipeline_parallel.schedules import forward_step_calc_loss

    from arcforge.model.backend_megatron import _loss_func

    per_token = torch.tensor([[2.0, 4.0, 6.0, 100.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    store: list = []
    config = SimpleNamespace(timers=None, num_moe_experts=None, calculate_per_token_loss=False)
    out, _ = forward_step_calc_loss(None, per_token, lambda o: _loss_func(mask, o), config, None, False, 4, store,
                                    cp_group_size=1, is_last_stage=True)
    assert float(out) == pytest.approx(4.0 / 4)  # what is back-propagated: the mean / micro-batches
    assert float(store[0]["lm loss"]) == pytest.approx(4.0)  # what is logged: the mean
    assert store[0]["eval"].tolist() == [12.0, 3.0]


def test_reset_for_a_model_zeroes_its_entries_in_place_and_drops_other_sizes(megatron_trackers):
    """``reset_loss_trackers(model)`` keeps the aux-loss tensors sized for that model (megatron's
    ``num_layers + mtp_num_layers``) and zeroes them in place, so compiled layers keep seeing
    the same entry; entries of another size (left by another model in the process) are dropped,
    else that model would index past them."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model

    model = build_model(get_preset("proxy-tiny"), seq_length=32, seed=0)
    size = model.config.num_layers + (model.config.mtp_num_layers or 0)
    reset_loss_trackers()
    megatron_trackers([2.0], [0.5] * size)
    tracker = get_moe_layer_wise_logging_tracker()
    held = tracker["seq_load_balancing_loss"]["values"]
    reset_loss_trackers(model)
    assert tracker["seq_load_balancing_loss"]["values"] is held and float(held.sum()) == 0.0
    assert float(tracker_aux_total()) == 0.0 and tracker_mtp_values(1).tolist() == [0.0]
    megatron_trackers([2.0], [0.25] * size)
    assert tracker["seq_load_balancing_loss"]["values"] is held and float(tracker_aux_total()) == pytest.approx(0.25 * size)
    reset_loss_trackers()
    megatron_trackers([2.0], [0.5] * (size + 2))  # another model's layer count
    stale = tracker["seq_load_balancing_loss"]["values"]
    reset_loss_trackers(model)  # dropped, and made again at this model's size
    fresh = tracker["seq_load_balancing_loss"]["values"]
    assert fresh is not stale and fresh.shape == (size,) and float(fresh.abs().sum()) == 0.0


@pytest.mark.parametrize("router", [
    {},  # GLM-4.5's: the sequence-level aux loss only
    {"moe_router_load_balancing_type": ["aux_loss", "seq_aux_loss", "global_aux_loss"],
     "moe_aux_loss_coeff": [1e-3, 1e-4, 1e-3], "moe_z_loss_coeff": 1e-3},
])
def test_reset_creates_the_entries_a_forward_writes(megatron_trackers, router):
    """``reset_loss_trackers(model)`` creates, before the first forward, exactly the aux-loss
    entries that model's routers write in a training forward (what megatron's own first write
    would make: the trace of ``model.compile: layers`` depends on no layer creating one), and
    the forward then adds into those same tensors."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    from arcforge.model.arch import get_preset
    from arcforge.model.losses import aux_loss_names
    from arcforge.model.megatron_model import build_model, causal_attention_mask, lm_loss, position_ids_for

    model = build_model(get_preset("proxy-tiny"), seq_length=32, seed=0, **router)
    model.train()
    tokens, labels = (torch.randint(4, 200, (2, 32), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    tracker = get_moe_layer_wise_logging_tracker()
    reset_loss_trackers()
    model(tokens, position_ids_for(tokens), causal_attention_mask(32, tokens.device), labels=labels)  # megatron alone
    written = {name: entry["values"].shape for name, entry in tracker.items()}
    assert len(written) == 1 + 3 * bool(router) and sorted(aux_loss_names(model)) == sorted(written)
    reset_loss_trackers()
    reset_loss_trackers(model)
    primed = {name: entry["values"] for name, entry in tracker.items()}
    assert {name: v.shape for name, v in primed.items()} == written
    assert all(float(v.abs().sum()) == 0.0 for v in primed.values())
    lm_loss(model, tokens, labels)  # resets (keeping the entries), then the forward adds
    assert all(tracker[name]["values"] is v and float(v.abs().sum()) > 0 for name, v in primed.items())
