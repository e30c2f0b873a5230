"""The megatron-core GPU backend (``device: cuda``), written against megatron-core 0.16.1.

torchrun + NCCL (or one process without torchrun), ``parallel_state.initialize_model_parallel
(tp, pp, ep)``, ``GPTModel`` with Transformer-Engine specs when TE imports and ``kernels`` is
``auto`` (else local specs plus ``te_shims.apply_no_te_shims``, with torch SDPA attention
and grouped experts on ``torch._grouped_mm`` by default: ``arcforge.model.kernels``), the ``alltoall`` dispatcher, bf16 parameters,
megatron's ``DistributedDataParallel``, its pipeline schedules (``get_forward_backward_func``)
with ``finalize_model_grads``, and its mixed-precision optimizer wrappers (fp32 main weights,
model-parallel-aware clipping; with ``optimizer.distributed`` its ``DistributedOptimizer``)
around ``torch.optim.AdamW`` or arcforge's Muon.

What the CPU path shares with this one: the loop, the schedules, the data order, the loss
columns (``losses.step_losses``: megatron's trackers are reset every step and divided by the
number of micro-batches and data-parallel ranks) and the loss-free balancing update
(``megatron_model.expert_bias_update`` after the optimizer step; megatron's own update inside
``finalize_model_grads`` is switched off so there is exactly one). Run on one H100 by
``benchmarks/gpu_check.sh`` (docs/benchmarks.md, "GPU"); multi-GPU layouts and the
distributed optimizer have not run (docs/train.md, "GPU path").
"""

from __future__ import annotations

import math
import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from arcforge.model.backend import StepRates
from arcforge.runtime.config import ConfigError

if TYPE_CHECKING:
    from arcforge.model.train_loop import Trainer

OPTIMIZER_FORMAT = "arcforge.megatron-optimizer/1"


