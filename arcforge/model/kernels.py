"""Faster kernels for megatron-core's local (non-Transformer-Engine) layer specs.

Without Transformer Engine megatron-core 0.16.1's local specs run the experts one by one
(``SequentialMLP``) and attention unfused (``DotProductAttention``: ``baddbmm``, a masked
softmax over ``[b, np, s, s]``, ``bmm``). Two replacements, each verified on CPU in fp32
against the module it replaces (``tests/test_kernels.py``) and switched by the train config's
``kernels`` section (``resolve_kernels``):

* **experts: grouped.** ``moe_grouped_gemm=True`` makes megatron's ``LocalSpecProvider`` pick
  its legacy ``GroupedMLP``, which calls ``grouped_gemm.ops.gmm(a, b, batch_sizes,
  trans_b=False)`` through ``megatron.core.transformer.moe.grouped_gemm_util``; the
  ``grouped_gemm`` package is not installable here. ``install_torch_grouped_gemm()`` makes
  that module see ``gmm`` below: ``torch._grouped_mm`` where it runs (CUDA, bf16, 16-byte
  aligned strides), else one matmul per expert. ``TorchGroupedMLP`` (megatron's
  ``GroupedMLP``, put in the spec by ``apply_kernels``) only lifts its ``bf16`` assertion,
  which exists because the grouped_gemm CUDA kernel is bf16-only, so fp32 runs on CPU too.
* **attention: sdpa.** ``SDPAttention``: ``DotProductAttention``'s constructor, forward
  through ``torch.nn.functional.scaled_dot_product_attention(is_causal=True,
  enable_gqa=True)`` (flash / memory-efficient kernels on CUDA); the cases it does not cover
  (sliding windows, softmax offsets, query-key layer scaling, packed sequences, attention
  bias) go to ``DotProductAttention.forward``.

A third choice, the MoE token dispatcher, lives in ``arcforge.model.dispatch``; ``apply_kernels``
puts it in the spec too. Measured on one H100: grouped experts 2.26x over sequential on
proxy-1b (docs/benchmarks.md, "GPU").
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.moe.experts import GroupedMLP, SequentialMLP

ATTENTION = ("sdpa", "local")
EXPERTS = ("grouped", "sequential")

# ---- grouped GEMM ----------------------------------------------------------------------------


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
    ``grad [M, N] x b^T`` and ``a^T x grad``): CUDA, bf16, K and N multiples of 8, M > 0."""
    return (
        hasattr(torch, "_grouped_mm") and a.is_cuda and a.dtype == b.dtype == torch.bfloat16
        and a.shape[0] > 0 and a.shape[-1] % 8 == 0 and b.shape[-1] % 8 == 0 and _aligned(a) and _aligned(b)
    )


class _GroupedMM(torch.autograd.Function):
    """``out[rows of group e] = a[rows of group e] @ b[e]`` with ``torch._grouped_mm``.

    Own backward (the same two grouped GEMMs as torch's) so that the incoming gradient is made
    contiguous (``_grouped_mm`` rejects the stride-0 gradients of ``sum()``) and groups with no
    rows get an exact zero weight gradient (pytorch#172439: not so on some GPUs)."""

    @staticmethod
    def forward(ctx, a, b, offs, empty):
        ctx.save_for_backward(a, b, offs, empty)
        return torch._grouped_mm(a, b, offs=offs)

    @staticmethod
    def backward(ctx, grad):
        a, b, offs, empty = ctx.saved_tensors
        grad = grad.contiguous()
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch._grouped_mm(grad, b.transpose(-2, -1), offs=offs)
        if ctx.needs_input_grad[1]:
            gb = torch._grouped_mm(a.t(), grad, offs=offs).masked_fill_(empty.view(-1, 1, 1), 0)
        return ga, gb, None, None


