"""CPU/GPU loss parity: train the first N steps of a config from its seed and write the losses.

    python -m arcforge.model.parity_check CONFIG --device cpu|cuda --steps N --out FILE.json
    python -m arcforge.model.parity_check CONFIG --device cuda --steps N --out gpu.json --compare-with cpu.json

The run uses the config's data, batch plan, schedules and optimizer (the data order is that of
a full run of the config; only the first ``N`` steps are taken) in a scratch output directory
(no logs, no checkpoints; megatron's dataset index cache of the config is reused). ``device``
replaces the config's; on CPU ``dtype`` becomes fp32, the parallel sizes 1 and the GPU-only
kernel forms of the same arithmetic (``kernels.cross_entropy: fused``, ``fp32_matmul: tf32``)
their plain ones; on CUDA the config's ``dtype`` (normally bf16), parallel sizes and kernels stay.

Initial weights: megatron initialises on CPU and on CUDA from different random streams, so by
default (``--init parity``) every parameter is overwritten, before the first step, by values
drawn from one seeded CPU generator in parameter-name order (matrices ``N(0, init_std)``,
norm weights 1, biases 0), and the fp32 main weights of megatron's optimizer get the same fp32
values. Both devices then start from identical weights (local layer specs, tp = pp = ep = 1:
the same names and shapes). ``--init megatron`` keeps megatron's own initialisation.

The JSON holds the per-step ``loss``, ``mtp_loss``, ``aux_loss``, ``grad_norm`` and
``balance_max_mean``, plus the device, dtype and versions. ``--compare-with`` checks this run's
``loss`` against another file's, step by step, within ``--rtol`` (bf16 against fp32: the
default 0.03), prints the table and exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COLUMNS = ("loss", "mtp_loss", "aux_loss", "grad_norm", "balance_max_mean")


def parity_config(path: str, device: str, work_dir: str):
    """The config at ``path`` with ``device`` and a scratch ``output_dir`` (validated)."""
    from arcforge.model.train_config import load_train_config, parse_train_config

    base = load_train_config(path, check_data=False)
    data = base.model_dump(mode="json")
    data["device"] = device
    if device == "cpu":
        data["dtype"] = "fp32"
        data["parallel"] = {"tp": 1, "pp": 1, "ep": 1}
        # the GPU-only forms of the same arithmetic: megatron's fused loss (bf16) and TF32 GEMMs
        data["kernels"] = {**data["kernels"], "cross_entropy": "plain", "fp32_matmul": "ieee"}
    data["output_dir"] = work_dir
    data["checkpoint"] = {**data["checkpoint"], "dir": None}
    data["data"] = {**data["data"], "cache_dir": base.cache_dir}
    data["log"] = {"print_interval": 0, "plot": False}
    return parse_train_config(data, path)


def parity_weights(model, seed: int, std: float) -> dict[str, Any]:
    """Device-independent initial values for every parameter of ``model`` (fp32, on CPU)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if p.dim() >= 2:
            out[name] = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32) * std
        elif name.endswith("bias"):
            out[name] = torch.zeros(tuple(p.shape), dtype=torch.float32)
        else:
            out[name] = torch.ones(tuple(p.shape), dtype=torch.float32)
    return out


