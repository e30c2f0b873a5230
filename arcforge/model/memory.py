"""Memory per GPU of a megatron-core training layout, and the layout's validity.

Pure arithmetic on an ``ArchConfig`` (``arcforge.model.arch``): no torch, no megatron import.
Used by ``arcforge train CONFIG --dry-run`` and by the tables in docs/train.md
("Parallel layouts and memory"). Every number is an *estimate* of what megatron-core 0.16.1
allocates; it has not been compared with a measured ``torch.cuda.max_memory_allocated`` on
a multi-GPU run (no GPU was available when it was written).

Notation
--------
``h`` hidden size, ``nh`` attention heads, ``ng`` query groups (KV heads), ``d`` head dim,
``f`` dense FFN size, ``fe`` routed-expert FFN size, ``fs`` shared-expert FFN size
(``fe × num_shared_experts``), ``E`` routed experts, ``k`` experts per token (top-k),
``V`` vocabulary, ``s`` sequence length, ``b`` micro-batch size, ``t`` tensor-parallel
size (TP), ``p`` pipeline-parallel size (PP), ``e`` expert-parallel size (EP), ``et``
expert-tensor-parallel size (megatron's default: ``et = t``), ``D`` data-parallel size
``world / (t·p)``, ``De`` expert-data-parallel size ``world / (et·e·p)``,
``m`` micro-batches per step per data-parallel rank ``gbs / (b·D)``.

Layout rules (``validate_layout``; megatron-core 0.16.1 ``parallel_state.initialize_model_parallel``
and ``TransformerConfig.__post_init__``)
------------------------------------------------------------------------------------------
* ``world % (t·p) == 0`` and ``D = world / (t·p)`` (context parallel 1);
* ``world % (et·e·p) == 0``: the expert grid (et × e × p) must tile the world. With
  ``et = t`` that is "``e`` divides ``D``"; with ``et = 1`` it is "``e`` divides ``t·D``";
* ``E % e == 0`` (``MoELayer``: every EP rank holds ``E/e`` experts);
* ``nh % t == 0``; ``ng % t == 0`` or ``t % ng == 0`` (megatron's rule: with ``t > ng`` the
  KV heads are replicated, one group per rank);
* ``V % t == 0`` (vocab-parallel embedding and output layer; megatron-core does not pad);
* ``s % t == 0`` when ``t > 1`` (sequence parallelism, which arcforge turns on with TP and
  which megatron requires with EP and TP together);
* layers: ``L % p == 0`` (even stages, what arcforge's config can express), or an uneven
  split ``num_layers_in_first_pipeline_stage`` / ``..._last_...`` (megatron's fields, here
  ``first_stage_layers`` / ``last_stage_layers``) with the rest divisible by the middle stages;
* ``gbs % (b·D) == 0`` (and the batch warm-up start likewise).

Bytes per parameter (``W`` weights, ``G`` gradients, ``O`` optimizer state)
--------------------------------------------------------------------------
bf16 training (megatron's ``Float16OptimizerWithFloat16Params`` / distributed optimizer):
``W = 2`` (bf16 model copy), ``G = 4`` (fp32 grad buffer, ``grad_reduce_in_fp32: true``,
what arcforge sets) or ``2``, and optimizer state ``O = 4 (fp32 master) + 4 + 4 (Adam m, v)
= 12`` (Muon: ``4 + 4`` momentum = 8 for hidden matrices, 12 for embedding / output
layer, which stay on AdamW). With megatron's **distributed optimizer** the state of a
non-expert parameter is sharded over ``D`` (``O/D``) and that of an expert parameter over
``De`` (``O/De``): megatron's expert-data-parallel group. Without it, ``O`` is whole on every
rank. fp32 training (the CPU path): ``W = 4``, ``G = 4``, ``O = 8`` (no master copy).

Parameters on one rank (stage ``i`` with ``Ld`` dense and ``Lm`` MoE layers)
--------------------------------------------------------------------------
* attention per layer: ``(h·(nh + 2·ng')·d + nh·d·h + (nh + 2·ng')·d [qkv bias]) / t
  + 2d [QK-norm] + h [input norm]``, ``ng' = ng`` if ``t ≤ ng`` else ``t`` (KV replicated);
* dense MLP per layer: ``3·h·f / t + h [pre-MLP norm]``;
* MoE per layer: routed experts ``(E/e)·3·h·fe / et`` (**expert parameters**), shared expert
  ``3·h·fs / t``, router ``h·E`` (replicated over TP), pre-MLP norm ``h``;
  the expert-bias buffer (``E`` fp32 values) is counted as 4 bytes each, no grad or state;
* first stage: input embedding ``V·h / t``; last stage: output layer ``V·h / t``, final
  norm ``h``, and per MTP depth ``2h + 2h·h / t + [one MoE layer] + h`` plus a second copy of
  the embedding ``V·h / t`` when the last stage is not also the first (megatron builds
  ``self.embedding`` wherever ``mtp_process`` is true).

Activations (values per token of a micro-batch, per layer; bytes = values × ``a``, ``a = 2`` for bf16, ``4`` for fp32)
------------------------------------------------------------------------------------------------------------------
Sequence parallelism is assumed with ``t > 1`` (arcforge sets it), so the norm inputs and
the residual stream are split over ``t`` as well. Derived by listing what autograd keeps
(dropout is 0 in GLM-4.5, so there are no dropout masks):

* attention, ``recompute: none``:
  ``h/t`` (input norm's input) + ``h/t`` (its output = QKV input)
  + ``(nh/t + 2·g)·d`` (q, k, v after RoPE, kept by core attention; ``g = ng/t`` KV groups
  per rank, 1 when ``t > ng``) + ``(nh/t + g)·d`` (QK-norm inputs, if QK-norm)
  + ``nh·d/t`` (core attention output = output-projection input)
  + core-attention internals: flash / fused (SDPA, TE) ``2·nh/t`` (fp32 log-sum-exp),
  unfused (megatron's local ``DotProductAttention``) ``nh·s/t``: the softmax output, which
  the softmax backward and the ``bmm`` with ``v`` share (Korthikanti et al.'s ``5·heads·s``
  bytes per token add the dropout mask and output, which dropout 0 does not keep; counted by
  ``benchmarks/activation_bytes.py``: with ``2.5·nh·s/t`` the estimate was twice what
  autograd saves at seq 4096);
* dense MLP, ``none``: ``h/t + h/t`` (pre-MLP norm input, output) + ``2f/t`` (fc1 output:
  gate and up) + ``f/t`` (SiLU output) + ``f/t`` (product = fc2 input) = ``2h/t + 4f/t``;
* MoE, ``none``: ``2h/t`` (pre-MLP norm input, output: router and shared-expert input)
  + ``4·E/t`` (router logits and sigmoid scores, two fp32 tensors = 4 bf16-sized values)
  + ``k·h·et/t`` (expert fc1 input: each token ``k`` times, all-gathered over the
  expert-TP group; balanced routing) + ``4·k·fe/t`` (fc1 output ``2k·fe``, SiLU output
  ``k·fe``, fc2 input ``k·fe``) + ``k·h/t`` (expert outputs kept for the routing-weight
  product) + ``4·fs/t`` (the shared expert's gated MLP, as the dense MLP);
* ``recompute: selective`` = megatron ``recompute_granularity: selective`` with
  ``recompute_modules: [core_attn, layernorm, moe_act]``: drops the core-attention internals,
  both norm outputs (``h/t`` each) and, in the routed experts, the SiLU output and fc2 input
  (``2·k·fe/t``);
* ``recompute: full`` (``recompute_granularity: full``, ``recompute_method: uniform``,
  ``recompute_num_layers: 1``): each layer keeps only its input ``h/t``; the backward pass
  recomputes one layer at a time, so one layer's ``none`` activations (for one micro-batch)
  are added once per stage;
* last stage (one micro-batch: in 1F1B the last stage runs each micro-batch's backward
  right after its forward): final-norm and output-layer inputs ``2h/t``, logits ``V/t``
  (bf16) + the cross-entropy's fp32 softmax (``2V/t``) = ``3V/t``; per MTP depth the same
  logits again, ``4h/t`` (enorm, hnorm inputs, eh_proj input ``2h``) and one MoE layer
  (``none`` activations, or the recompute setting's);
* × ``s·b`` tokens, × ``a`` bytes;
* **pipeline in flight**: the 1F1B schedule keeps ``min(p − i, m)`` micro-batches' layer
  activations on stage ``i`` (``p`` on the first stage when ``m ≥ p``); no interleaving
  (VPP) is modelled.

Totals
------
``total(stage) = W·P_stage + G·P_stage + O_dense·P_dense/D' + O_expert·P_expert/De'
+ activations(stage) + reserve``, ``D' = D`` and ``De' = De`` with the distributed optimizer,
else 1; ``reserve`` (default 3 GiB) stands for the CUDA context, NCCL buffers, the caching
allocator's fragmentation and temporary buffers, none of which this models. The layout's
memory per GPU is the largest stage's total. Not modelled: virtual pipeline stages, context
parallelism, activation offloading, FP8, communication buffers of the all-to-all dispatcher
(they scale like the expert input), imbalanced routing (an overloaded expert's rank holds
more than ``k·h·s·b/e``-style average tokens: a max/mean load of 2 doubles the expert terms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from arcforge.model.layout import Layout, stage_layers, validate_layout  # noqa: F401 (re-exported)

GIB = 1024**3

Recompute = Literal["none", "selective", "full"]


@dataclass
class StageMemory:
    stage: int
    layers: tuple[int, int]  # (dense, moe)
    in_flight: int  # micro-batches whose activations this stage holds at the peak
    params: int  # parameters on one rank of this stage
    expert_params: int  # of which routed-expert parameters
    weights: float  # bytes
    grads: float
    optimizer: float
    activations: float
    reserve: float
    total: float


@dataclass
class MemoryEstimate:
    arch: str
    layout: dict[str, Any]
    dtype: str
    optimizer: str
    distributed_optimizer: bool
    grad_fp32: bool
    recompute: str
    attention: str
    dp: int
    expert_dp: int
    micro_batches: int
    stages: list[StageMemory] = field(default_factory=list)

    @property
    def worst(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    def gib(self) -> dict[str, float]:
        w = self.worst
        return {k: getattr(w, k) / GIB for k in ("weights", "grads", "optimizer", "activations", "reserve", "total")}

    def fits(self, gpu_gib: float) -> bool:
        return self.worst.total / GIB <= gpu_gib

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_stage"] = self.worst.stage
        d["per_gpu_gib"] = self.gib()
        return d


def _attn_params(arch: Any, t: int) -> float:
    h, nh, ng, d = arch.hidden_size, arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    ngr = ng / t if ng % t == 0 else 1  # groups per rank (replicated when t > ng)
    qkv = (nh / t + 2 * ngr) * d
    n = h * qkv + (nh / t) * d * h
    if arch.qkv_bias:
        n += qkv
    if arch.qk_norm:
        n += 2 * d
    return n + h  # input norm (replicated)


def _dense_mlp_params(arch: Any, t: int) -> float:
    return 3 * arch.hidden_size * arch.ffn_hidden_size / t + arch.hidden_size


def _moe_params(arch: Any, t: int, e: int, et: int) -> tuple[float, float]:
    """(non-expert, routed-expert) parameters of one MoE layer's MLP part on one rank."""
    h = arch.hidden_size
    experts = (arch.num_experts / e) * 3 * h * arch.moe_ffn_hidden_size / et
    dense = 3 * h * arch.shared_expert_ffn_size / t + h * arch.num_experts + h  # shared expert, router, pre-MLP norm
    return dense, experts


