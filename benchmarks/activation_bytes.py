"""Saved activations of one training forward, counted, against ``arcforge.model.memory``'s estimate.

``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd keeps for the
backward; this sums the distinct storages that are not parameters, for one forward of a
preset (CPU, fp32) with the chosen kernels, and prints it beside the estimate's activation
term for the same layout. It tells a wrong formula (the two differ) from memory the formula
does not model on purpose (a GPU peak above both: backward working memory, the allocator).

    python benchmarks/activation_bytes.py [--preset proxy-100m] [--seq 1024 4096] [--kernels sdpa,grouped local,sequential]
        [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def count_saved_bytes(model, fn, by_dtype: dict | None = None, *, first_forward_only: bool = False) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for the backward while
    ``fn()`` runs (``torch.autograd.graph.saved_tensors_hooks``); also used by
    ``bench_gpu_mfu.py`` on a GPU training step. ``by_dtype``, if given, gets the bytes per
    dtype name (where a bf16 run keeps fp32 tensors). ``first_forward_only`` counts what the
    first call of ``model`` saves (one micro-batch of a step that runs several: the next ones
    reuse the freed storages' addresses, so counting them by address would merge them unevenly)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int, str]] = {}
    calls = [0]

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params and (calls[0] <= 1 or not first_forward_only):
            seen.setdefault(st.data_ptr(), (st.nbytes(), str(t.dtype).removeprefix("torch.")))
        return t

    def count_call(*_):
        calls[0] += 1

    handle = model.register_forward_pre_hook(count_call)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        handle.remove()
    if by_dtype is not None:
        for n, dtype in seen.values():
            by_dtype[dtype] = by_dtype.get(dtype, 0) + n
    return sum(n for n, _ in seen.values())


def saved_bytes(preset: str, seq: int, attention: str, experts: str, vocab: int = 4000, dtype: str = "fp32",
                by_dtype: dict | None = None) -> tuple[int, float]:
    """(bytes of distinct non-parameter storages saved for backward, estimated activation bytes)."""
    import torch

    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model, lm_loss
    from arcforge.model.memory import Layout, estimate_memory

    arch = get_preset(preset).with_overrides(vocab_size=vocab)
    model = build_model(arch, seq_length=seq, seed=0, attention=attention, experts=experts,
                        params_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.train()
    g = torch.Generator().manual_seed(1)
    tokens, labels = (torch.randint(4, vocab, (1, seq), generator=g) for _ in range(2))
    saved = count_saved_bytes(model, lambda: lm_loss(model, tokens, labels), by_dtype)
    est = estimate_memory(arch, Layout(world=1, micro_batch=1, global_batch=1, seq_length=seq), dtype=dtype,
                          attention="flash" if attention == "sdpa" else "unfused")
    return saved, est.stages[0].activations


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="proxy-100m")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--kernels", nargs="+", default=["sdpa,grouped", "local,sequential"])
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="the model's parameter dtype (bf16: megatron's bf16 path, run on CPU)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    print(f"| {a.preset}, micro-batch 1, CPU {a.dtype} | seq | saved MiB | estimate MiB | saved / estimate | saved MiB by dtype |")
    print("|---|---|---|---|---|---|")
    for kernels in a.kernels:
        attention, experts = kernels.split(",")
        for seq in a.seq:
            t0 = time.perf_counter()
            by: dict[str, int] = {}
            saved, est = saved_bytes(a.preset, seq, attention, experts, dtype=a.dtype, by_dtype=by)
            dtypes = ", ".join(f"{k} {v / 2**20:,.1f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 2**20)
            print(f"| {kernels} | {seq} | {saved / 2**20:,.1f} | {est / 2**20:,.1f} | {saved / est:.3f} | {dtypes} |"
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
