"""The GLM-4.5-style model on megatron-core: build it, run it, balance its experts.

A CPU training step (world size 1)::

    model = build_model(arch, seq_length=256, seed=0)     # applies cpu_compat when CUDA is absent
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    out = lm_loss(model, tokens, labels, loss_mask)        # main CE; MTP and aux ride on its graph
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    expert_bias_update(model)                              # loss-free balancing, after every step
    log(out.lm_loss, out.mtp_losses, out.aux_losses)

``tokens``, ``labels``, ``loss_mask`` are ``[batch, seq]``; ``labels[:, i]`` is the token that
follows ``tokens[:, i]``. Underneath, ``GPTModel.forward(input_ids, position_ids,
attention_mask, labels=labels, loss_mask=loss_mask)`` returns the *per-token* main-model
cross-entropy ``[batch, seq]`` (neither masked nor averaged). The MTP loss is not in that
tensor: megatron attaches ``mtp_loss_weight * masked mean(MTP CE)`` to the hidden states with
``MTPLossAutoScaler``, so it reaches the gradients when the main loss is back-propagated, and
records its value in ``MTPLossLoggingHelper.tracker``. The sequence-level aux balance loss
works the same way (``MoEAuxLossAutoScaler``). On CPU ``attention_mask`` must be given
(``causal_attention_mask``). ``lm_loss`` does all of this and returns the numbers to log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from arcforge.model import cpu_compat
from arcforge.model.arch import ArchConfig, layer_specs, to_transformer_config
from arcforge.model.te_shims import apply_no_te_shims

_CUDA_INITIALISED = False


def mark_cuda_initialised() -> None:
    """Tell ``init_runtime``/``build_model`` that the caller (the trainer's megatron backend)
    has set up NCCL, megatron's parallel groups and the CUDA RNG itself: not to redo it."""
    global _CUDA_INITIALISED
    _CUDA_INITIALISED = True


def cuda_initialised() -> bool:
    return _CUDA_INITIALISED


def init_runtime(device: str = "cpu", seed: int = 1234) -> None:
    """Process-level set-up before building a model: CPU compat layer, or NCCL + RNG on CUDA."""
    if device == "cpu":
        if not cpu_compat.cuda_absent() and not cpu_compat.is_applied():
            import warnings

            warnings.warn("building a megatron model on CPU in a process that has CUDA: "
                          "forcing the CPU compatibility layer for the whole process")
        cpu_compat.apply(seed, force=True)
        return
    apply_no_te_shims()
    if _CUDA_INITIALISED:
        return
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        if "RANK" in os.environ:  # launched by torchrun
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1)
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    mark_cuda_initialised()


def build_model(
    arch: ArchConfig,
    *,
    seq_length: int,
    params_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int | None = None,
    attention: str = "local",
    experts: str = "sequential",
    dispatcher: str = "megatron",
    **config_overrides: Any,
):
    """A megatron-core ``GPTModel`` for ``arch``: dense first layers, then MoE layers, plus MTP.

    ``seq_length`` is the training sequence length (megatron's ``max_sequence_length``).
    ``seed`` (if given) seeds torch before initialisation so two builds are identical.
    ``attention`` (``local`` | ``sdpa``), ``experts`` (``sequential`` | ``grouped``) and
    ``dispatcher`` (``megatron`` | ``device``) pick the kernels (``arcforge.model.kernels``; the
    train config's ``kernels`` section).
    ``config_overrides`` go to ``TransformerConfig`` (e.g. ``recompute_granularity``).
    """
    from megatron.core.models.gpt import GPTModel

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    init_runtime(device)
    if seed is not None:
        torch.manual_seed(seed)
    if experts == "grouped":
        config_overrides.setdefault("moe_grouped_gemm", True)
    config = to_transformer_config(
        arch, params_dtype=params_dtype, use_cpu_initialization=device == "cpu", **config_overrides
    )
    block_spec, mtp_spec = local_specs(arch, config, attention=attention, experts=experts, dispatcher=dispatcher)
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec,
        vocab_size=arch.vocab_size,
        max_sequence_length=seq_length,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=arch.rotary_fraction,
        rotary_base=arch.rope_theta,
        mtp_block_spec=mtp_spec,
    )
    if device == "cuda":
        model = model.cuda()
    model.arch = arch  # type: ignore[attr-defined]
    return model


