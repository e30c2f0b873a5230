"""The train config's kernel and compile choices, checked without importing torch or megatron.

``arcforge train --dry-run`` and the config validator run these before anything starts, so a
wrong choice is one line in about a second rather than after the 3 s import of torch and
megatron-core that ``arcforge.model.kernels`` and ``arcforge.model.compile`` (which apply the
choices) need. Those modules re-export the names here.
"""

from __future__ import annotations

ATTENTION = ("sdpa", "local")
EXPERTS = ("grouped", "sequential")
CROSS_ENTROPY = ("plain", "fused")
FP32_MATMUL = ("ieee", "tf32")
COMPILE = ("none", "layers")


def resolve_kernels(attention: str, experts: str, *, device: str, te: bool) -> tuple[str, str]:
    """The train config's ``kernels`` choice made concrete. ``auto`` means: on CUDA with
    Transformer Engine and both ``auto``, TE's own layer specs (``("te", "te")``); on CUDA
    otherwise ``sdpa`` + ``grouped`` (megatron's local specs with these modules); on CPU
    ``local`` + ``sequential`` (the tested path, unchanged unless set)."""
    if device == "cuda" and te and attention == experts == "auto":
        return "te", "te"
    if attention == "auto":
        attention = "sdpa" if device == "cuda" else "local"
    if experts == "auto":
        experts = "grouped" if device == "cuda" else "sequential"
    if attention not in ATTENTION or experts not in EXPERTS:
        raise ValueError(f"kernels: attention must be one of {ATTENTION}, experts one of {EXPERTS}; "
                         f"got {attention!r}, {experts!r}")
    return attention, experts


# inductor options a compiled layer may not take: CUDA graphs need the optimizer and megatron's
# gradient buffers made capture-safe (the module docstring)
REFUSED_OPTIONS = ("triton.cudagraphs",)


def check_compile_options(mode: str, options: dict) -> None:
    """``ValueError`` (one line) for ``model.compile_options`` that torch.compile would not take
    here: options without compiled layers, a name inductor does not know, or CUDA graphs."""
    if not options:
        return
    if mode == "none":
        raise ValueError("model.compile_options needs model.compile: layers")
    from torch._inductor import config as inductor_config

    known = inductor_config.get_config_copy()
    for key in options:
        if key in REFUSED_OPTIONS:
            raise ValueError(f"model.compile_options.{key}: not supported (CUDA graphs would capture megatron's "
                             "gradient buffers)")
        if key not in known:
            raise ValueError(f"model.compile_options.{key}: not an inductor option (torch._inductor.config)")


def check_compile(mode: str, *, dispatcher: str, experts: str, attention: str, recompute: str = "none") -> None:
    """``ValueError`` (one line) for a ``model.compile`` choice the layers cannot serve:
    kernels with host syncs or without a traceable module, or megatron's activation recompute
    (its checkpoint functions save RNG states and free outputs by hand: not traceable; the
    compiler makes its own recompute choices)."""
    if mode not in COMPILE:
        raise ValueError(f"model.compile must be one of {COMPILE}; got {mode!r}")
    if mode == "none":
        return
    wrong = [f"{k}: {v} (needs {need})" for k, v, need in
             (("kernels.dispatcher", dispatcher, "device"), ("kernels.experts", experts, "grouped"),
              ("kernels.attention", attention, "sdpa"), ("model.recompute", recompute, "none"))
             if v != need]
    if wrong:
        raise ValueError(f"model.compile: {mode} needs layers that trace into one graph each; " + "; ".join(wrong))


__all__ = ["ATTENTION", "COMPILE", "CROSS_ENTROPY", "EXPERTS", "FP32_MATMUL", "REFUSED_OPTIONS", "check_compile",
           "check_compile_options", "resolve_kernels"]