def chained(optimizer) -> list:
    """The megatron optimizers inside a ``ChainedOptimizer`` (dense, then expert params)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def main_param_groups(sub) -> list:
    """The fp32 main weights a megatron optimizer steps for bf16 params, by group: whole copies
    (``Float16OptimizerWithFloat16Params``) or this rank's flat slices (``DistributedOptimizer``;
    its fp32 params' slices are views of the model's, saved with the model)."""
    groups = getattr(sub, "shard_fp32_from_float16_groups", None)
    return groups if groups is not None else getattr(sub, "fp32_from_float16_groups", [])


class MegatronBackend:
    name = "megatron"

    # -- set-up ------------------------------------------------------------------------------

    def init(self, t: Trainer) -> None:
        """NCCL, megatron's model-parallel groups (tp, pp, ep), CUDA RNG; rank/world/dp."""
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state, tensor_parallel

        from arcforge.model import megatron_model, te_shims

        cfg = t.cfg
        if not torch.cuda.is_available():
            raise ConfigError(f"{cfg._path}: device: cuda requested but torch sees no GPU")
        if not dist.is_initialized():
            if "RANK" in os.environ:
                dist.init_process_group(backend="nccl")
            else:
                dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
        p = cfg.parallel
        t.rank, t.world = dist.get_rank(), dist.get_world_size()
        if t.world % (p.tp * p.pp):
            raise ConfigError(f"{cfg._path}: parallel: tp*pp = {p.tp * p.pp} does not divide the world size {t.world}")
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, expert_model_parallel_size=p.ep
            )
        t.dp = parallel_state.get_data_parallel_world_size()
        b = cfg.batch
        for key, n in (("global_batch_size", b.global_batch_size), ("warmup_start", b.warmup_start)):
            if n is not None and n % (b.micro_batch_size * t.dp):
                raise ConfigError(f"{cfg._path}: batch.{key}: {n} is not a multiple of micro_batch_size x data-parallel size "
                                  f"({b.micro_batch_size} x {t.dp})")
        tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
        megatron_model.mark_cuda_initialised()  # build helpers must not re-initialise the groups
        self.te = te_shims.have_transformer_engine()
        if not self.te:
            te_shims.apply_no_te_shims()
        te_shims.use_foreach_multi_tensor_ops()  # where neither TE nor Apex gave megatron its kernels

    def build(self, t: Trainer) -> None:
        """GPTModel, DDP, megatron's optimizer (AdamW or arcforge Muon inside its wrappers)."""
        import torch
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
        from megatron.core.models.gpt import GPTModel
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec

        from arcforge.model.arch import recompute_settings, to_transformer_config
        from arcforge.model.kernels import apply_kernels, cross_entropy_settings, resolve_kernels, set_fp32_matmul
        from arcforge.model.megatron_model import causal_attention_mask

        cfg, arch, te = t.cfg, t.arch, self.te
        bf16 = cfg.dtype == "bf16"
        dtype = torch.bfloat16 if bf16 else torch.float32
        p = cfg.parallel
        # kernels: TE's specs (TE imports, both auto), else megatron's local specs with
        # SDPAttention and/or GroupedMLP on torch._grouped_mm (arcforge.model.kernels)
        attention, experts = resolve_kernels(cfg.kernels.attention, cfg.kernels.experts, device="cuda", te=te)
        te_specs = attention == "te"
        self.kernels = (attention, experts)
        k = cfg.kernels
        dispatcher = k.dispatcher
        set_fp32_matmul(k.fp32_matmul)  # before any compile: dynamo guards on it
        t.say(f"kernels: attention {attention}, experts {experts}, dispatcher {dispatcher}, "
              f"cross_entropy {k.cross_entropy}, fp32_matmul {k.fp32_matmul}")
        config = to_transformer_config(
            arch, params_dtype=dtype, use_cpu_initialization=False,
            tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, expert_model_parallel_size=p.ep,
            sequence_parallel=p.tp > 1, moe_token_dispatcher_type="alltoall",
            moe_grouped_gemm=te_specs or experts == "grouped",
            pipeline_dtype=dtype, bias_activation_fusion=te, masked_softmax_fusion=te, apply_rope_fusion=False,
            bias_dropout_fusion=te, gradient_accumulation_fusion=False,
            **cross_entropy_settings(k.cross_entropy),
            **recompute_settings(cfg.model.recompute, grouped_experts=experts in ("grouped", "te")),
        )
        pre, post = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
        block = get_gpt_decoder_block_spec(config, use_transformer_engine=te_specs, normalization="RMSNorm")
        mtp = get_gpt_mtp_block_spec(config, block, use_transformer_engine=te_specs) if arch.mtp_layers and post else None
        if not te_specs or dispatcher != "megatron":
            block = apply_kernels(block, attention=attention, experts=experts, dispatcher=dispatcher)
            mtp = apply_kernels(mtp, attention=attention, experts=experts, dispatcher=dispatcher)
        torch.manual_seed(cfg.seed)
        model = GPTModel(
            config=config, transformer_layer_spec=block, vocab_size=arch.vocab_size,
            max_sequence_length=cfg.model.seq_length, pre_process=pre, post_process=post,
            parallel_output=True, share_embeddings_and_output_weights=arch.tie_embeddings,
            position_embedding_type="rope", rotary_percent=arch.rotary_fraction, rotary_base=arch.rope_theta,
            mtp_block_spec=mtp,
        ).cuda()
        if cfg.model.compile != "none":
            from arcforge.model.compile import check_compile, compile_layers

            try:
                check_compile(cfg.model.compile, dispatcher=dispatcher, experts=experts, attention=attention,
                              recompute=cfg.model.recompute)
            except ValueError as exc:  # Transformer Engine's specs (kernels auto with TE)
                raise ConfigError(f"{cfg._path}: {exc}") from None
            n = compile_layers(model, options=cfg.model.compile_options or None)
            t.say(f"model.compile: {cfg.model.compile}: {n} transformer layers"
                  + (f", inductor options {cfg.model.compile_options}" if cfg.model.compile_options else ""))
        # One loss-free balancing update for both paths: the backend calls
        # megatron_model.expert_bias_update after the optimizer step. With this flag off,
        # finalize_model_grads neither updates the bias nor zeroes the routers' token counts
        # (megatron 0.16.1 reads it there at every step; the routers read it once, at
        # construction, so they keep their expert_bias buffers and keep counting).
        config.moe_router_enable_expert_bias = False
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=cfg.optimizer.distributed)
        model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
        config.finalize_model_grads_func = finalize_model_grads  # DP all-reduce after the last micro-batch
        t.model, self.mcfg = model, config
        t.optimizer = self._optimizer(t, model, dtype)
        self.mask = causal_attention_mask(cfg.model.seq_length, "cuda")

    def _optimizer(self, t: Trainer, model, dtype):
        """megatron's ChainedOptimizer (dense + expert params, each with fp32 main weights under
        bf16 and clipping over the right model-parallel group) around torch AdamW; for Muon the
        inner torch optimizer of each is replaced by arcforge's ``optim.muon_adamw`` over the
        same (main) params, so both paths run the same Muon; ``optimizer.fused`` switches the
        inner AdamW to its fused kernel (``optim.use_fused_adamw``); ``optimizer.distributed``
        makes each a ``DistributedOptimizer`` (main weights and moments sharded over the
        data-parallel ranks; the inner AdamW steps this rank's flat slices)."""
        import torch
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from arcforge.model.optim import muon_adamw, use_fused_adamw

        o = t.cfg.optimizer
        ocfg = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.betas[0],
            adam_beta2=o.betas[1], clip_grad=o.clip_grad, bf16=dtype == torch.bfloat16,
            params_dtype=dtype, use_distributed_optimizer=o.distributed,
        )
        optimizer = get_megatron_optimizer(ocfg, [model])
        names = {}
        for n, p in model.named_parameters():
            names[id(p)] = n
            if getattr(p, "main_param", None) is not None:  # the fp32 copy megatron steps under bf16
                names[id(p.main_param)] = n
        local_experts = t.arch.num_experts // t.cfg.parallel.ep
        for sub in chained(optimizer):
            inner = getattr(sub, "optimizer", None)
            if inner is None:  # a stub (no params of this kind on this rank)
                continue
            # megatron marks biases and 1-D params with wd_mult 0 and applies it in its own LR
            # scheduler, which arcforge does not use: apply it here (the CPU path's no-decay group)
            for g in inner.param_groups:
                g["weight_decay"] = o.weight_decay * g.get("wd_mult", 1.0)
            if o.name == "muon":
                sub.optimizer = muon_adamw(inner.param_groups, names, o.lr, o.weight_decay, tuple(o.betas), local_experts)
            elif o.fused:
                use_fused_adamw(inner)
        for g in optimizer.param_groups:
            g["base_lr"] = o.lr
        return optimizer

    # -- steps -------------------------------------------------------------------------------

    def _batches(self, t: Trainer, batches, start: int, n_micro: int):
        """This data-parallel rank's micro-batches: micro-batch j of the step takes samples
        ``start + (j * dp + dp_rank) * mbs ...``, so the global order is independent of dp."""
        from megatron.core import parallel_state

        mbs = t.cfg.batch.micro_batch_size
        r = parallel_state.get_data_parallel_rank()
        for j in range(n_micro):
            tokens, labels, mask = batches.get(start + (j * t.dp + r) * mbs, mbs)
            yield {k: v.cuda(non_blocking=True) for k, v in (("tokens", tokens), ("labels", labels), ("loss_mask", mask))}

    def _forward_step(self, data_iterator, model):
        from arcforge.model.megatron_model import position_ids_for

        b = next(data_iterator)
        out = model(b["tokens"], position_ids_for(b["tokens"]), self.mask, labels=b["labels"], loss_mask=b["loss_mask"])
        return out, partial(_loss_func, b["loss_mask"])

    def _run(self, t: Trainer, batches, start: int, n_micro: int, forward_only: bool):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=self._batches(t, batches, start, n_micro),
            model=[t.model], num_microbatches=n_micro, seq_length=t.cfg.model.seq_length,
            micro_batch_size=t.cfg.batch.micro_batch_size, forward_only=forward_only,
        )

    def _reduce(self, vec, aux_index: int | None = None):
        """Sum a per-rank vector over data-parallel ranks and pipeline stages (each stage holds
        its own layers' aux losses; the LM/MTP values live on the last stage, zeros elsewhere),
        and the aux entry over the tensor(+context)-parallel group as megatron's tracker does."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        if aux_index is not None and parallel_state.get_tensor_model_parallel_world_size() > 1:
            aux = vec[aux_index:aux_index + 1].clone()
            dist.all_reduce(aux, group=parallel_state.get_tensor_and_context_parallel_group())
            vec[aux_index:aux_index + 1] = aux
        dist.all_reduce(vec, group=parallel_state.get_data_parallel_group())
        dist.all_reduce(vec, group=parallel_state.get_pipeline_model_parallel_group())
        return vec

    def train_step(self, t: Trainer, batch_size: int, rates: StepRates) -> dict[str, Any]:
        import torch
        from megatron.core import parallel_state

        from arcforge.model.losses import reset_loss_trackers, step_losses, tracker_aux_total, tracker_mtp_values
        from arcforge.model.megatron_model import expert_bias_update

        mbs = t.cfg.batch.micro_batch_size
        n_micro = batch_size // (mbs * t.dp)
        depths = t.arch.mtp_layers or 0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        t.optimizer.zero_grad()
        t.model.zero_grad_buffer()
        reset_loss_trackers(_unwrap(t.model))  # megatron's trackers add every micro-batch, never reset by it
        outputs = self._run(t, t.train_batches, t.consumed, n_micro, forward_only=False)
        _, grad_norm, _ = t.optimizer.step()
        expert_bias_update(_unwrap(t.model), update_rate=rates.bias_rate)  # counts summed over tp x dp
        lm = torch.zeros(1, device="cuda")
        if parallel_state.is_pipeline_last_stage() and outputs:
            lm = torch.stack([x["lm loss"] for x in outputs]).sum().reshape(1)
        vec = torch.cat([lm.float(), tracker_mtp_values(depths, "cuda"), tracker_aux_total("cuda").reshape(1)])
        vec = self._reduce(vec, aux_index=1 + depths).tolist()  # one host sync for the row
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        row = step_losses(vec[0], vec[1:1 + depths], vec[-1], micro_batches=n_micro, dp_size=t.dp)
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if not math.isfinite(grad_norm) or not math.isfinite(row["loss"]):
            raise FloatingPointError(f"step {t.step}: loss {row['loss']} / gradient norm {grad_norm} is not finite")
        row.update(batch_size=batch_size, micro_batches=n_micro, grad_norm=grad_norm, step_seconds=dt)
        return row

    def evaluate(self, t: Trainer) -> tuple[float, int]:
        """Token-weighted mean main-LM loss over the same ``eval.iters`` micro-batches per DP rank."""
        import torch
        from megatron.core import parallel_state

        t.model.eval()
        try:
            with torch.no_grad():
                outputs = self._run(t, t.eval_batches, 0, t.cfg.eval.iters, forward_only=True)
        finally:
            t.model.train()
        s = torch.zeros(2, device="cuda")
        if parallel_state.is_pipeline_last_stage() and outputs:
            s = torch.stack([x["eval"] for x in outputs]).sum(0)
        s = self._reduce(s)
        return float(s[0] / s[1].clamp(min=1)), int(s[1])

    # -- checkpoints -------------------------------------------------------------------------

    def optimizer_state(self, t: Trainer) -> dict[str, Any]:
        """Per megatron sub-optimizer: the inner torch optimizer's state and, under bf16, the
        fp32 main weights (the model state holds only their bf16 copies). With the distributed
        optimizer both are this rank's shard, in this rank's checkpoint file; ``sharded_over``
        records the data-parallel size they were cut for."""
        subs = []
        for sub in chained(t.optimizer):
            inner = getattr(sub, "optimizer", None)
            subs.append({
                "inner": inner.state_dict() if inner is not None else None,
                "main_params": [[q.detach().cpu() for q in g] for g in main_param_groups(sub)],
            })
        return {"format": OPTIMIZER_FORMAT, "optimizers": subs,
                "sharded_over": t.dp if t.cfg.optimizer.distributed else None}

    def load_optimizer(self, t: Trainer, state: dict[str, Any]) -> None:
        import torch

        from arcforge.model.optim import use_fused_adamw

        where = f"{t.cfg._path}: checkpoint.dir"
        if state.get("format") != OPTIMIZER_FORMAT:
            raise ConfigError(f"{where}: the optimizer state is not {OPTIMIZER_FORMAT}")
        saved, now = state.get("sharded_over"), t.dp if t.cfg.optimizer.distributed else None
        if saved != now:
            def kind(dp):
                return f"sharded over {dp} data-parallel ranks" if dp else "whole (not distributed)"
            raise ConfigError(f"{where}: the optimizer state was saved {kind(saved)} and this run's is {kind(now)}; "
                              f"set optimizer.distributed: {str(bool(saved)).lower()} with the same layout, "
                              "or use --no-resume to start over")
        subs = chained(t.optimizer)
        if len(subs) != len(state["optimizers"]):
            raise ConfigError(f"{where}: {len(state['optimizers'])} optimizers saved, {len(subs)} now")
        for sub, saved_sub in zip(subs, state["optimizers"]):
            if saved_sub["inner"] is not None:
                sub.optimizer.load_state_dict(saved_sub["inner"])
                if t.cfg.optimizer.fused:  # the saved groups' flags came back with the state
                    use_fused_adamw(sub.optimizer)
            with torch.no_grad():
                for group, values in zip(main_param_groups(sub), saved_sub["main_params"]):
                    for q, v in zip(group, values):
                        q.copy_(v.to(q.device))

    def close(self, t: Trainer) -> None:
        pass


def _loss_func(loss_mask, output):
    """Per micro-batch: the masked mean main CE (what is back-propagated; megatron divides it
    by the number of micro-batches), ``lm loss`` = that mean detached (summed over micro-batches
    by the backend, as on CPU) and ``eval`` = (masked sum, target tokens).

    ``lm loss`` is a *copy*: megatron's schedule divides the returned loss in place
    (``output_tensor /= num_microbatches``), and a plain ``detach()`` shares its storage, so the
    logged loss came out divided by the micro-batch count (found by the GPU check's parity:
    exactly half the CPU loss at 2 micro-batches per step)."""
    import torch

    per_token = output.float()
    total = (per_token * loss_mask).sum()
    n = loss_mask.sum().clamp(min=1)
    mean = total / n
    return mean, {"lm loss": mean.detach().clone(), "eval": torch.stack([total.detach(), n.detach()])}


def _unwrap(model):
    return getattr(model, "module", model)
