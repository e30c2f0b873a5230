"""The typed GLM-4.5 architecture: presets, analytic parameter counts against real modules
(HF and megatron-core, full size on the meta device), config conversions, CLI; and the
megatron-core model built from it on CPU: every architectural feature is present and a
training step (forward, backward, optimizer, expert-bias update) works."""

from __future__ import annotations

import json

import pytest
import torch

from arcforge.model.arch import PRESETS, ArchConfig, get_preset, to_hf_config, to_transformer_config

# megatron-core 0.16.1 warns on every layer built without an explicit tp_group, and about
# missing Apex/TE; none of it concerns these tests
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:megatron")

SEQ = 64


@pytest.fixture(scope="module")
def tiny_model():
    """proxy-tiny on megatron-core, CPU, fp32 (the CPU compatibility layer is applied here)."""
    from arcforge.model.megatron_model import build_model

    return build_model(get_preset("proxy-tiny"), seq_length=SEQ, seed=0)


@pytest.fixture(scope="module")
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, get_preset("proxy-tiny").vocab_size, (2, SEQ), generator=g)
    return tokens, torch.roll(tokens, -1, dims=1)

# ---- presets and counts ------------------------------------------------------------------


def test_published_sizes():
    glm, air = get_preset("glm45"), get_preset("glm45-air")
    # published totals exclude the MTP layer (Air with MTP would be 109.2B, 3% over 106B)
    assert glm.total_params() == pytest.approx(355e9, rel=0.01)
    assert air.total_params() == pytest.approx(106e9, rel=0.01)
    assert air.total_params(include_mtp=True) > 1.02 * 106e9
    # active = per-token parameters without input embedding and output layer
    assert glm.active_params() == pytest.approx(32e9, rel=0.01)
    # Air: 12.18B, published as "12B" (rounded down; 1.5% off, so 2% tolerance)
    assert air.active_params() == pytest.approx(12e9, rel=0.02)
    assert round(air.active_params() / 1e9) == 12
    # exact values, so any change to the counting is deliberate
    assert glm.total_params() == 352_797_829_024
    assert glm.active_params() == 32_080_373_664
    assert air.total_params() == 106_852_251_264
    assert air.active_params() == 12_182_615_680


def test_preset_facts():
    glm, air = get_preset("glm45"), get_preset("glm45-air")
    assert (glm.num_layers, glm.first_dense_layers, glm.num_moe_layers) == (92, 3, 89)
    assert (air.num_layers, air.first_dense_layers, air.num_moe_layers) == (46, 1, 45)
    assert glm.num_attention_heads * glm.head_dim != glm.hidden_size  # why kv_channels is explicit
    assert glm.qk_norm and not air.qk_norm
    assert (glm.routed_scaling_factor, air.routed_scaling_factor) == (2.5, 1.0)
    assert (glm.num_experts, air.num_experts, glm.moe_top_k) == (160, 128, 8)
    for a in (glm, air):
        assert a.vocab_size == 151_552 and not a.tie_embeddings and a.mtp_layers == 1
        assert a.rotary_dim == 64 and a.rope_theta == 1e6 and a.qkv_bias
    tiny = get_preset("proxy-tiny")
    assert (tiny.num_layers, tiny.first_dense_layers, tiny.hidden_size) == (4, 1, 128)
    assert (tiny.num_experts, tiny.moe_top_k) == (8, 2)
    assert tiny.num_shared_experts == 1 and tiny.mtp_layers == 1
    assert get_preset("proxy-100m").total_params() == pytest.approx(100e6, rel=0.05)
    assert get_preset("proxy-1b").total_params() == pytest.approx(1e9, rel=0.05)
    with pytest.raises(KeyError, match="unknown architecture preset"):
        get_preset("glm5")


