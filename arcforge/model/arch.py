"""One typed definition of the GLM-4.5 architecture family, its presets and parameter counts.

``ArchConfig`` is the single source of truth; ``to_transformer_config`` (megatron-core) and
``to_hf_config`` (transformers ``Glm4MoeConfig``) are derived from it, so the training model,
the exported checkpoint and the analytic parameter counts cannot drift apart.

Parameter counting conventions (see docs/model.md):

* ``total_params()`` counts every weight of the main model: embedding, output layer,
  attention (QKV with bias, output projection, QK-norm), dense MLPs, routed and shared
  experts, routers and their per-expert correction bias (a buffer, but part of the published
  checkpoint), every RMSNorm. The MTP layer is *not* included by default: the published
  "355B" / "106B" figures exclude it (with it GLM-4.5-Air would be 109.2B, 3% over its
  published 106B; without it 106.9B). ``include_mtp=True`` adds it.
* ``active_params()`` counts what one token touches in the main model: everything above
  except that only ``top_k`` of the routed experts count, and, by default, without the input
  embedding and the output layer (GLM-4.5's "32B active" is 32.08B on this definition and
  32.86B with the output layer; GLM-4.5-Air's "12B" is 12.18B, i.e. rounded down).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ArchConfig(BaseModel):
    """A GLM-4.5-style MoE decoder: dense first layers, then sigmoid-routed MoE layers, plus MTP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    # layout
    num_layers: int = Field(gt=0, description="decoder layers (dense + MoE), MTP excluded")
    first_dense_layers: int = Field(ge=0, description="the first k layers use a dense MLP")
    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0, description="intermediate size of the dense (gated SiLU) MLP")
    moe_ffn_hidden_size: int = Field(gt=0, description="intermediate size of one routed/shared expert")
    # attention
    num_attention_heads: int = Field(gt=0)
    num_query_groups: int = Field(gt=0, description="KV heads (GQA)")
    head_dim: int = Field(gt=0, description="kv_channels; explicit because heads*head_dim != hidden")
    rotary_fraction: float = Field(0.5, gt=0, le=1, description="partial RoPE: share of head_dim rotated")
    rope_theta: float = Field(1_000_000.0, gt=0)
    qk_norm: bool = True
    qkv_bias: bool = True
    # MoE
    num_experts: int = Field(gt=0, description="routed experts per MoE layer")
    num_shared_experts: int = Field(1, ge=0)
    moe_top_k: int = Field(gt=0)
    routed_scaling_factor: float = Field(1.0, gt=0)
    score_function: Literal["sigmoid"] = "sigmoid"
    expert_bias: bool = Field(True, description="loss-free balancing: per-expert bias used only to choose experts")
    bias_update_rate: float = Field(1e-3, ge=0)
    aux_seq_loss_coeff: float = Field(1e-4, ge=0, description="sequence-level aux balance loss weight (0 = off)")
    # embeddings / misc
    vocab_size: int = Field(gt=0)
    tie_embeddings: bool = False
    mtp_layers: int = Field(1, ge=0)
    mtp_loss_weight: float = Field(0.3, ge=0)
    max_position_embeddings: int = Field(131_072, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    # The word embeddings' init std; None = init_std (megatron's and HF Glm4Moe's default). At
    # 0.02 the layers' outputs outweigh the embeddings in the residual stream from the start, the
    # tokens' router inputs share one direction more with depth, and routing is uneven from step 0
    # (docs/model.md, "Routing at initialisation"); 1.0 (torch's nn.Embedding default) keeps it even.
    embedding_init_std: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "ArchConfig":
        if self.embedding_init_std is not None and self.tie_embeddings:
            raise ValueError("embedding_init_std needs untied embeddings (tie_embeddings: false): the output layer "
                             "would share the embedding's scale")
        if self.first_dense_layers > self.num_layers:
            raise ValueError("first_dense_layers must be <= num_layers")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError("num_attention_heads must be a multiple of num_query_groups")
        if self.moe_top_k > self.num_experts:
            raise ValueError("moe_top_k must be <= num_experts")
        rot = self.head_dim * self.rotary_fraction
        if rot != int(rot) or int(rot) % 2:
            raise ValueError("head_dim * rotary_fraction must be an even integer")
        return self

    # ---- derived -------------------------------------------------------------------------
    @property
    def moe_layer_pattern(self) -> list[int]:
        """megatron ``moe_layer_freq`` as a list: 0 = dense layer, 1 = MoE layer."""
        return [0] * self.first_dense_layers + [1] * (self.num_layers - self.first_dense_layers)

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def shared_expert_ffn_size(self) -> int:
        return self.moe_ffn_hidden_size * self.num_shared_experts

    def with_overrides(self, **changes: Any) -> "ArchConfig":
        """A validated copy with some fields changed (e.g. ``vocab_size`` of the tokenizer)."""
        return ArchConfig(**{**self.model_dump(), **changes})

    # ---- parameter counts ----------------------------------------------------------------
    def _attention_params(self) -> int:
        h, nh, ng, hd = self.hidden_size, self.num_attention_heads, self.num_query_groups, self.head_dim
        qkv_out = (nh + 2 * ng) * hd
        n = h * qkv_out + nh * hd * h  # QKV and output projection (no output bias)
        if self.qkv_bias:
            n += qkv_out
        if self.qk_norm:
            n += 2 * hd  # q_norm and k_norm over head_dim
        return n

    def _expert_params(self, ffn: int) -> int:
        return 3 * self.hidden_size * ffn  # gate, up, down

    def _moe_params(self, active: bool) -> int:
        e = self.moe_top_k if active else self.num_experts
        n = e * self._expert_params(self.moe_ffn_hidden_size)
        if self.num_shared_experts:
            n += self._expert_params(self.shared_expert_ffn_size)
        n += self.num_experts * self.hidden_size  # router weight (all experts are scored)
        if self.expert_bias:
            n += self.num_experts  # correction bias
        return n

    def _layer_params(self, moe: bool, active: bool) -> int:
        mlp = self._moe_params(active) if moe else self._expert_params(self.ffn_hidden_size)
        return self._attention_params() + mlp + 2 * self.hidden_size  # + input/post-attention norms

    def _mtp_layer_params(self, active: bool) -> int:
        h = self.hidden_size
        # enorm, hnorm, eh_proj (2h -> h, no bias), an MoE decoder layer, final norm (shared_head.norm)
        return 2 * h + 2 * h * h + self._layer_params(moe=True, active=active) + h

    def param_breakdown(self, *, active: bool = False) -> dict[str, int]:
        """Parameter counts by component (``active`` counts only top-k routed experts)."""
        h = self.hidden_size
        return {
            "embedding": self.vocab_size * h,
            "output_layer": 0 if self.tie_embeddings else self.vocab_size * h,
            "dense_layers": self.first_dense_layers * self._layer_params(moe=False, active=active),
            "moe_layers": self.num_moe_layers * self._layer_params(moe=True, active=active),
            "final_norm": h,
            "mtp": self.mtp_layers * self._mtp_layer_params(active=active),
        }

    def total_params(self, *, include_mtp: bool = False) -> int:
        b = self.param_breakdown()
        return sum(v for k, v in b.items() if include_mtp or k != "mtp")

    def active_params(self, *, include_embeddings: bool = False, include_mtp: bool = False) -> int:
        b = self.param_breakdown(active=True)
        skip = set() if include_embeddings else {"embedding", "output_layer"}
        if not include_mtp:
            skip.add("mtp")
        return sum(v for k, v in b.items() if k not in skip)

    def expert_bias_count(self, *, include_mtp: bool = False) -> int:
        """How many of the counted parameters are correction-bias buffers (not nn.Parameters)."""
        if not self.expert_bias:
            return 0
        layers = self.num_moe_layers + (self.mtp_layers if include_mtp else 0)
        return layers * self.num_experts


def _glm(**kw: Any) -> ArchConfig:
    return ArchConfig(**kw)


PRESETS: dict[str, ArchConfig] = {
    # GLM-4.5 (355B total / 32B active), published config
    "glm45": _glm(
        name="glm45", num_layers=92, first_dense_layers=3, hidden_size=5120, ffn_hidden_size=12288,
        moe_ffn_hidden_size=1536, num_attention_heads=96, num_query_groups=8, head_dim=128,
        qk_norm=True, num_experts=160, moe_top_k=8, routed_scaling_factor=2.5, vocab_size=151_552,
    ),
    # GLM-4.5-Air (106B total / 12B active)
    "glm45-air": _glm(
        name="glm45-air", num_layers=46, first_dense_layers=1, hidden_size=4096, ffn_hidden_size=10944,
        moe_ffn_hidden_size=1408, num_attention_heads=96, num_query_groups=8, head_dim=128,
        qk_norm=False, num_experts=128, moe_top_k=8, routed_scaling_factor=1.0, vocab_size=151_552,
    ),
    # ~1.0B total / 0.15B active (non-embedding), GLM-4.5 tokenizer vocabulary
    "proxy-1b": _glm(
        name="proxy-1b", num_layers=16, first_dense_layers=1, hidden_size=1024, ffn_hidden_size=3072,
        moe_ffn_hidden_size=416, num_attention_heads=16, num_query_groups=4, head_dim=64,
        qk_norm=True, num_experts=32, moe_top_k=4, routed_scaling_factor=2.5, vocab_size=151_552,
        max_position_embeddings=32_768,
    ),
    # ~100M total / 27M active (non-embedding), 32k vocabulary
    "proxy-100m": _glm(
        name="proxy-100m", num_layers=10, first_dense_layers=1, hidden_size=512, ffn_hidden_size=1536,
        moe_ffn_hidden_size=256, num_attention_heads=8, num_query_groups=2, head_dim=64,
        qk_norm=True, num_experts=16, moe_top_k=4, routed_scaling_factor=2.5, vocab_size=32_768,
        max_position_embeddings=8192,
    ),
    # trains on one CPU core: 4 layers (1 dense), hidden 128, 8 experts top-2, 1 shared, MTP 1
    "proxy-tiny": _glm(
        name="proxy-tiny", num_layers=4, first_dense_layers=1, hidden_size=128, ffn_hidden_size=384,
        moe_ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2, head_dim=32,
        qk_norm=True, num_experts=8, moe_top_k=2, routed_scaling_factor=2.5, vocab_size=2048,
        max_position_embeddings=4096,
    ),
}


def get_preset(name: str) -> ArchConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown architecture preset {name!r}; known: {', '.join(PRESETS)}") from None


# ---- conversions ---------------------------------------------------------------------------


RECOMPUTE = ("none", "selective", "full")


def recompute_settings(kind: str, *, grouped_experts: bool) -> dict[str, Any]:
    """megatron ``TransformerConfig`` keys for the train config's ``model.recompute`` (the same
    three choices as ``arcforge.model.memory``): ``selective`` recomputes core attention, the
    norms and (with grouped experts, which megatron requires for it) the expert activation;
    ``full`` keeps each layer's input only and recomputes one layer at a time."""
    if kind not in RECOMPUTE:
        raise ValueError(f"recompute: expected one of {RECOMPUTE}, got {kind!r}")
    if kind == "selective":
        modules = ["core_attn", "layernorm"] + (["moe_act"] if grouped_experts else [])
        return {"recompute_granularity": "selective", "recompute_modules": modules}
    if kind == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {}


def to_transformer_config(
    arch: ArchConfig,
    *,
    params_dtype: Any = None,
    use_cpu_initialization: bool = True,
    **overrides: Any,
):
    """megatron-core ``TransformerConfig`` for ``arch`` (world size 1 unless overridden).

    Fusions and Transformer-Engine paths are off so the same config runs on CPU; the
    token dispatcher is ``allgather`` (``alltoall`` creates CUDA streams).
    """
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = params_dtype or torch.float32
    load_balancing = "seq_aux_loss" if arch.aux_seq_loss_coeff > 0 else "none"
    kw: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        qk_layernorm=arch.qk_norm,
        add_qkv_bias=arch.qkv_bias,
        add_bias_linear=False,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_std,
        embedding_init_method_std=arch.embedding_init_std,
        # MoE
        num_moe_experts=arch.num_experts,
        moe_layer_freq=arch.moe_layer_pattern,
        moe_ffn_hidden_size=arch.moe_ffn_hidden_size,
        moe_shared_expert_intermediate_size=arch.shared_expert_ffn_size or None,
        moe_router_topk=arch.moe_top_k,
        moe_router_score_function=arch.score_function,
        moe_router_topk_scaling_factor=arch.routed_scaling_factor,
        moe_router_enable_expert_bias=arch.expert_bias,
        moe_router_bias_update_rate=arch.bias_update_rate,
        moe_router_load_balancing_type=load_balancing,
        moe_aux_loss_coeff=arch.aux_seq_loss_coeff,
        moe_router_dtype="fp32",
        moe_token_dispatcher_type="allgather",
        moe_grouped_gemm=False,
        # MTP
        mtp_num_layers=arch.mtp_layers or None,
        mtp_loss_scaling_factor=arch.mtp_loss_weight,
        # numerics / devices
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=use_cpu_initialization,
        # fused kernels are CUDA/TE/apex only
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        moe_permute_fusion=False,
        moe_router_fusion=False,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        expert_model_parallel_size=1,
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def layer_specs(arch: ArchConfig, config: Any):
    """(decoder block spec, MTP block spec or None) using megatron-core's local (non-TE) modules.

    The *block* spec builder honours ``moe_layer_freq`` (``get_gpt_layer_local_spec`` alone
    would make every layer MoE); the MTP spec wraps the last (MoE) decoder layer's spec.
    """
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec

    block = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm")
    mtp = None
    if arch.mtp_layers:
        mtp = get_gpt_mtp_block_spec(config, block, use_transformer_engine=False)
    return block, mtp


def to_hf_config(arch: ArchConfig, **overrides: Any):
    """transformers ``Glm4MoeConfig`` for ``arch``."""
    from transformers import Glm4MoeConfig

    kw: dict[str, Any] = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.ffn_hidden_size,
        moe_intermediate_size=arch.moe_ffn_hidden_size,
        num_hidden_layers=arch.num_layers,
        first_k_dense_replace=arch.first_dense_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_query_groups,
        head_dim=arch.head_dim,
        hidden_act="silu",
        max_position_embeddings=arch.max_position_embeddings,
        initializer_range=arch.init_std,
        rms_norm_eps=arch.norm_eps,
        tie_word_embeddings=arch.tie_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": arch.rope_theta,
            "partial_rotary_factor": arch.rotary_fraction,
        },
        attention_bias=arch.qkv_bias,
        use_qk_norm=arch.qk_norm,
        n_routed_experts=arch.num_experts,
        n_shared_experts=arch.num_shared_experts,
        num_experts_per_tok=arch.moe_top_k,
        routed_scaling_factor=arch.routed_scaling_factor,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        num_mtp_layers=arch.mtp_layers,
    )
    kw.update(overrides)
    return Glm4MoeConfig(**kw)
