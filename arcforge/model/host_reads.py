"""Host reads of tensor data, counted on any device (CPU included), by the source line that asked.

Why: on a GPU, every operation whose result the host must read (``.item()``, ``float(t)``,
``.tolist()``, ``.cpu()``, or a ``nonzero`` / ``masked_select`` / boolean-mask index whose output
size the host must know) is a synchronisation: the GPU's queue drains and then idles while
Python launches the next kernels. Inside a layer that costs once per layer, forward and backward;
the H100 run of issue 12 lost about 0.19 s per proxy-1b step that way or to the host's own
time (docs/benchmarks.md, "GPU"). ``torch.cuda.set_sync_debug_mode`` counts syncs, but only
with CUDA (``benchmarks/gpu_syncs.py`` uses it). The same operations run on CPU, where nothing
syncs: ``HostReads`` counts them there, so that a CPU test can hold the GPU path's layers to
"no host read" and a CPU benchmark can count each dispatcher's reads.

Two sources, because on CPU some reads dispatch nothing:

* a ``TorchDispatchMode`` sees the aten operations: ``_local_scalar_dense`` (what ``.item()``,
  ``float()``, ``int()`` and ``bool()`` of a tensor call), ``nonzero``, ``masked_select``, the
  ``unique`` family, ``bincount``, ``histc``, ``repeat_interleave`` without ``output_size``, and
  indexing with a boolean mask (``index.Tensor``; ``index_put`` too, except ``t[mask] = scalar``,
  which torch runs as ``masked_fill_``);
* a profile hook (``sys.setprofile``) sees calls of ``Tensor.cpu``, ``Tensor.tolist`` and
  ``Tensor.numpy``, which on a CPU tensor return without dispatching.

A read is attributed to the innermost Python frame outside torch (a line of megatron-core or
of arcforge). What it cannot know on CPU is which tensors a GPU run keeps on the host: a read
of a tensor already moved there (``float(v) for v in t.cpu()``) counts once per element, and a
``.to("cpu")`` is not seen. Compare sites and their counts per layer, not absolute totals.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten overload packets whose result the host reads, whatever their arguments
_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
          "unique_consecutive", "bincount", "histc", "is_nonzero", "equal"}
_HOST_METHODS = {"cpu", "tolist", "numpy"}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS = os.path.abspath(__file__)

# where a layer's forward and backward run: any read here happens once per layer
LAYER_CODE = ("megatron/core/transformer/", "megatron/core/tensor_parallel/", "arcforge/model/dispatch.py",
              "arcforge/model/grouped_gemm.py", "arcforge/model/kernels.py", "arcforge/model/compile.py")


def _short(filename: str) -> str:
    """``megatron/core/...`` or ``arcforge/...`` rather than an absolute path."""
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    i = filename.rfind(os.sep + "arcforge" + os.sep)
    return filename[i + 1:] if i >= 0 else filename


def _site(frame) -> str:
    """``path:line (function)`` of the innermost frame that is not torch's or this module's."""
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TORCH_DIR) and os.path.abspath(name) != _THIS:
            return f"{_short(name)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


def _bool_index(indices: Iterable[Any] | None) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def reads_host(func, args, kwargs) -> bool:
    """Whether an aten call makes the host read tensor data (on a GPU: a sync)."""
    name = func._overloadpacket.__name__
    if name in _READS:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) and len(args) < 2
    if name == "index":
        return _bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name in ("index_put", "index_put_", "_index_put_impl_"):
        indices = list(args[1] if len(args) > 1 else kwargs.get("indices") or ())
        value = args[2] if len(args) > 2 else kwargs.get("values")
        # ``t[mask] = 0``: index_put runs ``masked_fill_`` (no read) when the one index is a mask
        # and the value a single element on the host (ATen's ``canDispatchToMaskedFill``)
        if (len(indices) == 1 and _bool_index(indices) and isinstance(value, torch.Tensor) and value.numel() == 1
                and value.device.type == "cpu"):
            return False
        return _bool_index(indices)
    return False


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...``; then ``reads.counts`` (``Counter`` of ``(operation,
    site)``), ``reads.total``, ``reads.by_site()`` and ``reads.in_layers()``. Covers the calling
    thread, forward and backward (CPU autograd runs on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self._old_profile = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_host(func, args, kwargs):
            self.counts[(func._overloadpacket.__name__, _site(sys._getframe(1)))] += 1
        return func(*args, **kwargs)

    def _profile(self, frame, event, arg) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) in _HOST_METHODS \
                and getattr(arg, "__qualname__", "").startswith(("Tensor.", "TensorBase.")):
            self.counts[(arg.__name__, _site(frame))] += 1

    def __enter__(self):
        self._old_profile = sys.getprofile()
        sys.setprofile(self._profile)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.setprofile(self._old_profile)
        return super().__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_site(self) -> list[tuple[str, int]]:
        """``[(site, reads)]``, most reads first."""
        sites: collections.Counter = collections.Counter()
        for (_, site), n in self.counts.items():
            sites[site] += n
        return sites.most_common()

    def in_layers(self) -> int:
        """Reads at sites inside a transformer layer's code (``LAYER_CODE``)."""
        return sum(n for (_, site), n in self.counts.items() if site.startswith(LAYER_CODE))


__all__ = ["HostReads", "LAYER_CODE", "reads_host"]
