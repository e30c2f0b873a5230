"""GPU throughput and MFU: arcforge's trainer against the plain-PyTorch reference, same shapes, same run.

For each preset (default proxy-100m and proxy-1b, vocabulary 4,000, seq_length 4096, bf16):

* **arcforge**: the trainer (``train_loop.started``, then ``Trainer.advance`` per step) on
  ``configs/train.<preset>.gpu.yaml`` as it ships (its kernels, ``model.compile`` and optimizer;
  the batch is this run's ``--mbs`` x ``--accum``) (device cuda, bf16, AdamW, megatron-core GPTModel with
  MTP, the real loop: schedules, router-load hooks, bias update), ``--warmup`` steps then
  ``--steps`` timed steps, no checkpoint; tokens/s from the steps' ``step_seconds``
  (CUDA-synchronised, covering forward, backward, optimizer step and bias update of every
  micro-batch of the step). One run per ``--kernels`` variant (the config's ``kernels``
  section): ``auto`` (the config's: without Transformer Engine, SDPA attention + grouped experts
  on ``torch._grouped_mm``, and the config's dispatcher) or ``ATTENTION,EXPERTS[,DISPATCHER]`` with
  attention ``sdpa``/``local`` (megatron's unfused DotProductAttention)/``auto``, experts
  ``grouped``/``sequential`` (megatron's SequentialMLP)/``auto`` and dispatcher
  ``megatron``/``device`` (``arcforge.model.dispatch``), so each lever is measured alone:
  ``--kernels local,sequential sdpa,sequential sdpa,grouped auto,auto,device``.
  ``PRESET:VARIANT`` limits a variant to one preset (``proxy-1b:sdpa,sequential``).
  ``--set KEY=VALUE`` changes any dotted config key of every arcforge run; ``--profile DIR``
  writes torch.profiler tables of ``PROFILED_STEPS`` more steps after the timed ones (the timed
  steps stay unprofiled, so the same run gives both its speed and where its time goes);
* **reference**: ``benchmarks/peers/moe_ref.py`` with the same layer shapes, micro-batch and
  sequence length (SDPA flash attention, ``torch._grouped_mm`` experts, fused AdamW), eager and,
  with ``--ref-compile``, ``torch.compile``.

Each side runs in its own child process of this run, one after the other on the same GPU (a
failure of one side is reported and does not stop the other; GPU memory is clean for each).
Levers holding settings that broke an earlier lever, which passed without them, are skipped
(``mfu_plan.failed_settings``).

MFU (also in docs/benchmarks.md, "GPU"): model FLOPs per token = 6 x active matmul parameters
(attention QKV and output projections, dense MLPs, top-k routed + shared experts, routers, and
the output layer; no embedding, norms or biases; the MTP layer not counted) + 12 x layers x
hidden x seq (attention scores and values, causal **not** halved), the same for both sides;
tokens counted are the non-padding tokens (the synthetic shards have no pad id, so all of
them); MFU = tokens/s x FLOPs per token / 989e12 (H100 SXM and H200 dense bf16 peak). The
arcforge rows also give "MFU, MTP counted": the same with the MTP layers' FLOPs added
(``mtp_flops_per_token``: work the trained model does that the reference does not).

    python benchmarks/bench_gpu_mfu.py --data DIR [--presets proxy-100m,proxy-1b] [--steps 10] [--warmup 3]
        [--kernels auto local,sequential sdpa,sequential sdpa,grouped auto,auto,device] [--sides arcforge,reference]
        [--set model.overrides.mtp_layers=0] [--profile DIR] [--mbs N] [--accum N]
    python benchmarks/bench_gpu_mfu.py --make-data DIR      # the synthetic shard only (CPU is fine)

Exits 2 with one line when CUDA is unavailable (``--make-data`` needs no GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mfu_plan import (DEFAULT_MBS, VOCAB, failed_settings, lever_sets, make_data, mtp_flops_per_token,  # noqa: E402
                      parse_lever, parse_variant, plan_runs, set_label, shape, stops_compiled_runs, write_config)

PROFILED_STEPS = 2  # with --profile: steps after the timed ones, under torch.profiler


def child_arcforge(a) -> dict:
    """Drive arcforge's trainer step by step (``train_loop.started`` + ``Trainer.advance``): the
    warm-up steps, then the timed ones, then (with ``--profile``) ``PROFILED_STEPS`` under
    torch.profiler, no checkpoint at the end (its device-to-host copy is not training)."""
    from moe_ref import PEAK_BF16, flops_per_token

    from arcforge.model.kernels import resolve_kernels
    from arcforge.model.te_shims import have_transformer_engine
    from arcforge.model.train import load_train_config
    from arcforge.model.train_loop import started

    mbs = a.mbs or DEFAULT_MBS.get(a.preset, 4)
    extra = PROFILED_STEPS if a.profile else 0
    path = write_config(a.preset, a.data, a.workdir, mbs=mbs, accum=a.accum, iters=a.warmup + a.steps + extra + 1,
                   seq=a.seq, kernels=a.variant, sets=a.set)
    cfg = load_train_config(path)
    t0 = time.perf_counter()
    with started(cfg, resume=False, verbose=True) as trainer:
        warm = [trainer.advance(None) for _ in range(a.warmup)]  # with model.compile, the first compiles
        warm_peak = _reset_peak()
        timed = [trainer.advance(None) for _ in range(a.steps)]
        timed_peak = _reset_peak()
        by_kind = {}
        if a.profile:
            out = Path(a.profile) / f"profile-{Path(path).stem}-mbs{mbs}x{a.accum}.txt"
            by_kind = _profiled(lambda: [trainer.advance(None) for _ in range(extra)], out)
        by_dtype: dict[str, int] = {}
        saved = _saved_activations(trainer, by_dtype)  # one more step, untimed: what autograd keeps
    wall = time.perf_counter() - t0
    tokens = sum(int(r["batch_size"]) * a.seq for r in timed)
    tok = tokens / sum(float(r["step_seconds"]) for r in timed)
    f = flops_per_token(shape(a.preset), a.seq)
    f_mtp = mtp_flops_per_token(a.preset, a.seq, cfg.arch().mtp_layers)
    used = ",".join(resolve_kernels(cfg.kernels.attention, cfg.kernels.experts, device="cuda",
                                    te=have_transformer_engine()))
    used += ",device" if cfg.kernels.dispatcher == "device" else ""
    label = f"arcforge [{used}]" + "".join(" " + set_label(x) for x in a.set)
    last = timed[-1]
    return dict(side=label, kernels=used, preset=a.preset, seq=a.seq, mbs=mbs, accum=a.accum, steps=len(timed),
                warmup=a.warmup, tokens_per_s=tok, tflops=tok * f / 1e12, mfu=tok * f / PEAK_BF16,
                mfu_with_mtp=tok * (f + f_mtp) / PEAK_BF16, loss=last["loss"],
                mtp_loss=last.get("mtp_loss"), aux_loss=last.get("aux_loss"),
                balance_max_mean_worst=last.get("balance_max_mean_worst"),
                **_peaks(warm_peak, timed_peak, _reset_peak()),
                wall_s=wall, flops_per_token=f, warmup_step_s=[float(r["step_seconds"]) for r in warm],
                saved_activation_gib=saved / 2**30, saved_gib_by_dtype={k: v / 2**30 for k, v in by_dtype.items()},
                est_activation_gib=_estimated_activations(cfg, mbs) / 2**30,
                **({"profile_gpu_ms_by_kind": by_kind} if by_kind else {}), **_compile_stats(cfg))


def _reset_peak() -> int:
    """``torch.cuda.max_memory_allocated`` since the last call (0 without CUDA), then reset:
    the run's peak (``peak_mem_gib``: compiling steps, profiled and counting steps included)
    and the timed steps' own (``peak_timed_gib``, what training holds) are read apart."""
    import torch

    if not torch.cuda.is_available():
        return 0
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return peak


