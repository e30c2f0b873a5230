"""The GPU levers of issue 12 checked on CPU (fp32): grouped GEMM for the experts
(``kernels.gmm`` with grouped_gemm's semantics, megatron's ``GroupedMLP`` on it) and torch SDPA
attention (``kernels.SDPAttention``), each against the megatron module it replaces, alone, in
a built model, and through the CPU backend of the trainer; and the two choices that change no
module (megatron's fused cross-entropy, TF32 for float32 matmuls). Their speed needs a GPU:
not here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import assert_same_steps, tiny_train_config, write_random_shard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

SIZES = [3, 0, 5, 2, 0, 6]  # tokens per expert, two experts without any


def _reference(a, b, sizes):
    return torch.cat([x @ b[e] for e, x in enumerate(torch.split(a, sizes))])


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gmm_equals_per_expert_matmuls_with_empty_experts(backend, trans_b):
    from arcforge.model.kernels import gmm

    g = torch.Generator().manual_seed(0)
    m, k, n, e = sum(SIZES), 8, 12, len(SIZES)  # 16-byte aligned rows for torch._grouped_mm in fp32
    a = torch.randn(m, k, generator=g, requires_grad=True)
    w = torch.randn(e, k, n, generator=g, requires_grad=True)
    b = w.detach().transpose(1, 2).contiguous().requires_grad_() if trans_b else w
    up = torch.randn(m, n, generator=g)
    out = gmm(a, b, torch.tensor(SIZES), trans_b=trans_b, backend=backend)
    (out * up).sum().backward()
    a64, w64 = a.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = _reference(a64, w64, SIZES)
    (ref * up.double()).sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-5)
    gw = b.grad.transpose(1, 2) if trans_b else b.grad
    torch.testing.assert_close(gw.double(), w64.grad, rtol=1e-5, atol=1e-5)
    assert gw[1].abs().max() == 0 and gw[4].abs().max() == 0  # no tokens, exactly no gradient
    # a stride-0 incoming gradient (torch._grouped_mm's own backward rejects it)
    gmm(a, b, torch.tensor(SIZES), trans_b=trans_b, backend=backend).sum().backward()


def test_gmm_picks_the_loop_where_grouped_mm_cannot_run_and_installs_into_megatron():
    from megatron.core.transformer.moe import grouped_gemm_util as gg

    from arcforge.model import kernels

    a, b = torch.randn(10, 6), torch.randn(3, 6, 5)  # CPU, fp32, unaligned: the loop
    assert not kernels.grouped_mm_usable(a, b)
    torch.testing.assert_close(kernels.gmm(a, b, torch.tensor([4, 0, 6])), _reference(a, b, [4, 0, 6]))
    assert kernels.gmm(torch.randn(0, 6), b, torch.tensor([0, 0, 0])).shape == (0, 5)
    with pytest.raises(ValueError):
        kernels.gmm(a, b, torch.tensor([10]))
    kernels.install_torch_grouped_gemm()
    assert gg.grouped_gemm_is_available() and gg.ops.gmm is kernels.gmm
    gg.assert_grouped_gemm_is_available()


def test_sdpa_attention_equals_dot_product_attention_with_gqa():
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from arcforge.model.arch import get_preset, to_transformer_config
    from arcforge.model.kernels import SDPAttention
    from arcforge.model.megatron_model import causal_attention_mask, init_runtime

    init_runtime("cpu")
    arch = get_preset("proxy-tiny")  # 4 heads, 2 query groups, head dim 32
    config = to_transformer_config(arch)
    sq, b, np_, ng, hn = 16, 3, arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    assert ng < np_
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sq, b, h, hn, generator=g) for h in (np_, ng, ng))
    up = torch.randn(sq, b, np_ * hn, generator=g)
    mask = causal_attention_mask(sq)
    for scale in (None, 0.3):
        kw = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
                  softmax_scale=scale)
        outs = []
        for cls in (DotProductAttention, SDPAttention):
            x = [t.clone().requires_grad_() for t in (q, k, v)]
            out = cls(**kw).train()(*x, mask, attn_mask_type=AttnMaskType.causal)
            (out * up).sum().backward()
            outs.append((out, *(t.grad for t in x)))
        assert outs[1][0].shape == (sq, b, np_ * hn)
        for ref, new in zip(*outs):
            torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)


def _copy_weights(src, dst) -> None:
    """dst (grouped experts) := src (sequential experts); the other parameters share names."""
    from megatron.core.transformer.moe.experts import GroupedMLP, SequentialMLP

    from arcforge.model.kernels import copy_sequential_to_grouped

    own = dst.state_dict()
    missing, _ = dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in own}, strict=False)
    seq = [m for m in src.modules() if isinstance(m, SequentialMLP)]
    grp = [m for m in dst.modules() if isinstance(m, GroupedMLP)]
    assert len(seq) == len(grp) > 0 and all(k.endswith(("weight1", "weight2")) for k in missing)
    for s, g in zip(seq, grp):
        copy_sequential_to_grouped(s, g)


@pytest.mark.parametrize("gmm_backend", ["loop", "grouped_mm"])
def test_model_with_sdpa_and_grouped_experts_equals_the_local_model(monkeypatch, gmm_backend):
    """proxy-tiny (dense layer, MoE layers with a shared expert, MTP, GQA) built with
    SDPAttention + GroupedMLP (on the loop, then on torch._grouped_mm) against the local specs
    (DotProductAttention + SequentialMLP) with the same weights: same losses and gradients."""
    from functools import partial

    from megatron.core.transformer.moe.experts import GroupedMLP, SequentialMLP

    from arcforge.model import grouped_gemm, kernels
    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model, lm_loss

    monkeypatch.setattr(grouped_gemm.ops, "gmm", partial(kernels.gmm, backend=gmm_backend))
    arch = get_preset("proxy-tiny")
    ref = build_model(arch, seq_length=32, seed=0)
    new = build_model(arch, seq_length=32, seed=0, attention="sdpa", experts="grouped")
    assert kernels.uses(ref) == {"attention": "local", "experts": "sequential", "dispatcher": "megatron"}
    assert kernels.uses(new) == {"attention": "sdpa", "experts": "grouped", "dispatcher": "megatron"}
    assert any(isinstance(m, kernels.SDPAttention) for m in new.mtp.modules())  # the MTP layer too
    _copy_weights(ref, new)
    g = torch.Generator().manual_seed(1)
    tokens, labels = (torch.randint(4, arch.vocab_size, (2, 32), generator=g) for _ in range(2))
    outs = []
    for model in (ref, new):
        model.train()
        out = lm_loss(model, tokens, labels)
        out.loss.backward()
        outs.append(out)
    assert outs[1].lm_loss == pytest.approx(outs[0].lm_loss, rel=1e-6)
    assert outs[1].mtp_losses == pytest.approx(outs[0].mtp_losses, rel=1e-6)
    assert outs[1].aux_losses == pytest.approx(outs[0].aux_losses, rel=1e-6)
    rp = dict(ref.named_parameters())
    for name, p in new.named_parameters():
        if name in rp:
            torch.testing.assert_close(p.grad, rp[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    for s, gm in zip([m for m in ref.modules() if isinstance(m, SequentialMLP)],
                     [m for m in new.modules() if isinstance(m, GroupedMLP)]):
        e, h = gm.num_local_experts, gm.config.hidden_size
        g1, g2 = gm.weight1.grad.view(e, h, -1), gm.weight2.grad.view(e, -1, h)
        for i, mlp in enumerate(s.local_experts):
            torch.testing.assert_close(g1[i], mlp.linear_fc1.weight.grad.t(), rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(g2[i], mlp.linear_fc2.weight.grad.t(), rtol=1e-4, atol=1e-7)


def test_kernel_choice_and_spec_rewrite():
    from arcforge.model.arch import get_preset, to_transformer_config
    from arcforge.model.kernels import SDPAttention, TorchGroupedMLP, resolve_kernels
    from arcforge.model.megatron_model import init_runtime, local_specs

    assert resolve_kernels("auto", "auto", device="cpu", te=False) == ("local", "sequential")
    assert resolve_kernels("auto", "auto", device="cuda", te=False) == ("sdpa", "grouped")
    assert resolve_kernels("auto", "auto", device="cuda", te=True) == ("te", "te")
    assert resolve_kernels("local", "auto", device="cuda", te=True) == ("local", "grouped")
    assert resolve_kernels("sdpa", "sequential", device="cpu", te=False) == ("sdpa", "sequential")
    init_runtime("cpu")
    arch = get_preset("proxy-tiny")
    with pytest.raises(ValueError, match="moe_grouped_gemm"):
        local_specs(arch, to_transformer_config(arch), experts="grouped")
    block, mtp = local_specs(arch, to_transformer_config(arch, moe_grouped_gemm=True), attention="sdpa", experts="grouped")
    text = repr(block) + repr(mtp)
    assert "SDPAttention" in text and "TorchGroupedMLP" in text
    assert "DotProductAttention'" not in text.replace("SDPAttention", "") and "SequentialMLP" not in text
    assert SDPAttention.__mro__[1].__name__ == "DotProductAttention"
    assert TorchGroupedMLP.__mro__[1].__name__ == "GroupedMLP"


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    return write_random_shard(str(tmp_path_factory.mktemp("kshard") / "rand"), 80)


def _cfg(tmp_path: Path, prefix: str, name: str, kernels: dict | None):
    return tiny_train_config(tmp_path, prefix, name, kernels=kernels)


def test_cpu_backend_with_sdpa_and_grouped_kernels_gives_the_same_steps(tmp_path, shard):
    """The trainer's CPU backend built with ``kernels: {attention: sdpa, experts: grouped}``,
    started from the default (local) run's weights: the same first two steps (loss, MTP, aux,
    gradient norm; AdamW, clipping, bias update). The ablation on CPU that predicts the GPU run."""
    from arcforge.model.kernels import uses
    from arcforge.model.train_loop import started
    from arcforge.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="kernels.experts"):
        _cfg(tmp_path, shard, "bad", {"experts": "fast"})
    base = _cfg(tmp_path, shard, "local", None)
    assert (base.kernels.attention, base.kernels.experts) == ("auto", "auto")
    fast = _cfg(tmp_path, shard, "fast", {"attention": "sdpa", "experts": "grouped"})
    with started(base, resume=False, verbose=False) as a, started(fast, resume=False, verbose=False) as b:
        assert uses(a.model) == {"attention": "local", "experts": "sequential", "dispatcher": "megatron"}
        assert uses(b.model) == {"attention": "sdpa", "experts": "grouped", "dispatcher": "megatron"}
        _copy_weights(a.model, b.model)
        assert_same_steps(a, b, keys=("loss", "mtp_loss", "aux_loss", "grad_norm"))


def test_resuming_with_the_other_expert_kernel_is_one_clear_line(tmp_path, shard):
    """Grouped and sequential experts name their weights differently: switching between
    checkpoint and config is a ConfigError naming kernels.experts, not a key error mid-load."""
    from arcforge.model.train_loop import started
    from arcforge.runtime.config import ConfigError

    grouped = _cfg(tmp_path, shard, "switch", {"experts": "grouped"})
    with started(grouped, resume=False, verbose=False) as t:
        t.advance(None)
        t.save()
    sequential = _cfg(tmp_path, shard, "switch", {"experts": "sequential"})
    with pytest.raises(ConfigError, match=r"kernels\.experts: the checkpoint step_0000001\.pt holds grouped experts "
                                          r"and this run builds sequential ones"):
        with started(sequential, resume=True, verbose=False):
            pass
    with started(grouped, resume=True, verbose=False) as again:  # the same kernels resume
        assert again.step == 1


def test_hf_export_reads_grouped_experts_as_it_reads_sequential_ones():
    """A model trained with ``kernels.experts: grouped`` exports to the same HF weights as the
    sequential model it equals (``hf_convert`` reads GroupedMLP's weight1/weight2 per expert)."""
    from arcforge.model.arch import get_preset
    from arcforge.model.hf_convert import megatron_to_hf_state_dict
    from arcforge.model.megatron_model import build_model

    arch = get_preset("proxy-tiny")
    ref = build_model(arch, seq_length=32, seed=0)
    new = build_model(arch, seq_length=32, seed=0, experts="grouped")
    _copy_weights(ref, new)
    for fused in (False, True):
        a = megatron_to_hf_state_dict(ref.state_dict(), arch, fused_experts=fused)
        b = megatron_to_hf_state_dict(new.state_dict(), arch, fused_experts=fused)
        assert a.keys() == b.keys() and any("experts" in k for k in a)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_foreach_multi_tensor_ops_replace_megatrons_stand_ins():
    """Without TE or Apex, megatron's optimizer wrapper and gradient clipping use stand-ins that
    read every gradient's norm back to the host; ``te_shims.foreach_l2_norm`` /
    ``foreach_scale`` keep ``amp_C``'s contract with ``_foreach`` kernels: the same norm as
    float64 over the concatenated tensors (fp32 and bf16 mixed, as the main and model params
    are), in-place clipping, and main-to-model copies that convert dtype."""
    from megatron.core import utils as mutils
    from megatron.core.optimizer import clip_grads, optimizer

    from arcforge.model import te_shims

    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(7, 5, generator=g), torch.randn(300, generator=g).bfloat16(), torch.randn(1, generator=g)]
    norm, per = te_shims.foreach_l2_norm(2048 * 32, None, [ts], False)
    ref = torch.cat([t.double().flatten() for t in ts]).norm()
    assert per is None and norm.shape == (1,) and norm.dtype == torch.float32
    assert norm.item() == pytest.approx(ref.item(), rel=1e-6)
    assert te_shims.foreach_l2_norm(1, None, [[]], False)[0].item() == 0
    fp32 = [t.float().clone() for t in ts]
    te_shims.foreach_scale(1, None, [fp32, fp32], 0.5)  # clipping: in place
    for a, b in zip(fp32, ts):
        torch.testing.assert_close(a, b.float() * 0.5)
    model = [torch.zeros(7, 5).bfloat16(), torch.zeros(300).bfloat16(), torch.zeros(1).bfloat16()]
    te_shims.foreach_scale(1, None, [fp32, model], 1.0)  # main (fp32) -> model (bf16) params
    for a, b in zip(model, fp32):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.bfloat16())
    doubled = [torch.zeros_like(t) for t in fp32]
    te_shims.foreach_scale(1, None, [fp32, doubled], 2.0)
    for a, b in zip(doubled, fp32):
        torch.testing.assert_close(a, b * 2)
    copied = [torch.zeros_like(t) for t in model]
    te_shims.foreach_copy_this_to_that(fp32, copied)
    for a, b in zip(copied, fp32):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b.bfloat16())
    originals = (clip_grads.l2_norm_impl, clip_grads.multi_tensor_scale_impl, optimizer.multi_tensor_scale_impl,
                 optimizer._multi_tensor_copy_this_to_that)
    try:
        stand_ins = originals[0] is mutils.local_multi_tensor_l2_norm  # no TE, no Apex (this machine)
        assert te_shims.use_foreach_multi_tensor_ops() == stand_ins
        if stand_ins:
            assert clip_grads.l2_norm_impl is te_shims.foreach_l2_norm
            assert clip_grads.multi_tensor_scale_impl is optimizer.multi_tensor_scale_impl is te_shims.foreach_scale
            assert optimizer._multi_tensor_copy_this_to_that is te_shims.foreach_copy_this_to_that
    finally:
        (clip_grads.l2_norm_impl, clip_grads.multi_tensor_scale_impl, optimizer.multi_tensor_scale_impl,
         optimizer._multi_tensor_copy_this_to_that) = originals


