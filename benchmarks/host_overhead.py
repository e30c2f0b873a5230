"""Host time per training step, on CPU: arcforge's megatron model against the plain-PyTorch reference.

Why: on one H100 a proxy-1b step of arcforge's GPU path spent about 0.19 s that did not grow
with the micro-batch (docs/benchmarks.md, "GPU"), while the reference (``peers/moe_ref.py``)
hid its launches behind the GPU's work. Much of such a cost is the host's: Python, torch's
dispatcher and autograd per operation, which a GPU run pays once per kernel launch. That
part can be measured without a GPU: build the preset's layer structure (layers, experts,
top-k, heads, query groups, the MTP layer) with every width shrunk until the arithmetic is
negligible (hidden 64, head dim 4, expert FFN 16, seq 64, one sequence, vocab 256, one CPU
thread), and time a training step. What is left is the per-operation cost of each side's
code: a lower bound on the time a GPU step needs from the host, and how it compares between
the two sides and between arcforge's options (megatron's token dispatcher, arcforge's device
dispatcher, ``model.compile: layers``, whose inductor kernels on CPU are C++ rather than
Triton, so the compiled row shows the Python and dispatch saved, not GPU kernel fusion).

    python benchmarks/host_overhead.py [--preset proxy-1b] [--steps 20] [--warmup 3] [--no-compile] [--out FILE]

Each eager row also counts the host reads of one more forward and backward
(``arcforge.model.host_reads``: ``.item()``, ``.cpu()``, ``masked_select`` and the like, each a
sync on a GPU), in all and inside the layers' code.

Each row runs in this process one after the other: forward, backward and torch AdamW
(``foreach``) on the same random tokens, ``--steps`` timed after ``--warmup`` (the compiled
row compiles in its warm-up). Ratios are against the reference's eager row. The reference is
not compiled here: traced, ``torch._grouped_mm`` accepts bf16 only, and the reference on CPU
runs in fp32 like arcforge's model (arcforge wraps it in a custom operator, which is why its
compiled row exists).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE.parent))

SHRINK = dict(hidden_size=64, ffn_hidden_size=64, moe_ffn_hidden_size=16, head_dim=4, vocab_size=256)
SEQ, MBS = 64, 1


def _time(step, steps: int, warmup: int, fwd_bwd=None, layer_code=None) -> dict:
    """Time ``step``; with ``fwd_bwd`` (the step's forward and backward) and ``layer_code`` (a
    site predicate), then count the host reads of one more forward and backward
    (``arcforge.model.host_reads``: what a GPU would sync on), in all and in the layers. Not the
    optimizer's: on CPU torch's AdamW reads its step counters, which a GPU run keeps on the host."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    row = dict(ms_per_step=(time.perf_counter() - t0) / steps * 1e3, warmup_s=first, host_reads=None, layer_reads=None)
    if fwd_bwd is not None:
        from arcforge.model.host_reads import HostReads

        with HostReads() as reads:
            fwd_bwd()
        row.update(host_reads=reads.total, layer_reads=sum(n for site, n in reads.by_site() if layer_code(site)))
    return row


def arcforge_row(arch, variant: str, compile_layers_: bool, steps: int, warmup: int) -> dict:
    import torch

    from arcforge.model.megatron_model import build_model, causal_attention_mask, init_runtime, lm_loss

    attention, experts, dispatcher = variant.split(",")
    init_runtime("cpu", seed=0)
    model = build_model(arch, seq_length=SEQ, seed=0, attention=attention, experts=experts, dispatcher=dispatcher)
    model.train()
    if compile_layers_:
        from arcforge.model.compile import compile_layers

        compile_layers(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    tokens, labels = (torch.randint(4, arch.vocab_size, (MBS, SEQ), generator=g) for _ in range(2))
    mask = causal_attention_mask(SEQ)

    def fwd_bwd():
        lm_loss(model, tokens, labels, attention_mask=mask).loss.backward()

    def step():
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from arcforge.model.host_reads import LAYER_CODE

    # compiled layers run generated code that no dispatch mode sees: their reads are the eager
    # variant's (a layer with a read would not compile into one graph: tests/test_compile.py)
    row = _time(step, steps, warmup, None if compile_layers_ else fwd_bwd, lambda site: site.startswith(LAYER_CODE))
    name = f"arcforge [{variant}]" + (" compiled layers" if compile_layers_ else "")
    return dict(side=name, **row)


def reference_row(arch, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    import moe_ref

    s = moe_ref.shape_from_arch(arch, arch.vocab_size)
    torch.manual_seed(0)
    model = moe_ref.build(s, device="cpu").float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ids = torch.randint(0, s.V, (MBS, SEQ + 1), generator=torch.Generator().manual_seed(0))

    def fwd_bwd():
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.float().view(-1, s.V), ids[:, 1:].reshape(-1)).backward()

    def step():
        fwd_bwd()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = _time(step, steps, warmup, fwd_bwd, lambda site: "moe_ref.py" in site)
    return dict(side="reference moe_ref eager", **row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="proxy-1b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled rows (inductor needs a C++ compiler)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)

    import torch

    from arcforge.model.arch import get_preset

    torch.set_num_threads(1)
    arch = get_preset(a.preset).with_overrides(**SHRINK)
    rows = [reference_row(arch, a.steps, a.warmup)]
    for variant in ("sdpa,grouped,megatron", "sdpa,grouped,device", "local,sequential,megatron"):
        rows.append(arcforge_row(arch, variant, False, a.steps, a.warmup))
    if not a.no_compile:
        rows.append(arcforge_row(arch, "sdpa,grouped,device", True, a.steps, a.warmup))
    ref = rows[0]["ms_per_step"]
    print(f"{a.preset} structure ({arch.num_layers} layers, {arch.num_experts} experts top-{arch.moe_top_k}, "
          f"MTP {arch.mtp_layers}), widths shrunk {SHRINK}, seq {SEQ}, micro-batch {MBS}, 1 CPU thread, "
          f"torch {torch.__version__}")
    print(f"| side | ms per step | x reference eager | first {a.warmup} steps, s | host reads per forward+backward (in layers) |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["x_reference"] = r["ms_per_step"] / ref
        reads = "as eager" if r["host_reads"] is None else f"{r['host_reads']} ({r['layer_reads']})"
        print(f"| {r['side']} | {r['ms_per_step']:.1f} | {r['x_reference']:.2f} | {r['warmup_s']:.1f} | {reads} |")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(preset=a.preset, shrink=SHRINK, seq=SEQ, mbs=MBS, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