def _act_values(arch: Any, lay: Layout, recompute: str, attention: str, moe: bool) -> float:
    """Activation values (not bytes) kept per token of a micro-batch for one layer (see docstring)."""
    h, nh, ng, d = arch.hidden_size, arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    t, et, s = lay.tp, lay.expert_tp, lay.seq_length
    ngr = ng / t if ng % t == 0 else 1
    if recompute == "full":
        return h / t
    sel = recompute == "selective"
    a = h / t + (0 if sel else h / t)  # input norm: input, output
    a += (nh / t + 2 * ngr) * d  # q, k, v
    if arch.qk_norm:
        a += (nh / t + ngr) * d
    a += nh / t * d  # core attention output
    if not sel:
        a += 2 * nh / t if attention == "flash" else nh * s / t
    m = h / t + (0 if sel else h / t)  # pre-MLP norm: input, output
    if not moe:
        m += 4 * arch.ffn_hidden_size / t
    else:
        k, fe, E = arch.moe_top_k, arch.moe_ffn_hidden_size, arch.num_experts
        m += 4 * E / t  # router logits + scores, fp32 (2 values each at bf16)
        m += k * h * et / t  # expert fc1 input (all-gathered over expert-TP)
        m += (2 if sel else 4) * k * fe / t  # fc1 out (2k fe) [+ SiLU out, fc2 in]
        m += k * h / t  # expert outputs for the routing-weight product
        m += 4 * arch.shared_expert_ffn_size / t
    return a + m


