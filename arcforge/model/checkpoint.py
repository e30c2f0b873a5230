"""arcforge's model checkpoint: one ``torch.save`` file that the trainer writes and
``arcforge model export-hf`` reads.

Format (a plain dict, loadable with ``torch.load(path, weights_only=True)``)::

    {
      "format": "arcforge-megatron",   # constant marker
      "format_version": 1,
      "arch": ArchConfig.model_dump(),  # plain JSON-able dict; ArchConfig(**d) rebuilds it
      "model": {name: tensor},          # megatron GPTModel.state_dict() without "_extra_state"
                                        # entries (TE metadata; None without TE); includes the
                                        # routers' persistent "expert_bias" buffers and MTP layers
      ...extra                          # whatever the caller passes: e.g. "step", "optimizer",
                                        # "tokens_seen", "rng" (tensors, numbers, str, lists, dicts)
    }

Tensors are saved on CPU in the model's dtype. Writes are atomic (temp file + rename), so a
killed trainer leaves either the previous checkpoint or the new one. ``extra`` keys must not
collide with the reserved ones above.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from arcforge.model.arch import ArchConfig

FORMAT = "arcforge-megatron"
FORMAT_VERSION = 1
RESERVED = frozenset({"format", "format_version", "arch", "model"})


def model_state(model_or_state: Any) -> dict[str, torch.Tensor]:
    """CPU tensors of a megatron model (or state dict), ``_extra_state`` entries dropped."""
    state = model_or_state if isinstance(model_or_state, Mapping) else model_or_state.state_dict()
    return {
        k: v.detach().to("cpu")
        for k, v in state.items()
        if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)
    }


def save_checkpoint(path: str | os.PathLike, model: Any, arch: ArchConfig, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a megatron ``GPTModel`` or its state dict) and ``arch`` to ``path``."""
    extra = dict(extra or {})
    clash = RESERVED & extra.keys()
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} are reserved in the checkpoint format")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch.model_dump(),
        "model": model_state(model),
    }
    payload.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(
    path: str | os.PathLike, *, weights_only: bool = True
) -> tuple[dict[str, torch.Tensor], ArchConfig, dict[str, Any]]:
    """``(model state dict, arch, extra)`` from a file written by ``save_checkpoint``."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=weights_only)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an arcforge model checkpoint (no format={FORMAT!r} marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        got = payload.get("format_version")
        raise ValueError(f"{path}: checkpoint format_version {got!r}, expected {FORMAT_VERSION}")
    arch = ArchConfig(**payload["arch"])
    extra = {k: v for k, v in payload.items() if k not in RESERVED}
    return payload["model"], arch, extra


def load_model_state(model: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint's state into a megatron model built for the same arch (strict,
    except for the ``_extra_state`` entries that the format leaves out)."""
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {missing[:8]}, unexpected {list(unexpected)[:8]}"
        )


# ---- the trainer's checkpoint files, RNG state, expert weight naming -------------------

CKPT_RE = re.compile(r"^step_(\d+)(?:-rank(\d+))?\.pt$")


def list_checkpoints(ckpt_dir: str, rank: int | None = None) -> list[tuple[int, Path]]:
    """``(step, path)`` of the trainer's checkpoints in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and ((rank is None and m.group(2) is None) or (rank is not None and m.group(2) is not None and int(m.group(2)) == rank)):
            out.append((int(m.group(1)), p))
    return sorted(out)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        state["megatron_tracker"] = dict(get_cuda_rng_tracker().get_states())
    except Exception:  # noqa: BLE001 - no tracker yet
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "megatron_tracker" in state:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        get_cuda_rng_tracker().set_states(dict(state["megatron_tracker"]))


def expert_kind(names: Any) -> str | None:
    """``grouped`` (GroupedMLP's fused weight1/weight2), ``sequential`` (one MLP per expert) or None."""
    names = list(names)
    if any(n.endswith("experts.weight1") for n in names):
        return "grouped"
    if any(".experts.local_experts." in n for n in names):
        return "sequential"
    return None
