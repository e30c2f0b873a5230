"""``arcforge train CONFIG`` and ``arcforge ablate CONFIG`` (heavy imports happen in the commands)."""

from __future__ import annotations

import argparse
import os


def cmd_train(args: argparse.Namespace) -> int:
    from arcforge.model.train import load_train_config, train

    cfg = load_train_config(args.config, allow_stale=args.force)  # one-line ConfigError before megatron starts
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
    t.add_argument("config", help="training YAML (see docs/train.md)")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the latest checkpoint in checkpoint.dir (default), or start over "
                   "(--no-resume deletes that directory's step_*.pt checkpoints and the run's logs)")
    t.add_argument("--steps", type=int, default=None, metavar="N",
                   help="run at most N steps in this invocation, then checkpoint (a later call resumes)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    t.add_argument("--force", action="store_true",
                   help="train on a stale blend (its shards or tokenizer changed since arcforge mix) with a warning "
                   "instead of refusing (the config key data.allow_stale: true does the same)")
    t.set_defaults(fn=cmd_train)
    a = subparsers.add_parser("ablate", help="train proxies on different blends with one budget; compare validation loss")
    a.add_argument("config", help="ablation YAML (see docs/train.md)")
    a.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume (or skip) runs that have checkpoints (default) or start every run over")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a.set_defaults(fn=cmd_ablate)