def estimate_memory(arch: Any, lay: Layout, *, dtype: str = "bf16", optimizer: str = "adam",
                    distributed_optimizer: bool = True, grad_fp32: bool = True, recompute: Recompute = "none",
                    attention: Literal["flash", "unfused"] = "flash", reserve_gib: float = 3.0) -> MemoryEstimate:
    """Per-stage memory of one GPU for ``arch`` trained with layout ``lay`` (formulas: module docstring)."""
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute: expected none, selective or full (got {recompute!r})")
    t, p, e, et = lay.tp, lay.pp, lay.ep, lay.expert_tp
    D = lay.dp or max(1, lay.world // (t * p))
    De = lay.expert_dp or max(1, lay.world // (et * e * p))
    m = lay.micro_batches or max(1, lay.global_batch // max(1, lay.micro_batch * D))
    bf16 = dtype == "bf16"
    a = 2 if bf16 else 4
    W = 2 if bf16 else 4
    G = 4 if (grad_fp32 or not bf16) else 2
    master = 4 if bf16 else 0
    O_adam = master + 8
    O_hidden = master + (4 if optimizer == "muon" else 8)
    h, V = arch.hidden_size, arch.vocab_size
    tokens = lay.seq_length * lay.micro_batch
    attn, dmlp = _attn_params(arch, t), _dense_mlp_params(arch, t)
    moe_dense, moe_exp = _moe_params(arch, t, e, et)
    bias_buf = arch.num_experts if arch.expert_bias else 0
    layer_act = {moe: _act_values(arch, lay, recompute, attention, moe) for moe in (False, True)}
    none_act = {moe: _act_values(arch, lay, "none", attention, moe) for moe in (False, True)}
    est = MemoryEstimate(arch=arch.name, layout=asdict(lay), dtype=dtype, optimizer=optimizer,
                         distributed_optimizer=distributed_optimizer, grad_fp32=grad_fp32, recompute=recompute,
                         attention=attention, dp=D, expert_dp=De, micro_batches=m)
    div_d = D if distributed_optimizer else 1
    div_e = De if distributed_optimizer else 1
    for i, (nd, nm) in enumerate(stage_layers(arch, lay)):
        first, last = i == 0, i == p - 1
        dense_p = nd * (attn + dmlp) + nm * (attn + moe_dense)  # hidden matrices etc.
        expert_p = nm * moe_exp
        emb_p = 0.0  # embedding / output layer (AdamW under Muon too)
        buffers = nm * bias_buf
        if first:
            emb_p += V * h / t
        if last:
            emb_p += V * h / t  # output layer
            dense_p += h  # final norm
            for _ in range(arch.mtp_layers):
                dense_p += 2 * h + 2 * h * h / t + attn + moe_dense + h
                expert_p += moe_exp
                buffers += bias_buf
            if arch.mtp_layers and not first:
                emb_p += V * h / t  # the MTP block's embedding copy on the last stage
        P = dense_p + expert_p + emb_p
        weights = W * P + 4 * buffers
        grads = G * P
        opt = (O_hidden * dense_p + O_adam * emb_p) / div_d + O_hidden * expert_p / div_e
        in_flight = max(1, min(p - i, m))
        vals = in_flight * (nd * layer_act[False] + nm * layer_act[True])
        if recompute == "full" and (nd + nm):
            vals += none_act[nm > 0]  # the one layer being recomputed in the backward pass
        if last:
            vals += 2 * h / t + 3 * V / t
            vals += arch.mtp_layers * (4 * h / t + 3 * V / t + layer_act[True])
        act = vals * a * tokens
        reserve = reserve_gib * GIB
        est.stages.append(StageMemory(
            stage=i, layers=(nd, nm), in_flight=in_flight, params=int(round(P)), expert_params=int(round(expert_p)),
            weights=weights, grads=grads, optimizer=opt, activations=act, reserve=reserve,
            total=weights + grads + opt + act + reserve))
    return est


def _n(x: float) -> str:
    return f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.2f}M"


def format_estimate(est: MemoryEstimate, gpu_gib: float | None = None) -> str:
    """Human-readable breakdown: the layout, every stage, and the worst stage's lines."""
    lay = est.layout
    et = lay["etp"] if lay["etp"] is not None else lay["tp"]
    lines = [
        f"model {est.arch}: {lay['world']} GPU{'s' if lay['world'] > 1 else ''} = tp {lay['tp']} x pp {lay['pp']} x dp {est.dp}; "
        f"ep {lay['ep']} (expert tp {et}, expert dp {est.expert_dp})",
        f"batch: micro {lay['micro_batch']}, global {lay['global_batch']} sequences of {lay['seq_length']} tokens "
        f"({lay['global_batch'] * lay['seq_length']:,} tokens/step), {est.micro_batches} micro-batches per step per dp rank",
        f"numerics: {est.dtype}, optimizer {est.optimizer} "
        f"({'distributed over dp' if est.distributed_optimizer else 'not distributed'}), "
        f"grads {'fp32' if est.grad_fp32 or est.dtype != 'bf16' else 'bf16'}, recompute {est.recompute}, "
        f"attention {est.attention}",
    ]
    if len(est.stages) > 1:
        lines.append("stage  layers(dense+moe)  in-flight  params/GPU   total GiB")
        for s in est.stages:
            lines.append(f"{s.stage:>5}  {s.layers[0]:>6}+{s.layers[1]:<10} {s.in_flight:>9}  {_n(s.params):>9}  {s.total / GIB:>10.2f}")
    w = est.worst
    g = est.gib()
    lines.append(f"memory per GPU (stage {w.stage}: {_n(w.params)} parameters, of which {_n(w.expert_params)} in routed experts):")
    for k in ("weights", "grads", "optimizer", "activations", "reserve", "total"):
        lines.append(f"  {k:<12}{g[k]:>9.2f} GiB")
    if gpu_gib is not None:
        ok = est.fits(gpu_gib)
        lines.append(f"fits a {gpu_gib:g} GiB GPU: {'yes' if ok else 'NO'} "
                     f"({'headroom' if ok else 'over by'} {abs(gpu_gib - g['total']):.1f} GiB)")
    return "\n".join(lines)


__all__ = ["Layout", "validate_layout", "stage_layers", "estimate_memory", "format_estimate", "MemoryEstimate",
           "StageMemory", "GIB"]


if __name__ == "__main__":  # ``python -m arcforge.model.memory``: the documented layouts and a search
    from arcforge.model.memory_plans import main

    raise SystemExit(main())
