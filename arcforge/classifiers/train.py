"""Train a quality classifier, measure it on held-out data, write the model and its card.

The steps are the same for both kinds: read the labelled files, make the task binary
(``positive`` vs every other label), split by a seeded hash of the text, train on the
rest, score the held-out texts with the very scorer the inference stage uses (so the
card's metrics are the metrics of what will run), and write ``model_card.json``.
Metrics are scikit-learn's: precision, recall and F1 at a 0.5 threshold, ROC AUC and
average precision over the scores.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from arcforge.classifiers.card import library_versions, sha256_uri, write_card
from arcforge.classifiers.data import holdout_mask, read_labelled
from arcforge.classifiers.spec import TrainPlan, canonical_label
from arcforge.runtime.yamlconf import ConfigError

THRESHOLD = 0.5
DETERMINISM = {
    "fasttext": "same input files, seed and hyperparameters give the same model.bin and metrics with thread: 1, "
    "trained in a fresh process (more threads update the weights concurrently, Hogwild style, and differ run to run)",
    "embedding": "the encoder is deterministic on one device and lbfgs is deterministic, so the same input, seed and "
    "device give the same head and metrics (CPU and GPU embeddings differ in the last bits)",
}


def holdout_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """scikit-learn's metrics of ``scores`` on the held-out labels; ROC AUC and average
    precision are null when the held-out rows have a single class."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = scores >= THRESHOLD
    both = 0 < int(y.sum()) < len(y)
    r = lambda v: round(float(v), 6)  # noqa: E731
    return {
        "examples": len(y),
        "positives": int(y.sum()),
        "threshold": THRESHOLD,
        "precision": r(precision_score(y, pred, zero_division=0)),
        "recall": r(recall_score(y, pred, zero_division=0)),
        "f1": r(f1_score(y, pred, zero_division=0)),
        "accuracy": r(accuracy_score(y, pred)),
        "roc_auc": r(roc_auc_score(y, scores)) if both else None,
        "average_precision": r(average_precision_score(y, scores)) if both else None,
    }


def _binary(plan: TrainPlan, labels: list[str]) -> np.ndarray:
    positive = canonical_label(plan.cfg.positive)
    counts = Counter(labels)
    shown = ", ".join(f"{k!r}" for k in sorted(counts)[:10])
    if positive not in counts:
        raise ConfigError(f"{plan.path}: positive: {positive!r} is not a label of the data (labels: {shown or 'none'})")
    if len(counts) < 2:
        raise ConfigError(f"{plan.path}: positive: every example is labelled {positive!r}; a classifier needs the other class too")
    return np.array([lab == positive for lab in labels], bool)


