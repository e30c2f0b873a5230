"""Numerical parity of the megatron-core model with HuggingFace ``Glm4MoeForCausalLM`` (and
transformers' ``MtpModel`` for the MTP layer) after mapping weights across, in fp32 on CPU;
HF export through the checkpoint format and the CLI; checkpoint round trips."""

from __future__ import annotations

import json

import pytest
import torch

from arcforge.model.arch import get_preset

# megatron-core 0.16.1 warns on every layer built without an explicit tp_group, and about
# missing Apex/TE; none of it concerns these tests
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:megatron")

TOL = 1e-4
SEQ = 24


def _arch(variant: str):
    # small but routing-heavy: 8 experts, top-3, 2 MoE layers + 1 dense + an MoE MTP layer
    glm = variant == "glm45"
    return get_preset("proxy-tiny").with_overrides(
        name=f"parity-{variant}", num_layers=3, first_dense_layers=1, hidden_size=64, ffn_hidden_size=96,
        moe_ffn_hidden_size=32, num_attention_heads=4, num_query_groups=2, head_dim=32, num_experts=8,
        moe_top_k=3, vocab_size=256, qk_norm=glm, routed_scaling_factor=2.5 if glm else 1.0,
    )


def _randomise(model, arch, seed: int) -> None:
    """Make every mapped tensor matter: norms away from 1, routers with spread-out scores and a
    random correction bias of the same order, so the bias changes which experts are chosen."""
    from arcforge.model.megatron_model import routers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights, QKV bias
                noise = torch.randn(p.shape, generator=g)
                p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.1 * noise)
            elif name.endswith("router.weight"):
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(3.0)  # larger activations than the 0.02-std init
        for r in routers(model):
            r.expert_bias.copy_(0.1 * torch.randn(arch.num_experts, generator=g))


@pytest.fixture(scope="module", params=["glm45", "air"])
def pair(request):
    """(arch, megatron model, HF model with the megatron weights, tokens)."""
    from arcforge.model.hf_convert import build_hf_model
    from arcforge.model.megatron_model import build_model

    arch = _arch(request.param)
    model = build_model(arch, seq_length=SEQ, seed=3).eval()
    _randomise(model, arch, seed=4)
    hf = build_hf_model(arch, model.state_dict())
    tokens = torch.randint(0, arch.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(5))
    return arch, model, hf, tokens


def test_logits_match_hf(pair):
    from arcforge.model.megatron_model import logits

    arch, model, hf, tokens = pair
    ours = logits(model, tokens)
    with torch.no_grad():
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape == (2, SEQ, arch.vocab_size)
    err = (ours - theirs).abs().max().item()
    print(f"{arch.name}: max |logit diff| = {err:.3g} (logit scale {theirs.abs().max().item():.3g})")
    assert err < TOL
    assert theirs.std() > 0.3  # the comparison is not between near-zero numbers


def test_routing_is_exercised(pair):
    """The correction bias changes the chosen experts (it never weights them), every expert is
    used and tokens do pick top-k > 1 experts: parity covers the whole routing path."""
    arch, model, hf, tokens = pair
    seen, changed = set(), 0
    gates = [lay.mlp.gate for lay in hf.model.layers[arch.first_dense_layers :]]
    captured = []
    hooks = [g.register_forward_hook(lambda m, i, o: captured.append((m, i[0]))) for g in gates]
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for gate, x in captured:
            _, weights, idx = gate(x)
            seen |= set(idx.flatten().tolist())
            scores = torch.sigmoid(torch.nn.functional.linear(x.view(-1, arch.hidden_size).float(), gate.weight))
            unbiased = scores.topk(arch.moe_top_k, dim=-1).indices.sort(dim=-1).values
            changed += (idx.sort(dim=-1).values != unbiased).any(dim=-1).sum().item()
            torch.testing.assert_close(weights.sum(-1), torch.full(weights.shape[:1], arch.routed_scaling_factor))
    assert seen == set(range(arch.num_experts))
    assert changed > 0, "the expert bias never changed a selection; parity would not test it"
    # and the model output depends on it: without the bias, HF gives different logits
    with torch.no_grad():
        saved = [g.e_score_correction_bias.clone() for g in gates]
        for g in gates:
            g.e_score_correction_bias.zero_()
        unbiased_logits = hf(tokens).logits
        for g, b in zip(gates, saved):
            g.e_score_correction_bias.copy_(b)
        assert (unbiased_logits - hf(tokens).logits).abs().max() > 100 * TOL