def _peaks(warm: int, timed: int, after: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return dict(peak_mem_gib=None, peak_timed_gib=None)
    return dict(peak_mem_gib=max(warm, timed, after) / 2**30, peak_timed_gib=timed / 2**30)


def _compile_stats(cfg) -> dict:
    """With ``model.compile``: the graphs dynamo made (3 for proxy-1b on CPU:
    tests/test_compile.py), its graph breaks and their first reasons, and the guards whose
    failure made it compile a frame again (5 graphs on the H200 for 3 layer kinds): a break
    or an extra graph on the GPU would show here, not only in the speed."""
    if cfg.model.compile == "none":
        return {}
    from torch._dynamo.utils import counters, guard_failures

    breaks = counters["graph_break"]
    recompiles = [f"{getattr(code, 'co_name', code)}: {why.splitlines()[0][:200]}"
                  for code, whys in guard_failures.items() for why in whys]
    return dict(unique_graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(breaks.values()),
                graph_break_reasons=[f"{n} x {why[:200]}" for why, n in breaks.most_common(3)],
                recompile_reasons=recompiles[:10])


def _saved_activations(trainer, by_dtype: dict | None = None) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for the backward in the first
    micro-batch of one more training step (``torch.autograd.graph.saved_tensors_hooks``), to
    set beside the dry-run's activation term and the
    measured peak (the estimate was 13-20% under the H100's peaks; benchmarks/activation_bytes.py
    matched it to 4% on CPU)."""
    from activation_bytes import count_saved_bytes

    return count_saved_bytes(trainer.model, lambda: trainer.advance(None), by_dtype, first_forward_only=True)


def _estimated_activations(cfg, mbs: int) -> float:
    """The dry-run's activation term for this run (one GPU, bf16, flash attention)."""
    from arcforge.model.memory import Layout, estimate_memory

    lay = Layout(world=1, micro_batch=mbs, global_batch=cfg.batch.global_batch_size, seq_length=cfg.model.seq_length)
    est = estimate_memory(cfg.arch(), lay, dtype=cfg.dtype, recompute=cfg.model.recompute, attention="flash")
    return est.stages[0].activations


def _profiled(fn, out: Path) -> dict[str, float]:
    """``fn()`` under torch.profiler; writes to ``out`` the wall time against the summed kernel
    time (the gap: the GPU idles, waiting on the host), the GPU time by kind of work
    (``profile_kinds``: expert GEMMs, attention, atomics, inductor's fused kernels, ...), then
    the ops by CUDA time (self, then with children). Returns the milliseconds per kind.
    Profiling slows the steps: its rows are for where time goes, not speed."""
    import torch
    from profile_kinds import kinds_table, profiled_time_by_kind
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CPU: the bench's own test
    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall = time.perf_counter() - t0
    kinds, gpu_us = profiled_time_by_kind(prof)
    avg = prof.key_averages()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"wall {wall:.3f} s; kernels and copies {gpu_us / 1e6:.3f} s of GPU time\n\n"
                   + kinds_table(kinds, gpu_us) + "\n\n"
                   + avg.table(sort_by="self_device_time_total", row_limit=70, max_name_column_width=70) + "\n\n"
                   + avg.table(sort_by="device_time_total", row_limit=45, max_name_column_width=70))
    print(f"profile: {out}", flush=True)
    return {k: round(us / 1e3, 3) for k, us in kinds.items()}


