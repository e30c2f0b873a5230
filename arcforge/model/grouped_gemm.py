"""Grouped GEMM for megatron's ``GroupedMLP`` without the ``grouped_gemm`` package.

megatron-core's legacy ``GroupedMLP`` calls ``grouped_gemm.ops.gmm(a, b, batch_sizes,
trans_b=False)`` through ``megatron.core.transformer.moe.grouped_gemm_util``; that package
(a CUDA extension) does not install here. ``install_torch_grouped_gemm()`` makes megatron see
``gmm`` below instead: ``torch._grouped_mm`` where it runs (16-byte aligned strides; bf16 on
Hopper, fp32 or bf16 on CPU), else one matmul per expert.

``torch._grouped_mm`` is wrapped in two custom operators (``arcforge::grouped_mm`` and its
weight gradient ``arcforge::grouped_mm_wgrad``) rather than an ``autograd.Function``, so that
``torch.compile`` (``model.compile``) traces through the experts without a graph break: the
operators declare their output shapes (``register_fake``) and their backward
(``register_autograd``), and inductor calls torch's kernel as it is. (Traced directly, torch's
own fake implementation of ``_grouped_mm`` accepts bf16 only, so a compiled fp32 CPU model
could not be tested.) The backward makes the incoming gradient contiguous (``_grouped_mm``
rejects the stride-0 gradients of ``sum()``) and gives experts that received no rows an exact
zero weight gradient (pytorch#172439: not so on some GPUs).
"""

from __future__ import annotations

import types

import torch

# ---- the operators ---------------------------------------------------------------------------


def _aligned(t: torch.Tensor) -> bool:
    """``torch._grouped_mm``'s layout rule: each matrix row- or column-major in its last two
    dimensions with the leading stride a multiple of 16 bytes."""
    align = 16 // t.element_size()
    s, n = t.stride(), t.shape
    if s[-1] == 1 and s[-2] >= max(1, n[-1]):
        return s[-2] % align == 0
    if s[-2] == 1 and s[-1] >= max(1, n[-2]):
        return s[-1] % align == 0
    return False


