"""``model.compile: layers``: every transformer layer through ``torch.compile``.

Why: on one H100 the megatron path spent about 0.19 s of each proxy-1b step on work that did
not grow with the micro-batch (docs/benchmarks.md, "GPU"), and on CPU the same model with its
widths shrunk to nothing takes 2.3x the plain-PyTorch reference's time per step, 1.3x with
this (``benchmarks/host_overhead.py``): megatron's layers cost a lot of Python per kernel. A
compiled layer runs as one generated function (inductor: fused elementwise kernels for the
norms, RoPE, SwiGLU, routing and residuals, the matmuls and ``torch._grouped_mm`` called as
they are), forward and backward, so both the launches and the Python between them shrink.

What it compiles: each ``TransformerLayer`` of the decoder and of the MTP block, one
``torch.compile(layer.forward)`` each (the embedding, the output layer and the loss stay
eager). Layers of the same kind share one compiled graph (parameters are graph inputs, the
layer number too), so proxy-1b compiles 3 graphs (dense, MoE, the MTP layer), not 17:
``losses.reset_loss_trackers(model)``, before every step, creates megatron's aux-loss tracker
entries before the first forward and zeroes them in place after; else the first MoE layer of
each step, which would create them, would need a graph of its own. (Until 2026-11-27 each
layer's first call ran eagerly to create them. That first micro-batch kept eager
activations, 4.3 GiB per 4,096-token sequence of proxy-1b against 3.1 compiled, and set the
run's peak memory: 76.9 GiB at 16 x 8 on the H200, where later steps need about 62;
docs/benchmarks.md, "Peak memory of a compiled run".)
Anything a layer's forward reaches must not hold a per-layer Python constant: the trainer's
router-load hook is one function over a buffer of each router for that reason.

What it needs, so that a layer is one graph (``tests/test_compile.py`` counts the breaks):

* ``kernels.dispatcher: device``: megatron's own dispatchers read token counts on the host
  (``masked_select``, ``tokens_per_expert.cpu()``), which breaks the graph in every MoE layer
  and makes the shapes data-dependent. The trainer refuses ``compile: layers`` without it.
* ``kernels.experts: grouped`` (``arcforge::grouped_mm``, a custom operator the compiler
  calls as it is) and ``kernels.attention: sdpa``; megatron's activation recompute off (its
  checkpoint functions are not traceable);
* three shims of megatron-core 0.16.1, applied by ``apply_compile_shims``:

  1. ``linear_with_grad_accumulation_and_async_allreduce`` calls
     ``get_tensor_model_parallel_group_if_none(None)``, which calls ``warnings.warn`` on rank
     0 (a deprecation notice) on every forward of every row-parallel linear: dynamo cannot
     trace ``warnings.warn``. The shim returns the same group without the warning.
  2. ``MoEAuxLossAutoScaler.backward`` reads and may assign its own class attribute
     (``main_loss_backward_scale``), which dynamo does not support on an ``autograd.Function``
     class. The shim keeps the scale in a module-level 0-d tensor that ``set_loss_scale``
     fills in place (megatron's schedules pass ``[1]``-shaped scales: kept 0-d, so that the
     aux loss's gradient keeps the aux loss's shape in the traced backward).
  3. on CPU only (``cpu_compat``): the router's "move the weight to the GPU" branch, which
     assigns ``weight.data`` on every forward (there it moves from CPU to CPU).

Not here: CUDA graphs (``mode="reduce-overhead"``), which would also remove the launches but
need the optimizer and megatron's gradient buffers made capture-safe.
"""

from __future__ import annotations

from typing import Any

import torch

from arcforge.model.kernel_choices import COMPILE, check_compile, check_compile_options

# dynamo's name for the MoE router's layer number, seen from ``TransformerLayer.forward``
ROUTER_LAYER_NUMBER = "L['self']._modules['mlp']._modules['router'].layer_number"

_AUX_SCALE: dict[str, torch.Tensor] = {}
_SHIMMED = False


def _tp_group_if_none(tp_group=None, is_expert: bool = False, check_initialized: bool = True):
    """``megatron.core.utils.get_tensor_model_parallel_group_if_none`` without its warning."""
    from megatron.core import parallel_state

    if not torch.distributed.is_initialized():
        return None
    if not parallel_state.is_initialized() or tp_group is not None:
        return tp_group
    if is_expert:
        return parallel_state.get_expert_tensor_parallel_group(check_initialized=check_initialized)
    return parallel_state.get_tensor_model_parallel_group(check_initialized=check_initialized)


