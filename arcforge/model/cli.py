"""``arcforge model ...``: parameter counts of the architecture presets, HF export of checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

from arcforge.model.arch import PRESETS, ArchConfig, get_preset


def _fmt(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def param_summary(arch: ArchConfig) -> dict:
    return {
        "name": arch.name,
        "total_params": arch.total_params(),
        "active_params": arch.active_params(),
        "total_params_with_mtp": arch.total_params(include_mtp=True),
        "active_params_with_embeddings": arch.active_params(include_embeddings=True),
        "breakdown": arch.param_breakdown(),
    }


def cmd_params(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(PRESETS)
    try:
        rows = [param_summary(get_preset(n)) for n in names]
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows[0] if args.name else rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="parameters (exact counts: --json)", caption="total excludes the MTP layer; "
                  "active counts top-k routed experts and excludes embedding and output layer")
    for col in ("preset", "total", "active", "total + MTP", "active + embeddings"):
        table.add_column(col, justify="right" if col != "preset" else "left")
    for r in rows:
        table.add_row(
            r["name"],
            _fmt(r["total_params"]),
            _fmt(r["active_params"]),
            _fmt(r["total_params_with_mtp"]),
            _fmt(r["active_params_with_embeddings"]),
        )
    Console().print(table)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    import torch

    from arcforge.model.checkpoint import load_checkpoint
    from arcforge.model.hf_convert import export_hf

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, None: None}
    state, arch, extra = load_checkpoint(args.checkpoint)
    out = export_hf(state, arch, args.out_dir, dtype=dtypes[args.dtype], include_mtp=not args.no_mtp)
    step = f" (step {extra['step']})" if "step" in extra else ""
    print(f"exported {arch.name}{step}: {arch.total_params(include_mtp=not args.no_mtp):,} params -> {out}")
    return 0


def add_model_parser(subparsers) -> None:
    """Register ``arcforge model params`` and ``arcforge model export-hf``."""
    m = subparsers.add_parser("model", help="model architecture presets, parameter counts, HF export")
    msub = m.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("params", help="total and active parameters of an architecture preset")
    p.add_argument("name", nargs="?", help=f"preset ({', '.join(PRESETS)}); all presets if omitted")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_params)
    e = msub.add_parser("export-hf", help="write an arcforge checkpoint as a HuggingFace Glm4MoeForCausalLM checkpoint")
    e.add_argument("checkpoint", help="file written by arcforge.model.checkpoint.save_checkpoint")
    e.add_argument("out_dir")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="cast weights (default: as saved)")
    e.add_argument("--no-mtp", action="store_true", help="leave out the MTP layer weights")
    e.set_defaults(fn=cmd_export_hf)