def grouped_mm_usable(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` takes ``a [M, K] x b [E, K, N]`` (and its backward's
    ``grad [M, N] x b^T`` and ``a^T x grad``): bf16 on CUDA, fp32 or bf16 on CPU, K and N
    multiples of 8, M > 0, aligned strides."""
    dtypes = (torch.bfloat16,) if a.is_cuda else (torch.float32, torch.bfloat16)
    return (
        hasattr(torch, "_grouped_mm") and a.dtype == b.dtype and a.dtype in dtypes and a.device == b.device
        and a.shape[0] > 0 and a.shape[-1] % 8 == 0 and b.shape[-1] % 8 == 0 and _aligned(a) and _aligned(b)
    )


@torch.library.custom_op("arcforge::grouped_mm", mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``out[rows of group e] = a[rows of group e] @ b[e]``: ``a [M, K]``, ``b [E, K, N]``,
    ``offs [E]`` int32 end offsets, ``empty [E]`` bool (groups without rows; used by the
    backward) -> ``[M, N]``."""
    return torch._grouped_mm(a, b, offs=offs)


@grouped_mm.register_fake
def _grouped_mm_fake(a, b, offs, empty):
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("arcforge::grouped_mm_wgrad", mutates_args=())
def grouped_mm_wgrad(a: torch.Tensor, grad: torch.Tensor, offs: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """The weight gradient of ``grouped_mm``: ``out[e] = a[rows of e]^T @ grad[rows of e]``
    (``[E, K, N]``), exactly zero for the ``empty`` groups."""
    return torch._grouped_mm(a.t(), grad.contiguous(), offs=offs).masked_fill_(empty.view(-1, 1, 1), 0)


@grouped_mm_wgrad.register_fake
def _grouped_mm_wgrad_fake(a, grad, offs, empty):
    return a.new_empty(offs.shape[0], a.shape[1], grad.shape[1])


def _setup_context(ctx, inputs, output):
    a, b, offs, empty = inputs
    ctx.save_for_backward(a, b, offs, empty)


def _backward(ctx, grad):
    a, b, offs, empty = ctx.saved_tensors
    grad = grad.contiguous()
    ga = gb = None
    if ctx.needs_input_grad[0]:
        ga = grouped_mm(grad, b.transpose(-2, -1), offs, empty)
    if ctx.needs_input_grad[1]:
        gb = grouped_mm_wgrad(a, grad, offs, empty)
    return ga, gb, None, None


grouped_mm.register_autograd(_backward, setup_context=_setup_context)


# ---- grouped_gemm.ops.gmm ----------------------------------------------------------------------


def gmm_grouped_mm(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """``a [M, K]`` (rows sorted by group) times ``b [E, K, N]`` through ``torch._grouped_mm``.
    Offsets and the empty-group mask are computed where ``batch_sizes`` lives and moved to
    ``a``'s device: no host sync when the sizes are already there
    (``dispatch.DeviceTokenDispatcher``)."""
    sizes = batch_sizes.detach()
    offs = torch.cumsum(sizes, 0).to(torch.int32).to(a.device, non_blocking=True)
    empty = (sizes == 0).to(a.device, non_blocking=True)
    return grouped_mm(a, b, offs, empty)


def gmm_loop(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """The same product as one matmul per group (any device, dtype and alignment; reads the
    sizes on the host)."""
    sizes = [int(n) for n in batch_sizes.detach().cpu()]
    parts = [x @ b[e] for e, x in enumerate(torch.split(a, sizes, dim=0))]
    return torch.cat(parts, dim=0) if parts else a.new_zeros(0, b.shape[-1])


def gmm(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor, trans_b: bool = False, *,
        backend: str = "auto") -> torch.Tensor:
    """``grouped_gemm.ops.gmm``'s semantics: ``a [M, K]`` holds the rows of group 0, then group
    1, ... (``batch_sizes [E]``, int64, on the host or the device, may hold zeros, sums to M);
    ``b`` is ``[E, K, N]`` (``[E, N, K]`` with ``trans_b``); returns ``[M, N]``, differentiable
    in ``a`` and ``b``. ``backend``: ``auto`` (``torch._grouped_mm`` when ``grouped_mm_usable``,
    else the loop), ``grouped_mm`` or ``loop``."""
    if a.dim() != 2 or b.dim() != 3 or b.shape[0] != batch_sizes.numel():
        raise ValueError(f"gmm: expected a [M, K], b [E, K, N], batch_sizes [E]; got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}, {tuple(batch_sizes.shape)}")
    if trans_b:
        b = b.transpose(-2, -1)
    if backend == "auto":
        backend = "grouped_mm" if grouped_mm_usable(a, b) else "loop"
    if backend == "grouped_mm":
        return gmm_grouped_mm(a, b, batch_sizes)
    if backend == "loop":
        return gmm_loop(a, b, batch_sizes)
    raise ValueError(f"gmm: unknown backend {backend!r}")


# a stand-in for the ``grouped_gemm`` package: what megatron reads is ``grouped_gemm.ops.gmm``
ops = types.SimpleNamespace(gmm=gmm)
torch_grouped_gemm = types.ModuleType("arcforge_torch_grouped_gemm", "grouped_gemm.ops.gmm on torch._grouped_mm")
torch_grouped_gemm.ops = ops


def install_torch_grouped_gemm() -> bool:
    """Make ``megatron.core.transformer.moe.grouped_gemm_util`` (imported as ``gg`` by
    ``experts.GroupedMLP``) use ``gmm`` above: it reads the module attributes ``grouped_gemm``
    (``grouped_gemm_is_available`` / ``assert_grouped_gemm_is_available`` test it for None) and
    ``ops`` (``gg.ops.gmm``). Does nothing when the real ``grouped_gemm`` package imported (its
    CUDA kernel is then used); returns True when the torch version is installed. Idempotent."""
    from megatron.core.transformer.moe import grouped_gemm_util as gg

    if gg.grouped_gemm is not None and gg.grouped_gemm is not torch_grouped_gemm:
        return False
    gg.grouped_gemm = torch_grouped_gemm
    gg.ops = ops
    return True


__all__ = ["gmm", "gmm_grouped_mm", "gmm_loop", "grouped_mm", "grouped_mm_usable", "grouped_mm_wgrad",
           "install_torch_grouped_gemm"]
