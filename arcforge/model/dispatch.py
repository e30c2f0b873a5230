"""A token dispatcher for MoE layers whose experts all live on one rank (``ep = tp = 1``).

megatron-core 0.16.1's dispatchers are written for expert parallelism. On one GPU, with its
``alltoall`` dispatcher and no Transformer Engine, every MoE layer's forward still

* permutes with ``masked_select`` (its output size is read back to the host: a sync),
* moves ``tokens_per_expert`` to the host and waits for it (``_maybe_dtoh_and_synchronize``:
  a second sync), and
* with several local experts, "sorts chunks" by expert (``sort_chunks_by_idxs``: a split by
  host-side sizes and a ``cat``, an identity on one rank that copies the tokens), once on the
  way in and once on the way out, in the forward and again in the backward.

Each sync drains the GPU's queue, which then idles while Python launches the next kernels.
The H100 run of issue 12 showed about 0.19 s per step that does not grow with the micro-batch
(docs/benchmarks.md, "GPU"); these syncs are one candidate. ``DeviceTokenDispatcher`` does
the same permutation with no host round trip and no chunk sort:

* the ``k`` experts of each token and expert-major order, tokens ascending within an expert
  (megatron's order, so the experts see the same rows in the same order), counted from the
  boolean routing map (exactly ``k`` per row in dropless routing, which is what arcforge
  trains) with two cumulative sums and no sort (``expert_major_order``);
* ``tokens_per_expert``: the routing map summed over tokens, on the device (``bincount``
  would read its maximum back to the host), which ``kernels.gmm`` turns into
  ``torch._grouped_mm`` offsets on the device;
* combine: the inverse permutation and a sum over each token's ``k`` rows (no atomics; the
  probabilities are applied inside the experts, as megatron does);
* backward: every row gather (``RowGather``) differentiates into another row gather and a sum,
  not autograd's ``index_add``, which adds bf16 rows with atomics on CUDA: on one H200 it took
  18% of a compiled proxy-1b step (as long as the experts' grouped GEMMs; docs/benchmarks.md).

The model's parameters do not change, so checkpoints move freely between the two
dispatchers. Chosen by the train config's ``kernels.dispatcher: device``; ``megatron`` (the
default) keeps megatron's own. Checked on CPU against megatron's ``allgather`` dispatcher
(``tests/test_dispatch.py``; its ``alltoall`` one needs CUDA to be built, and with one rank
both permute with the same ``moe_utils.permute``); its speed needs a GPU run.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection
from megatron.core.transformer.moe.token_dispatcher import MoETokenDispatcher

DISPATCHERS = ("megatron", "device")


class RowGather(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is a gather as well.

    Every row of ``x`` is read by exactly ``repeats`` output rows, listed by ``readers``: row
    ``r``'s readers are ``readers[r * repeats : (r + 1) * repeats]`` (for a permutation, with
    ``repeats`` 1, ``readers`` is its inverse). The gradient of ``x`` is then those rows of the
    output's gradient, summed per group of ``repeats``. Autograd's own backward of
    ``index_select`` is ``index_add``, which must allow any index pattern and so adds rows with
    atomics (on CUDA, for bf16, one slow kernel per call)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, readers: torch.Tensor, repeats: int) -> torch.Tensor:
        ctx.save_for_backward(readers)
        ctx.repeats = repeats
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (readers,) = ctx.saved_tensors
        rows = grad.index_select(0, readers)
        if ctx.repeats > 1:
            rows = rows.view(-1, ctx.repeats, *rows.shape[1:]).sum(dim=1)
        return rows, None, None, None


@torch.library.custom_op("arcforge::expert_major_order", mutates_args=())
def expert_major_order(routing_map: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(experts [T, k], order [T * k], inverse [T * k])`` of a ``[T, E]`` boolean routing map
    with exactly ``k`` experts per token: token ``t``'s experts in ascending id order; ``order``
    lists the rows ``t * k + j`` expert-major, tokens ascending within an expert; ``inverse[t *
    k + j]`` is where row ``t * k + j`` sits in that order.

    Counted rather than sorted: a pair's slot ``j`` is the number of the token's experts before
    it (a cumulative sum along each token's row of experts); its row in expert-major order is
    the number of pairs before it in that order, one cumulative sum over the routing map read
    expert by expert (so the scan runs over one contiguous vector: torch's scan along the token
    dimension of a ``[T, E]`` map gives each of the ``E`` columns one thread). Each token's
    ``k`` pairs are then scattered into their slots; the other ``E - k`` go to columns of their
    own past ``k`` (so no two writes meet: deterministic) and are cut off.

    The first version took ``topk`` of the map and a stable ``argsort`` of the flat expert ids:
    on the H200 those were two kernels of about 80 and 70 us per MoE layer and micro-batch, 1.4%
    of a compiled proxy-1b step (docs/benchmarks.md). The result is the same permutation
    (``tests/test_dispatch.py``). A custom operator, so that compiled layers call these kernels
    as they are rather than inductor generating scans for them: the same code compiled and
    eager, and nothing new to go wrong in a compile on the GPU."""
    t, e = routing_map.shape
    m = routing_map.to(torch.int32)
    slot = m.cumsum(1, dtype=torch.int32) - m  # [T, E]: the token's experts before e
    by_expert = m.t().reshape(-1)  # [E * T], expert-major
    dest = (by_expert.cumsum(0, dtype=torch.int32) - by_expert).view(e, t).t()  # [T, E]: the pair's row
    ids = torch.arange(e, device=routing_map.device)
    col = torch.where(routing_map, slot, k + ids)  # [T, E]: j for the token's experts, k + e for the others
    experts = torch.empty(t, k + e, dtype=torch.int64, device=routing_map.device).scatter_(1, col, ids.expand(t, e))
    inverse = torch.empty(t, k + e, dtype=torch.int64, device=routing_map.device).scatter_(1, col, dest.to(torch.int64))
    inverse = inverse[:, :k].contiguous().view(-1)
    order = torch.empty_like(inverse).scatter_(0, inverse, torch.arange(inverse.numel(), device=inverse.device))
    return experts[:, :k].contiguous(), order, inverse


