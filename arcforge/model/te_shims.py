"""What megatron-core 0.16.1 needs when Transformer Engine is missing, on CPU and GPU alike.

Without TE, megatron's local (non-TE) layer specs run, but two code paths still name TE-only
objects; ``apply_no_te_shims`` fixes both. ``have_transformer_engine`` tells the backends
whether TE's layer specs are available at all.
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
