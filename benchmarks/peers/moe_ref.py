"""The plain-PyTorch reference for GPU throughput: a GLM-style MoE LM, what one GPU allows.

Adapted from ``/work/shared/reference/moe_ref.py`` (the run in issue 12: proxy-1b shapes, 29.9%
MFU at seq 4096 / micro-batch 4 on one H200, 34.9% with ``torch.compile``). The operations are
the same: SDPA attention with GQA (flash), experts through ``torch._grouped_mm`` with sigmoid
top-k routing + per-expert selection bias + a shared expert, bf16 weights, fused AdamW, random
tokens. Changes: the shapes come from an arcforge ``ArchConfig`` (any preset: first dense
layers, routed scaling factor), the module is importable (``run(...)`` returns a dict instead of
running at import), and FLOPs use the MFU formula of ``benchmarks/bench_gpu_mfu.py``.
Not modelled (arcforge's model has them): QK-norm, partial RoPE (no RoPE at all here), the MTP
layer, the auxiliary balance loss. It is not part of arcforge.

    python benchmarks/peers/moe_ref.py [--preset proxy-1b] [--seq 4096] [--mbs 4] [--compile]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass

PEAK_BF16 = 989e12  # H100 SXM / H200 dense bf16 datasheet peak, FLOP/s


@dataclass(frozen=True)
class Shape:
    L: int  # layers
    H: int  # hidden
    NH: int  # attention heads
    KV: int  # query groups
    HD: int  # head dim
    FF: int  # dense FFN
    E: int  # routed experts
    K: int  # top-k
    EF: int  # expert FFN (the shared expert has num_shared * EF)
    V: int  # vocabulary
    dense: int = 1  # first dense layers
    shared: int = 1
    scale: float = 2.5  # routed scaling factor


def shape_from_arch(arch, vocab: int | None = None) -> Shape:
    return Shape(L=arch.num_layers, H=arch.hidden_size, NH=arch.num_attention_heads, KV=arch.num_query_groups,
                 HD=arch.head_dim, FF=arch.ffn_hidden_size, E=arch.num_experts, K=arch.moe_top_k,
                 EF=arch.moe_ffn_hidden_size, V=vocab or arch.vocab_size, dense=arch.first_dense_layers,
                 shared=arch.num_shared_experts, scale=arch.routed_scaling_factor)


PROXY_1B = Shape(L=16, H=1024, NH=16, KV=4, HD=64, FF=3072, E=32, K=4, EF=416, V=4000)  # the run


def attention_params(s: Shape) -> int:
    """One layer's QKV and output projections."""
    return s.H * (s.NH + 2 * s.KV) * s.HD + s.NH * s.HD * s.H


def moe_params(s: Shape) -> int:
    """One MoE layer's matmul weights a token goes through: top-k routed + shared experts, router."""
    return 3 * s.H * s.EF * (s.K + s.shared) + s.H * s.E


def active_matmul_params(s: Shape) -> int:
    """Matmul weights one token goes through: attention (QKV + output projection), the dense
    MLPs, top-k routed + shared experts, routers, and the output layer; no embedding, norms
    or biases. The same count as ``bench_gpu_mfu.active_matmul_params(arch)``."""
    dense = 3 * s.H * s.FF
    return s.L * attention_params(s) + s.dense * dense + (s.L - s.dense) * moe_params(s) + s.H * s.V


def flops_per_token(s: Shape, seq: int) -> float:
    """6 x active matmul params + 12 x layers x hidden x seq (attention, causal not halved)."""
    return 6 * active_matmul_params(s) + 12 * s.L * s.H * seq


