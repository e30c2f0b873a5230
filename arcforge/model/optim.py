"""Optimizers as the GLM-4.5 report uses them: Muon for matrices, AdamW for the rest.

Muon here follows ``torch.optim.Muon`` (Newton–Schulz, 5 steps, Nesterov momentum
0.95, decoupled weight decay, update RMS matched to AdamW's 0.2) with one
difference that matters for MoE: a parameter that stores several experts' matrices
in one tensor (Megatron's grouped-GEMM layout) is orthogonalised one expert at a
time. Orthogonalising the fused stack would couple experts that never see the same
tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


@dataclass(frozen=True)
class ExpertLayout:
    """How a fused parameter splits into per-expert matrices: a (E, m, n) view of it."""

    num_experts: int
    # the dimension of the 2-D tensor that concatenates the experts; -1: the shape is (m, E*n)
    # but the storage is experts-major, (E, m, n) (megatron GroupedMLP's weight1, read as
    # ``weight1.view(E, hidden, -1)[e]``)
    experts_on_dim: int

    def split(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 3:
            return t
        if self.experts_on_dim == -1:  # storage (E, m, n) behind a (m, E*n) shape
            return t.reshape(self.num_experts, t.shape[0], -1)
        if self.experts_on_dim == 1:  # (m, E*n) -> (E, m, n)
            m = t.shape[0]
            return t.view(m, self.num_experts, -1).permute(1, 0, 2)
        return t.view(self.num_experts, -1, t.shape[1])  # (E*m, n) -> (E, m, n)

    def join(self, stack: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.dim() == 3:
            return stack
        if self.experts_on_dim == 1:
            return stack.permute(1, 0, 2).reshape(like.shape)
        return stack.reshape(like.shape)


def orthogonalize(update: torch.Tensor, layout: ExpertLayout | None, ns_steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton–Schulz orthogonalisation of a matrix, or of each expert's matrix separately."""
    if layout is None:
        return _zeropower_via_newtonschulz(update, NS_COEFFICIENTS, ns_steps, eps)
    stack = layout.split(update)
    out = torch.stack([_zeropower_via_newtonschulz(m, NS_COEFFICIENTS, ns_steps, eps) for m in stack])
    return layout.join(out, update)