def _ce_runs(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> dict:
    """(loss, logits gradient) of megatron's plain and fused cross-entropy and of
    ``F.cross_entropy`` on the logits cast to fp32 (the oracle); ``[s, b, v]`` logits."""
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

    from arcforge.model.megatron_model import init_runtime

    init_runtime("cpu")
    v = logits.shape[-1]
    fns = {"oracle": lambda x: torch.nn.functional.cross_entropy(x.float().view(-1, v), target.view(-1),
                                                                  reduction="none").view(target.shape),
           "plain": lambda x: tensor_parallel.vocab_parallel_cross_entropy(x, target),
           "fused": lambda x: fused_vocab_parallel_cross_entropy(
               x, target, parallel_state.get_tensor_model_parallel_group())}
    out = {}
    for name, fn in fns.items():
        x = logits.clone().requires_grad_()
        loss = fn(x)
        (loss * weight).sum().backward()
        out[name] = (loss.detach(), x.grad)
    return out


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_cross_entropy_equals_the_plain_one_under_bf16(monkeypatch, compiled):
    """``kernels.cross_entropy: fused`` is megatron's fused cross-entropy. Under bf16 logits it
    gives the oracle's loss and gradient as the plain one does (the gradient to one bf16
    rounding), also with its pieces traced by ``torch.compile`` as on the GPU (here with
    ``aot_eager``: dynamo and AOT autograd, without inductor's code generation). Under fp32 its
    gradient comes back bf16-rounded (about 1e-3 off where the plain one is exact): why the
    validator allows it under ``dtype: bf16`` only."""
    from megatron.core.fusions import fused_cross_entropy as fce

    if compiled:
        for name in ("calculate_logits_max", "calculate_predicted_logits", "calculate_cross_entropy_loss",
                     "calculate_gradients"):
            fn = getattr(fce, name)
            fn = getattr(fn, "_torchdynamo_orig_callable", fn)
            monkeypatch.setattr(fce, name, torch.compile(fn, backend="aot_eager", fullgraph=True))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(32, 2, 512, generator=g) * 3
    target = torch.randint(0, 512, (32, 2), generator=g)
    weight = torch.randn(32, 2, generator=g)
    bf = _ce_runs(logits.bfloat16(), target, weight)
    ref_loss, ref_grad = bf["oracle"]
    for name in ("plain", "fused"):
        loss, grad = bf[name]
        assert grad.dtype == torch.bfloat16, name
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=8e-3, atol=1e-5, msg=name)
    fp = _ce_runs(logits, target, weight)
    ref_loss, ref_grad = fp["oracle"]
    torch.testing.assert_close(fp["plain"][1], ref_grad, rtol=1e-5, atol=1e-6)
    fused_grad = fp["fused"][1]
    torch.testing.assert_close(fp["fused"][0], ref_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused_grad, fused_grad.bfloat16().float())  # bf16 values in an fp32 tensor
    assert (fused_grad - ref_grad).abs().max() > 1e-4


