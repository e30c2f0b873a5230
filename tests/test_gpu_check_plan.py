"""The runs ``benchmarks/gpu_check.sh`` asks of ``bench_gpu_mfu.py``, checked on CPU before a GPU
is lent: every ``--kernels`` variant and ``--lever`` written in the script parses, and the train
config each arcforge child would write validates (a config the validator refuses would cost a
GPU run). Nothing here needs CUDA: the configs are written and validated, not trained."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _script_runs() -> tuple[list[str], list[str]]:
    """The ``--kernels`` variants and ``--lever`` specs of the script's mfu and profile parts."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    levers = list(dict.fromkeys(re.findall(r'--lever "([^"]+)"', text)))  # the profile part repeats one
    kernels = []
    for line in re.findall(r"--kernels ([^\\\n]+)", text):
        kernels += [w for w in line.split() if not w.startswith("$")]
    return kernels, levers


def test_gpu_check_levers_and_variants_give_valid_train_configs(tmp_path):
    import bench_gpu_mfu as bench

    from arcforge.model.train import load_train_config

    kernels, levers = _script_runs()
    assert "auto" in kernels
    data = tmp_path / "data"
    bench.make_data(data, tokens=50_000)
    variants = [bench.parse_variant(k) for k in kernels]
    configs = []
    for preset in ("proxy-1b", "proxy-100m"):
        for extra, lever in bench.plan_runs(preset, variants, "arcforge", False, levers):
            words = extra[2:]  # after "--child arcforge"
            opts = {"--variant": "auto", "--mbs": str(bench.DEFAULT_MBS[preset]), "--accum": "1"}
            sets = []
            for flag, value in zip(words[::2], words[1::2]):
                if flag == "--set":
                    sets.append(value)
                else:
                    opts[flag] = value
            path = bench._config(preset, str(data), str(tmp_path / "work"), mbs=int(opts["--mbs"]),
                                 accum=int(opts["--accum"]), iters=11, seq=4096, kernels=opts["--variant"], sets=sets)
            cfg = load_train_config(path)
            assert cfg.device == "cuda" and cfg.dtype == "bf16", lever
            configs.append((preset, lever, cfg))
    compiled = {p for p, _, c in configs if c.model.compile == "layers" and c.kernels.dispatcher == "device"}
    eager = {p for p, _, c in configs if c.model.compile == "none" and c.kernels.dispatcher == "megatron"}
    assert compiled == eager == {"proxy-1b", "proxy-100m"}  # each preset both ways
    assert any(c.optimizer.fused for _, _, c in configs) and not all(c.optimizer.fused for _, _, c in configs)


def test_a_lever_the_trainer_refuses_is_caught_here(tmp_path):
    """The check above can fail: compiled layers without the device dispatcher are refused."""
    import bench_gpu_mfu as bench

    from arcforge.model.train import load_train_config
    from arcforge.runtime.config import ConfigError

    data = tmp_path / "data"
    bench.make_data(data, tokens=50_000)
    _, spec = bench.parse_lever("proxy-1b:--variant auto,auto,megatron --set model.compile=layers")
    words = shlex.split(spec)
    sets = [w for f, w in zip(words[::2], words[1::2]) if f == "--set"]
    path = bench._config("proxy-1b", str(data), str(tmp_path / "work"), mbs=4, accum=1, iters=3, seq=4096,
                         kernels="auto,auto,megatron", sets=sets)
    with pytest.raises(ConfigError, match=r"model\.compile: layers needs"):
        load_train_config(path)


def test_a_broken_compile_skips_the_later_compiled_runs_but_running_out_of_memory_does_not():
    from bench_gpu_mfu import stops_compiled_runs

    assert stops_compiled_runs({"tokens_per_s": 1.0}) == ""
    assert stops_compiled_runs({"error": "timed out after 240 s"}) == "timed out after 240 s"
    assert stops_compiled_runs({"error": "exit 1", "tail": "torch.OutOfMemoryError: CUDA out of memory."}) == ""
    assert stops_compiled_runs({"error": "exit 1", "tail": "InductorError: ..."}) == "failed (exit 1)"


def test_mtp_flops_by_hand_for_proxy_1b():
    """proxy-1b's MTP layer at seq 4096 (issue 12's shapes: hidden 1024, 16 heads in 4 groups of
    head dim 64, 32 experts top-4 of FFN 416 plus one shared, vocab 4,000): eh_proj 2,097,152 +
    attention 2,621,440 + MoE 6,422,528 + output layer 4,096,000 = 15,237,120 matmul weights;
    6 x that + 12 x 1024 x 4096 for its attention."""
    from bench_gpu_mfu import mtp_flops_per_token

    assert mtp_flops_per_token("proxy-1b", 4096, 1) == 6 * 15_237_120 + 12 * 1024 * 4096
    assert mtp_flops_per_token("proxy-1b", 4096, 0) == 0


def test_saved_bytes_of_the_first_forward_only():
    """Two forward+backward passes through one model: ``first_forward_only`` counts the first's
    saved tensors (what one micro-batch keeps), without it both (the second's storages are new
    while the first's are still held here)."""
    import torch
    from activation_bytes import count_saved_bytes

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    xs = [torch.randn(32, 8) for _ in range(2)]
    outs = []
    once = count_saved_bytes(model, lambda: outs.append(model(xs[0])))
    outs.clear()
    both = count_saved_bytes(model, lambda: [outs.append(model(x)) for x in xs])
    outs.clear()
    first = count_saved_bytes(model, lambda: [outs.append(model(x)) for x in xs], first_forward_only=True)
    assert once > 0 and both == 2 * once and first == once