def test_mtp_logits_match_hf(pair):
    from arcforge.model.hf_convert import build_hf_mtp_model
    from arcforge.model.megatron_model import logits

    arch, model, hf, tokens = pair
    _, (ours,) = logits(model, tokens, with_mtp=True)
    mtp = build_hf_mtp_model(hf, arch, model.state_dict())
    shifted = torch.roll(tokens, -1, dims=1)
    shifted[:, -1] = 0  # megatron's roll zero-fills the last position
    positions = torch.arange(SEQ).expand(2, SEQ)
    with torch.no_grad():
        hidden = hf.model(tokens).last_hidden_state
        theirs = mtp._project_to_logits(mtp.forward_layer(0, hidden, positions, None, input_ids=shifted))
    err = (ours - theirs).abs().max().item()
    print(f"{arch.name}: MTP max |logit diff| = {err:.3g}")
    assert err < TOL


def test_state_dict_round_trip(pair):
    from arcforge.model.hf_convert import clean_state_dict, hf_to_megatron_state_dict, megatron_to_hf_state_dict

    arch, model, hf, _ = pair
    sd = clean_state_dict(model.state_dict())
    for fused in (False, True):
        back = hf_to_megatron_state_dict(megatron_to_hf_state_dict(sd, arch, fused_experts=fused), arch)
        assert back.keys() == sd.keys()
        for k in sd:
            assert torch.equal(back[k], sd[k]), k
    # the in-memory HF layout is exactly the HF module's own state dict
    hf_sd = megatron_to_hf_state_dict(sd, arch, fused_experts=True, include_mtp=False)
    own = {k for k in hf.state_dict() if "rotary_emb" not in k}
    assert set(hf_sd) == own


def test_checkpoint_round_trip(tmp_path, pair):
    from arcforge.model.checkpoint import load_checkpoint, load_model_state, save_checkpoint
    from arcforge.model.megatron_model import build_model, logits

    arch, model, _, tokens = pair
    path = save_checkpoint(tmp_path / "ckpt" / "step-7.pt", model, arch, {"step": 7, "optimizer": {"lr": 1e-3}})
    raw = torch.load(path, weights_only=True)
    assert {"arch", "model", "step", "optimizer"} <= raw.keys()
    assert not any(k.endswith("_extra_state") for k in raw["model"])
    state, arch2, extra = load_checkpoint(path)
    assert arch2 == arch and extra == {"step": 7, "optimizer": {"lr": 1e-3}}
    fresh = build_model(arch2, seq_length=SEQ, seed=99).eval()
    assert not torch.allclose(logits(fresh, tokens), logits(model, tokens))
    load_model_state(fresh, state)
    assert torch.equal(logits(fresh, tokens), logits(model, tokens))
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, arch, {"model": 1})
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an arcforge model checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_export_hf_cli_from_pretrained(tmp_path, pair):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from arcforge.cli import main
    from arcforge.model.checkpoint import save_checkpoint
    from arcforge.model.megatron_model import logits

    arch, model, _, tokens = pair
    ckpt = save_checkpoint(tmp_path / "model.pt", model, arch, {"step": 3})
    out = tmp_path / "hf"
    assert main(["model", "export-hf", str(ckpt), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "glm4_moe" and config["head_dim"] == arch.head_dim
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.5 and config["use_qk_norm"] == arch.qk_norm
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
    L = arch.num_layers
    assert {f"model.layers.{L}.eh_proj.weight", f"model.layers.{L}.shared_head.norm.weight",
            f"model.layers.{L}.mlp.experts.0.gate_proj.weight"} <= keys  # MTP, published layout
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys  # one tensor per expert
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        err = (hf(tokens).logits - logits(model, tokens)).abs().max().item()
    assert err < TOL


def test_export_hf_sharded_bf16(tmp_path, pair):
    from transformers import AutoModelForCausalLM

    from arcforge.model.hf_convert import export_hf
    from arcforge.model.megatron_model import logits

    arch, model, _, tokens = pair
    out = export_hf(model, arch, tmp_path / "hf", dtype=torch.bfloat16, include_mtp=False, max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    assert not any(k.startswith(f"model.layers.{arch.num_layers}.") for k in index["weight_map"])
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        err = (hf(tokens).logits - logits(model, tokens)).abs().max().item()
    assert 0 < err < 0.5  # bf16 weights: close, not equal