def test_cross_entropy_and_fp32_matmul_choices_are_checked_and_applied(tmp_path, shard):
    """The two ``kernels`` keys that change no module: the validator's one-line refusals
    (fused loss outside bf16, TF32 off CUDA, unknown names), the ``TransformerConfig`` fields
    the fused loss sets (a built model's loss then goes through it), and the process-wide
    matmul precision ``set_fp32_matmul`` sets and restores."""
    from arcforge.model.arch import get_preset, to_transformer_config
    from arcforge.model.kernels import cross_entropy_settings, set_fp32_matmul
    from arcforge.runtime.config import ConfigError

    prefix = shard
    with pytest.raises(ConfigError, match=r"^bad\.yaml: kernels\.cross_entropy: fused needs dtype: bf16 .*got fp32$"):
        tiny_train_config(tmp_path, prefix, "bad", kernels={"cross_entropy": "fused"})
    with pytest.raises(ConfigError, match=r"^bad\.yaml: kernels\.fp32_matmul: tf32 needs device: cuda .*got cpu$"):
        tiny_train_config(tmp_path, prefix, "bad", kernels={"fp32_matmul": "tf32"})
    for key in ("cross_entropy", "fp32_matmul"):
        with pytest.raises(ConfigError, match=rf"kernels\.{key}"):
            tiny_train_config(tmp_path, prefix, "bad", kernels={key: "fast"})
    gpu = tiny_train_config(tmp_path, prefix, "gpu", kernels={"cross_entropy": "fused", "fp32_matmul": "tf32"},
                            device="cuda", dtype="bf16")
    assert (gpu.kernels.cross_entropy, gpu.kernels.fp32_matmul) == ("fused", "tf32")
    config = to_transformer_config(get_preset("proxy-tiny"), **cross_entropy_settings("fused"))
    assert config.cross_entropy_loss_fusion and config.cross_entropy_fusion_impl == "native"
    assert not to_transformer_config(get_preset("proxy-tiny"), **cross_entropy_settings("plain")).cross_entropy_loss_fusion
    with pytest.raises(ValueError, match="cross_entropy"):
        cross_entropy_settings("fast")
    before = torch.get_float32_matmul_precision()
    try:
        set_fp32_matmul("tf32")
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cuda.matmul.allow_tf32
        set_fp32_matmul("ieee")
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee" and not torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(ValueError, match="fp32_matmul"):
            set_fp32_matmul("bf16")
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_model_built_with_the_fused_loss_computes_it():
    """proxy-tiny built with ``cross_entropy_settings("fused")`` (fp32 here, so that the
    fused loss shows itself by its bf16-rounded logits gradient): the same LM and MTP losses as
    the plain model with the same weights, every gradient within that rounding, and not equal."""
    from arcforge.model.arch import get_preset
    from arcforge.model.kernels import cross_entropy_settings
    from arcforge.model.megatron_model import build_model, causal_attention_mask, lm_loss

    arch = get_preset("proxy-tiny")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (2, 33), generator=g)
    runs = []
    for choice in ("plain", "fused"):
        model = build_model(arch, seq_length=32, seed=1, **cross_entropy_settings(choice))
        out = lm_loss(model, tokens[:, :-1], tokens[:, 1:], attention_mask=causal_attention_mask(32))
        out.loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = runs
    assert b.lm_loss == pytest.approx(a.lm_loss, rel=1e-6) and b.mtp_losses == pytest.approx(a.mtp_losses, rel=1e-6)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=2e-2, atol=1e-4, msg=k)
    assert not torch.equal(gb["output_layer.weight"], ga["output_layer.weight"])
