"""Where a profiled step's GPU time goes, by kind of work: expert GEMMs, attention, dense GEMMs,
atomics, gathers, inductor's fused kernels, the optimizer, copies, other aten ops.

Why: torch.profiler's tables list ops and kernels one by one (the H200 profile of issue 12 had
45 rows and still left a third of the GPU time in rows it did not show), and the next lever is
chosen by kind ("the fused elementwise kernels are 25%", "the atomics are 18%"). Each op that
launched kernels (a CPU-side event: an aten op, or one of inductor's generated ``triton_*``
kernels, which the profiler records under their own names) is given its *self* GPU time, the
kernels it launched itself and not its children's, so nothing is counted twice; the kinds then
sum to the profiled GPU time, less what no op launched (``unattributed``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# first match wins (a ``triton_*`` kernel whose name mentions ``index_add`` is inductor's own
# fused kernel, not aten's atomics; so the inductor row comes before the index rows)
KINDS: tuple[tuple[str, str], ...] = (
    ("expert GEMMs (grouped)", r"grouped_mm"),
    ("attention", r"attention|flash|cudnn_generated"),
    ("dense GEMMs", r"^aten::(mm|addmm|bmm|baddbmm|_scaled_mm)$"),
    ("inductor fused kernels", r"^triton_"),
    ("atomics (index_add, scatter_add, index_put)", r"index_add|scatter_add|index_put|scatter_reduce"),
    ("gathers and sorts", r"index_select|gather|^aten::index$|sort|topk"),
    ("optimizer", r"adam|_foreach_|optimizer"),
    ("copies", r"copy_|memcpy|memset|^aten::to$|^aten::_to_copy$"),
    ("other aten ops", r"^aten::"),
)
OTHER = "other"


def kind_of(name: str) -> str:
    """The kind of one op by its profiler name."""
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return OTHER


def time_by_kind(ops: Iterable[tuple[str, float]]) -> dict[str, float]:
    """``(op name, self GPU microseconds)`` pairs -> microseconds per kind, largest first."""
    total: dict[str, float] = {}
    for name, us in ops:
        if us > 0:
            kind = kind_of(name)
            total[kind] = total.get(kind, 0.0) + us
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def profiled_time_by_kind(prof) -> tuple[dict[str, float], float]:
    """From a finished ``torch.profiler.profile``: (microseconds per kind, all GPU
    microseconds). The kinds come from the CPU-side events' self GPU time; the difference to
    the GPU events' total is reported as ``unattributed``."""
    import torch

    cpu = torch.autograd.DeviceType.CPU
    events = [e for e in prof.events() if not e.is_async]
    kinds = time_by_kind((e.name, e.self_device_time_total) for e in events if e.device_type == cpu)
    # the GPU side: kernels and copies, not the spans of record_function regions drawn there
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type != cpu and not e.is_user_annotation)
    rest = gpu_us - sum(kinds.values())
    if rest > 0.001 * max(gpu_us, 1):
        kinds["unattributed"] = rest
    return kinds, gpu_us


def kinds_table(kinds: dict[str, float], gpu_us: float) -> str:
    """A markdown table: kind, milliseconds, share of the profiled GPU time."""
    lines = ["| kind | GPU ms | share |", "|---|---|---|"]
    for kind, us in kinds.items():
        lines.append(f"| {kind} | {us / 1e3:.1f} | {us / max(gpu_us, 1e-9):.1%} |")
    return "\n".join(lines)


__all__ = ["KINDS", "OTHER", "kind_of", "kinds_table", "profiled_time_by_kind", "time_by_kind"]