def child_reference(a) -> dict:
    from moe_ref import run

    mbs = a.mbs or DEFAULT_MBS.get(a.preset, 4)
    r = run(shape(a.preset), a.seq, mbs, steps=a.steps, warmup=a.warmup, compile=a.compile)
    r["preset"] = a.preset
    r["side"] = "reference" + (" (compile)" if a.compile else "")
    return r


def _spawn(args: list[str], timeout: float) -> dict:
    """Run a child; its last ``RESULT {json}`` line is the result, else an error row."""
    cmd = [sys.executable, __file__, *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s", "tail": (exc.stdout or "")[-2000:] if isinstance(exc.stdout, str) else ""}
    sys.stderr.write(p.stderr[-4000:] if p.returncode else "")
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stdout + p.stderr).strip().splitlines()[-12:]
    return {"error": f"exit {p.returncode}", "tail": "\n".join(tail)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="directory with the synthetic shard (built there if missing)")
    ap.add_argument("--make-data", metavar="DIR", default=None, help="only build the synthetic shard in DIR and exit")
    ap.add_argument("--presets", default="proxy-100m,proxy-1b")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--mbs", type=int, default=None, help="micro-batch (default: proxy-100m 8, proxy-1b 4)")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step on the arcforge side")
    ap.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ref-compile", action="store_true", help="also run the reference under torch.compile")
    ap.add_argument("--sides", default="arcforge,reference")
    ap.add_argument("--kernels", nargs="+", default=["auto"], metavar="[PRESET:]VARIANT",
                    help="arcforge runs: auto, or ATTENTION,EXPERTS (sdpa|local, grouped|sequential); "
                         "PRESET: limits one to a preset")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per child process")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a dotted train-config key for the arcforge runs, e.g. model.overrides.mtp_layers=0 (repeatable)")
    ap.add_argument("--lever", action="append", default=[], metavar="[PRESET:]ARGS",
                    help="one more arcforge run with these child arguments (--mbs N, --accum N, --set KEY=VALUE, "
                    "--variant KERNELS), e.g. 'proxy-1b:--mbs 16 --set model.recompute=selective' (repeatable)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="after each arcforge run's timed steps, profile 2 more with torch.profiler: ops by CUDA time "
                         "in DIR/profile-*.txt (a lever's own --profile DIR profiles that run alone)")
    ap.add_argument("--child", choices=("arcforge", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="auto", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.make_data:
        make_data(a.make_data)
        return 0
    variants = [parse_variant(k) for k in a.kernels]
    for spec in a.lever:
        parse_lever(spec)
    import torch

    # one arcforge child may run on CPU (``--set device=cpu``): gpu_check.sh's CPU mode checks the
    # child's code path (steps, profile, saved activations, compile counts) before a GPU is lent
    cpu_child = a.child == "arcforge" and "device=cpu" in a.set
    if not torch.cuda.is_available() and not cpu_child:
        print("bench_gpu_mfu: needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
              "nothing was measured", file=sys.stderr)
        return 2
    if a.child:
        r = child_arcforge(a) if a.child == "arcforge" else child_reference(a)
        print("RESULT " + json.dumps(r), flush=True)
        return 0

    data = a.data or tempfile.mkdtemp(prefix="arcforge-gpu-data-")
    make_data(data)
    work = tempfile.mkdtemp(prefix="arcforge-mfu-")
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}; torch {torch.__version__}; seq {a.seq}; vocab {VOCAB}; steps {a.steps} after {a.warmup} warm-up", flush=True)
    rows = []
    common = ["--data", data, "--workdir", work, "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup),
              "--accum", str(a.accum)] + (["--mbs", str(a.mbs)] if a.mbs else [])
    common += [x for item in a.set for x in ("--set", item)] + (["--profile", a.profile] if a.profile else [])
    compile_broken = ""
    failed: list[frozenset[str]] = []  # the --set items of levers that failed (not by memory or time)
    passed: list[frozenset[str]] = []
    for preset in a.presets.split(","):
        for extra, lever in plan_runs(preset, variants, a.sides, a.ref_compile, a.lever):
            t0 = time.perf_counter()
            compiled = any("model.compile=" in x and not x.endswith("=none") for x in extra + common)
            sets = lever_sets(extra)
            blame = failed_settings(sets, failed, passed) if lever else ""
            if compiled and compile_broken:  # the next compile would fail the same way: keep the budget
                r = {"error": f"skipped: an earlier compiled run {compile_broken}"}
            elif blame:  # a setting that broke an earlier lever, which passed without it
                r = {"error": f"skipped: {blame} failed in an earlier lever"}
            else:
                r = _spawn(["--preset", preset, *common, *extra], a.timeout)
                compile_broken = compile_broken or (stops_compiled_runs(r) if compiled else "")
                if lever and "error" not in r:
                    passed.append(sets)
                elif lever and not stops_compiled_runs(r).startswith("timed out") and \
                        "out of memory" not in (r["error"] + r.get("tail", "")).lower():
                    failed.append(sets)
            mbs = a.mbs or DEFAULT_MBS.get(preset, 4)
            while "error" in r and "out of memory" in r.get("tail", "").lower() and mbs > 1 and lever is None:
                mbs //= 2  # e.g. megatron's unfused attention keeps s x s scores per head: halve and retry
                print(f"  {preset} {extra[1]}: out of memory, retrying with micro-batch {mbs}", flush=True)
                cm = [x for i, x in enumerate(common) if x != "--mbs" and (i == 0 or common[i - 1] != "--mbs")]
                r = _spawn(["--preset", preset, *cm, "--mbs", str(mbs), *extra], a.timeout)
            r.setdefault("preset", preset)
            r.setdefault("side", extra[1] + (f" [{extra[extra.index('--variant') + 1]}]" if "--variant" in extra else "")
                         + (" (compile)" if "--compile" in extra else ""))
            if lever:
                r["side"] += f" lever: {lever}"
                r["lever"] = lever
            r["child_s"] = time.perf_counter() - t0
            rows.append(r)
            if a.out:  # after every run: a caller's timeout keeps what finished
                Path(a.out).write_text(json.dumps({"device": dev, "torch": torch.__version__, "rows": rows}, indent=2))
            msg = r.get("error") or f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu'] * 100:.1f}%"
            if "unique_graphs" in r:
                msg += f"; compiled: {r['unique_graphs']} graphs, {r['graph_breaks']} breaks, " + \
                       f"{len(r.get('recompile_reasons', []))} recompiles, first steps " + \
                       ", ".join(f"{x:.1f}" for x in r.get("warmup_step_s", [])) + " s"
            print(f"  {preset} {r['side']}: {msg} ({r['child_s']:.0f} s)", flush=True)
            if r.get("profile_gpu_ms_by_kind"):
                print("    profiled GPU ms: " + ", ".join(f"{k} {v:.0f}" for k, v in r["profile_gpu_ms_by_kind"].items()),
                      flush=True)
            for why in r.get("recompile_reasons", []):
                print(f"    recompiled: {why}", flush=True)
            if r.get("error") and r.get("tail"):
                print("    " + r["tail"].replace("\n", "\n    "), flush=True)
    print()
    print("| preset | side | micro-batch | tokens/s | TFLOP/s | MFU | MFU, MTP counted | peak GiB (run / timed steps) "
          "| vs reference (eager) "
          "| saved / est. activations GiB | router max/mean, worst layer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["preset"] == r["preset"] and x["side"] == "reference" and "error" not in x), None)
        if "error" in r:
            print(f"| {r['preset']} | {r['side']} | | failed: {r['error']} | | | | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else ""
        act = f"{r['saved_activation_gib']:.2f} / {r['est_activation_gib']:.2f}" if "saved_activation_gib" in r else ""
        mtp = f"{r['mfu_with_mtp'] * 100:.1f}%" if "mfu_with_mtp" in r else ""
        balance = f"{r['balance_max_mean_worst']:.2f}" if r.get("balance_max_mean_worst") is not None else ""
        peak = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else ""
        peak += f" / {r['peak_timed_gib']:.1f}" if r.get("peak_timed_gib") is not None else ""
        print(f"| {r['preset']} | {r['side']} | {r['mbs']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | "
              f"{r['mfu'] * 100:.1f}% | {mtp} | {peak} | {ratio} | {act} | {balance} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"device": dev, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
