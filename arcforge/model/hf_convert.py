"""megatron-core GLM-4.5 weights <-> HuggingFace ``Glm4MoeForCausalLM``, and HF checkpoint export.

Weight mapping (megatron name -> HF name, per decoder layer ``i``; ``L = arch.num_layers``):

==========================================================  ==========================================================
``embedding.word_embeddings.weight``                        ``model.embed_tokens.weight``
``output_layer.weight``                                     ``lm_head.weight``
``decoder.final_layernorm.weight``                          ``model.norm.weight``
``decoder.layers.i.input_layernorm.weight``                 ``model.layers.i.input_layernorm.weight``
``decoder.layers.i.pre_mlp_layernorm.weight``               ``model.layers.i.post_attention_layernorm.weight``
``...self_attention.linear_qkv.{weight,bias}``              ``...self_attn.{q,k,v}_proj.{weight,bias}`` (split per
                                                            query group: ``[q_1..q_{nh/ng}, k, v]`` for each group)
``...self_attention.linear_proj.weight``                    ``...self_attn.o_proj.weight``
``...self_attention.{q,k}_layernorm.weight``                ``...self_attn.{q,k}_norm.weight``
``...mlp.linear_fc1.weight`` (dense, ``[gate; up]``)        ``...mlp.{gate,up}_proj.weight``
``...mlp.linear_fc2.weight``                                ``...mlp.down_proj.weight``
``...mlp.router.weight``                                    ``...mlp.gate.weight``
``...mlp.router.expert_bias``                               ``...mlp.gate.e_score_correction_bias``
``...mlp.experts.local_experts.e.linear_fc1.weight``        ``...mlp.experts.e.{gate,up}_proj.weight`` (checkpoint
                                                            layout) / ``mlp.experts.gate_up_proj[e]`` (module)
``...mlp.experts.local_experts.e.linear_fc2.weight``        ``...mlp.experts.e.down_proj.weight`` /
                                                            ``mlp.experts.down_proj[e]``
``...mlp.shared_experts.linear_fc{1,2}.weight``             ``...mlp.shared_experts.{gate,up,down}_proj.weight``
``mtp.layers.k.{enorm,hnorm,eh_proj}.weight``               ``model.layers.{L+k}.{enorm,hnorm,eh_proj}.weight``
``mtp.layers.k.final_layernorm.weight``                     ``model.layers.{L+k}.shared_head.norm.weight``
``mtp.layers.k.transformer_layer.*``                        ``model.layers.{L+k}.*`` (as a decoder MoE layer)
==========================================================  ==========================================================

The MTP layers are written the way the published GLM-4.5 checkpoints store them (layer
``L+k``, shared embedding/head not duplicated). ``Glm4MoeForCausalLM`` ignores them;
transformers' ``MtpModel`` (speculative decoding) and serving engines read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from arcforge.model.arch import ArchConfig, to_hf_config

Tensor = torch.Tensor


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Tensors only: drops megatron's ``_extra_state`` entries (TE metadata; ``None`` without TE)."""
    return {k: v for k, v in state.items() if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)}