class Muon(torch.optim.Optimizer):
    """Muon with per-expert orthogonalisation for fused expert tensors.

    ``layouts`` maps a parameter to its ExpertLayout; parameters without one must be
    2-D and are treated as one matrix, exactly as ``torch.optim.Muon`` does.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 2.5e-4,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        update_rms: float = 0.2,
        layouts: dict[nn.Parameter, ExpertLayout] | None = None,
    ) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, update_rms=update_rms)
        super().__init__(params, defaults)
        self.layouts = layouts or {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2 and p not in self.layouts:
                    raise ValueError(f"Muon takes matrices; got a {p.dim()}-D parameter without an expert layout")

    def _scale(self, p: torch.Tensor, group: dict) -> float:
        """Match AdamW's update RMS: 0.2 * sqrt(max(m, n)) of each (per-expert) matrix."""
        layout = self.layouts.get(p)
        shape = layout.split(p.detach()).shape[1:] if layout else p.shape
        return group["update_rms"] * math.sqrt(max(shape))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                ortho = orthogonalize(update, self.layouts.get(p), group["ns_steps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(ortho.to(p.dtype), alpha=-group["lr"] * self._scale(p, group))
        return loss


def is_adamw_param(name: str, p: nn.Parameter) -> bool:
    """Embeddings, the output layer, biases and norm weights stay on AdamW (the report's rule;
    the output layer is treated like the embedding, as Muon's authors do)."""
    return p.dim() < 2 or "embedding" in name or "output_layer" in name or name.endswith(".bias")


def grouped_expert_layout(name: str, p: nn.Parameter, num_experts: int) -> ExpertLayout | None:
    """Megatron's legacy GroupedMLP stores experts fused: weight1 (hidden, E*2*ffn), which it reads as
    ``view(E, hidden, 2*ffn)`` (experts-major storage), and weight2 (E*ffn, hidden)."""
    if name.endswith("experts.weight1"):
        return ExpertLayout(num_experts, experts_on_dim=-1)
    if name.endswith("experts.weight2"):
        return ExpertLayout(num_experts, experts_on_dim=0)
    return None


class CombinedOptimizer(torch.optim.Optimizer):
    """Steps Muon and AdamW together and exposes their param groups for LR schedules."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults: dict = {}

    @property
    def state(self) -> dict:  # type: ignore[override]
        """The sub-optimizers' states in one view (megatron's wrappers read ``optimizer.state``)."""
        return {p: st for o in self.optimizers for p, st in o.state.items()}

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, st in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(st)


# torch optimizer hyper-parameters that do not carry over from a group of one optimizer to
# the Muon/AdamW groups made from it (other keys, e.g. megatron's wd_mult, are kept)
_HYPER_KEYS = {"params", "lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable",
               "differentiable", "fused", "decoupled_weight_decay", "initial_lr", "momentum", "nesterov",
               "ns_steps", "update_rms", "adjust_lr_fn"}


def muon_adamw(
    groups: list[dict],
    names: dict[int, str],
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    num_experts: int = 0,
) -> torch.optim.Optimizer:
    """Muon for matrices, AdamW for embeddings, output layer, biases and norms, over existing groups.

    ``groups``: param groups (dicts with ``params`` and optionally ``weight_decay`` and other
    keys); ``names``: ``id(param) -> model parameter name`` for every param (the rule
    ``is_adamw_param`` and the fused-expert layout go by name). Each group's params split into
    a Muon part and an AdamW part, keeping the group's weight decay and its extra keys. The one
    implementation behind ``build_optimizer("muon")`` (CPU) and the megatron backend, which
    calls it on the groups of megatron's mixed-precision optimizer (its fp32 main params;
    ``num_experts`` is then the experts local to the rank).
    """
    muon_groups, adam_groups, layouts = [], [], {}
    for g in groups:
        extra = {k: v for k, v in g.items() if k not in _HYPER_KEYS}
        wd = g.get("weight_decay", weight_decay)
        muon_part, adam_part = [], []
        for p in g["params"]:
            name = names[id(p)]
            if p.dim() >= 2 and not is_adamw_param(name, p):
                muon_part.append(p)
                if lay := grouped_expert_layout(name, p, num_experts):
                    layouts[p] = lay
            else:
                adam_part.append(p)
        if muon_part:
            muon_groups.append({**extra, "params": muon_part, "weight_decay": wd})
        if adam_part:
            adam_groups.append({**extra, "params": adam_part, **({"weight_decay": wd} if "weight_decay" in g else {})})
    opts: list[torch.optim.Optimizer] = []
    if muon_groups:
        opts.append(Muon(muon_groups, lr=lr, weight_decay=weight_decay, layouts=layouts))
    if adam_groups:
        opts.append(torch.optim.AdamW(adam_groups, lr=lr, betas=betas, weight_decay=weight_decay))
    return CombinedOptimizer(opts)


def use_fused_adamw(optimizer: torch.optim.Optimizer) -> None:
    """Make a ``torch.optim.AdamW`` step with its fused kernel (one pass over each parameter,
    its gradient and both moments) instead of the ``foreach`` one (several passes). Set on the
    groups, which ``step`` reads every time: megatron builds its ``AdamW`` without the flag
    when neither Transformer Engine nor Apex brings a fused Adam. Call before the first step
    and again after ``load_state_dict``, which restores the saved groups' flags."""
    if not isinstance(optimizer, torch.optim.AdamW):
        raise TypeError(f"use_fused_adamw: expected torch.optim.AdamW, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    num_experts: int = 0,
    *,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """``adamw`` or ``muon`` (Muon for matrices, AdamW for embeddings, output, biases, norms).

    Every group records ``base_lr`` so a schedule can scale all groups by one factor.
    ``fused``: AdamW's fused kernel (``use_fused_adamw``; ``adamw`` only).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2]
    no_decay = [p for n, p in named if p.dim() < 2]
    if name == "adamw":
        combined: torch.optim.Optimizer = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, weight_decay=weight_decay
        )
    elif name == "muon":
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        combined = muon_adamw(groups, {id(p): n for n, p in named}, lr, weight_decay, betas, num_experts)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {name!r}")
    if fused:
        if name != "adamw":
            raise ValueError("fused: only the adamw optimizer has a fused kernel")
        use_fused_adamw(combined)
    for group in combined.param_groups:
        group["base_lr"] = lr
    return combined
