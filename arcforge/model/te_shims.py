"""What megatron-core 0.16.1 needs when Transformer Engine is missing, on CPU and GPU alike.

Without TE, megatron's local (non-TE) layer specs run, but two code paths still name TE-only
objects; ``apply_no_te_shims`` fixes both. ``have_transformer_engine`` tells the backends
whether TE's layer specs are available at all. ``use_foreach_multi_tensor_ops`` replaces
megatron's slow stand-ins for Apex's multi-tensor kernels (optimizer wrapper and gradient
clipping, GPU path) by torch's ``_foreach`` kernels.
"""

from __future__ import annotations


def have_transformer_engine() -> bool:
    """Whether Transformer Engine imports (megatron then offers TE layer specs and kernels)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a broken build
        return False
    return True


def apply_no_te_shims() -> None:
    """Shims megatron-core 0.16.1 needs when Transformer Engine does not import, on CPU and GPU.

    ``moe_utils.te_general_gemm``: the router's gating linear (``RouterGatingLinearFunction``)
    tests ``te_general_gemm is not None``, a name defined only when TE imports, so without TE
    the first forward fails with ``NameError`` (issue 12, finding 1). Setting it to ``None``
    selects the plain ``torch`` matmul. Idempotent; does nothing when TE defined the name.

    ``tensor_parallel.CheckpointWithoutOutput`` (selective recompute of the norms and the
    expert activation, ``recompute_modules: [layernorm, moe_act]``): its constructor sets
    ``self.fp8 = fp8 is not None``, so its default ``fp8=False`` reads as FP8 on, and the
    forward then calls ``FP8GlobalStateManager``, another TE-only name: ``NameError``. Without
    TE there is no FP8, so the flag is set False after the constructor.
    """
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    if not mrandom.HAVE_TE and not getattr(mrandom.CheckpointWithoutOutput, "_arcforge_no_fp8", False):
        init = mrandom.CheckpointWithoutOutput.__init__

        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.fp8 = False

        mrandom.CheckpointWithoutOutput.__init__ = __init__
        mrandom.CheckpointWithoutOutput._arcforge_no_fp8 = True


# ---- multi-tensor kernels without TE or Apex ---------------------------------------------------


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """``amp_C.multi_tensor_l2norm``'s contract (``(norm [1] float32, None)``, on the tensors'
    device) with ``torch._foreach_norm``: one multi-tensor kernel and no host round trip.

    megatron-core 0.16.1's stand-in (``utils.local_multi_tensor_l2_norm``) builds
    ``torch.tensor([torch.norm(t) for t in tensors])``, which reads every norm back to the
    host: one sync per gradient tensor per step (about 200 for proxy-1b), then a ``float()``
    and a new CUDA tensor from it."""
    import torch

    tensors = tensor_lists[0]
    if per_tensor:
        raise NotImplementedError("foreach_l2_norm: per-tensor norms are not used by arcforge's path")
    if not tensors:
        return torch.zeros(1, dtype=torch.float32), None
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """``amp_C.multi_tensor_scale``'s contract (``dst = src * scale`` for each pair, dtype of
    ``dst``) with ``_foreach`` kernels, where megatron's stand-in launches two kernels per
    tensor (``dst.copy_(src * scale)``): in place when the lists are the same (clipping), a
    plain copy when ``scale`` is 1 (main to model parameters every step)."""
    import torch

    src, dst = tensor_lists[0], tensor_lists[1]
    if not src:
        return
    if all(a is b for a, b in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
    elif scale == 1.0:
        torch._foreach_copy_(dst, src)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def foreach_copy_this_to_that(this, that, overflow_buf=None) -> None:
    """``optimizer._multi_tensor_copy_this_to_that`` (main to model parameters after every
    step, and back at load) as one ``_foreach_copy_``: megatron copies tensor by tensor under
    bf16, where it has no multi-tensor kernel."""
    import torch

    if this:
        torch._foreach_copy_(list(that), list(this))


def use_foreach_multi_tensor_ops() -> bool:
    """Point megatron's optimizer and clipping modules at ``foreach_l2_norm`` /
    ``foreach_scale`` / ``foreach_copy_this_to_that`` where they fell back to megatron's local
    stand-ins (neither TE nor Apex imported); returns whether megatron now uses them (False where TE or Apex provide the
    kernels). Idempotent."""
    from megatron.core import utils as mutils
    from megatron.core.optimizer import clip_grads, optimizer

    replaced = False
    if clip_grads.l2_norm_impl is mutils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
        replaced = True
    for mod in (clip_grads, optimizer):
        if getattr(mod, "multi_tensor_scale_impl", None) is mutils.local_multi_tensor_scale:
            mod.multi_tensor_scale_impl = foreach_scale
            replaced = True
    if replaced:
        optimizer._multi_tensor_copy_this_to_that = foreach_copy_this_to_that
    return replaced or clip_grads.l2_norm_impl is foreach_l2_norm