def _aux_scale(device: torch.device) -> torch.Tensor:
    scale = _AUX_SCALE.get("scale")
    if scale is None:
        scale = _AUX_SCALE["scale"] = torch.tensor(1.0, device=device)
    return scale


def _aux_backward(ctx, grad_output: torch.Tensor):
    """``MoEAuxLossAutoScaler.backward``: the aux loss gets the main loss's backward scale, in
    the aux loss's shape."""
    (aux_loss,) = ctx.saved_tensors
    return grad_output, torch.ones_like(aux_loss) * _aux_scale(aux_loss.device).to(aux_loss.dtype)


def _aux_set_loss_scale(scale: torch.Tensor) -> None:
    """``MoEAuxLossAutoScaler.set_loss_scale``: one held 0-d tensor that later scales are
    copied into (megatron keeps the first tensor and copies into it too); the class attribute
    points at it. 0-d because megatron's schedules pass ``[1]``-shaped scales and arcforge's
    CPU loop 0-d ones: the aux loss's gradient must keep the aux loss's own shape (the traced
    backward does not sum a ``[1]`` gradient back to ``[]`` as eager autograd does)."""
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    scale = scale.detach().reshape(())
    held = _AUX_SCALE.get("scale")
    if held is None or held.device != scale.device or held.dtype != scale.dtype:
        held = _AUX_SCALE["scale"] = scale.clone()
    else:
        held.copy_(scale)
    MoEAuxLossAutoScaler.main_loss_backward_scale = held


def apply_compile_shims() -> None:
    """The megatron-core shims a graph-break-free layer needs (see the module docstring).
    Idempotent; they change no result (tests/test_compile.py runs eager models with them)."""
    global _SHIMMED
    if _SHIMMED:
        return
    from megatron.core.tensor_parallel import layers
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    layers.get_tensor_model_parallel_group_if_none = _tp_group_if_none
    current = MoEAuxLossAutoScaler.main_loss_backward_scale
    MoEAuxLossAutoScaler.backward = staticmethod(_aux_backward)
    MoEAuxLossAutoScaler.set_loss_scale = staticmethod(_aux_set_loss_scale)
    if current is not None:
        _aux_set_loss_scale(current)
    _SHIMMED = True


def transformer_layers(model) -> list:
    """The ``TransformerLayer`` modules of a built model (decoder, then MTP), in order."""
    from megatron.core.transformer.transformer_layer import TransformerLayer

    return [m for m in model.modules() if isinstance(m, TransformerLayer)]


def compile_layers(model, *, backend: str = "inductor", **options: Any) -> int:
    """``torch.compile`` every transformer layer's forward in place; returns how many.

    ``dynamic=None`` (tensor shapes static) with the router's ``layer_number`` a graph input
    from the start (``torch.compiler.config.dynamic_sources``): the MoE layers differ only in
    it (megatron indexes the aux-loss tracker with it). The recompile limit is raised to cover
    one entry per layer anyway, so that no layer silently falls back to eager after the limit."""
    import torch._dynamo

    apply_compile_shims()
    layers = transformer_layers(model)
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * len(layers) + 8))
    # a layer's number (the index of its aux-loss tracker entry) is a graph input, not a constant,
    # from the first compile on (else the first MoE layer compiles specialised to its number and
    # the second recompiles: one more graph)
    if hasattr(cfg, "allow_unspec_int_on_nn_module"):
        cfg.allow_unspec_int_on_nn_module = True
    compiler_cfg = getattr(torch.compiler, "config", None)
    if compiler_cfg is not None and hasattr(compiler_cfg, "dynamic_sources"):
        sources = [x for x in compiler_cfg.dynamic_sources.split(",") if x]
        if ROUTER_LAYER_NUMBER not in sources:
            compiler_cfg.dynamic_sources = ",".join([*sources, ROUTER_LAYER_NUMBER])
    for layer in layers:
        layer.forward = torch.compile(layer.forward, backend=backend, dynamic=None, **options)
    return len(layers)


__all__ = ["COMPILE", "ROUTER_LAYER_NUMBER", "apply_compile_shims", "check_compile", "check_compile_options",
           "compile_layers", "transformer_layers"]