def gmm_grouped_mm(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """``a [M, K]`` (rows sorted by group) times ``b [E, K, N]`` through ``torch._grouped_mm``
    (any device/dtype it accepts: CUDA bf16 on Hopper, also fp32 on CPU for tests). Offsets and
    the empty-group mask are computed where ``batch_sizes`` lives and moved to ``a``'s device:
    no host sync when the sizes are already there (``dispatch.DeviceTokenDispatcher``)."""
    sizes = batch_sizes.detach()
    offs = torch.cumsum(sizes, 0).to(torch.int32).to(a.device, non_blocking=True)
    empty = (sizes == 0).to(a.device, non_blocking=True)
    return _GroupedMM.apply(a, b, offs, empty)


def gmm_loop(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor) -> torch.Tensor:
    """The same product as one matmul per group (any device, dtype and alignment)."""
    sizes = [int(n) for n in batch_sizes.detach().cpu()]
    parts = [x @ b[e] for e, x in enumerate(torch.split(a, sizes, dim=0))]
    return torch.cat(parts, dim=0) if parts else a.new_zeros(0, b.shape[-1])


def gmm(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor, trans_b: bool = False, *,
        backend: str = "auto") -> torch.Tensor:
    """``grouped_gemm.ops.gmm``'s semantics: ``a [M, K]`` holds the rows of group 0, then group
    1, ... (``batch_sizes [E]``, int64, usually on the CPU, may hold zeros, sums to M); ``b`` is
    ``[E, K, N]`` (``[E, N, K]`` with ``trans_b``); returns ``[M, N]``, differentiable in ``a``
    and ``b``. ``backend``: ``auto`` (``torch._grouped_mm`` when ``grouped_mm_usable``, else the
    loop), ``grouped_mm`` or ``loop``."""
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


class TorchGroupedMLP(GroupedMLP):
    """megatron's legacy ``GroupedMLP`` with two differences: its forward's ``assert
    config.bf16`` (there for the bf16-only grouped_gemm kernel) is lifted, by giving this
    module a copy of the config with ``bf16=True``, which its forward reads for nothing else;
    and when megatron's ``jit_fuser`` is off (arcforge's CPU layer) its SwiGLU helpers are the
    plain functions rather than ``torch.compile`` wrappers. Weights: ``weight1 [h, E*2*ffn]``
    read as ``view(E, h, 2*ffn)`` (expert e = ``[W_gate_e; W_up_e]^T``), ``weight2 [E*ffn, h]``
    read as ``view(E, ffn, h)`` (expert e = ``W_down_e^T``)."""

    def __init__(self, num_local_experts, config, pg_collection=None):
        install_torch_grouped_gemm()
        super().__init__(num_local_experts, config, pg_collection=pg_collection)
        if not config.bf16:
            import copy

            self.config = copy.copy(config)
            self.config.bf16 = True
        import megatron.core.jit as mjit

        if mjit.jit_fuser is mjit.noop_decorator:
            for name in ("activation_func", "activation_func_with_probs"):
                f = getattr(self, name)
                orig = f.__dict__.get("_torchdynamo_orig_callable") if isinstance(f, types.FunctionType) else None
                if orig is not None:
                    setattr(self, name, orig)


@torch.no_grad()
def copy_sequential_to_grouped(seq: SequentialMLP, grouped: GroupedMLP) -> None:
    """Copy a ``SequentialMLP``'s expert weights into a ``GroupedMLP`` (same experts, tp 1)."""
    e = grouped.num_local_experts
    h = grouped.config.hidden_size
    w1 = grouped.weight1.view(e, h, -1)
    w2 = grouped.weight2.view(e, -1, h)
    for i, mlp in enumerate(seq.local_experts):
        w1[i].copy_(mlp.linear_fc1.weight.t())
        w2[i].copy_(mlp.linear_fc2.weight.t())


# ---- attention -------------------------------------------------------------------------------


class SDPAttention(DotProductAttention):
    """megatron's ``DotProductAttention`` (same constructor, checks, ``softmax_scale``) with the
    forward through torch's ``scaled_dot_product_attention``.

    Inputs ``query [sq, b, np, hn]``, ``key``/``value [sk, b, ng, hn]`` (``ng`` query groups
    per partition, GQA when ``ng < np``); output ``[sq, b, np * hn]``. Causal attention with
    ``sq == sk`` uses ``is_causal=True`` and ignores ``attention_mask`` (arcforge passes the
    plain causal mask); otherwise megatron's boolean mask (True = masked) is given to SDPA
    inverted. Attention dropout is applied by SDPA inside megatron's RNG-tracker fork (its
    random stream differs from ``DotProductAttention``'s; arcforge trains with dropout 0)."""

    def _sdpa_supported(self, attention_bias, packed_seq_params) -> bool:
        c = self.config
        return (
            attention_bias is None and packed_seq_params is None and self.softmax_offset is None
            and not c.apply_query_key_layer_scaling and self.scale_mask_softmax.window_size is None
        )

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not self._sdpa_supported(attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                                   attention_bias=attention_bias, packed_seq_params=packed_seq_params)
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, hn]
        causal = mask_type == AttnMaskType.causal and q.shape[2] == k.shape[2]
        mask = None if causal or attention_mask is None else ~attention_mask
        p = self.attention_dropout.p if self.training else 0.0
        kw = dict(attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.softmax_scale,
                  enable_gqa=q.shape[1] != k.shape[1])
        if p > 0 and not self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kw)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kw)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