def test_validation():
    base = get_preset("proxy-tiny")
    with pytest.raises(ValueError, match="multiple of num_query_groups"):
        base.with_overrides(num_query_groups=3)
    with pytest.raises(ValueError, match="moe_top_k"):
        base.with_overrides(moe_top_k=9)
    with pytest.raises(ValueError, match="even integer"):
        base.with_overrides(rotary_fraction=0.3)
    with pytest.raises(ValueError):
        ArchConfig(**{**base.model_dump(), "unknown_field": 1})
    assert base.with_overrides(vocab_size=5000).vocab_size == 5000


def _hf_count(model) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for k, b in model.named_buffers() if k.endswith("e_score_correction_bias")
    )


@pytest.mark.parametrize("name", ["glm45", "glm45-air"])
def test_count_matches_hf_full_size_on_meta(name):
    from transformers import Glm4MoeForCausalLM

    arch = get_preset(name)
    with torch.device("meta"):
        model = Glm4MoeForCausalLM(to_hf_config(arch))
    assert _hf_count(model) == arch.total_params()  # HF has no MTP module in the causal LM


def test_count_matches_megatron_full_size_on_meta():
    from arcforge.model.megatron_model import build_model, count_parameters

    arch = get_preset("glm45-air")
    with torch.device("meta"):
        model = build_model(arch, seq_length=4096, perform_initialization=False)
    assert count_parameters(model) == arch.total_params(include_mtp=True)
    assert count_parameters(model, include_mtp=False) == arch.total_params()


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": False, "qkv_bias": False, "tie_embeddings": True}])
def test_count_matches_real_tiny_models(overrides, tiny_model):
    from transformers import Glm4MoeForCausalLM

    from arcforge.model.megatron_model import build_model, count_parameters

    arch = get_preset("proxy-tiny").with_overrides(**overrides)
    model = tiny_model if not overrides else build_model(arch, seq_length=32, seed=0)
    assert count_parameters(model) == arch.total_params(include_mtp=True)
    assert count_parameters(model, include_mtp=False) == arch.total_params()
    n_bias = arch.expert_bias_count(include_mtp=True)
    assert count_parameters(model, include_expert_bias=False) == arch.total_params(include_mtp=True) - n_bias
    hf = Glm4MoeForCausalLM(to_hf_config(arch))
    assert _hf_count(hf) == arch.total_params()


def test_config_conversions():
    arch = get_preset("glm45")
    cfg = to_transformer_config(arch, use_cpu_initialization=True)
    assert cfg.kv_channels == 128 and cfg.num_query_groups == 8 and cfg.num_attention_heads == 96
    assert cfg.moe_layer_freq == [0, 0, 0] + [1] * 89
    assert cfg.moe_router_score_function == "sigmoid" and cfg.moe_router_enable_expert_bias
    assert cfg.moe_router_topk_scaling_factor == 2.5 and cfg.moe_router_topk == 8
    assert cfg.moe_shared_expert_intermediate_size == 1536 and cfg.moe_ffn_hidden_size == 1536
    assert cfg.moe_router_load_balancing_type == "seq_aux_loss" and cfg.moe_aux_loss_coeff == 1e-4
    assert cfg.moe_router_bias_update_rate == 1e-3
    assert cfg.mtp_num_layers == 1 and cfg.mtp_loss_scaling_factor == 0.3
    assert cfg.add_qkv_bias and not cfg.add_bias_linear and cfg.qk_layernorm
    assert cfg.gated_linear_unit and cfg.normalization == "RMSNorm"
    assert cfg.moe_token_dispatcher_type == "allgather"
    assert not to_transformer_config(arch.with_overrides(aux_seq_loss_coeff=0.0)).moe_aux_loss_coeff
    hf = to_hf_config(get_preset("glm45-air"))
    assert hf.head_dim == 128 and hf.num_key_value_heads == 8 and hf.first_k_dense_replace == 1
    assert hf.rope_parameters["partial_rotary_factor"] == 0.5 and hf.rope_parameters["rope_theta"] == 1e6
    assert hf.attention_bias and not hf.use_qk_norm and hf.routed_scaling_factor == 1.0
    assert hf.n_routed_experts == 128 and hf.num_experts_per_tok == 8 and hf.n_shared_experts == 1
    assert hf.norm_topk_prob and not hf.tie_word_embeddings and hf.num_nextn_predict_layers == 1