def _split_qkv(arch: ArchConfig, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    ng, hd = arch.num_query_groups, arch.head_dim
    qpg = arch.num_attention_heads // ng
    rest = w.shape[1:]
    g = w.reshape(ng, qpg + 2, hd, *rest)
    q = g[:, :qpg].reshape(ng * qpg * hd, *rest)
    k = g[:, qpg].reshape(ng * hd, *rest)
    v = g[:, qpg + 1].reshape(ng * hd, *rest)
    return q, k, v


def _merge_qkv(arch: ArchConfig, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    ng, hd = arch.num_query_groups, arch.head_dim
    qpg = arch.num_attention_heads // ng
    rest = q.shape[1:]
    g = torch.cat(
        [q.reshape(ng, qpg, hd, *rest), k.reshape(ng, 1, hd, *rest), v.reshape(ng, 1, hd, *rest)], dim=1
    )
    return g.reshape(ng * (qpg + 2) * hd, *rest)


def _layer_to_hf(arch: ArchConfig, sd: Mapping[str, Tensor], src: str, dst: str, moe: bool, fused_experts: bool):
    """One transformer layer: megatron prefix ``src`` -> HF prefix ``dst`` (both end with '.')."""
    out: dict[str, Tensor] = {}
    out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
    out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
    a, ha = src + "self_attention.", dst + "self_attn."
    q, k, v = _split_qkv(arch, sd[a + "linear_qkv.weight"])
    out[ha + "q_proj.weight"], out[ha + "k_proj.weight"], out[ha + "v_proj.weight"] = q, k, v
    if arch.qkv_bias:
        qb, kb, vb = _split_qkv(arch, sd[a + "linear_qkv.bias"])
        out[ha + "q_proj.bias"], out[ha + "k_proj.bias"], out[ha + "v_proj.bias"] = qb, kb, vb
    out[ha + "o_proj.weight"] = sd[a + "linear_proj.weight"]
    if arch.qk_norm:
        out[ha + "q_norm.weight"] = sd[a + "q_layernorm.weight"]
        out[ha + "k_norm.weight"] = sd[a + "k_layernorm.weight"]
    m, hm = src + "mlp.", dst + "mlp."
    if not moe:
        gate, up = sd[m + "linear_fc1.weight"].chunk(2, dim=0)
        out[hm + "gate_proj.weight"], out[hm + "up_proj.weight"] = gate, up
        out[hm + "down_proj.weight"] = sd[m + "linear_fc2.weight"]
        return out
    out[hm + "gate.weight"] = sd[m + "router.weight"]
    if arch.expert_bias:
        out[hm + "gate.e_score_correction_bias"] = sd[m + "router.expert_bias"].float()
    else:  # HF always has the buffer; zeros = no correction
        out[hm + "gate.e_score_correction_bias"] = torch.zeros(arch.num_experts, dtype=torch.float32)
    fc1, fc2 = _expert_weights(sd, m, arch)
    if fused_experts:
        out[hm + "experts.gate_up_proj"] = torch.stack(fc1)  # [E, 2I, H], gate first
        out[hm + "experts.down_proj"] = torch.stack(fc2)  # [E, H, I]
    else:
        for e in range(arch.num_experts):
            gate, up = fc1[e].chunk(2, dim=0)
            out[f"{hm}experts.{e}.gate_proj.weight"] = gate
            out[f"{hm}experts.{e}.up_proj.weight"] = up
            out[f"{hm}experts.{e}.down_proj.weight"] = fc2[e]
    if arch.num_shared_experts:
        gate, up = sd[m + "shared_experts.linear_fc1.weight"].chunk(2, dim=0)
        out[hm + "shared_experts.gate_proj.weight"] = gate
        out[hm + "shared_experts.up_proj.weight"] = up
        out[hm + "shared_experts.down_proj.weight"] = sd[m + "shared_experts.linear_fc2.weight"]
    return out


def _expert_weights(sd: Mapping[str, Tensor], m: str, arch: ArchConfig) -> tuple[list[Tensor], list[Tensor]]:
    """Per-expert ``linear_fc1`` [2I, H] and ``linear_fc2`` [H, I] weights, from sequential experts
    (``experts.local_experts.e.*``) or from grouped ones (``GroupedMLP``: ``weight1`` read as
    ``view(E, H, 2I)[e]``, ``weight2`` as ``view(E, I, H)[e]``; ``kernels.experts: grouped``)."""
    e, h = arch.num_experts, arch.hidden_size
    if m + "experts.weight1" in sd:
        w1, w2 = sd[m + "experts.weight1"].view(e, h, -1), sd[m + "experts.weight2"].view(e, -1, h)
        return [w1[i].t().contiguous() for i in range(e)], [w2[i].t().contiguous() for i in range(e)]
    return ([sd[f"{m}experts.local_experts.{i}.linear_fc1.weight"] for i in range(e)],
            [sd[f"{m}experts.local_experts.{i}.linear_fc2.weight"] for i in range(e)])


def _mtp_extras(sd: Mapping[str, Tensor], src: str, dst: str, final_norm_name: str) -> dict[str, Tensor]:
    return {
        dst + "enorm.weight": sd[src + "enorm.weight"],
        dst + "hnorm.weight": sd[src + "hnorm.weight"],
        dst + "eh_proj.weight": sd[src + "eh_proj.weight"],
        dst + final_norm_name: sd[src + "final_layernorm.weight"],
    }


def megatron_to_hf_state_dict(
    state: Mapping[str, Any], arch: ArchConfig, *, fused_experts: bool = False, include_mtp: bool = True
) -> dict[str, Tensor]:
    """HF ``Glm4MoeForCausalLM`` weights from a megatron ``GPTModel`` state dict.

    ``fused_experts=False`` gives the published checkpoint layout (one tensor per expert
    projection, what ``export_hf`` writes); ``True`` gives the in-memory layout of
    transformers 5 modules (``experts.gate_up_proj`` / ``experts.down_proj``), loadable with
    ``load_state_dict``. MTP layers (if ``include_mtp``) go to ``model.layers.{L+k}``.
    """
    sd = clean_state_dict(state)
    out: dict[str, Tensor] = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"]}
    if not arch.tie_embeddings:
        out["lm_head.weight"] = sd["output_layer.weight"]
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    for i, moe in enumerate(arch.moe_layer_pattern):
        out.update(_layer_to_hf(arch, sd, f"decoder.layers.{i}.", f"model.layers.{i}.", bool(moe), fused_experts))
    if include_mtp:
        for k in range(arch.mtp_layers):
            src, dst = f"mtp.layers.{k}.", f"model.layers.{arch.num_layers + k}."
            out.update(_layer_to_hf(arch, sd, src + "transformer_layer.", dst, True, fused_experts))
            out.update(_mtp_extras(sd, src, dst, "shared_head.norm.weight"))
    return out


def megatron_to_hf_mtp_state_dict(state: Mapping[str, Any], arch: ArchConfig) -> dict[str, Tensor]:
    """Weights for transformers' ``MtpModel`` module (``layers.k.{enorm,hnorm,eh_proj,post_norm}``,
    ``layers.k.mtp_block.*``), fused-expert layout; the embedding and head are the main model's."""
    sd = clean_state_dict(state)
    out: dict[str, Tensor] = {}
    for k in range(arch.mtp_layers):
        src, dst = f"mtp.layers.{k}.", f"layers.{k}."
        out.update(_layer_to_hf(arch, sd, src + "transformer_layer.", dst + "mtp_block.", True, True))
        out.update(_mtp_extras(sd, src, dst, "post_norm.weight"))
    return out


# ---- HF -> megatron (import) ----------------------------------------------------------------


def _unfuse(hf: Mapping[str, Tensor], hm: str, e: int) -> tuple[Tensor, Tensor]:
    if hm + "experts.gate_up_proj" in hf:
        return hf[hm + "experts.gate_up_proj"][e], hf[hm + "experts.down_proj"][e]
    fc1 = torch.cat([hf[f"{hm}experts.{e}.gate_proj.weight"], hf[f"{hm}experts.{e}.up_proj.weight"]], dim=0)
    return fc1, hf[f"{hm}experts.{e}.down_proj.weight"]


def _layer_from_hf(arch: ArchConfig, hf: Mapping[str, Tensor], src: str, dst: str, moe: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
    out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
    a, ha = dst + "self_attention.", src + "self_attn."
    out[a + "linear_qkv.weight"] = _merge_qkv(
        arch, hf[ha + "q_proj.weight"], hf[ha + "k_proj.weight"], hf[ha + "v_proj.weight"]
    )
    if arch.qkv_bias:
        out[a + "linear_qkv.bias"] = _merge_qkv(
            arch, hf[ha + "q_proj.bias"], hf[ha + "k_proj.bias"], hf[ha + "v_proj.bias"]
        )
    out[a + "linear_proj.weight"] = hf[ha + "o_proj.weight"]
    if arch.qk_norm:
        out[a + "q_layernorm.weight"] = hf[ha + "q_norm.weight"]
        out[a + "k_layernorm.weight"] = hf[ha + "k_norm.weight"]
    m, hm = dst + "mlp.", src + "mlp."
    if not moe:
        out[m + "linear_fc1.weight"] = torch.cat([hf[hm + "gate_proj.weight"], hf[hm + "up_proj.weight"]], dim=0)
        out[m + "linear_fc2.weight"] = hf[hm + "down_proj.weight"]
        return out
    out[m + "router.weight"] = hf[hm + "gate.weight"]
    if arch.expert_bias:
        out[m + "router.expert_bias"] = hf[hm + "gate.e_score_correction_bias"].float()
    for e in range(arch.num_experts):
        fc1, fc2 = _unfuse(hf, hm, e)
        out[f"{m}experts.local_experts.{e}.linear_fc1.weight"] = fc1
        out[f"{m}experts.local_experts.{e}.linear_fc2.weight"] = fc2
    if arch.num_shared_experts:
        s = hm + "shared_experts."
        out[m + "shared_experts.linear_fc1.weight"] = torch.cat(
            [hf[s + "gate_proj.weight"], hf[s + "up_proj.weight"]], dim=0
        )
        out[m + "shared_experts.linear_fc2.weight"] = hf[s + "down_proj.weight"]
    return out


def hf_to_megatron_state_dict(hf: Mapping[str, Tensor], arch: ArchConfig) -> dict[str, Tensor]:
    """Inverse of ``megatron_to_hf_state_dict`` (either expert layout); MTP taken if present."""
    out: dict[str, Tensor] = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"]}
    if not arch.tie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    out["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    for i, moe in enumerate(arch.moe_layer_pattern):
        out.update(_layer_from_hf(arch, hf, f"model.layers.{i}.", f"decoder.layers.{i}.", bool(moe)))
    for k in range(arch.mtp_layers):
        src, dst = f"model.layers.{arch.num_layers + k}.", f"mtp.layers.{k}."
        if src + "eh_proj.weight" not in hf:
            continue
        out.update(_layer_from_hf(arch, hf, src, dst + "transformer_layer.", True))
        out[dst + "enorm.weight"] = hf[src + "enorm.weight"]
        out[dst + "hnorm.weight"] = hf[src + "hnorm.weight"]
        out[dst + "eh_proj.weight"] = hf[src + "eh_proj.weight"]
        out[dst + "final_layernorm.weight"] = hf[src + "shared_head.norm.weight"]
    return out


# ---- HF models and export ------------------------------------------------------------------


def build_hf_model(arch: ArchConfig, state: Mapping[str, Any] | None = None, *, attn_implementation: str = "eager"):
    """A ``Glm4MoeForCausalLM`` for ``arch`` (fp32, eval mode), with megatron weights if given."""
    from transformers import Glm4MoeForCausalLM

    config = to_hf_config(arch)
    config._attn_implementation = attn_implementation
    model = Glm4MoeForCausalLM(config).float().eval()
    if state is not None:
        hf = megatron_to_hf_state_dict(state, arch, fused_experts=True, include_mtp=False)
        missing, unexpected = model.load_state_dict(hf, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise RuntimeError(f"HF weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    return model


def build_hf_mtp_model(hf_model, arch: ArchConfig, state: Mapping[str, Any]):
    """transformers' ``MtpModel`` on top of ``hf_model`` with the MTP weights of ``state``."""
    from transformers.modeling_layers import MtpModel

    mtp = MtpModel(hf_model, arch.mtp_layers).float().eval()
    weights = megatron_to_hf_mtp_state_dict(state, arch)
    missing, unexpected = mtp.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(("embed_tokens.", "shared_head.", "rotary_emb."))]
    if missing or unexpected:
        raise RuntimeError(f"HF MTP weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    return mtp


def _state_of(model_or_state: Any) -> Mapping[str, Any]:
    if isinstance(model_or_state, Mapping):
        return model_or_state
    return model_or_state.state_dict()


def export_hf(
    model_or_state_dict: Any,
    arch: ArchConfig,
    out_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    include_mtp: bool = True,
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """Write an HF checkpoint (``config.json`` + safetensors) loadable by
    ``AutoModelForCausalLM.from_pretrained(out_dir)``.

    ``dtype`` casts floating weights (e.g. ``torch.bfloat16``); the expert correction bias
    stays fp32 as in the published checkpoints. Files over ``max_shard_bytes`` are split into
    ``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = megatron_to_hf_state_dict(_state_of(model_or_state_dict), arch, fused_experts=False, include_mtp=include_mtp)
    tensors: dict[str, Tensor] = {}
    for k, v in hf.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point() and not k.endswith("e_score_correction_bias"):
            v = v.to(dtype)
        tensors[k] = v.contiguous().clone()  # no shared storage (chunk views) in safetensors

    config = to_hf_config(arch, num_mtp_layers=arch.mtp_layers if include_mtp else 0)
    config.architectures = ["Glm4MoeForCausalLM"]
    config.dtype = dtype or next(iter(tensors.values())).dtype
    config.save_pretrained(out)

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    meta = {"format": "pt", "producer": "arcforge"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    return out