def build(s: Shape, device: str = "cuda"):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    layout = {"colmajor": False}

    def gmm(a, w, offs):
        if not layout["colmajor"]:
            try:
                return torch._grouped_mm(a, w, offs=offs)
            except RuntimeError as e:
                print("grouped_mm row-major refused:", str(e)[:160])
                layout["colmajor"] = True
        return torch._grouped_mm(a, w.mT.contiguous().mT, offs=offs)

    class Attn(nn.Module):
        def __init__(m):
            super().__init__()
            m.qkv = nn.Linear(s.H, (s.NH + 2 * s.KV) * s.HD, bias=True)
            m.o = nn.Linear(s.NH * s.HD, s.H, bias=False)

        def forward(m, x):
            B, T, _ = x.shape
            q, k, v = m.qkv(x).split([s.NH * s.HD, s.KV * s.HD, s.KV * s.HD], -1)
            q = q.view(B, T, s.NH, s.HD).transpose(1, 2)
            k = k.view(B, T, s.KV, s.HD).transpose(1, 2)
            v = v.view(B, T, s.KV, s.HD).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return m.o(y.transpose(1, 2).reshape(B, T, s.NH * s.HD))

    class MLP(nn.Module):
        def __init__(m, f):
            super().__init__()
            m.up = nn.Linear(s.H, 2 * f, bias=False)
            m.down = nn.Linear(f, s.H, bias=False)

        def forward(m, x):
            a, b = m.up(x).chunk(2, -1)
            return m.down(F.silu(a) * b)

    class MoE(nn.Module):
        def __init__(m):
            super().__init__()
            m.router = nn.Linear(s.H, s.E, bias=False)
            m.bias = nn.Parameter(torch.zeros(s.E), requires_grad=False)
            m.w1 = nn.Parameter(torch.randn(s.E, s.H, 2 * s.EF) * 0.02)
            m.w2 = nn.Parameter(torch.randn(s.E, s.EF, s.H) * 0.02)
            m.shared = MLP(s.EF * s.shared)

        def forward(m, x):
            B, T, _ = x.shape
            xf = x.reshape(-1, s.H)
            scores = torch.sigmoid(m.router(xf).float())
            _, idx = torch.topk(scores + m.bias, s.K, dim=-1)
            w = scores.gather(-1, idx)
            w = (w / w.sum(-1, keepdim=True) * s.scale).to(x.dtype)
            flat = idx.reshape(-1)
            order = torch.argsort(flat, stable=True)
            tok = order // s.K
            counts = torch.bincount(flat, minlength=s.E)
            xs = xf[tok]
            offs = torch.cumsum(counts, 0).to(torch.int32)
            h = gmm(xs, m.w1, offs)
            a, b = h.chunk(2, -1)
            y = gmm(F.silu(a) * b, m.w2, offs)
            out = torch.zeros_like(xf)
            out.index_add_(0, tok, y * w.reshape(-1)[order, None])
            return (out + m.shared(xf)).view(B, T, s.H)

    class Block(nn.Module):
        def __init__(m, moe):
            super().__init__()
            m.n1, m.n2 = nn.RMSNorm(s.H), nn.RMSNorm(s.H)
            m.attn = Attn()
            m.mlp = MoE() if moe else MLP(s.FF)

        def forward(m, x):
            x = x + m.attn(m.n1(x))
            return x + m.mlp(m.n2(x))

    class LM(nn.Module):
        def __init__(m):
            super().__init__()
            m.emb = nn.Embedding(s.V, s.H)
            m.blocks = nn.ModuleList([Block(i >= s.dense) for i in range(s.L)])
            m.norm = nn.RMSNorm(s.H)
            m.out = nn.Linear(s.H, s.V, bias=False)

        def forward(m, ids):
            x = m.emb(ids)
            for b in m.blocks:
                x = b(x)
            return m.out(m.norm(x))

    return LM().to(device, torch.bfloat16)


def routing_balance(model, ids, s: Shape) -> float:
    """The worst MoE layer's expert load max/mean on one batch (1 = balanced, ``E / K`` = every
    token on the same ``K`` experts): the routing state a speed was measured in, set beside
    arcforge's ``balance_max_mean_worst``. One more forward, eager and without gradients (hooks
    on the routers replay the forward's selection), so the timed steps are untouched."""
    import torch

    loads: list[float] = []

    def hook(moe):
        def on_router(_module, _inputs, logits):
            picked = torch.topk(torch.sigmoid(logits.float()) + moe.bias, s.K, dim=-1).indices
            counts = torch.bincount(picked.reshape(-1), minlength=s.E).float()
            loads.append(float(counts.max() / counts.mean()))
        return on_router

    handles = [b.mlp.router.register_forward_hook(hook(b.mlp)) for b in model.blocks if hasattr(b.mlp, "router")]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return max(loads) if loads else 0.0


def run(s: Shape, seq: int, mbs: int, *, steps: int = 10, warmup: int = 3, compile: bool = False,
        peak: float = PEAK_BF16, seed: int = 0) -> dict:
    """Forward + backward + fused AdamW on random tokens; tokens/s and MFU over ``steps`` after
    ``warmup`` steps (CUDA-synchronised wall clock)."""
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        raise SystemExit("moe_ref: needs a CUDA GPU (torch.cuda.is_available() is False)")
    if not hasattr(torch, "_grouped_mm"):
        raise SystemExit(f"moe_ref: torch {torch.__version__} has no torch._grouped_mm (needs >= 2.8)")
    torch.manual_seed(seed)
    torch.cuda.reset_peak_memory_stats()
    model = build(s)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ids = torch.randint(0, s.V, (mbs, seq + 1), device="cuda")

    def step():
        logits = fwd(ids[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, s.V), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    tok = mbs * seq / dt
    balance = routing_balance(model, ids[:, :-1], s)  # after timing: an eager forward of its own
    f = flops_per_token(s, seq)
    out = dict(side="reference", compile=compile, seq=seq, mbs=mbs, steps=steps, warmup=warmup,
               tokens_per_s=tok, tflops=tok * f / 1e12, mfu=tok * f / peak, loss=float(loss),
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30, shape=asdict(s), balance_max_mean_worst=balance,
               active_matmul_params=active_matmul_params(s), flops_per_token=f)
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="an arcforge preset (default: the issue's proxy-1b shapes, vocab 4000)")
    ap.add_argument("--vocab", type=int, default=int(os.environ.get("VOCAB", 4000)))
    ap.add_argument("--seq", type=int, default=int(os.environ.get("SEQ", 4096)))
    ap.add_argument("--mbs", type=int, default=int(os.environ.get("MBS", 4)))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", default=os.environ.get("COMPILE") == "1")
    a = ap.parse_args()
    if a.preset:
        from arcforge.model.arch import get_preset

        s = shape_from_arch(get_preset(a.preset), a.vocab)
    else:
        s = PROXY_1B
    r = run(s, a.seq, a.mbs, steps=a.steps, warmup=a.warmup, compile=a.compile)
    print(f"ref moe: compile={a.compile} seq={a.seq} mbs={a.mbs} vocab={s.V} tokens/s={r['tokens_per_s']:,.0f} "
          f"TFLOP/s={r['tflops']:.1f} MFU={r['mfu'] * 100:.1f}% mem={r['peak_mem_gib']:.1f}GiB")


if __name__ == "__main__":
    main()
