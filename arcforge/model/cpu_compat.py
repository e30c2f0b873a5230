"""Make megatron-core 0.16.1 run a GLM-4.5-shaped model on a CPU-only machine.

``apply()`` is idempotent and does, in this order (each item is needed; see docs/model.md):

1. ``torch.cuda.current_device`` returns ``torch.device("cpu")``. megatron-core calls it
   unconditionally (router expert-bias buffers and gating, GPT model, MTP loss tracker,
   attention, rotary embedding, linear layers), even with ``use_cpu_initialization=True``;
   without CUDA the real function raises. Only installed when CUDA is absent (or ``force``),
   so it cannot redirect a real GPU.
2. ``te_shims.apply_no_te_shims()`` (``moe_utils.te_general_gemm = None``): the
   router's gating linear tests ``te_general_gemm is not None``, a name that only exists when
   Transformer Engine imports: ``NameError`` without TE. Not CPU-specific: the GPU path
   applies the same shim when TE does not import.
3. The model-parallel RNG tracker is replaced by one that keeps *CPU* generator states
   (megatron's stores CUDA RNG states). Expert initialisation and dropout regions ``fork()``
   a named tracker state, so the states must exist.
4. The ``torch.compile`` wrappers that megatron's ``jit_fuser`` put on small fused functions
   (SwiGLU, expert-bias accounting, ...) are unwrapped back to the plain Python functions,
   and ``jit_fuser`` becomes a no-op for modules imported later: otherwise the first step
   compiles with inductor on CPU (seconds to tens of seconds, and needs a C++ toolchain).
5. A single-process ``gloo`` process group (world size 1, in-memory store: no port is
   opened) and ``parallel_state.initialize_model_parallel()`` with all sizes 1. Megatron's
   layers, the MoE dispatcher and the dataset helpers ask ``torch.distributed`` for ranks.
6. Activation recompute (``recompute_granularity``): megatron's ``CheckpointFunction``
   saves and restores the CUDA RNG state around the recomputed forward
   (``random._get_cuda_rng_state`` / ``_set_cuda_rng_state``), which raises without CUDA.
   Without CUDA there is no CUDA state to keep: the getter returns None and the setter does
   nothing (the CPU generator and the tracker's CPU states are still saved and restored).
7. The router's gating (``Router.gating``) first moves a weight that lives on the CPU to
   ``torch.cuda.current_device()``; on CPU that is a move from CPU to CPU, but it assigns
   ``weight.data`` on every forward, which ``torch.compile`` cannot trace (``model.compile``
   is tested on CPU). The patched gating is the same minus the move.

Not patched, but configured instead (see ``arch.to_transformer_config``): the ``allgather``
MoE token dispatcher (``alltoall`` creates CUDA streams), no fused kernels, local (non-TE)
layer specs. Not usable on CPU, hence avoided by the trainer: megatron's optimizer wrapper
and gradient clipping (CUDA tensors), distributed checkpointing (CUDA synchronise); use
``torch.optim``, ``torch.nn.utils.clip_grad_norm_`` and ``arcforge.model.checkpoint``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import types

import torch

log = logging.getLogger(__name__)

_APPLIED = False
_PATCHED_DEVICE = False


def cuda_absent() -> bool:
    return not torch.cuda.is_available()


def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


def _patch_current_device() -> None:
    # 1. torch.cuda.current_device() is called unconditionally throughout megatron-core.
    global _PATCHED_DEVICE
    if not _PATCHED_DEVICE:
        torch.cuda.current_device = _cpu_current_device  # type: ignore[assignment]
        _PATCHED_DEVICE = True


def _patch_te_general_gemm() -> None:
    # 2. NameError in RouterGatingLinearFunction without Transformer Engine (CPU and GPU alike).
    from arcforge.model.te_shims import apply_no_te_shims

    apply_no_te_shims()


class CpuRNGStatesTracker:
    """megatron's ``CudaRNGStatesTracker`` API over CPU generator states."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def _install_rng_tracker(seed: int) -> None:
    # 3. megatron's tracker stores CUDA RNG states; dropout/expert init fork named states.
    from megatron.core.tensor_parallel import random as mrandom

    tracker = CpuRNGStatesTracker()
    offset = seed + 2718  # the same seed layout as model_parallel_cuda_manual_seed (rank 0)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, offset)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024)
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _unwrap_compiled(obj):
    # torch.compile(fn) returns a plain function carrying the original in its __dict__
    # (checked on __dict__: some megatron stand-ins for missing libraries answer any getattr)
    if isinstance(obj, types.FunctionType):
        return obj.__dict__.get("_torchdynamo_orig_callable")
    return None


def _disable_jit_fuser() -> None:
    # 4. Undo torch.compile on megatron's fused helpers (first-step compile on CPU).
    import megatron.core.jit as mjit

    # import the modules whose helpers the model uses, so their wrappers exist to be undone
    import megatron.core.activations  # noqa: F401
    import megatron.core.fusions.fused_bias_swiglu  # noqa: F401
    import megatron.core.models.gpt.gpt_layer_specs  # noqa: F401
    import megatron.core.transformer.moe.token_dispatcher  # noqa: F401

    mjit.disable_jit_fuser()
    unwrapped = 0
    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("megatron.core") or mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            orig = _unwrap_compiled(val)
            if orig is not None:
                setattr(mod, attr, orig)
                unwrapped += 1
            elif isinstance(val, type) and val.__module__ == mod_name:
                for cattr, cval in list(vars(val).items()):
                    corig = _unwrap_compiled(cval)
                    if corig is not None:
                        setattr(val, cattr, corig)
                        unwrapped += 1
    log.debug("unwrapped %d torch.compile'd megatron functions", unwrapped)


def _patch_recompute_rng() -> None:
    # 6. recompute saves/restores the CUDA RNG state; there is none without CUDA.
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *args, **kwargs: None
    mrandom._set_cuda_rng_state = lambda *args, **kwargs: None


def _router_gating(self, input: torch.Tensor) -> torch.Tensor:
    """``Router.gating`` of megatron-core 0.16.1 without its move of CPU weights to the GPU."""
    from megatron.core.transformer.moe.router import router_gating_linear

    router_dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(self.config.moe_router_dtype, input.dtype)
    return router_gating_linear(input, self.weight, self.bias, router_dtype)


def _patch_router_gating() -> None:
    # 7. no weight.data assignment in the router's forward (torch.compile on CPU).
    from megatron.core.transformer.moe.router import Router

    Router.gating = _router_gating


def _init_process_groups() -> None:
    # 5. world-size-1 gloo group + megatron parallel state.
    import torch.distributed as dist
    from megatron.core import parallel_state

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=1, pipeline_model_parallel_size=1, expert_model_parallel_size=1
        )


def apply(seed: int = 1234, *, force: bool = False) -> bool:
    """Apply the CPU compatibility layer; returns True when it is (or already was) active.

    Does nothing (returns False) when CUDA is available, unless ``force``: a process uses
    megatron on CPU or on CUDA, not both.
    """
    global _APPLIED
    if _APPLIED:
        return True
    if not cuda_absent() and not force:
        return False
    _patch_current_device()
    _patch_te_general_gemm()
    _disable_jit_fuser()
    _init_process_groups()
    _install_rng_tracker(seed)
    _patch_recompute_rng()
    _patch_router_gating()
    _APPLIED = True
    log.info("megatron-core CPU compatibility layer applied")
    return True


def is_applied() -> bool:
    return _APPLIED
