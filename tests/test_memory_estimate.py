"""``arcforge.model.memory``: the memory estimate against hand-computed values for the GLM-4.5
presets, the layout validator's one-line errors, and ``arcforge train ... --dry-run``.

The hand computations below restate the formulas of ``memory.py``'s docstring with the
presets' numbers written out (docs/../shared/reference/glm45.md, arch.py), so a change of a
formula or of a preset shows up here as arithmetic, not as a changed snapshot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arcforge.model.arch import get_preset
from arcforge.model.memory import GIB, Layout, estimate_memory, stage_layers, validate_layout
from arcforge.model.memory_plans import docs_table

ROOT = Path(__file__).resolve().parents[1]


def test_air_on_8_gpus_ep8_by_hand():
    """GLM-4.5-Air (46 layers: 1 dense + 45 MoE, hidden 4096, 96 heads / 8 groups x 128, dense
    FFN 10944, 128 experts of FFN 1408, top-8, 1 shared, vocab 151552, no QK-norm, MTP 1) on
    8 GPUs, TP 1, PP 1, EP 8: D = 8, De = 8 / (1 * 8 * 1) = 1; bf16 Adam, distributed optimizer,
    fp32 grads, micro-batch 1, seq 4096, no recompute, flash attention."""
    arch = get_preset("glm45-air")
    lay = Layout(world=8, tp=1, pp=1, ep=8, micro_batch=1, global_batch=64, seq_length=4096)
    assert validate_layout(arch, lay) == []
    assert (lay.dp, lay.expert_dp, lay.micro_batches) == (8, 1, 8)
    est = estimate_memory(arch, lay)
    (st,) = est.stages

    # parameters on the one rank (first and last stage at once)
    attn = 4096 * (96 + 2 * 8) * 128 + 96 * 128 * 4096 + (96 + 2 * 8) * 128 + 4096  # QKV, out proj, QKV bias, input norm
    assert attn == 109_070_336
    dense_mlp = 3 * 4096 * 10944 + 4096  # gate/up/down + pre-MLP norm
    moe_dense = 3 * 4096 * 1408 + 4096 * 128 + 4096  # shared expert, router, pre-MLP norm
    experts = (128 // 8) * 3 * 4096 * 1408  # 16 routed experts per EP rank
    mtp_dense = 2 * 4096 + 2 * 4096 * 4096 + attn + moe_dense + 4096  # enorm+hnorm, eh_proj, layer, final norm
    dense_p = 1 * (attn + dense_mlp) + 45 * (attn + moe_dense) + 4096 + mtp_dense  # + final norm
    expert_p = (45 + 1) * experts  # MoE layers + the MTP layer
    emb_p = 2 * 151552 * 4096  # input embedding + output layer (no MTP copy: one stage)
    P = dense_p + expert_p + emb_p
    assert P == 20_089_956_352 and st.params == P and st.expert_params == expert_p
    assert st.weights == pytest.approx(2 * P + 4 * 46 * 128)  # bf16 weights + fp32 expert-bias buffers
    assert st.grads == pytest.approx(4 * P)  # fp32 grad buffer
    assert st.optimizer == pytest.approx(12 * (dense_p + emb_p) / 8 + 12 * expert_p / 1)
    assert st.weights / GIB == pytest.approx(37.42, abs=0.01)
    assert st.optimizer / GIB == pytest.approx(152.59, abs=0.01)

    # activations, values per token (x 2 bytes x 4096 tokens)
    a_attn = 4096 + 4096 + (96 + 2 * 8) * 128 + 96 * 128 + 2 * 96  # norm in/out, q k v, core out, flash LSE
    a_dense = 4096 + 4096 + 4 * 10944  # norm in/out, fc1 out (2f) + SiLU out (f) + fc2 in (f)
    a_moe = 4096 + 4096 + 4 * 128 + 8 * 4096 + 4 * 8 * 1408 + 8 * 4096 + 4 * 1408
    #        norm in/out, router fp32, expert input (k h), expert internals (4 k fe), expert outputs (k h), shared
    assert (a_attn, a_dense, a_moe) == (35_008, 51_968, 124_928)
    layers = 1 * (a_attn + a_dense) + 45 * (a_attn + a_moe)  # one micro-batch in flight (PP 1)
    head = 2 * 4096 + 3 * 151552  # final norm + output-layer inputs, bf16 logits + fp32 softmax
    mtp = 4 * 4096 + 3 * 151552 + (a_attn + a_moe)  # enorm/hnorm/eh_proj inputs, logits, one MoE layer
    assert layers + head + mtp == 8_377_920
    assert st.activations == pytest.approx((layers + head + mtp) * 2 * 4096)
    assert st.activations / GIB == pytest.approx(63.92, abs=0.01)
    assert est.worst.total == pytest.approx(st.weights + st.grads + st.optimizer + st.activations + 3 * GIB)
    assert not est.fits(141)  # 332 GiB: Air does not train on 8 GPUs this way

    # full recompute: each layer keeps its input (h), plus one MoE layer being recomputed
    full = estimate_memory(arch, lay, recompute="full").stages[0]
    values = 46 * 4096 + (a_attn + a_moe) + head + (4 * 4096 + 3 * 151552 + 4096)
    assert full.activations == pytest.approx(values * 2 * 4096)
    # selective (core_attn, layernorm, moe_act): - LSE, - both norm outputs, - 2 k fe per MoE layer
    sel = estimate_memory(arch, lay, recompute="selective").stages[0]
    saved = 47 * (2 * 96 + 4096 + 4096) + 46 * 2 * 8 * 1408  # 46 layers + MTP layer; 46 MoE layers with MTP
    assert est.stages[0].activations - sel.activations == pytest.approx(saved * 2 * 4096)


def test_glm45_on_512_gpus_tp8_pp4_ep16_first_stage_by_hand():
    """GLM-4.5 (92 layers: 3 dense + 89 MoE, hidden 5120, 96 heads / 8 groups x 128, QK-norm,
    dense FFN 12288, 160 experts of FFN 1536, top-8, vocab 151552) on 512 GPUs: TP 8, PP 4
    (23 layers per stage), EP 16, D = 512 / 32 = 16, De = 512 / (8 * 16 * 4) = 1."""
    arch = get_preset("glm45")
    lay = Layout(world=512, tp=8, pp=4, ep=16, micro_batch=1, global_batch=4096, seq_length=4096)
    assert validate_layout(arch, lay) == []
    assert (lay.dp, lay.expert_dp, lay.micro_batches) == (16, 1, 256)
    assert stage_layers(arch, lay) == [(3, 20), (0, 23), (0, 23), (0, 23)]
    est = estimate_memory(arch, lay)
    s0 = est.stages[0]
    attn = 5120 * (96 // 8 + 2 * 8 // 8) * 128 + (96 // 8) * 128 * 5120 + (96 // 8 + 2 * 8 // 8) * 128 + 2 * 128 + 5120
    dense_mlp = 3 * 5120 * 12288 // 8 + 5120
    moe_dense = 3 * 5120 * 1536 // 8 + 5120 * 160 + 5120
    experts = (160 // 16) * 3 * 5120 * 1536 // 8  # ETP = TP = 8 splits each expert too
    dense_p = 3 * (attn + dense_mlp) + 20 * (attn + moe_dense)
    emb = 151552 * 5120 // 8
    P = dense_p + 20 * experts + emb
    assert (attn, P) == (17_046_528, 1_225_150_464)
    assert s0.params == P
    assert s0.weights == pytest.approx(2 * P + 4 * 20 * 160)
    assert s0.optimizer == pytest.approx(12 * (dense_p + emb) / 16 + 12 * 20 * experts / 1)
    assert s0.in_flight == 4 and est.stages[-1].in_flight == 1  # 1F1B: PP micro-batches on the first stage
    # the last stage holds the output layer, the MTP layer and its embedding copy
    s3 = est.stages[3]
    assert s3.params - s0.params == pytest.approx(
        3 * (attn + moe_dense + experts) - 3 * (attn + dense_mlp)  # 23 MoE vs 3 dense + 20 MoE layers
        + emb + 5120  # output layer, final norm
        + 2 * 5120 + 2 * 5120 * 5120 // 8 + attn + moe_dense + experts + 5120  # MTP layer
        + emb  # the MTP block's embedding copy
        - emb, abs=1)  # minus the first stage's input embedding
    assert est.fits(80)


def test_fp32_and_non_distributed_optimizer_bytes():
    arch = get_preset("proxy-1b").with_overrides(vocab_size=4000)
    lay = Layout(world=1, micro_batch=4, global_batch=32, seq_length=4096)
    bf16 = estimate_memory(arch, lay, distributed_optimizer=False).stages[0]
    fp32 = estimate_memory(arch, lay, dtype="fp32").stages[0]
    P = bf16.params
    assert bf16.optimizer == pytest.approx(12 * P) and fp32.optimizer == pytest.approx(8 * P)  # no fp32 master in fp32
    assert fp32.weights - 4 * 15 * 32 == pytest.approx(4 * P)
    assert fp32.activations == pytest.approx(2 * bf16.activations)
    bgrad = estimate_memory(arch, lay, grad_fp32=False).stages[0]
    assert bgrad.grads == pytest.approx(2 * P)
    # unfused attention keeps the softmax output, nh s / t values per token per layer, instead of
    # flash attention's 2 nh / t (16 layers + MTP)
    unf = estimate_memory(arch, lay, attention="unfused").stages[0]
    assert unf.activations - estimate_memory(arch, lay).stages[0].activations == pytest.approx(
        17 * (16 * 4096 - 2 * 16) * 2 * 4 * 4096)


def test_validator_one_line_per_violation():
    arch = get_preset("glm45")
    errs = validate_layout(arch, Layout(world=64, tp=3, pp=8, ep=7, micro_batch=3, global_batch=1000, seq_length=4096))
    assert errs == [
        "gpus: 64 is not a multiple of tp*pp = 3*8 = 24 (world = tp*pp*dp)",
        "ep: 7 does not divide the 160 experts",
        "tp: 3 is neither a divisor nor a multiple of the 8 query groups",
        "tp: 3 does not divide the vocabulary 151552 (vocab-parallel embedding; pad vocab_size)",
        "seq length: 4096 is not a multiple of tp = 3 (sequence parallelism)",
        "pp: 8 does not divide the 92 layers (11 rem 4); arcforge's config needs even stages, "
        "megatron can split unevenly, e.g. first/last stage 10/10 layers",
    ]
    assert all("\n" not in e for e in errs)
    # megatron 0.16.1: world % (etp * ep * pp) == 0, i.e. with etp = tp, ep must divide dp
    assert validate_layout(arch, Layout(world=64, tp=8, pp=2, ep=8, micro_batch=1, global_batch=64)) == [
        "ep: expert grid etp*ep*pp = 8*8*2 = 128 does not divide the 64 GPUs (megatron: with etp = tp, ep must divide dp = 4)"]
    assert validate_layout(arch, Layout(world=64, tp=8, pp=2, ep=8, etp=1, micro_batch=1, global_batch=64)) == []
    assert validate_layout(arch, Layout(world=64, tp=4, pp=1, ep=16, micro_batch=2, global_batch=48)) == [
        "global batch: 48 is not a multiple of micro batch x dp = 2 x 16 = 32"]
    # uneven pipeline stages as megatron's num_layers_in_first/last_pipeline_stage
    lay = Layout(world=64, tp=8, pp=8, ep=1, global_batch=8, first_stage_layers=10, last_stage_layers=10)
    assert validate_layout(arch, lay) == []
    assert [d + m for d, m in stage_layers(arch, lay)] == [10] + [12] * 6 + [10]
    assert validate_layout(arch, Layout(world=64, tp=8, pp=8, global_batch=8, first_stage_layers=9, last_stage_layers=10)) == [
        "pp: 92 layers minus first/last stage 9/10 leaves 73 for 6 middle stages (must divide evenly)"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "arcforge.cli", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_imports_neither_torch_nor_megatron():
    """A dry run validates the config (kernel and compile choices included) and estimates
    memory without the 3 s import of torch and megatron-core that training needs: the
    GPU config, which sets ``model.compile: layers``, is checked in a fresh interpreter."""
    code = ("import sys; from arcforge.cli import main; "
            "rc = main(['train', 'configs/train.proxy-1b.gpu.yaml', '--dry-run']); "
            "print(rc, sorted(m for m in ('torch', 'megatron') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "0 []", p.stdout


def test_dry_run_of_the_tiny_config():
    # train.tiny.yaml names the demo's shards; --dry-run reads none of them, so it runs without `make demo`
    p = _cli("configs/train.tiny.yaml", "--dry-run")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "dry run: configs/train.tiny.yaml (nothing started; shards not read)" in out
    assert "model proxy-tiny: 1 GPU = tp 1 x pp 1 x dp 1; ep 1 (expert tp 1, expert dp 1)" in out
    assert "batch: micro 8, global 16 sequences of 256 tokens (4,096 tokens/step), 2 micro-batches per step per dp rank" in out
    assert "numerics: fp32, optimizer muon" in out
    for key in ("weights", "grads", "optimizer", "activations", "reserve", "total"):
        assert re.search(rf"^  {key} +[0-9.]+ GiB$", out, re.M), key
    assert "fits a 80 GiB GPU: yes" in out
    assert not (ROOT / "runs" / "train-tiny-dry").exists()


def test_dry_run_matches_the_library_and_flags():
    p = _cli("--dry-run", "--preset", "glm4.5-air", "--gpus", "64", "--tp", "4", "--ep", "16", "--mbs", "1",
             "--gbs", "1024", "--seq", "4096", "--gpu-memory-gib", "80")
    assert p.returncode == 0, p.stderr
    g = estimate_memory(get_preset("glm45-air"), Layout(world=64, tp=4, ep=16, micro_batch=1, global_batch=1024,
                                                         seq_length=4096)).gib()
    assert f"  total       {g['total']:>9.2f} GiB" in p.stdout
    assert "model glm45-air: 64 GPUs = tp 4 x pp 1 x dp 16; ep 16 (expert tp 4, expert dp 1)" in p.stdout
    assert "fits a 80 GiB GPU: yes" in p.stdout
    p = _cli("--dry-run", "--preset", "glm4.5", "--gpus", "8", "--tp", "8", "--gbs", "8", "--gpu-memory-gib", "141")
    assert p.returncode == 0 and "fits a 141 GiB GPU: NO" in p.stdout
    bad = _cli("--dry-run", "--preset", "glm4.5", "--gpus", "64", "--tp", "3", "--pp", "8", "--ep", "7")
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert lines[0] == "--preset glm4.5: gpus: 64 is not a multiple of tp*pp = 3*8 = 24 (world = tp*pp*dp)"
    assert len(lines) == 6


def test_dry_run_of_the_gpu_configs_and_a_config_error(tmp_path):
    """The estimate follows the config's optimizer.distributed (false in the shipped GPU configs);
    --[no-]distributed-optimizer overrides it."""
    p = _cli("configs/train.proxy-1b.gpu.yaml", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "numerics: bf16, optimizer adam (not distributed)" in p.stdout
    dist = tmp_path / "dist.yaml"
    dist.write_text((ROOT / "configs" / "train.proxy-1b.gpu.yaml").read_text().replace(
        "optimizer:\n", "optimizer:\n  distributed: true\n"))
    for args in ((str(dist), "--dry-run"), ("configs/train.proxy-1b.gpu.yaml", "--dry-run", "--distributed-optimizer")):
        p = _cli(*args)
        assert p.returncode == 0, p.stderr
        assert "numerics: bf16, optimizer adam (distributed over dp)" in p.stdout, args
    assert "(not distributed)" in _cli(str(dist), "--dry-run", "--no-distributed-optimizer").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "train.proxy-100m.gpu.yaml").read_text().replace("parallel: {tp: 1, pp: 1, ep: 1}",
                                                                                          "parallel: {tp: 1, pp: 1, ep: 3}"))
    p = _cli(str(bad), "--dry-run")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"{bad}: parallel.ep: 3 does not divide the 16 experts"]


def test_docs_table_is_generated():
    """docs/train.md's table and launch commands are the output of `python -m arcforge.model.memory
    --docs-table` and `--docs-commands`."""
    from arcforge.model.memory_plans import docs_commands

    table = docs_table()
    assert table in (ROOT / "docs" / "train.md").read_text()
    assert docs_commands() in (ROOT / "docs" / "train.md").read_text()
    rows = {tuple(r.split(" | ")[:2]): r for r in table.splitlines()[2:]}
    assert "| **no** | **no** |" in rows[("| glm45", "8")]  # GLM-4.5 does not fit 8 GPUs (H100, H200)
    assert "| **no** | fits |" in rows[("| glm45", "64")]  # 64: H200 only
    assert "| fits | fits |" in rows[("| glm45", "512")]
