"""The documented parallel layouts and a layout search, on top of ``arcforge.model.memory``.

``python -m arcforge.model.memory --docs-table`` (or ``-m arcforge.model.memory_plans``) prints
docs/train.md's table of GLM-4.5-Air and GLM-4.5 layouts on 8, 64 and 512 GPUs (the test
checks that the docs hold its output), ``--docs-commands`` their dry-run, config and torchrun
lines, and ``--search PRESET --gpus N --gbs G`` the valid layouts with the least memory per GPU.
Kept apart from the estimate itself, which is pure arithmetic per layout.
"""

from __future__ import annotations

from typing import Any

from arcforge.model.layout import Layout, uneven_hint, validate_layout
from arcforge.model.memory import GIB, estimate_memory


#: (preset, GPUs, tp, pp, ep, micro batch, global batch, seq length, recompute)
DOC_LAYOUTS: list[tuple[str, int, int, int, int, int, int, int, str]] = [
    ("glm45-air", 8, 8, 1, 1, 1, 256, 4096, "full"),
    ("glm45-air", 64, 4, 1, 16, 1, 1024, 4096, "none"),
    ("glm45-air", 512, 2, 1, 64, 1, 4096, 4096, "none"),
    ("glm45", 8, 8, 1, 1, 1, 256, 4096, "full"),
    ("glm45", 64, 8, 2, 4, 1, 1024, 4096, "full"),
    ("glm45", 512, 8, 4, 16, 1, 4096, 4096, "none"),
]

#: nvidia-smi's total memory of an H100 80 GB (81,559 MiB) and an H200 141 GB (143,771 MiB), in GiB
H100_GIB, H200_GIB = 79.6, 140.4


def docs_table() -> str:
    from arcforge.model.arch import get_preset

    rows = ["| model | GPUs | TP | PP | EP | DP | expert DP | micro | global (tokens) | seq | recompute "
            "| weights | grads | optimizer | activations | total GiB/GPU | H100 80 GB | H200 141 GB "
            "| total, optimizer not distributed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for preset, world, tp, pp, ep, mbs, gbs, seq, rc in DOC_LAYOUTS:
        arch = get_preset(preset)
        lay = Layout(world=world, tp=tp, pp=pp, ep=ep, micro_batch=mbs, global_batch=gbs, seq_length=seq)
        errs = validate_layout(arch, lay)
        assert not errs, errs
        g = estimate_memory(arch, lay, recompute=rc).gib()
        nd = estimate_memory(arch, lay, recompute=rc, distributed_optimizer=False).gib()["total"]
        fit = lambda cap: "fits" if g["total"] <= cap else "**no**"  # noqa: E731
        rows.append(f"| {preset} | {world} | {tp} | {pp} | {ep} | {lay.dp} | {lay.expert_dp} | {mbs} | {gbs} ({gbs * seq / 2**20:g} Mi) "
                    f"| {seq} | {rc} | {g['weights']:.1f} | {g['grads']:.1f} | {g['optimizer']:.1f} | {g['activations']:.1f} "
                    f"| {g['total']:.1f} | {fit(H100_GIB)} | {fit(H200_GIB)} | {nd:.1f} |")
    return "\n".join(rows)


def docs_commands() -> str:
    """For every documented layout: the dry-run, the config's parallel part and the torchrun line."""
    out = []
    for preset, world, tp, pp, ep, mbs, gbs, seq, rc in DOC_LAYOUTS:
        dots = {"glm45": "glm4.5", "glm45-air": "glm4.5-air"}[preset]
        nodes = max(1, world // 8)
        launch = "torchrun --nproc-per-node 8" if nodes == 1 else (
            f"torchrun --nnodes {nodes} --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:29500 "
            f"--rdzv-id {preset}-{world}")
        out += [f"# {preset} on {world} GPUs ({nodes} node{'s' if nodes > 1 else ''} x 8)",
                f"arcforge train --dry-run --preset {dots} --gpus {world} --tp {tp} --pp {pp} --ep {ep} "
                f"--mbs {mbs} --gbs {gbs} --seq {seq} --recompute {rc}",
                f"#   config: model: {{preset: {preset}, seq_length: {seq}"
                + (f", recompute: {rc}" if rc != "none" else "") + "}  device: cuda  dtype: bf16",
                f"#           batch: {{micro_batch_size: {mbs}, global_batch_size: {gbs}}}  parallel: {{tp: {tp}, pp: {pp}, ep: {ep}}}"
                "  optimizer: {distributed: true}",
                f"{launch} -m arcforge.cli train configs/{preset}.{world}gpu.yaml"
                + ("   # on every node" if nodes > 1 else ""), ""]
    return "\n".join(out).rstrip()


def search(arch: Any, world: int, *, global_batch: int, seq_length: int = 4096, micro_batch: int = 1,
           top: int = 5) -> list[tuple[float, Layout, str]]:
    """The valid layouts (tp <= 8, even or megatron-uneven pipeline stages, every recompute
    setting) with the least memory per GPU: (GiB, layout, recompute), smallest first."""
    out = []
    eps = [e for e in range(1, arch.num_experts + 1) if arch.num_experts % e == 0]
    for tp in (1, 2, 4, 8):
        for pp in range(1, arch.num_layers + 1):
            if world % (tp * pp):
                continue
            split = (None, None) if arch.num_layers % pp == 0 else uneven_hint(arch.num_layers, pp)
            if split is None:
                continue
            for ep in eps:
                lay = Layout(world=world, tp=tp, pp=pp, ep=ep, micro_batch=micro_batch, global_batch=global_batch,
                             seq_length=seq_length, first_stage_layers=split[0], last_stage_layers=split[1])
                if validate_layout(arch, lay):
                    continue
                for rc in ("none", "selective", "full"):
                    out.append((estimate_memory(arch, lay, recompute=rc).worst.total / GIB, lay, rc))
    out.sort(key=lambda r: r[0])
    return out[:top]


def main(argv: list[str] | None = None) -> int:
    """``python -m arcforge.model.memory --docs-table`` or ``--search PRESET --gpus N --gbs G``."""
    import argparse

    from arcforge.model.arch import get_preset

    ap = argparse.ArgumentParser(prog="python -m arcforge.model.memory")
    ap.add_argument("--docs-table", action="store_true", help="the table of docs/train.md")
    ap.add_argument("--docs-commands", action="store_true", help="dry-run, config and torchrun lines of those layouts")
    ap.add_argument("--search", metavar="PRESET")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gbs", type=int, default=256)
    ap.add_argument("--seq", type=int, default=4096)
    args = ap.parse_args(argv)
    if args.search:
        for gib_, lay, rc in search(get_preset(args.search), args.gpus, global_batch=args.gbs, seq_length=args.seq):
            split = f" first/last {lay.first_stage_layers}/{lay.last_stage_layers}" if lay.first_stage_layers else ""
            print(f"{gib_:8.1f} GiB  tp {lay.tp} pp {lay.pp}{split} ep {lay.ep} dp {lay.dp} recompute {rc}")
    if args.docs_commands:
        print(docs_commands())
    if args.docs_table or not (args.search or args.docs_commands):
        print(docs_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DOC_LAYOUTS", "H100_GIB", "H200_GIB", "docs_commands", "docs_table", "main", "search"]
