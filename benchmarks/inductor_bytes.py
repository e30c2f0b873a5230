"""Bytes per token that inductor's kernels read and write: arcforge's compiled layers against
the compiled plain-PyTorch reference, on CPU. An estimate, not a timing.

Why: on a GPU the elementwise work between the matmuls (norms, RoPE, routing, dispatch,
residuals) is bound by memory traffic, and a GPU is lent rarely. Inductor knows, for every
node it schedules, the bytes of the buffers that node reads and writes
(``GraphLowering.count_bytes``, what its ``__inductor_metrics`` log reports); that number
depends on the graph and the shapes, not on the device, so it can be read on CPU.

How: proxy-1b's shapes (vocab 4,000) cut to two layers (its dense first layer and one MoE
layer; no MTP), bf16, one micro-batch, forward and backward, compiled with inductor: arcforge's
megatron model through ``compile_layers`` (the device dispatcher, SDPA, grouped experts) and
``benchmarks/peers/moe_ref.py`` with each block through ``torch.compile``. Each side runs in its
own process (inductor's caches off, so every graph is lowered and counted) at two sequence
lengths; the difference divided by the tokens added is the per-token traffic (weights, read
once per step whatever the tokens, drop out). Rows: inductor's generated kernels and the
"extern" kernels it calls as they are (matmuls, attention, grouped GEMMs).

Caveat: the CPU backend fuses somewhat differently from Triton; this counts bytes, it does not
say how fast a kernel moves them.

    python benchmarks/inductor_bytes.py [--seqs 512,1024] [--top 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))


def _kind(node_type: str) -> str:
    if node_type.startswith("Nop"):
        return "nop"
    return "extern" if node_type.startswith("Extern") else "generated"


def child(side: str, seq: int) -> list[list[tuple[int, str, str]]]:
    """Compile and run one side; every graph inductor lowered: [(bytes, kind, ops)] per node."""
    import dataclasses
    import logging

    import torch
    from torch._inductor import graph as igraph

    graphs: list[list[tuple[int, str, str]]] = []
    count_bytes = igraph.GraphLowering.count_bytes

    def counted(self):
        total, counts, runtimes = count_bytes(self)
        rows = []
        for node, words in counts:
            try:
                ops = sorted({str(o.target).replace("aten.", "").replace(".default", "")
                              for sn in node.get_nodes() for o in sn.node.origins})
            except AttributeError:
                ops = []
            rows.append((words * 4, _kind(type(node).__name__), ",".join(ops)[:140]))
        graphs.append(rows)
        return total, counts, runtimes

    igraph.GraphLowering.count_bytes = counted
    logging.getLogger("torch._inductor.compile_fx.__inductor_metrics").setLevel(logging.INFO)
    torch.manual_seed(0)
    from arcforge.model.arch import get_preset

    arch = get_preset("proxy-1b").with_overrides(vocab_size=4000, num_layers=2, mtp_layers=0)
    if side == "reference":
        from moe_ref import build, shape_from_arch

        model = build(dataclasses.replace(shape_from_arch(arch, 4000), L=2), device="cpu")
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block)
        ids = torch.randint(0, 4000, (1, seq + 1))
        for _ in range(2):
            logits = model(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.float().view(-1, 4000), ids[0, 1:]).backward()
    else:
        from arcforge.model.compile import compile_layers
        from arcforge.model.megatron_model import build_model, lm_loss

        model = build_model(arch, seq_length=seq, seed=0, attention="sdpa", experts="grouped", dispatcher="device",
                            params_dtype=torch.bfloat16).bfloat16()
        model.train()
        compile_layers(model)
        for _ in range(3):  # the first call compiles; the same graphs run after
            tokens, labels = (torch.randint(4, 4000, (1, seq)) for _ in range(2))
            lm_loss(model, tokens, labels, loss_scale=1.0).loss.backward()
    return graphs


def per_token(low: list, high: list, tokens: int) -> dict[str, float]:
    """Bytes per token by kind: the difference of two runs' totals over the tokens added."""
    out: dict[str, float] = {}
    for sign, graphs in ((-1, low), (1, high)):
        for rows in graphs:
            for nbytes, kind, _ in rows:
                out[kind] = out.get(kind, 0.0) + sign * nbytes / tokens
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="512,1024")
    ap.add_argument("--top", type=int, default=8, help="generated kernels listed per graph, at the longer sequence")
    ap.add_argument("--child", choices=("arcforge", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("GRAPHS " + json.dumps(child(a.child, a.seq)), flush=True)
        return 0
    low, high = (int(x) for x in a.seqs.split(","))
    env = {**os.environ, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0", "TORCHINDUCTOR_AUTOGRAD_CACHE": "0",
           "PYTHONWARNINGS": "ignore"}
    found: dict[tuple[str, int], list] = {}
    for side in ("reference", "arcforge"):
        for seq in (low, high):
            p = subprocess.run([sys.executable, __file__, "--child", side, "--seq", str(seq)], capture_output=True,
                               text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("GRAPHS ")), None)
            if line is None:
                print(f"inductor_bytes: the {side} child at seq {seq} failed:\n{p.stderr[-3000:]}", file=sys.stderr)
                return 1
            found[side, seq] = json.loads(line[7:])
    print(f"proxy-1b cut to 1 dense + 1 MoE layer, bf16, forward + backward; bytes per token from seq {low} -> {high}")
    print("| side | generated kernels kB/token | extern kernels kB/token | total |")
    print("|---|---|---|---|")
    for side in ("reference", "arcforge"):
        t = per_token(found[side, low], found[side, high], high - low)
        gen, ext = t.get("generated", 0.0) / 1e3, t.get("extern", 0.0) / 1e3
        print(f"| {side} | {gen:.1f} | {ext:.1f} | {gen + ext:.1f} |")
    for side in ("reference", "arcforge"):
        print(f"\n{side}: generated kernels of each graph at seq {high} (kB/token, weights included)")
        for gi, rows in enumerate(found[side, high]):
            gen = sorted(((b / high / 1e3, ops) for b, kind, ops in rows if kind == "generated"), reverse=True)
            print(f"  graph {gi}: {sum(x for x, _ in gen):.1f} in {len(gen)} kernels")
            for x, ops in gen[:a.top]:
                print(f"    {x:6.1f}  {ops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
