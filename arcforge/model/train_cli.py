"""``arcforge train CONFIG`` and ``arcforge ablate CONFIG`` (heavy imports happen in the commands)."""

from __future__ import annotations

import argparse
import os


def dry_run(args: argparse.Namespace) -> int:
    """Validate the config (or the preset + flags) and the parallel layout; print the memory
    estimate per GPU (``arcforge.model.memory``). Starts nothing and reads no shards."""
    import sys

    from arcforge.model.memory import Layout, estimate_memory, format_estimate, validate_layout
    from arcforge.runtime.config import ConfigError

    where = args.config or f"--preset {args.preset}"
    warmup = None
    if args.config:
        from arcforge.model.train_config import load_train_config  # not .train: no torch for a dry run

        try:  # schema and model checks; the data is not read (it may live on the cluster)
            cfg = load_train_config(args.config, check_data=False, allow_stale=args.force)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        arch = cfg.arch()
        p, b = cfg.parallel, cfg.batch
        tp, pp, ep = args.tp or p.tp, args.pp or p.pp, args.ep or p.ep
        mbs, gbs = args.mbs or b.micro_batch_size, args.gbs or b.global_batch_size
        seq = args.seq or cfg.model.seq_length
        dtype = cfg.dtype
        warmup = b.warmup_start
        optimizer = "muon" if cfg.optimizer.name == "muon" else "adam"
        recompute = args.recompute or cfg.model.recompute
        distributed = cfg.optimizer.distributed if args.distributed_optimizer is None else args.distributed_optimizer
    else:
        from arcforge.model.arch import PRESETS, get_preset

        name = {"glm4.5": "glm45", "glm4.5-air": "glm45-air"}.get(args.preset, args.preset)
        if name not in PRESETS:
            print(f"--preset: unknown preset {args.preset!r} (known: {', '.join(PRESETS)})", file=sys.stderr)
            return 2
        arch = get_preset(name)
        tp, pp, ep = args.tp or 1, args.pp or 1, args.ep or 1
        mbs, seq, dtype, optimizer = args.mbs or 1, args.seq or 4096, "bf16", args.optimizer or "adam"
        gbs = args.gbs
        recompute = args.recompute or "none"
        distributed = True if args.distributed_optimizer is None else args.distributed_optimizer
    etp = args.etp or tp
    world = args.gpus or int(os.environ.get("WORLD_SIZE", 0)) or tp * pp * ep * etp // tp  # smallest world with ep | dp
    if gbs is None:
        gbs = mbs * (world // (tp * pp) if world % (tp * pp) == 0 else 1)
    lay = Layout(world=world, tp=tp, pp=pp, ep=ep, etp=etp, micro_batch=mbs, global_batch=gbs, seq_length=seq,
                 first_stage_layers=args.first_stage_layers, last_stage_layers=args.last_stage_layers, warmup_start=warmup)
    errs = validate_layout(arch, lay)
    for e in errs:
        print(f"{where}: {e}", file=sys.stderr)
    if errs:
        return 2
    est = estimate_memory(arch, lay, dtype=dtype, optimizer=optimizer, distributed_optimizer=distributed,
                          grad_fp32=not args.bf16_grads, recompute=recompute, attention=args.attention,
                          reserve_gib=args.reserve_gib)
    print(f"dry run: {where} (nothing started; shards not read)")
    print(format_estimate(est, args.gpu_memory_gib))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.dry_run:
        return dry_run(args)
    if not args.config:
        import sys

        print("arcforge train: a CONFIG is required (without one only --dry-run --preset ... works)", file=sys.stderr)
        return 2
    from arcforge.model.train_config import load_train_config

    cfg = load_train_config(args.config, allow_stale=args.force)  # one-line ConfigError before torch is imported
    from arcforge.model.train import train

    r = train(cfg, resume=args.resume, max_steps=args.steps, verbose=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports
        return 0
    ev = f", eval loss {r.final_eval_loss:.4f} (best {r.best_eval_loss:.4f})" if r.final_eval_loss is not None else ""
    loss = f", train loss {r.final_loss:.4f}" if r.final_loss is not None else ""
    print(f"{cfg.name}: step {r.steps}, {r.tokens:,} tokens{loss}{ev}")
    print(f"log: {r.csv}" + (f"  plot: {r.plot}" if r.plot else "") + (f"  checkpoint: {r.checkpoint}" if r.checkpoint else ""))
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from arcforge.model.ablate import ablate

    from pathlib import Path

    out = ablate(args.config, resume=args.resume, verbose=not args.quiet)
    print(Path(out["files"][0]).read_text())  # ablation.md
    print("wrote " + ", ".join(out["files"]))
    return 0


def add_train_parser(subparsers) -> None:
    """Register ``arcforge train`` and ``arcforge ablate``."""
    t = subparsers.add_parser("train", help="pre-train a GLM-4.5-style proxy on Megatron shards (resumes by default)")
    t.add_argument("config", nargs="?", help="training YAML (see docs/train.md)")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the latest checkpoint in checkpoint.dir (default), or start over "
                   "(--no-resume deletes that directory's step_*.pt checkpoints and the run's logs)")
    t.add_argument("--steps", type=int, default=None, metavar="N",
                   help="run at most N steps in this invocation, then checkpoint (a later call resumes)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    t.add_argument("--force", action="store_true",
                   help="train on a stale blend (its shards or tokenizer changed since arcforge mix) with a warning "
                   "instead of refusing (the config key data.allow_stale: true does the same)")
    d = t.add_argument_group("--dry-run: validate the layout, print the memory per GPU, start nothing "
                             "(docs/train.md, 'Parallel layouts and memory')")
    d.add_argument("--dry-run", action="store_true", help="print the layout and the memory estimate per GPU; start nothing")
    d.add_argument("--gpu-memory-gib", type=float, default=80.0, metavar="GIB", help="GPU memory to fit (default 80)")
    d.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="world size (default: $WORLD_SIZE, else the smallest megatron accepts: tp*pp*ep)")
    d.add_argument("--preset", default=None, help="without a CONFIG: an arch preset (glm45, glm45-air or glm4.5, glm4.5-air, proxy-1b, ...)")
    for k, h in (("tp", "tensor parallel"), ("pp", "pipeline parallel"), ("ep", "expert parallel"),
                 ("etp", "expert tensor parallel (default: tp, as megatron)"), ("mbs", "micro-batch size"),
                 ("gbs", "global batch size (sequences)"), ("seq", "sequence length")):
        d.add_argument(f"--{k}", type=int, default=None, help=h + " (overrides the config's)")
    d.add_argument("--first-stage-layers", type=int, default=None, help="uneven pipeline: layers on the first stage")
    d.add_argument("--last-stage-layers", type=int, default=None, help="uneven pipeline: layers on the last stage")
    d.add_argument("--recompute", choices=("none", "selective", "full"), default=None,
                   help="activation recompute (selective = core_attn, layernorm, moe_act; default: the config's "
                   "model.recompute, else none)")
    d.add_argument("--attention", choices=("flash", "unfused"), default="flash",
                   help="core attention kernel: flash/fused (O(s) memory) or megatron's unfused local one (O(s^2))")
    d.add_argument("--distributed-optimizer", action=argparse.BooleanOptionalAction, default=None,
                   help="shard optimizer state over data parallel (megatron's distributed optimizer); "
                        "default: the config's optimizer.distributed, yes with --preset")
    d.add_argument("--bf16-grads", action="store_true", help="bf16 gradient buffers (default fp32: grad_reduce_in_fp32)")
    d.add_argument("--optimizer", choices=("adam", "muon"), default=None, help="without a CONFIG (default adam)")
    d.add_argument("--reserve-gib", type=float, default=3.0, help="CUDA context, NCCL, fragmentation allowance (default 3)")
    t.set_defaults(fn=cmd_train)
    a = subparsers.add_parser("ablate", help="train proxies on different blends with one budget; compare validation loss")
    a.add_argument("config", help="ablation YAML (see docs/train.md)")
    a.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume (or skip) runs that have checkpoints (default) or start every run over")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a.set_defaults(fn=cmd_ablate)
