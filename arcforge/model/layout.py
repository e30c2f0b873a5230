"""A megatron-core parallel layout and the rules megatron-core 0.16.1 enforces on it.

Kept apart from the memory estimate (``arcforge.model.memory``) because the config
validator and ``arcforge train --dry-run`` need the rules whether or not anyone asks about
memory: world = TP·PP·DP, expert groups (ETP·EP·PP divides the world), attention heads and
query groups over TP, layers over PP stages (even, or megatron's first/last-stage counts),
and the global batch over micro-batch × DP. The rules are spelled out in
``arcforge.model.memory``'s module docstring, with the formulas they feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """A parallel layout for megatron-core (see the module docstring for the rules)."""

    world: int  # GPUs
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None  # expert tensor parallel; None = tp (megatron's default, what arcforge uses)
    micro_batch: int = 1
    global_batch: int = 1
    seq_length: int = 4096
    first_stage_layers: int | None = None  # megatron num_layers_in_first_pipeline_stage (uneven PP)
    last_stage_layers: int | None = None  # megatron num_layers_in_last_pipeline_stage
    warmup_start: int | None = None  # batch warm-up start (must also be a multiple of micro x DP)

    @property
    def expert_tp(self) -> int:
        return self.tp if self.etp is None else self.etp

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp) if self.world % (self.tp * self.pp) == 0 else 0

    @property
    def expert_dp(self) -> int:
        g = self.expert_tp * self.ep * self.pp
        return self.world // g if self.world % g == 0 else 0

    @property
    def micro_batches(self) -> int:
        """micro-batches per optimizer step on each data-parallel rank (gradient accumulation)."""
        n = self.micro_batch * self.dp
        return self.global_batch // n if n and self.global_batch % n == 0 else 0


def validate_layout(arch: Any, lay: Layout) -> list[str]:
    """Every violated rule, one line each (empty: megatron-core 0.16.1 accepts the layout)."""
    errs: list[str] = []
    L, E = arch.num_layers, arch.num_experts
    nh, ng, V = arch.num_attention_heads, arch.num_query_groups, arch.vocab_size
    t, p, e, et = lay.tp, lay.pp, lay.ep, lay.expert_tp
    for name, v in (("tp", t), ("pp", p), ("ep", e), ("etp", et), ("gpus", lay.world),
                    ("micro batch", lay.micro_batch), ("global batch", lay.global_batch), ("seq length", lay.seq_length)):
        if v < 1:
            errs.append(f"{name}: must be >= 1 (got {v})")
    if errs:
        return errs
    if lay.world % (t * p):
        errs.append(f"gpus: {lay.world} is not a multiple of tp*pp = {t}*{p} = {t * p} (world = tp*pp*dp)")
    elif lay.world % (et * e * p):
        d = lay.world // (t * p)
        errs.append(f"ep: expert grid etp*ep*pp = {et}*{e}*{p} = {et * e * p} does not divide the {lay.world} GPUs "
                    f"(megatron: with etp = tp, ep must divide dp = {d})")
    if E % e:
        errs.append(f"ep: {e} does not divide the {E} experts")
    if nh % t:
        errs.append(f"tp: {t} does not divide the {nh} attention heads")
    if ng % t and t % ng:
        errs.append(f"tp: {t} is neither a divisor nor a multiple of the {ng} query groups")
    if V % t:
        errs.append(f"tp: {t} does not divide the vocabulary {V} (vocab-parallel embedding; pad vocab_size)")
    if et > 1 and arch.moe_ffn_hidden_size % et:
        errs.append(f"etp: {et} does not divide the expert FFN size {arch.moe_ffn_hidden_size}")
    if t > 1 and arch.ffn_hidden_size % t:
        errs.append(f"tp: {t} does not divide the dense FFN size {arch.ffn_hidden_size}")
    if t > 1 and lay.seq_length % t:
        errs.append(f"seq length: {lay.seq_length} is not a multiple of tp = {t} (sequence parallelism)")
    if lay.seq_length > arch.max_position_embeddings:
        errs.append(f"seq length: {lay.seq_length} exceeds max_position_embeddings {arch.max_position_embeddings}")
    errs += _stage_errors(L, p, lay.first_stage_layers, lay.last_stage_layers)
    d = lay.dp
    if d:
        for key, n in (("global batch", lay.global_batch), ("warm-up start", lay.warmup_start)):
            if n is not None and n % (lay.micro_batch * d):
                errs.append(f"{key}: {n} is not a multiple of micro batch x dp = {lay.micro_batch} x {d} = {lay.micro_batch * d}")
    return errs


def _stage_errors(L: int, p: int, first: int | None, last: int | None) -> list[str]:
    if first is None and last is None:
        if L % p:
            q, r = divmod(L, p)
            hint = uneven_hint(L, p)
            return [f"pp: {p} does not divide the {L} layers ({q} rem {r}); arcforge's config needs even stages"
                    + (f", megatron can split unevenly, e.g. first/last stage {hint[0]}/{hint[1]} layers" if hint else "")]
        return []
    if p < 2:
        return ["pp: first/last stage layer counts need pp >= 2"]
    rest, mid = L - (first or 0) - (last or 0), p - (first is not None) - (last is not None)
    if (first is not None and first < 1) or (last is not None and last < 1):
        return ["pp: first/last stage layer counts must be >= 1"]
    if rest < 0 or bool(rest) != bool(mid) or (mid and rest % mid):
        return [f"pp: {L} layers minus first/last stage {first}/{last} leaves {rest} for {mid} middle stages (must divide evenly)"]
    return []


def uneven_hint(L: int, p: int) -> tuple[int, int] | None:
    """Equal first and last stages (embedding / output + MTP make them heavier: fewer layers)
    with the rest divisible over the middle stages, closest to L/p."""
    if p < 3:
        return None
    best = None
    for x in range(1, L // p + 1):
        rest = L - 2 * x
        if rest > 0 and rest % (p - 2) == 0:
            best = (x, x)
    return best


def stage_layers(arch: Any, lay: Layout) -> list[tuple[int, int]]:
    """(dense layers, MoE layers) on each pipeline stage; the dense layers come first."""
    L, p = arch.num_layers, lay.pp
    if lay.first_stage_layers is None and lay.last_stage_layers is None:
        counts = [L // p] * p
        for i in range(L % p):  # only for estimates of invalid layouts
            counts[i] += 1
    else:
        mid = p - (lay.first_stage_layers is not None) - (lay.last_stage_layers is not None)
        rest = L - (lay.first_stage_layers or 0) - (lay.last_stage_layers or 0)
        per = rest // mid if mid else 0
        counts = [per] * p
        if lay.first_stage_layers is not None:
            counts[0] = lay.first_stage_layers
        if lay.last_stage_layers is not None:
            counts[-1] = lay.last_stage_layers
    out, start = [], 0
    for c in counts:
        dense = max(0, min(arch.first_dense_layers, start + c) - start)
        out.append((dense, c - dense))
        start += c
    return out