def _train_fasttext(plan: TrainPlan, texts: pa.Array, y: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from arcforge.classifiers.fasttext_model import MODEL_FILE, load_scorer, prepare, train_fasttext

    ft, cfg = plan.cfg.fasttext, plan.cfg
    prepared = prepare(texts, cfg.max_chars, ft.lowercase)
    lines = prepared.to_pylist()
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    labels = (ft.positive_label, ft.negative_label)
    try:
        path = train_fasttext([lines[i] for i in train_idx], y[train_idx], plan.output, ft.hyperparameters(), labels, cfg.seed)
    except RuntimeError as exc:  # "Encountered NaN": the learning rate is too high for the data
        raise ConfigError(f"{plan.path}: fasttext: training failed ({exc}); lower fasttext.lr") from None
    scores = load_scorer(str(path), ft.positive_label).proba(prepared.take(pa.array(test_idx)))
    digest, size = sha256_uri(str(path))
    model = {"file": MODEL_FILE, "sha256": digest, "bytes": size, "positive_label": ft.positive_label,
             "negative_label": ft.negative_label, "max_chars": cfg.max_chars, "lowercase": ft.lowercase,
             "text_preparation": "first max_chars characters, lowercased if lowercase, newlines as spaces"}
    return scores, model


def _train_embedding(plan: TrainPlan, texts: pa.Array, y: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    from arcforge.classifiers.embedding_model import ENCODER, ENCODER_DIM, HEAD_FILE, embedding_texts, encode, load_encoder, save_head, train_head

    em, cfg = plan.cfg.embedding, plan.cfg
    try:
        encoder = load_encoder(em.device)
    except ValueError as exc:
        raise ConfigError(f"{plan.path}: embedding.device: {exc}") from None
    x = encode(encoder, embedding_texts(texts, cfg.max_chars), em.batch_size)
    head, info = train_head(x[~test], y[~test], em.hyperparameters(), cfg.seed)
    meta = {"encoder": ENCODER, "dim": ENCODER_DIM, "max_chars": cfg.max_chars, "normalize": True,
            "name": cfg.name, "positive": canonical_label(cfg.positive)}
    path = save_head(plan.output / HEAD_FILE, head, meta)
    digest, size = sha256_uri(str(path))
    model = {"file": HEAD_FILE, "sha256": digest, "bytes": size, "encoder": ENCODER, "encoder_dim": ENCODER_DIM,
             "device": str(encoder.device), "max_chars": cfg.max_chars, "head": "sklearn LogisticRegression (lbfgs)", **info}
    return head.proba(x[test]), model


def request_fingerprint(plan: TrainPlan) -> str:
    """What was asked for: the config (all but its output folder) and every input file's
    sha256, in order. Equal fingerprints train the same model (training is deterministic)."""
    from arcforge.runtime.dataset import fingerprint

    asked = plan.cfg.model_dump(mode="json", exclude={"output"})
    return fingerprint(asked, [sha256_uri(f)[0] for f in plan.files])


def current_card(plan: TrainPlan) -> dict[str, Any] | None:
    """The card in the output folder when it is what ``plan`` would train now (same config,
    same input bytes) and its model file is intact; else None."""
    from arcforge.classifiers.card import read_card

    try:
        card = read_card(plan.output)
    except ValueError:
        return None
    if not card or card.get("request") != request_fingerprint(plan):
        return None
    model = plan.output / card["model"]["file"]
    return card if model.is_file() and sha256_uri(str(model))[0] == card["model"]["sha256"] else None


def train_classifier(plan: TrainPlan) -> dict[str, Any]:
    """Train, evaluate and write ``model.bin``/``head.npz`` and ``model_card.json`` into
    the output directory; returns the card."""
    cfg = plan.cfg
    started = time.time()
    data = read_labelled(plan.files, cfg.data, plan.path)
    y = _binary(plan, data.labels)
    test = holdout_mask(data.texts, cfg.holdout, cfg.seed)
    for side, mask in (("training", ~test), ("held-out", test)):
        if len(set(y[mask].tolist())) < 2:
            raise ConfigError(f"{plan.path}: holdout: the {side} split ({int(mask.sum())} examples) lacks one class; "
                              "add examples or change holdout")
    texts = pa.array(data.texts, pa.string())
    train = _train_fasttext if cfg.kind == "fasttext" else _train_embedding
    scores, model = train(plan, texts, y, test)
    card = {
        "name": cfg.name,
        "kind": cfg.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "data": {
            "fingerprint": data.fingerprint,
            "sources": data.sources,
            "text_key": cfg.data.text_key,
            "label_key": cfg.data.label_key,
            "examples": len(data.texts),
            "skipped": data.skipped,
            "labels": dict(sorted(Counter(data.labels).items())),
            "positive": canonical_label(cfg.positive),
            "classes": {"positive": int(y.sum()), "negative": int((~y).sum())},
        },
        "split": {
            "method": "blake2b(text, key=str(seed)) < holdout * 2**64 (held out)",
            "holdout": cfg.holdout,
            "seed": cfg.seed,
            "train": {"examples": int((~test).sum()), "positives": int(y[~test].sum())},
            "held_out": {"examples": int(test.sum()), "positives": int(y[test].sum())},
        },
        "metrics": holdout_metrics(y[test], scores),
        "hyperparameters": {**cfg.hyperparameters(), "seed": cfg.seed, "max_chars": cfg.max_chars},
        "determinism": DETERMINISM[cfg.kind],
        "libraries": library_versions(),
        "config": plan.path,
        "request": request_fingerprint(plan),
        "seconds": round(time.time() - started, 3),
    }
    write_card(plan.output, card)
    return card
