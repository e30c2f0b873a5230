"""The runs ``benchmarks/gpu_check.sh`` asks of ``bench_gpu_mfu.py`` (planned by ``mfu_plan.py``),
checked on CPU before a GPU is lent: every ``--kernels`` variant and ``--lever`` written in the script parses, and the train
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
    """The ``--kernels`` variants and ``--lever`` specs of the script's mfu and profile parts,
    with its shell variables filled in: ``$EVEN``, ``$FAST``, ``$TEXT`` as set when the real
    text was carried, each value ``$BIG`` takes (16 x 8, or 12 x 8 on a smaller GPU) and ``$HUGE``
    (24 x 8, on a GPU with 130 GiB or more)."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    fixed = {name: re.search(rf'^{name}="([^"]+)"$', text, re.M).group(1) for name in ("EVEN", "FAST")}
    fixed["TEXT"] = re.search(r'TEXT="(--set data\.blend=[^"]+)"', text).group(1)
    bigs = re.findall(r'BIG="([^"]+)"', text)
    assert len(bigs) == 2
    huge = re.findall(r'HUGE="([^"]+)"', text)  # set only on a GPU with the memory (an H200)
    assert len(huge) == 1
    levers = []
    for lever in re.findall(r'--lever "([^"]+)"', text):
        for big in bigs:
            filled = lever.replace("$BIG", big).replace("$HUGE", huge[0])
            for name, value in fixed.items():
                filled = filled.replace(f"${name}", value)
            levers.append(filled)
    levers = list(dict.fromkeys(levers))  # the profile part repeats one; levers without $BIG twice
    kernels = []
    for line in re.findall(r"--kernels ([^\\\n]+)", text):
        kernels += [w for w in line.split() if not w.startswith("$")]
    return kernels, levers


def test_gpu_check_levers_and_variants_give_valid_train_configs(tmp_path):
    import mfu_plan as bench

    from arcforge.model.train import load_train_config

    import shutil

    kernels, levers = _script_runs()
    assert "auto" in kernels
    data = tmp_path / "data"
    bench.make_data(data, tokens=50_000)
    # the real-text lever's shard (benchmarks/gpu_text, carried when built): the synthetic one stands in
    text = tmp_path / "gpu_text"
    text.mkdir()
    for ext in ("bin", "idx"):
        shutil.copy(data / f"synthetic.{ext}", text / f"text.{ext}")
    assert any("$GPU_TEXT/text" in lever for lever in levers)
    levers = [lever.replace("$GPU_TEXT", str(text)) for lever in levers]
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
            path = bench.write_config(preset, str(data), str(tmp_path / "work"), mbs=int(opts["--mbs"]),
                                 accum=int(opts["--accum"]), iters=11, seq=4096, kernels=opts["--variant"], sets=sets)
            cfg = load_train_config(path)
            assert cfg.device == "cuda" and cfg.dtype == "bf16", lever
            configs.append((preset, lever, cfg))
    compiled = {p for p, _, c in configs if c.model.compile == "layers" and c.kernels.dispatcher == "device"}
    eager = {p for p, _, c in configs if c.model.compile == "none" and c.kernels.dispatcher == "megatron"}
    assert compiled == eager == {"proxy-1b", "proxy-100m"}  # each preset both ways
    assert any(c.optimizer.fused for _, _, c in configs) and not all(c.optimizer.fused for _, _, c in configs)
    even = [c for p, _, c in configs if p == "proxy-1b" and c.arch().embedding_init_std == 1.0]
    assert even and all(c.optimizer.lr == 1e-6 for c in even)  # the evenly routed levers
    fast = [c for _, _, c in configs if c.kernels.cross_entropy == "fused"]
    assert fast and all(c.kernels.fp32_matmul == "tf32" for c in fast)  # the fused loss and TF32 levers
    assert {c.batch.micro_batch_size for p, _, c in configs if p == "proxy-1b"} >= {8, 12, 16, 24}
    assert not [lever for _, lever, _ in configs if lever and re.search(r"\$(?!WORK\b)", lever)]  # filled in (not --profile DIR)


def test_a_lever_the_trainer_refuses_is_caught_here(tmp_path):
    """The check above can fail: compiled layers without the device dispatcher are refused."""
    import mfu_plan as bench

    from arcforge.model.train import load_train_config
    from arcforge.runtime.config import ConfigError

    data = tmp_path / "data"
    bench.make_data(data, tokens=50_000)
    _, spec = bench.parse_lever("proxy-1b:--variant auto,auto,megatron --set model.compile=layers")
    words = shlex.split(spec)
    sets = [w for f, w in zip(words[::2], words[1::2]) if f == "--set"]
    path = bench.write_config("proxy-1b", str(data), str(tmp_path / "work"), mbs=4, accum=1, iters=3, seq=4096,
                         kernels="auto,auto,megatron", sets=sets)
    with pytest.raises(ConfigError, match=r"model\.compile: layers needs"):
        load_train_config(path)


def test_a_broken_compile_skips_the_later_compiled_runs_but_running_out_of_memory_does_not():
    from mfu_plan import stops_compiled_runs

    assert stops_compiled_runs({"tokens_per_s": 1.0}) == ""
    assert stops_compiled_runs({"error": "timed out after 240 s"}) == "timed out after 240 s"
    assert stops_compiled_runs({"error": "exit 1", "tail": "torch.OutOfMemoryError: CUDA out of memory."}) == ""
    assert stops_compiled_runs({"error": "exit 1", "tail": "InductorError: ..."}) == "failed (exit 1)"


def test_mtp_flops_by_hand_for_proxy_1b():
    """proxy-1b's MTP layer at seq 4096 (issue 12's shapes: hidden 1024, 16 heads in 4 groups of
    head dim 64, 32 experts top-4 of FFN 416 plus one shared, vocab 4,000): eh_proj 2,097,152 +
    attention 2,621,440 + MoE 6,422,528 + output layer 4,096,000 = 15,237,120 matmul weights;
    6 x that + 12 x 1024 x 4096 for its attention."""
    from mfu_plan import mtp_flops_per_token

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


# rows of the H200 profile of issue 12 (compiled proxy-1b, 8 x 4, 2 steps): op name, self GPU ms
H200_ROWS = [
    ("aten::_grouped_mm", 313.102), ("aten::index_add", 293.854), ("aten::_cudnn_attention_backward", 246.425),
    ("aten::mm", 218.608), ("aten::_cudnn_attention_forward", 84.992), ("aten::copy_", 44.661),
    ("triton_poi_fused__to_copy_cat_mul_silu_silu_backward_split_7", 31.502), ("aten::add_", 28.056),
    ("aten::topk", 25.263), ("Command Buffer Full", 23.286), ("triton_poi_fused_index_select_view_33", 18.284),
    ("triton_red_fused__to_copy_index_add_mul_new_zeros_silu_split_squeeze_1", 12.373),
    ("aten::_fused_adamw_", 11.850), ("aten::masked_fill_", 12.864), ("aten::cat", 0.0),
]


def test_profile_kinds_of_real_op_names():
    """Each op of a real GPU profile falls in one kind; inductor's kernels stay inductor's even
    when their names mention ``index_add`` or ``index_select``; ops without GPU time are left
    out; the kinds sum to what was given."""
    from profile_kinds import kind_of, kinds_table, time_by_kind

    assert kind_of("aten::index_add") == "atomics (index_add, scatter_add, index_put)"
    assert kind_of("triton_red_fused__to_copy_index_add_mul_new_zeros_silu_split_squeeze_1") == "inductor fused kernels"
    assert kind_of("aten::index_select") == "gathers and sorts"
    assert kind_of("aten::_grouped_mm") == "expert GEMMs (grouped)"
    assert kind_of("arcforge::grouped_mm_wgrad") == "expert GEMMs (grouped)"
    assert kind_of("aten::addmm") == kind_of("aten::mm") == "dense GEMMs"
    assert kind_of("aten::_fused_adamw_") == "optimizer"
    assert kind_of("Command Buffer Full") == "other"
    by_kind = {k: round(v, 3) for k, v in time_by_kind(H200_ROWS).items()}
    assert by_kind == {
        "attention": 331.417, "expert GEMMs (grouped)": 313.102, "atomics (index_add, scatter_add, index_put)": 293.854,
        "dense GEMMs": 218.608, "inductor fused kernels": 62.159, "other aten ops": 40.92, "copies": 44.661,
        "gathers and sorts": 25.263, "other": 23.286, "optimizer": 11.85,
    } and list(by_kind)[:3] == ["attention", "expert GEMMs (grouped)", "atomics (index_add, scatter_add, index_put)"]
    assert sum(by_kind.values()) == pytest.approx(sum(ms for _, ms in H200_ROWS))
    table = kinds_table(time_by_kind((name, ms * 1e3) for name, ms in H200_ROWS), 1672.0e3)  # microseconds
    assert "| attention | 331.4 | 19.8% |" in table


def test_profiled_time_by_kind_on_a_cpu_profile():
    """On a real (CPU-only) torch.profiler run no op has GPU time: no kinds, nothing unattributed
    (the GPU numbers need the H200; this checks the event walk runs on torch's own events)."""
    import torch
    from profile_kinds import profiled_time_by_kind
    from torch.profiler import ProfilerActivity, profile

    layer = torch.nn.Linear(16, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(torch.randn(4, 16)).sum().backward()
    assert any(e.name == "aten::addmm" for e in prof.events())
    assert profiled_time_by_kind(prof) == ({}, 0)


def test_reference_routing_balance_reads_its_own_routing():
    """``moe_ref.routing_balance`` (the reference's column beside arcforge's
    ``balance_max_mean_worst``) on the reference model itself, on CPU in bf16: a selection bias
    that sends every token to the same k experts reads exactly E / k; the random start reads
    less; the hooks are gone afterwards."""
    import dataclasses

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    from moe_ref import PROXY_1B, build, routing_balance

    s = dataclasses.replace(PROXY_1B, L=3, H=64, NH=4, KV=2, HD=16, FF=96, E=8, K=2, EF=32, V=256)
    torch.manual_seed(0)
    model = build(s, device="cpu")
    ids = torch.randint(0, s.V, (2, 64))
    start = routing_balance(model, ids, s)
    assert 1.0 <= start < s.E / s.K
    with torch.no_grad():
        for block in model.blocks[s.dense:]:
            block.mlp.bias[: s.K] = 100.0
    assert routing_balance(model, ids, s) == s.E / s.K
    assert all(not b.mlp.router._forward_hooks for b in model.blocks[s.dense:])


def test_text_shard_merges_every_document_of_a_blend_once(tmp_path):
    """``mfu_plan.text_shard`` (the GPU benchmarks' real-text shard): the documents of every
    shard a blend names, in blend order, each once, in one Megatron shard megatron-core reads
    back; a tokenizer with other special ids is refused in one line and writes nothing."""
    import json

    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    import mfu_plan
    from arcforge.tokenize.shards import megatron_builder

    rng = np.random.default_rng(0)
    docs = [[rng.integers(4, 4000, size=int(rng.integers(5, 40))).astype(np.uint16) for _ in range(n)] for n in (3, 5)]
    prefixes = []
    for i, group in enumerate(docs):
        prefix = tmp_path / "run" / "shards" / f"part-{i}"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        builder = megatron_builder()(f"{prefix}.bin", dtype=np.uint16)
        for d in group:
            builder.add_document(d, [len(d)])
        builder.finalize(f"{prefix}.idx")
        prefixes.append(str(prefix))
    (tmp_path / "run" / "tokenizer").mkdir()
    tok = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    tok.write_text(json.dumps({"vocab_size": 4000, "eod_id": 2, "pad_id": 3}))
    blend = tmp_path / "run" / "mixture" / "stage.blend.json"
    blend.parent.mkdir()
    blend.write_text(json.dumps({"data_path": ["0.7", prefixes[1], "0.3", prefixes[0]]}))

    out = mfu_plan.text_shard(blend, tmp_path / "gpu_text")
    merged = IndexedDataset(out)
    expected = docs[1] + docs[0]
    assert len(merged) == len(expected)
    for i, d in enumerate(expected):
        assert np.array_equal(merged[i], d)
    assert json.loads((tmp_path / "gpu_text" / "tokenizer.json").read_text())["vocab_size"] == 4000

    tok.write_text(json.dumps({"vocab_size": 4000, "eod_id": 1, "pad_id": 3}))
    with pytest.raises(SystemExit, match=r"tokenizer\.json: vocabulary 4000, eod 1, pad 3; the GPU configs expect 4000, 2, 3"):
        mfu_plan.text_shard(blend, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_a_setting_that_broke_a_lever_skips_the_later_levers_that_hold_it():
    """``failed_settings``: the first lever with the new kernels fails, the same lever without
    them passes, so the later levers holding both new settings are skipped (and name them);
    levers without them still run, and nothing is blamed before a run has passed."""
    import mfu_plan as bench

    fast = ["--set", "kernels.cross_entropy=fused", "--set", "kernels.fp32_matmul=tf32"]
    even = ["--set", "optimizer.lr=1e-6", "--set", "model.overrides.embedding_init_std=1.0"]
    first, second = bench.lever_sets(["--mbs", "16", *even, *fast]), bench.lever_sets(["--mbs", "16", *even])
    assert second == {"optimizer.lr=1e-6", "model.overrides.embedding_init_std=1.0"} and len(first) == 4
    assert bench.failed_settings(second, [first], []) == ""  # nothing passed yet: no blame
    later = bench.lever_sets(["--mbs", "8", *fast, "--profile", "/tmp/x"])
    assert bench.failed_settings(later, [first], [second]) == "kernels.cross_entropy=fused, kernels.fp32_matmul=tf32"
    assert bench.failed_settings(bench.lever_sets(["--mbs", "8", *fast[:2]]), [first], [second]) == ""
    assert bench.failed_settings(bench.lever_sets(["--set", "model.compile=none"]), [first], [second]) == ""