def local_specs(arch: ArchConfig, config: Any, *, attention: str = "local", experts: str = "sequential",
                dispatcher: str = "megatron"):
    """(decoder block spec, MTP block spec or None) from megatron's local specs
    (``arch.layer_specs``) with the chosen kernels (``kernels.apply_kernels``).
    ``experts="grouped"`` needs ``config.moe_grouped_gemm``."""
    if experts == "grouped" and not config.moe_grouped_gemm:
        raise ValueError("experts='grouped' needs a config with moe_grouped_gemm=True")
    block, mtp = layer_specs(arch, config)
    if attention == "local" and experts == "sequential" and dispatcher == "megatron":
        return block, mtp
    from arcforge.model.kernels import apply_kernels

    return (apply_kernels(block, attention=attention, experts=experts, dispatcher=dispatcher),
            apply_kernels(mtp, attention=attention, experts=experts, dispatcher=dispatcher))


# ---- forward helpers ---------------------------------------------------------------------


def position_ids_for(tokens: torch.Tensor) -> torch.Tensor:
    b, s = tokens.shape
    return torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)


def causal_attention_mask(seq_length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """megatron's boolean attention mask ``[1, 1, s, s]``, True = masked (future positions).

    Always pass one on CPU: with ``attention_mask=None`` megatron builds its default causal
    mask with ``device="cuda"`` hard-coded.
    """
    return torch.triu(torch.ones(seq_length, seq_length, dtype=torch.bool, device=device), diagonal=1)[None, None]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to back-propagate: loss_scale * masked mean main CE (MTP + aux ride on it)
    lm_loss: float  # masked mean main LM cross-entropy
    mtp_losses: list[float]  # per MTP depth, mean CE (unweighted)
    aux_losses: dict[str, float]  # e.g. seq_load_balancing_loss, summed over layers (unweighted)
    per_token: torch.Tensor  # [b, s] main LM cross-entropy


def lm_loss(
    model,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    loss_scale: float = 1.0,
) -> LossOutput:
    """One training forward pass; returns the loss to back-propagate plus the logged parts.

    ``loss = loss_scale * masked_mean(main CE)``. Megatron injects ``loss_scale *
    mtp_loss_weight * mean(MTP CE)`` and ``loss_scale * aux_coeff * seq_aux_loss`` into the
    backward pass of that same graph (``MTPLossAutoScaler`` / ``MoEAuxLossAutoScaler``, whose
    scale this sets), so they are not added to ``loss`` (that would double count) but
    reported separately. With gradient accumulation over N micro-batches pass
    ``loss_scale=1/N`` so that all three terms are averaged alike.
    """
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler
    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

    from arcforge.model.losses import reset_loss_trackers

    if loss_mask is None:
        loss_mask = torch.ones_like(labels, dtype=torch.float32)
    loss_mask = loss_mask.float()
    if attention_mask is None:
        attention_mask = causal_attention_mask(tokens.shape[1], tokens.device)
    scale = torch.tensor(float(loss_scale), device=tokens.device)
    MTPLossAutoScaler.set_loss_scale(scale)
    MoEAuxLossAutoScaler.set_loss_scale(scale)
    # megatron's loss trackers are process-global and accumulate; here they hold this call only
    reset_loss_trackers(model)
    per_token = model(
        tokens,
        position_ids_for(tokens),
        attention_mask,
        labels=labels,
        loss_mask=loss_mask,
    )
    main = (per_token.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    return LossOutput(
        loss=main * loss_scale,
        lm_loss=float(main.detach()),
        mtp_losses=mtp_loss_values(),
        aux_losses=aux_loss_values(),
        per_token=per_token,
    )


def mtp_loss_values() -> list[float]:
    """Per-depth MTP losses recorded by the last training forward (empty if none)."""
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    tracker = MTPLossLoggingHelper.tracker
    if "values" not in tracker:
        return []
    return [float(v) for v in tracker["values"].detach().cpu()]


def aux_loss_values() -> dict[str, float]:
    """MoE aux losses (unweighted, summed over layers) recorded by the last training forward."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    return {
        name: float(entry["values"].detach().float().sum().cpu())
        for name, entry in get_moe_layer_wise_logging_tracker().items()
        if "values" in entry
    }


@torch.no_grad()
def logits(model, tokens: torch.Tensor, *, with_mtp: bool = False):
    """Main-model logits ``[b, s, vocab]`` (and, if ``with_mtp``, one ``[b, s, vocab]`` per MTP depth).

    ``GPTModel.forward`` without labels fails when MTP is configured (megatron 0.16.1 clones
    ``labels``), so this runs the same modules directly. MTP depth k at position i combines
    the hidden state of position i with the embedding of token ``i+k`` and predicts token
    ``i+k+1``; the last k positions see token id 0 (megatron's ``roll_tensor`` zero-fills).
    """
    position_ids = position_ids_for(tokens)
    mask = causal_attention_mask(tokens.shape[1], tokens.device)
    decoder_input, rotary_pos_emb, *_ = model._preprocess(input_ids=tokens, position_ids=position_ids)
    hidden = model.decoder(hidden_states=decoder_input, attention_mask=mask, rotary_pos_emb=rotary_pos_emb)
    out, _ = model.output_layer(hidden, weight=_output_weight(model))
    main = out.transpose(0, 1).contiguous()
    if not with_mtp:
        return main
    extra = []
    if getattr(model, "mtp_process", False):
        stacked = model.mtp(
            input_ids=tokens,
            position_ids=position_ids,
            hidden_states=hidden,
            attention_mask=mask,
            rotary_pos_emb=rotary_pos_emb,
            embedding=model.embedding,
        )
        chunks = torch.chunk(stacked, 1 + model.config.mtp_num_layers, dim=0)
        for h in chunks[1:]:
            o, _ = model.output_layer(h, weight=_output_weight(model))
            extra.append(o.transpose(0, 1).contiguous())
    return main, extra


def _output_weight(model):
    return model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None


# ---- loss-free balancing -----------------------------------------------------------------


def routers(model) -> list:
    """Every MoE ``TopKRouter`` of the model (decoder and MTP layers)."""
    from megatron.core.transformer.moe.router import TopKRouter

    return [m for m in model.modules() if isinstance(m, TopKRouter)]


def updated_expert_bias(tokens_per_expert: torch.Tensor, expert_bias: torch.Tensor, rate: float) -> torch.Tensor:
    """The loss-free balancing rule (arXiv 2408.15664): ``bias + rate * sign(mean - load)``.

    ``tokens_per_expert`` ``[..., E]`` are the tokens routed to each expert over the step (all
    data-parallel ranks); experts above the mean load move down by ``rate``, those below move
    up, those exactly at it stay. Pure; the same arithmetic as megatron-core 0.16.1's
    ``moe_utils.get_updated_expert_bias`` without its all-reduce.
    """
    counts = tokens_per_expert.float()
    mean = counts.sum(dim=-1, keepdim=True) / counts.shape[-1]
    return expert_bias + torch.sign(mean - counts) * rate


def balance_group():
    """The process group over which routers' token counts are summed: megatron's
    tensor x data (x context) parallel group, as ``finalize_model_grads`` uses (each pipeline
    stage has its own routers, so never the whole world); None for one process."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_and_data_parallel_group(with_context_parallel=True)
    return dist.group.WORLD


@torch.no_grad()
def expert_bias_update(model, update_rate: float | None = None, *, group: Any = "auto") -> int:
    """Loss-free balancing update; call once after every optimizer step (both trainer paths).

    For each router, ``expert_bias = updated_expert_bias(load, expert_bias, rate)`` where
    ``load`` is the number of tokens routed to each expert since the last update (megatron
    counts them in ``router.local_tokens_per_expert`` during training forwards with grad
    enabled, i.e. over all micro-batches of the step), then the counts are zeroed. With several
    processes the counts of all routers are summed over ``group`` first (one all-reduce; by
    default ``balance_group()``). All routers are updated together (stacked, then one
    ``_foreach`` copy): on a GPU a per-router loop was about a hundred small kernel launches
    per step. ``update_rate`` defaults to ``config.moe_router_bias_update_rate``.
    Returns the number of routers updated. On the GPU path megatron's own update inside
    ``finalize_model_grads`` is switched off so that this is the only one.
    """
    import torch.distributed as dist

    rate = model.config.moe_router_bias_update_rate if update_rate is None else update_rate
    rs = [r for r in routers(model) if getattr(r, "expert_bias", None) is not None]
    if not rs:
        return 0
    if group == "auto":
        group = balance_group()
    counts = [r.local_tokens_per_expert for r in rs]  # every router has config.num_moe_experts entries
    biases = [r.expert_bias for r in rs]
    stacked = torch.stack(counts)
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(stacked, group=group)
    torch._foreach_copy_(biases, list(updated_expert_bias(stacked, torch.stack(biases), rate).unbind(0)))
    torch._foreach_zero_(counts)
    return len(rs)


def count_parameters(model, *, include_expert_bias: bool = True, include_mtp: bool = True) -> int:
    """Real parameter count of a built model (plus expert-bias buffers), for checks against arch."""
    total = 0
    for name, p in model.named_parameters():
        if include_mtp or not name.startswith("mtp."):
            total += p.numel()
    if include_expert_bias:
        for name, b in model.named_buffers():
            if name.endswith("expert_bias") and (include_mtp or not name.startswith("mtp.")):
                total += b.numel()
    return total
