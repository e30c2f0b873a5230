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
  that module see ``arcforge.model.grouped_gemm.gmm``: ``torch._grouped_mm`` where it runs
  (16-byte aligned strides; bf16 on CUDA), else one matmul per expert. ``TorchGroupedMLP`` (megatron's
  ``GroupedMLP``, put in the spec by ``apply_kernels``) only lifts its ``bf16`` assertion,
  which exists because the grouped_gemm CUDA kernel is bf16-only, so fp32 runs on CPU too.
* **attention: sdpa.** ``SDPAttention``: ``DotProductAttention``'s constructor, forward
  through ``torch.nn.functional.scaled_dot_product_attention(is_causal=True,
  enable_gqa=True)`` (flash / memory-efficient kernels on CUDA); the cases it does not cover
  (sliding windows, softmax offsets, query-key layer scaling, packed sequences, attention
  bias) go to ``DotProductAttention.forward``.

A third choice, the MoE token dispatcher, lives in ``arcforge.model.dispatch``; ``apply_kernels``
puts it in the spec too. Two more (``cross_entropy_settings``, ``set_fp32_matmul``) change no
module: megatron's fused cross-entropy, and tensor cores for the routers' float32 GEMMs.
Measured on one H100: grouped experts 2.26x over sequential on proxy-1b (docs/benchmarks.md,
"GPU").
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

from arcforge.model.grouped_gemm import gmm, grouped_mm_usable, install_torch_grouped_gemm

from arcforge.model.kernel_choices import ATTENTION, CROSS_ENTROPY, EXPERTS, FP32_MATMUL, resolve_kernels

# ---- grouped experts -------------------------------------------------------------------------


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


def cross_entropy_settings(choice: str) -> dict[str, Any]:
    """``TransformerConfig`` fields for ``kernels.cross_entropy``. ``plain``: megatron's
    ``tensor_parallel.vocab_parallel_cross_entropy``, about ten full passes over fp32 logits
    (cast, max, shift, exp, sum, divide; backward: one-hot update, scale, cast) for the main
    loss and again for each MTP depth. ``fused``: its ``cross_entropy_loss_fusion`` with the
    ``native`` implementation (``megatron.core.fusions.fused_cross_entropy``): the same steps
    in four ``jit_fuser`` functions (``torch.compile`` on GPU). Its backward hands back bf16
    gradients whatever the logits' dtype, so the validator allows it under ``dtype: bf16``
    only (``tests/test_kernels.py`` shows both sides of that)."""
    if choice not in CROSS_ENTROPY:
        raise ValueError(f"kernels: cross_entropy must be one of {CROSS_ENTROPY}; got {choice!r}")
    if choice == "plain":
        return {"cross_entropy_loss_fusion": False}
    return {"cross_entropy_loss_fusion": True, "cross_entropy_fusion_impl": "native"}


def set_fp32_matmul(precision: str) -> None:
    """``kernels.fp32_matmul``: how CUDA runs float32 matmuls, for the whole process.

    Under bf16 the float32 ones are the routers' gating GEMMs (``moe_router_dtype: fp32``):
    megatron without Transformer Engine casts the bf16 input and weight to fp32 and
    multiplies in IEEE fp32, forward and both backward GEMMs; an H200 profile of proxy-1b gave
    them 2.2% of the GPU time (one of them a SIMT kernel), for about 0.2% of the FLOPs.
    ``tf32`` runs them on tensor cores. The forward stays exact (bf16 values fit TF32's 10-bit
    mantissa and products accumulate in fp32); the backward rounds the fp32 logit gradient to
    TF32, still finer than the bf16 of every other gradient. Set with
    ``torch.set_float32_matmul_precision`` (``high`` / ``highest``), which keeps torch's old
    and new TF32 flags in agreement: setting only the new ``fp32_precision`` makes a later
    read of the old ``allow_tf32`` raise (torch 2.13)."""
    if precision not in FP32_MATMUL:
        raise ValueError(f"kernels: fp32_matmul must be one of {FP32_MATMUL}; got {precision!r}")
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")


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


__all__ = ["ATTENTION", "CROSS_ENTROPY", "EXPERTS", "FP32_MATMUL", "SDPAttention", "TorchGroupedMLP", "apply_kernels",
           "copy_sequential_to_grouped", "cross_entropy_settings", "gmm", "grouped_mm_usable",
           "install_torch_grouped_gemm", "resolve_kernels", "set_fp32_matmul", "uses"]