# ---- choosing and installing them ------------------------------------------------------------


def resolve_kernels(attention: str, experts: str, *, device: str, te: bool) -> tuple[str, str]:
    """The train config's ``kernels`` choice made concrete. ``auto`` means: on CUDA with
    Transformer Engine and both ``auto``, TE's own layer specs (``("te", "te")``); on CUDA
    otherwise ``sdpa`` + ``grouped`` (megatron's local specs with these modules); on CPU
    ``local`` + ``sequential`` (the tested path, unchanged unless set)."""
    if device == "cuda" and te and attention == experts == "auto":
        return "te", "te"
    if attention == "auto":
        attention = "sdpa" if device == "cuda" else "local"
    if experts == "auto":
        experts = "grouped" if device == "cuda" else "sequential"
    if attention not in ATTENTION or experts not in EXPERTS:
        raise ValueError(f"kernels: attention must be one of {ATTENTION}, experts one of {EXPERTS}; "
                         f"got {attention!r}, {experts!r}")
    return attention, experts


def _swap(obj: Any, swaps: dict, seen: dict) -> Any:
    if id(obj) in seen:
        return seen[id(obj)]
    out = obj
    if isinstance(obj, type) and obj in swaps:
        out = swaps[obj]
    elif isinstance(obj, list | tuple):
        out = type(obj)(_swap(x, swaps, seen) for x in obj)
    elif _is_spec(obj):
        changes = {f.name: _swap(getattr(obj, f.name), swaps, seen)
                   for f in dataclasses.fields(obj) if f.init}
        out = dataclasses.replace(obj, **changes)
    seen[id(obj)] = out
    return out


def _is_spec(obj: Any) -> bool:
    """megatron's ``ModuleSpec`` and its ``...Submodules`` dataclasses (not configs)."""
    return (dataclasses.is_dataclass(obj) and not isinstance(obj, type)
            and (type(obj).__name__.endswith("Submodules") or type(obj).__name__ == "ModuleSpec"))


def apply_kernels(spec: Any, *, attention: str, experts: str, dispatcher: str = "megatron") -> Any:
    """A copy of a layer/block/MTP spec from megatron's local spec builders with
    ``DotProductAttention`` -> ``SDPAttention`` (``attention == "sdpa"``), ``GroupedMLP``
    -> ``TorchGroupedMLP`` (``experts == "grouped"``; the spec must come from a config with
    ``moe_grouped_gemm=True``) and ``MoELayer`` -> ``dispatch.DeviceMoELayer``
    (``dispatcher == "device"``). Installs the torch grouped GEMM when experts are grouped."""
    if spec is None:
        return None
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from arcforge.model.dispatch import DISPATCHERS, DeviceMoELayer

    if dispatcher not in DISPATCHERS:
        raise ValueError(f"kernels: dispatcher must be one of {DISPATCHERS}; got {dispatcher!r}")
    if experts == "grouped":
        install_torch_grouped_gemm()
    swaps = {DotProductAttention: SDPAttention} if attention == "sdpa" else {}
    if experts == "grouped":
        swaps[GroupedMLP] = TorchGroupedMLP
    if dispatcher == "device":
        swaps[MoELayer] = DeviceMoELayer
    return _swap(spec, swaps, {})


def uses(model: torch.nn.Module) -> dict[str, str]:
    """Which attention, expert and dispatcher modules a built model contains (logs and tests)."""
    kinds = {type(m).__name__ for m in model.modules()}
    att = "sdpa" if "SDPAttention" in kinds else "te" if "TEDotProductAttention" in kinds else "local"
    exp = ("grouped" if {"TorchGroupedMLP", "GroupedMLP"} & kinds else "te" if "TEGroupedMLP" in kinds
           else "sequential" if "SequentialMLP" in kinds else "none")
    return {"attention": att, "experts": exp, "dispatcher": "device" if "DeviceMoELayer" in kinds else "megatron"}


__all__ = ["ATTENTION", "EXPERTS", "SDPAttention", "TorchGroupedMLP", "apply_kernels", "copy_sequential_to_grouped",
           "gmm", "install_torch_grouped_gemm", "resolve_kernels", "uses"]