@expert_major_order.register_fake
def _(routing_map: torch.Tensor, k: int):
    t = routing_map.shape[0]
    return (routing_map.new_empty((t, k), dtype=torch.int64), routing_map.new_empty((t * k,), dtype=torch.int64),
            routing_map.new_empty((t * k,), dtype=torch.int64))


class DeviceTokenDispatcher(MoETokenDispatcher):
    """Dispatch and combine for one rank that holds every expert, without host syncs."""

    def __init__(self, num_local_experts: int, local_expert_indices, config, pg_collection=None) -> None:
        super().__init__(config=config, pg_collection=pg_collection)
        if self.ep_size != 1 or self.tp_size != 1:
            raise ValueError(f"the device dispatcher needs every expert on this rank (expert-parallel size "
                             f"{self.ep_size}, expert tensor-parallel size {self.tp_size}; both must be 1)")
        if config.moe_expert_capacity_factor is not None or config.moe_router_padding_for_quantization:
            raise ValueError("the device dispatcher is for dropless routing (no moe_expert_capacity_factor, "
                             "no moe_router_padding_for_quantization)")
        if config.moe_shared_expert_overlap:
            raise ValueError("the device dispatcher does not overlap the shared expert (moe_shared_expert_overlap)")
        self.num_experts = num_local_experts
        self.topk = config.moe_router_topk

    def dispatch_preprocess(self, hidden_states: torch.Tensor, routing_map: torch.Tensor, probs: torch.Tensor):
        """Tokens and their probabilities in expert-major order (``[T * k, H]``, ``[T * k]``)."""
        self.hidden_shape = hidden_states.shape
        x = hidden_states.view(-1, self.hidden_shape[-1])
        experts, order, inverse = expert_major_order(routing_map, self.topk)
        self.order, self.inverse = order, inverse
        self.tokens_per_expert = routing_map.sum(dim=0)  # not bincount: on CUDA it reads max() back
        permuted = RowGather.apply(x, torch.div(order, self.topk, rounding_mode="floor"), inverse, self.topk)
        permuted_probs = RowGather.apply(probs.gather(1, experts).reshape(-1), order, inverse, 1)
        return permuted, permuted_probs

    def token_dispatch(self, hidden_states: torch.Tensor, probs: torch.Tensor):
        return hidden_states, probs  # nothing to send: every expert is here

    def dispatch_postprocess(self, hidden_states: torch.Tensor, probs: torch.Tensor):
        tokens_per_expert, self.tokens_per_expert = self.tokens_per_expert, None
        return hidden_states, tokens_per_expert, probs

    def combine_preprocess(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def token_combine(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def combine_postprocess(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Back to token order, each token's ``k`` expert rows summed: ``[*hidden_shape]``."""
        order, inverse, self.order, self.inverse = self.order, self.inverse, None, None
        rows = RowGather.apply(hidden_states, inverse, order, 1)  # row t * k + j: token t's j-th expert
        return rows.view(-1, self.topk, rows.shape[-1]).sum(dim=1).view(self.hidden_shape)


class DeviceMoELayer(MoELayer):
    """megatron's ``MoELayer`` with ``DeviceTokenDispatcher`` in place of the configured one
    (``kernels.apply_kernels`` puts it in the layer spec for ``kernels.dispatcher: device``)."""

    def __init__(self, config, submodules=None, layer_number=None, pg_collection=None):
        super().__init__(config, submodules=submodules, layer_number=layer_number, pg_collection=pg_collection)
        self.token_dispatcher = DeviceTokenDispatcher(
            self.num_local_experts, self.local_expert_indices, config=self.config,
            pg_collection=pg_collection if pg_collection is not None else get_default_pg_collection(),
        )


__all__ = ["DISPATCHERS", "DeviceMoELayer", "DeviceTokenDispatcher", "RowGather", "expert_major_order"]
