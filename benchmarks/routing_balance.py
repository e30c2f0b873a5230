"""Router load over the first steps of a proxy run, for several expert-bias update rates (CPU).

Issue 12 saw the worst MoE layer of proxy-1b send every token to one expert within 20 GPU
steps (max/mean load at its maximum). This trains the same short start on CPU (fp32, the
synthetic shard of ``bench_gpu_mfu.py``, the GPU configs' lr 1e-3 with 5 warm-up steps) once
per ``--rates`` value of ``balance.bias_update_rate`` and prints the mean and worst
max/mean expert load every few steps: whether the loss-free balancing update moves the load,
and how fast.

    python benchmarks/routing_balance.py --data DIR [--preset proxy-100m] [--steps 30] [--rates 0 0.001 0.01]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def trajectory(preset: str, data: str, workdir: str, rate: float, steps: int, seq: int, mbs: int) -> list[tuple]:
    """(step, loss, mean max/mean load, worst layer's max/mean load) for each step."""
    from mfu_plan import write_config

    from arcforge.model.train import load_train_config
    from arcforge.model.train_loop import started

    sets = ["device=cpu", "dtype=fp32", "threads=2", "kernels.attention=local", "kernels.experts=sequential",
            f"balance.bias_update_rate={rate}", "optimizer.warmup_iters=5"]
    cfg = load_train_config(write_config(preset, data, str(Path(workdir) / f"rate-{rate}"), mbs=mbs, accum=1,
                                    iters=steps, seq=seq, sets=sets))
    rows = []
    with started(cfg, resume=False, verbose=False) as t:
        for _ in range(steps):
            r = t.advance(None)
            rows.append((r["step"], r["loss"], r["balance_max_mean"], r["balance_max_mean_worst"]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="bench_gpu_mfu.py's synthetic shard (built there if missing)")
    ap.add_argument("--preset", default="proxy-100m")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.001, 0.01])
    ap.add_argument("--every", type=int, default=3)
    a = ap.parse_args()
    from arcforge.model.arch import get_preset
    from mfu_plan import make_data

    make_data(a.data)
    arch = get_preset(a.preset)
    print(f"{a.preset}: {arch.num_experts} experts, top-{arch.moe_top_k} (max/mean load at most "
          f"{arch.num_experts / arch.moe_top_k:g}); seq {a.seq}, micro-batch {a.mbs}, lr 1e-3, 5 warm-up steps, CPU fp32")
    work = tempfile.mkdtemp(prefix="arcforge-routing-")
    results = {rate: trajectory(a.preset, a.data, work, rate, a.steps, a.seq, a.mbs) for rate in a.rates}
    shown = [i for i in range(a.steps) if i % a.every == 0 or i == a.steps - 1]
    print("| step | " + " | ".join(f"rate {r:g}: loss, mean, worst" for r in a.rates) + " |")
    print("|---|" + "---|" * len(a.rates))
    for i in shown:
        cells = [f"{rows[i][1]:.2f}, {rows[i][2]:.2f}, {rows[i][3]:.2f}" for rows in results.values()]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