def test_cli_params(capsys):
    from arcforge.cli import main

    assert main(["model", "params", "glm45-air", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == get_preset("glm45-air").total_params()
    assert out["active_params"] == get_preset("glm45-air").active_params()
    assert main(["model", "params"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in PRESETS) and "352.80B" in table and "32.08B" in table
    assert main(["model", "params", "nope"]) == 2


# ---- the megatron-core model on CPU ------------------------------------------------------


def test_cpu_compat_layer(tiny_model):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
    from megatron.core.transformer.moe import moe_utils
    from megatron.core.transformer.moe.router import TopKRouter

    from arcforge.model import cpu_compat

    assert cpu_compat.is_applied() and cpu_compat.apply() is True  # idempotent
    assert torch.distributed.get_world_size() == 1 and torch.distributed.get_backend() == "gloo"
    assert parallel_state.model_parallel_is_initialized()
    if cpu_compat.cuda_absent():
        assert torch.cuda.current_device() == torch.device("cpu")
    assert moe_utils.te_general_gemm is None
    assert "_torchdynamo_orig_callable" not in TopKRouter._apply_expert_bias.__dict__
    # the tracker forks a separate, persistent CPU stream and restores the default one
    tracker = get_cuda_rng_tracker()
    torch.manual_seed(0)
    expected_default = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork():
        a = torch.rand(3)
    with tracker.fork():
        b = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_default)
    assert not torch.equal(a, b) and not torch.equal(a, expected_default)


def _layers(model):
    return list(model.decoder.layers)


@pytest.mark.parametrize("variant", ["glm45", "air"])
def test_every_feature_present(variant, tiny_model):
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from arcforge.model.megatron_model import build_model, routers

    arch = get_preset("proxy-tiny")
    if variant == "air":
        arch = arch.with_overrides(qk_norm=False, routed_scaling_factor=1.0, num_layers=3)
        model = build_model(arch, seq_length=32, seed=0)
    else:
        model = tiny_model
    layers = _layers(model)
    assert len(layers) == arch.num_layers
    assert [isinstance(lay.mlp, MoELayer) for lay in layers] == [bool(x) for x in arch.moe_layer_pattern]
    assert type(layers[0].mlp) is MLP
    assert layers[0].mlp.linear_fc1.weight.shape == (2 * arch.ffn_hidden_size, arch.hidden_size)
    for lay in layers:
        attn = lay.self_attention
        qkv_out = (arch.num_attention_heads + 2 * arch.num_query_groups) * arch.head_dim
        assert attn.linear_qkv.weight.shape == (qkv_out, arch.hidden_size)
        assert attn.linear_qkv.bias is not None and attn.linear_qkv.bias.shape == (qkv_out,)  # QKV bias
        assert attn.linear_proj.bias is None  # no output-projection bias
        assert attn.num_query_groups_per_partition == arch.num_query_groups  # GQA
        if arch.qk_norm:
            assert isinstance(attn.q_layernorm, torch.nn.RMSNorm) and attn.q_layernorm.weight.shape == (arch.head_dim,)
            assert isinstance(attn.k_layernorm, torch.nn.RMSNorm)
        else:
            assert isinstance(attn.q_layernorm, IdentityOp) and isinstance(attn.k_layernorm, IdentityOp)
        assert isinstance(lay.input_layernorm, torch.nn.RMSNorm) and lay.input_layernorm.eps == arch.norm_eps
    for lay in layers[arch.first_dense_layers :]:
        moe = lay.mlp
        assert moe.router.score_function == "sigmoid" and moe.router.topk == arch.moe_top_k
        assert moe.config.moe_router_topk_scaling_factor == arch.routed_scaling_factor
        assert moe.router.expert_bias.shape == (arch.num_experts,) and moe.router.expert_bias.dtype == torch.float32
        assert len(moe.experts.local_experts) == arch.num_experts
        assert moe.shared_experts is not None
        assert moe.shared_experts.linear_fc2.weight.shape == (arch.hidden_size, arch.shared_expert_ffn_size)
    # rotary: half of head_dim is rotated
    assert model.rotary_pos_emb.inv_freq.numel() * 2 == arch.head_dim // 2
    # MTP block: one MoE transformer layer with its own norms and projection
    assert model.mtp_process and len(model.mtp.layers) == arch.mtp_layers
    mtp = model.mtp.layers[0]
    assert isinstance(mtp.transformer_layer.mlp, MoELayer)
    assert mtp.eh_proj.weight.shape == (arch.hidden_size, 2 * arch.hidden_size)
    assert model.config.mtp_loss_scaling_factor == arch.mtp_loss_weight
    assert len(routers(model)) == arch.num_moe_layers + arch.mtp_layers
    # untied output layer without bias; state dict carries the expert biases
    assert not model.share_embeddings_and_output_weights and model.output_layer.bias is None
    sd = model.state_dict()
    assert sum(k.endswith("router.expert_bias") for k in sd) == arch.num_moe_layers + arch.mtp_layers


def test_train_step_mtp_and_aux_loss(tiny_model, tiny_batch):
    from arcforge.model.megatron_model import lm_loss, logits

    model, arch = tiny_model, get_preset("proxy-tiny")
    tokens, labels = tiny_batch
    model.zero_grad(set_to_none=True)
    out = lm_loss(model, tokens, labels)
    assert torch.isfinite(out.loss) and out.per_token.shape == tokens.shape
    assert out.lm_loss == pytest.approx(float(torch.log(torch.tensor(arch.vocab_size))), rel=0.1)
    # the MTP loss is computed: its recorded value equals the CE of the MTP logits on labels
    # shifted by one more position (last position masked, as in megatron)
    assert len(out.mtp_losses) == 1
    with torch.no_grad():
        _, (mtp_logits,) = logits(model, tokens, with_mtp=True)
    ce = torch.nn.functional.cross_entropy(
        mtp_logits[:, :-1].reshape(-1, arch.vocab_size), labels[:, 1:].reshape(-1)
    )
    assert out.mtp_losses[0] == pytest.approx(float(ce), rel=1e-4)
    # sequence-level aux balance loss is computed in every MoE layer (incl. MTP)
    assert out.aux_losses["seq_load_balancing_loss"] > 0
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # every parameter is trained (MTP layers only through the MTP loss); with 8 experts top-2
    # and 128 tokens every expert receives tokens
    assert no_grad == []


def test_mtp_loss_reaches_gradients_only_with_weight(tiny_model, tiny_batch):
    from arcforge.model.megatron_model import lm_loss

    model = tiny_model
    tokens, labels = tiny_batch
    grads = {}
    for weight in (0.3, 0.0):
        model.config.mtp_loss_scaling_factor = weight
        try:
            model.zero_grad(set_to_none=True)
            lm_loss(model, tokens, labels).loss.backward()
        finally:
            model.config.mtp_loss_scaling_factor = 0.3
        # the MTP layer's final norm sits after its router, so only the MTP CE reaches it
        grads[weight] = (
            model.mtp.layers[0].final_layernorm.weight.grad.clone(),
            model.embedding.word_embeddings.weight.grad.clone(),
        )
    assert grads[0.3][0].abs().sum() > 0
    assert grads[0.0][0].abs().sum() == 0
    assert not torch.allclose(grads[0.3][1], grads[0.0][1])  # and the MTP loss reaches the trunk


def test_loss_scale_scales_all_terms(tiny_model, tiny_batch):
    from arcforge.model.megatron_model import lm_loss

    model = tiny_model
    tokens, labels = tiny_batch
    grads = []
    for scale in (1.0, 0.25):
        model.zero_grad(set_to_none=True)
        lm_loss(model, tokens, labels, loss_scale=scale).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in ("mtp.layers.0.eh_proj.weight", "decoder.layers.1.mlp.router.weight", "output_layer.weight"):
        torch.testing.assert_close(grads[1][n], grads[0][n] * 0.25, rtol=1e-4, atol=1e-9)


def test_expert_bias_update_balances_a_skewed_load(tiny_model, tiny_batch):
    from arcforge.model.megatron_model import expert_bias_update, lm_loss, logits, routers

    model, arch = tiny_model, get_preset("proxy-tiny")
    tokens, labels = tiny_batch
    rs = routers(model)
    saved = [r.expert_bias.clone() for r in rs]
    try:
        with torch.no_grad():
            for r in rs:  # skew: experts 0 and 1 win every token
                r.expert_bias.zero_()
                r.expert_bias[:2] = 10.0
                r.local_tokens_per_expert.zero_()
        logits(model, tokens)  # no-grad forwards are not counted
        assert all(r.local_tokens_per_expert.sum() == 0 for r in rs)
        lm_loss(model, tokens, labels)
        n_tokens = tokens.numel()
        for r in rs:
            counts = r.local_tokens_per_expert
            assert counts[:2].tolist() == [n_tokens, n_tokens] and counts[2:].sum() == 0
        before = [r.expert_bias.clone() for r in rs]
        assert expert_bias_update(model) == arch.num_moe_layers + arch.mtp_layers
        rate = arch.bias_update_rate
        for r, b in zip(rs, before):
            delta = r.expert_bias - b
            torch.testing.assert_close(delta[:2], torch.full((2,), -rate))  # overloaded: down
            torch.testing.assert_close(delta[2:], torch.full((arch.num_experts - 2,), rate))  # idle: up
            assert r.local_tokens_per_expert.sum() == 0  # counts reset for the next step
    finally:
        with torch.no_grad():
            for r, b in zip(rs, saved):
                r.expert_bias.copy_(b)
                r.local_tokens_per_expert.zero_()


def test_optimizer_step_on_cpu(tiny_batch):
    from arcforge.model.megatron_model import build_model, expert_bias_update, lm_loss

    arch = get_preset("proxy-tiny").with_overrides(num_layers=2)
    model = build_model(arch, seq_length=32, seed=1)
    tokens, labels = tiny_batch
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        out = lm_loss(model, tokens, labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        expert_bias_update(model)
        losses.append(out.lm_loss)
    assert losses[-1] < losses[0]  # it learns the fixed batch


def test_build_is_deterministic():
    from arcforge.model.megatron_model import build_model

    arch = get_preset("proxy-tiny").with_overrides(num_layers=2)
    a, b, c = (build_model(arch, seq_length=16, seed=s).state_dict() for s in (5, 5, 6))
    keys = [k for k, v in a.items() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
    assert all(torch.equal(a[k], b[k]) for k in keys)
    assert not torch.equal(a["decoder.layers.1.mlp.experts.local_experts.0.linear_fc1.weight"],
                           c["decoder.layers.1.mlp.experts.local_experts.0.linear_fc1.weight"])


def test_seq_aux_loss_can_be_disabled():
    from arcforge.model.megatron_model import build_model, lm_loss

    arch = get_preset("proxy-tiny").with_overrides(num_layers=2, aux_seq_loss_coeff=0.0, mtp_layers=0)
    model = build_model(arch, seq_length=16, seed=0)
    tokens = torch.randint(0, arch.vocab_size, (2, 16))
    out = lm_loss(model, tokens, torch.roll(tokens, -1, 1))
    assert out.aux_losses.get("seq_load_balancing_loss", 0.0) == 0.0
    assert out.mtp_losses == [] and not model.mtp_process
