"""``arcforge classifiers train CONFIG`` (heavy imports happen in the command)."""

from __future__ import annotations

import argparse
from typing import Any


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def summary_lines(card: dict[str, Any], output: str) -> list[str]:
    """What the command prints: the data, the held-out metrics, the files written."""
    d, s, m = card["data"], card["split"], card["metrics"]
    labels = ", ".join(f"{k} {v:,}" for k, v in d["labels"].items())
    skipped = sum(d["skipped"].values())
    return [
        f"{card['name']} ({card['kind']}): {d['examples']:,} examples ({labels}); positive {d['positive']!r}"
        + (f"; {skipped:,} rows skipped" if skipped else ""),
        f"split: {s['train']['examples']:,} train / {s['held_out']['examples']:,} held out (seed {s['seed']})",
        f"held out: precision {_fmt(m['precision'])}  recall {_fmt(m['recall'])}  F1 {_fmt(m['f1'])}  "
        f"ROC AUC {_fmt(m['roc_auc'])}  (threshold {m['threshold']})",
        f"wrote {output}/{card['model']['file']} and {output}/model_card.json (data {d['fingerprint'][:19]}…)",
    ]


def cmd_train(args: argparse.Namespace) -> int:
    from arcforge.classifiers.spec import load_train_config
    from arcforge.classifiers.train import current_card, train_classifier

    plan = load_train_config(args.config)  # one-line ConfigError before any data is read or model loaded
    card = None if args.force else current_card(plan)
    if card is not None:
        print(f"{card['name']}: up to date (same config and data as {plan.output}/model_card.json; --force retrains)")
    else:
        card = train_classifier(plan)
    for line in summary_lines(card, str(plan.output)):
        print(line)
    return 0


def register(subparsers: Any) -> None:
    """Register ``arcforge classifiers train``."""
    c = subparsers.add_parser("classifiers", help="train quality classifiers (fastText, embedding + logistic regression)")
    csub = c.add_subparsers(dest="classifiers_command", required=True)
    t = csub.add_parser("train", help="train a classifier on labelled JSONL/Parquet, report held-out metrics, write a model card")
    t.add_argument("config", help="classifier YAML (name, kind, data, positive, holdout, seed, output, ...)")
    t.add_argument("--force", action="store_true", help="train even when the output holds a model of the same config and data")
    t.set_defaults(fn=cmd_train)