def set_weights(model, values: dict[str, Any]) -> None:
    """Copy ``values`` into the parameters (and megatron's fp32 main copies, where present: whole,
    or under the distributed optimizer a flat slice, which is whole on one data-parallel rank)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            v = values[name]
            p.copy_(v.to(p.device, p.dtype))
            main = getattr(p, "main_param", None)
            if main is None:
                continue
            if getattr(p, "main_param_sharded", False):
                if main.numel() != v.numel():
                    raise ValueError(f"parity weights: {name}'s main weights are split over data-parallel ranks; "
                                     "compare with one rank (or optimizer.distributed: false)")
                v = v.reshape(-1)
            main.copy_(v.to(main.device, main.dtype))


def first_losses(cfg, steps: int, *, init: str = "parity") -> list[dict[str, Any]]:
    """Rows of the first ``steps`` optimizer steps of ``cfg`` (a ``TrainConfig``), from its seed."""
    from arcforge.model.train_loop import _unwrap, started

    with started(cfg, resume=False, verbose=False) as trainer:
        if init == "parity":
            model = _unwrap(trainer.model)
            set_weights(model, parity_weights(model, cfg.seed, trainer.arch.init_std))
        return [trainer.advance(None) for _ in range(min(steps, trainer.total_steps))]


def run(config: str, device: str, steps: int, *, init: str = "parity", work_dir: str | None = None) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory(prefix="parity-", dir=work_dir) as tmp:
        cfg = parity_config(config, device, tmp)
        t0 = time.perf_counter()
        rows = first_losses(cfg, steps, init=init)
        seconds = time.perf_counter() - t0
    import megatron.core

    out: dict[str, Any] = {
        "config": config, "device": device, "dtype": cfg.dtype, "seed": cfg.seed, "init": init,
        "preset": cfg.model.preset, "seq_length": cfg.model.seq_length, "steps": len(rows),
        "batch_sizes": [r["batch_size"] for r in rows], "seconds": round(seconds, 3),
        "torch": torch.__version__, "megatron_core": getattr(megatron.core, "__version__", None),
    }
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    for k in COLUMNS:
        out[k] = [r.get(k) for r in rows]
    return out


def compare(a: dict[str, Any], b: dict[str, Any], rtol: float = 0.03) -> list[str]:
    """Steps whose ``loss`` differ by more than ``rtol`` (relative to ``b``): one line each."""
    bad = []
    la, lb = a["loss"], b["loss"]
    if len(la) != len(lb):
        bad.append(f"{len(la)} steps against {len(lb)}")
    for i, (x, y) in enumerate(zip(la, lb), start=1):
        if not abs(x - y) <= rtol * abs(y):
            bad.append(f"step {i}: loss {x:.5f} ({a['device']}) vs {y:.5f} ({b['device']}): "
                       f"relative difference {abs(x - y) / abs(y):.4f} > {rtol}")
    return bad


def _table(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Per step: the loss on both sides and the relative differences of the loss and, where both
    sides logged them, the MTP loss, the aux loss, the gradient norm and the router load
    (max/mean expert load; only the loss is checked)."""
    extra = [k for k in COLUMNS[1:] if a.get(k) and b.get(k)]
    lines = [f"step  loss {a['device']}/{a['dtype']}  loss {b['device']}/{b['dtype']}  rel.diff"
             + "".join(f"  {k} rel.diff" for k in extra)]
    for i, (x, y) in enumerate(zip(a["loss"], b["loss"]), start=1):
        rel = [_rel(a[k][i - 1], b[k][i - 1]) for k in extra]
        lines.append(f"{i:4d}  {x:12.5f}  {y:12.5f}  {_rel(x, y):8.5f}" + "".join(f"  {r:{len(k) + 9}.5f}" for k, r in zip(extra, rel)))
    return "\n".join(lines)


def _rel(x: float | None, y: float | None) -> float:
    return math.nan if x is None or y is None or y == 0 else abs(x - y) / abs(y)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m arcforge.model.parity_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a train config (YAML)")
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps from the start")
    ap.add_argument("--out", required=True, help="JSON file for the per-step losses")
    ap.add_argument("--init", choices=("parity", "megatron"), default="parity",
                    help="initial weights: device-independent (default) or megatron's own")
    ap.add_argument("--work-dir", help="where the scratch output directory goes (default: the system's temp)")
    ap.add_argument("--compare-with", metavar="FILE", help="another run's JSON: check the losses against it")
    ap.add_argument("--rtol", type=float, default=0.03, help="relative loss tolerance for --compare-with")
    args = ap.parse_args(argv)
    if args.steps <= 0:
        ap.error("--steps must be positive")
    from arcforge.runtime.config import ConfigError

    try:
        result = run(args.config, args.device, args.steps, init=args.init, work_dir=args.work_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(" ".join(f"{x:.4f}" for x in result["loss"]))
    if args.compare_with:
        other = json.loads(Path(args.compare_with).read_text())
        print(_table(result, other))
        bad = compare(result, other, args.rtol)
        for line in bad:
            print(f"MISMATCH {line}", file=sys.stderr)
        if not bad:
            worst = max(_rel(x, y) for x, y in zip(result["loss"], other["loss"]))
            print(f"parity ok: {result['device']} and {other['device']} losses agree over {len(result['loss'])} steps "
                  f"(max relative difference {worst:.4f}, rtol {args.rtol})")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
