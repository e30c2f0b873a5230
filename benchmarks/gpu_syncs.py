"""Host-device synchronisations per training step of arcforge's GPU path, by where they happen.

A sync (``.item()``, ``.tolist()``, ``.cpu()``, a ``masked_select`` or ``nonzero`` whose output
size the host must read) drains the GPU's queue; the GPU then idles while Python launches
the next kernels. The H100 run of issue 12 left about 0.19 s per proxy-1b step that does not
grow with the micro-batch (docs/benchmarks.md, "GPU"). This counts the syncs of one training
step (``Trainer.advance``: forward, backward, optimizer step, bias update, logging) with
``torch.cuda.set_sync_debug_mode("warn")``, once per ``--kernels`` variant (megatron's token
dispatcher against ``kernels.dispatcher: device``), each in its own process, and prints the
count and the Python lines that caused them.

    python benchmarks/gpu_syncs.py --data DIR [--preset proxy-1b] [--mbs 4] [--kernels auto,auto,megatron auto,auto,device]

Needs CUDA (exits 2 with one line without it). The data is bench_gpu_mfu.py's synthetic shard.
Without a GPU, ``arcforge.model.host_reads.HostReads`` counts the same operations on CPU (by
operation rather than by sync: ``benchmarks/host_overhead.py``'s last column, and
``tests/test_host_reads.py`` for the layers of the GPU path).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _short(filename: str) -> str:
    """A package-relative name: ``megatron/core/...``, ``torch/...``, ``arcforge/...``."""
    for marker in ("site-packages/", "/site/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    root = str(HERE.parent) + os.sep
    return filename[len(root):] if filename.startswith(root) else filename


def child(a) -> dict:
    import torch

    from mfu_plan import parse_variant, write_config
    from arcforge.model.train import load_train_config
    from arcforge.model.train_loop import started

    parse_variant(a.variant)
    path = write_config(a.preset, a.data, a.workdir, mbs=a.mbs, accum=1, iters=3, seq=a.seq, kernels=a.variant, sets=a.set)
    cfg = load_train_config(path)
    cuda = torch.cuda.is_available()  # False only when this function is tested on CPU: nothing to count
    with started(cfg, resume=False, verbose=False) as trainer:
        trainer.advance(None)  # warm-up: lazy initialisation and allocator growth are not steps
        if cuda:
            torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.advance(None)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
    where = collections.Counter(f"{_short(w.filename)}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message).lower())
    return {"variant": a.variant, "preset": a.preset, "mbs": a.mbs, "syncs": sum(where.values()),
            "where": where.most_common(25)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory with bench_gpu_mfu.py's synthetic shard")
    ap.add_argument("--preset", default="proxy-1b")
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--kernels", nargs="+", default=["auto,auto,megatron", "auto,auto,device"], metavar="VARIANT")
    ap.add_argument("--set", action="append", default=["model.compile=none"], metavar="KEY=VALUE",
                    help="a dotted train-config key, after model.compile=none (eager layers: their syncs show by line)")
    ap.add_argument("--timeout", type=float, default=150)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_syncs: needs a CUDA GPU and torch sees none; nothing was counted", file=sys.stderr)
        return 2
    if a.child:
        print("RESULT " + json.dumps(child(a)), flush=True)
        return 0
    from mfu_plan import make_data

    make_data(a.data)
    work = tempfile.mkdtemp(prefix="arcforge-syncs-")
    results = []
    for variant in a.kernels:
        cmd = [sys.executable, __file__, "--child", "--variant", variant, "--data", a.data, "--workdir", work,
               "--preset", a.preset, "--mbs", str(a.mbs), "--seq", str(a.seq), *[x for s in a.set for x in ("--set", s)]]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else {"variant": variant, "error": f"exit {p.returncode}",
                                                   "tail": (p.stdout + p.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            r = {"variant": variant, "error": f"timed out after {a.timeout:.0f} s"}
        results.append(r)
        if "error" in r:
            print(f"{variant}: {r['error']}\n{r.get('tail', '')}", flush=True)
            continue
        print(f"{a.preset} [{variant}] micro-batch {a.mbs}: {r['syncs']} host syncs in one training step", flush=True)
        for where, n in r["where"]:
            print(f"  {n:5d}  {where}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
