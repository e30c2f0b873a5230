"""The CPU backend (tested): one process, fp32, megatron-core's model under ``cpu_compat``.

``GPTModel`` from ``megatron_model.build_model`` (local layer specs, ``allgather``
dispatcher, SequentialMLP experts, world size 1 over gloo); ``torch.optim`` AdamW or arcforge's
Muon (``optim.build_optimizer``); per micro-batch ``lm_loss(..., loss_scale=1/N)`` and
``backward()`` (megatron injects the MTP and aux gradients into the same graph);
``clip_grad_norm_``; the optimizer step; ``expert_bias_update``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from arcforge.model.backend import StepRates

if TYPE_CHECKING:
    from arcforge.model.train_loop import Trainer


class CpuBackend:
    name = "cpu"

    def init(self, t: Trainer) -> None:
        from arcforge.model.megatron_model import init_runtime

        init_runtime("cpu", seed=t.cfg.seed)
        t.rank, t.world, t.dp = 0, 1, 1

    def build(self, t: Trainer) -> None:
        import torch

        from arcforge.model.arch import recompute_settings
        from arcforge.model.kernels import resolve_kernels
        from arcforge.model.megatron_model import build_model, causal_attention_mask
        from arcforge.model.optim import build_optimizer

        cfg = t.cfg
        attention, experts = resolve_kernels(cfg.kernels.attention, cfg.kernels.experts, device="cpu", te=False)
        t.model = build_model(t.arch, seq_length=cfg.model.seq_length, params_dtype=torch.float32, device="cpu",
                              seed=cfg.seed, attention=attention, experts=experts, dispatcher=cfg.kernels.dispatcher,
                              **recompute_settings(cfg.model.recompute, grouped_experts=experts == "grouped"))
        t.model.train()
        if cfg.model.compile == "layers":
            from arcforge.model.compile import compile_layers

            compile_layers(t.model, options=cfg.model.compile_options or None)
        o = cfg.optimizer
        t.optimizer = build_optimizer(t.model, o.name, o.lr, o.weight_decay, tuple(o.betas), t.arch.num_experts,
                                      fused=o.fused)
        self.params = [p for p in t.model.parameters() if p.requires_grad]
        self.mask = causal_attention_mask(cfg.model.seq_length)

    def train_step(self, t: Trainer, batch_size: int, rates: StepRates) -> dict[str, Any]:
        """Accumulate over micro-batches, clip, step, balance."""
        import torch

        from arcforge.model.losses import LossSums
        from arcforge.model.megatron_model import aux_loss_values, expert_bias_update, lm_loss, mtp_loss_values

        mbs = t.cfg.batch.micro_batch_size
        n_micro = batch_size // mbs
        t0 = time.perf_counter()
        sums = LossSums()
        for j in range(n_micro):
            tokens, labels, mask = t.train_batches.get(t.consumed + j * mbs, mbs)
            out = lm_loss(t.model, tokens, labels, mask, attention_mask=self.mask, loss_scale=1.0 / n_micro)
            out.loss.backward()
            # read megatron's loss trackers after the backward: under full recompute the layers'
            # forward runs without grad and their aux losses are recorded by the recomputation
            sums.add(out.lm_loss, mtp_loss_values(), aux_loss_values())
        row = sums.row(dp_size=1)
        clip = t.cfg.optimizer.clip_grad
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf))
        if not math.isfinite(grad_norm) or not math.isfinite(row["loss"]):
            raise FloatingPointError(f"step {t.step}: loss {row['loss']} / gradient norm {grad_norm} is not finite")
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        expert_bias_update(t.model, update_rate=rates.bias_rate, group=None)
        row.update(batch_size=batch_size, micro_batches=n_micro, grad_norm=grad_norm,
                   step_seconds=time.perf_counter() - t0)
        return row

    def evaluate(self, t: Trainer) -> tuple[float, int]:
        import torch

        from arcforge.model.megatron_model import lm_loss

        mbs = t.cfg.batch.micro_batch_size
        total = count = 0.0
        t.model.eval()
        try:
            with torch.no_grad():
                for i in range(t.cfg.eval.iters):
                    tokens, labels, mask = t.eval_batches.get(i * mbs, mbs)
                    out = lm_loss(t.model, tokens, labels, mask, attention_mask=self.mask)
                    total += float((out.per_token.float() * mask).sum())
                    count += float(mask.sum())
        finally:
            t.model.train()
        return total / max(count, 1.0), int(count)

    def optimizer_state(self, t: Trainer) -> dict[str, Any]:
        return t.optimizer.state_dict()

    def load_optimizer(self, t: Trainer, state: dict[str, Any]) -> None:
        from arcforge.model.optim import use_fused_adamw

        t.optimizer.load_state_dict(state)
        if t.cfg.optimizer.fused:  # the saved groups' flags came back with the state
            use_fused_adamw(t.optimizer)

    def close(self, t: Trainer) -> None:
        pass
