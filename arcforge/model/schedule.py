"""Learning-rate and batch-size schedules of the GLM-4.5 recipe.

The report uses cosine decay (not WSD) after a warm-up from 0, and warms the batch
size up from 16M to 64M tokens over the first 500B tokens. Both are pure functions
of the step or of tokens seen, so a resumed run recomputes them exactly.
"""

from __future__ import annotations

import math


def cosine_lr(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to max_lr, then cosine decay to min_lr at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def batch_size_at(tokens_seen: int, *, start: int, end: int, ramp_tokens: int, increment: int = 1) -> int:
    """Sequences per step: linear ramp from start to end over ramp_tokens, in increments."""
    if ramp_tokens <= 0 or tokens_seen >= ramp_tokens or start >= end:
        return end
    size = start + (end - start) * tokens_seen / ramp_tokens
    return max(start, min(end, int(size // increment) * increment))
