"""Classifier inference: ``quality.fasttext`` against a bare fastText ``predict``, and the
embedding scorer's throughput.

* **Data**: the demo corpus's real documents cut into many sizes (``oracle_filters.py``'s
  ``oracle_documents``: docutils docs, Botchan, Wikipedia, ~31k texts of 1 to 8
  paragraphs and whole documents).
* **Model**: trained here with ``arcforge classifiers train`` (fastText's defaults with
  DCLM's bigrams: dim 100, 2M buckets, a ~0.8 GB ``.bin``) on the demo corpus's
  ``labels/quality_en.jsonl`` (good vs poor English pages), or, where that file is
  missing, on Wikipedia paragraphs vs docutils paragraphs (as tests/test_classifiers.py).
* **bare**: a Python list of ``text.replace("\\n", " ")[:max_chars]``, then
  ``model.predict(lines, k=-1)`` and the positive label's probability per row.
* **arcforge**: the ``quality.fasttext`` stage's batch function over Arrow record batches
  of 4,096 rows with the worker's loaded model, as the runtime calls it (text
  preparation in Arrow, one ``multilinePredict`` call, the score column appended).
* Model loading is outside both timings; rounds alternate, best of ``--rounds`` of each;
  CPU seconds are ``time.process_time`` of this process (every thread).
* **Embedding**: ``quality.embedding``'s batch function over ``--emb-docs`` documents (a
  fixed sample) at ``max_chars`` 512 and 2000 (alternating, best of ``--emb-rounds``), on
  CPU, and on the GPU when torch sees one (the head is trained here too, on 240 of the
  labelled rows). The encoder reads at most 256 word pieces (MiniLM's ``max_seq_length``),
  so a 2000-character prefix is cut there.

    .venv/bin/python benchmarks/bench_classify.py                 # ~31k documents, best of 3
    .venv/bin/python benchmarks/bench_classify.py --n 5000 --rounds 2 --emb-docs 200

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from oracle_filters import oracle_documents  # noqa: E402

from arcforge.pipelines.demo.corpus import fetch_demo_corpus  # noqa: E402
from arcforge.runtime.stage import TaskContext  # noqa: E402

BATCH_ROWS = 4096


# --------------------------------------------------------------------------------- labelled data


def _wiki_vs_docs(corpus: Path, n: int = 600) -> list[dict[str, str]]:
    """The fallback labels: Wikipedia paragraphs (good) vs docutils paragraphs (poor)."""
    import gzip

    import pyarrow.fs as pafs

    from arcforge.pipelines.web.sources import WikiParams, read_wikipedia_dump, split_paragraphs

    wiki: list[str] = []
    for dump in sorted((corpus / "wiki").glob("*.bz2")):
        for part in read_wikipedia_dump(str(dump), pafs.LocalFileSystem(), WikiParams(), TaskContext()):
            for text in part.kept.column("text").to_pylist():
                wiki += [p for p in split_paragraphs(text) if len(p) >= 150][:3]
    docs: list[str] = []
    with gzip.open(corpus / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            docs += [p for p in split_paragraphs(json.loads(line)["text"]) if len(p) >= 150][:6]
    return [{"text": t, "label": "good"} for t in wiki[:n]] + [{"text": t, "label": "poor"} for t in docs[:n]]


def labelled_rows(corpus: Path) -> tuple[list[dict[str, Any]], str]:
    path = corpus / "labels" / "quality_en.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()], str(path)
    return _wiki_vs_docs(corpus), "wikipedia vs docutils paragraphs (labels/quality_en.jsonl is missing)"


def train(work: Path, kind: str, rows: list[dict[str, Any]], extra: str, max_chars: int) -> tuple[Path, dict[str, Any]]:
    """``arcforge classifiers train`` on ``rows`` (good vs the rest) into ``work/<kind>``."""
    data = work / f"{kind}.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows), encoding="utf-8")
    cfg = work / f"{kind}.yaml"
    cfg.write_text(f'name: quality_{kind}\nkind: {kind}\ndata: {{files: ["{data}"]}}\npositive: good\nholdout: 0.2\n'
                   f"seed: 0\nmax_chars: {max_chars}\noutput: {work / kind}\n{extra}")
    proc = subprocess.run([sys.executable, "-m", "arcforge.cli", "classifiers", "train", str(cfg)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training {kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return work / kind, json.loads((work / kind / "model_card.json").read_text())


# --------------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - cpu0, time.perf_counter() - wall0, out


def bare_fasttext(model: Any, texts: list[str], max_chars: int, label: str) -> np.ndarray:
    lines = [t.replace("\n", " ")[:max_chars] for t in texts]
    labels, probs = model.predict(lines, k=-1)
    return np.array([p[list(lab).index(label)] for lab, p in zip(labels, probs)], np.float64)


def stage_scores(fn: Any, batches: list[pa.RecordBatch], params: Any, state: Any, column: str) -> np.ndarray:
    ctx = TaskContext(state=state)
    cols = [fn(b, params, ctx).kept.column(column) for b in batches]
    return np.concatenate([c.to_numpy(zero_copy_only=False) for c in cols])


def doc_batches(texts: list[str]) -> list[pa.RecordBatch]:
    """The rows as a map stage gets them from a Parquet part: DOC_SCHEMA record batches."""
    from arcforge.runtime.documents import DOC_SCHEMA, docs_table

    table = docs_table([{"id": str(i), "text": t, "source": "bench"} for i, t in enumerate(texts)], DOC_SCHEMA)
    return table.combine_chunks().to_batches(max_chunksize=BATCH_ROWS)


def bench_fasttext(model_dir: Path, texts: list[str], rounds: int) -> dict[str, Any]:
    from arcforge.classifiers.stages import FASTTEXT_QUALITY, FastTextQualityParams, load_fasttext

    params = FastTextQualityParams(model=str(model_dir), name="q")
    state = load_fasttext(params, {})  # the worker's setup: the model, loaded once
    model, label, max_chars = state.model, params.label or "", params.max_chars or 2000
    batches = doc_batches(texts)
    best: dict[str, tuple[float, float]] = {}
    results: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, run in (("bare", lambda: bare_fasttext(model, texts, max_chars, label)),
                          ("arcforge", lambda: stage_scores(FASTTEXT_QUALITY.fn, batches, params, state, "quality_q"))):
            cpu, wall, results[name] = timed(run)
            prev = best.get(name)
            best[name] = (min(cpu, prev[0]), min(wall, prev[1])) if prev else (cpu, wall)
    diff = float(np.max(np.abs(results["bare"] - results["arcforge"].astype(np.float64))))
    chars = sum(min(len(t), max_chars) for t in texts)
    return {
        "docs": len(texts), "batches": len(batches), "max_chars": max_chars, "chars_scored": chars, "label": label,
        **{f"{k}_{m}_s": round(v[i], 3) for k, v in best.items() for i, m in enumerate(("cpu", "wall"))},
        **{f"{k}_docs_per_cpu_s": round(len(texts) / v[0]) for k, v in best.items()},
        "overhead_cpu": round(best["arcforge"][0] / best["bare"][0] - 1, 4),
        "overhead_wall": round(best["arcforge"][1] / best["bare"][1] - 1, 4),
        "max_abs_score_diff": diff,  # fastText's p + 1e-5 (bare, k=-1) against 1 - p(top) (arcforge, top-1)
    }


def bench_embedding(model_dir: Path, texts: list[str], devices: list[str], rounds: int) -> list[dict[str, Any]]:
    """Docs per second of the stage at each prefix length; the lengths alternate, best of ``rounds``."""
    from arcforge.classifiers.stages import EMBEDDING_QUALITY, EmbeddingQualityParams, load_embedding

    batches = doc_batches(texts)
    out = []
    for device in devices:
        params = {m: EmbeddingQualityParams(model=str(model_dir), name="e", device=device, max_chars=m) for m in (512, 2000)}
        state = load_embedding(params[512], {})  # the worker's encoder, the same for both prefixes
        stage_scores(EMBEDDING_QUALITY.fn, [batches[0].slice(0, 32)], params[512], state, "quality_e")  # warm-up
        best: dict[int, tuple[float, float, float]] = {}
        for _ in range(rounds):
            for m, p in params.items():
                cpu, wall, scores = timed(lambda p=p: stage_scores(EMBEDDING_QUALITY.fn, batches, p, state, "quality_e"))
                if m not in best or wall < best[m][1]:
                    best[m] = (cpu, wall, float(np.mean(scores)))
        for m, (cpu, wall, mean) in best.items():
            out.append({"device": device, "max_chars": m, "docs": len(texts), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                        "docs_per_s": round(len(texts) / wall, 1), "mean_score": round(mean, 4)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="documents for fastText (default: all, ~31k)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--emb-docs", type=int, default=500, help="documents for the embedding scorer (0: skip it)")
    ap.add_argument("--emb-rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    args = ap.parse_args(argv)
    corpus = fetch_demo_corpus(quiet=True)
    texts = oracle_documents(corpus, args.n)
    rows, labels_from = labelled_rows(corpus)
    report: dict[str, Any] = {"labels": labels_from, "labelled_rows": len(rows)}
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        work = Path(tmp)
        ft_dir, card = train(work, "fasttext", rows, "", 2000)
        report["fasttext_model"] = {"bytes": (ft_dir / "model.bin").stat().st_size, "roc_auc": card["metrics"]["roc_auc"],
                                    "hyperparameters": card["hyperparameters"]}
        report["fasttext"] = bench_fasttext(ft_dir, texts, args.rounds)
        if args.emb_docs:
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            sample = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))  # a fixed mix of both labels
            subset = [r for r in sample if r["label"] == "good"][:120] + [r for r in sample if r["label"] != "good"][:120]
            emb_dir, emb_card = train(work, "embedding", subset, "embedding: {device: cpu, batch_size: 32}\n", 512)
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            report["embedding_model"] = {"roc_auc": emb_card["metrics"]["roc_auc"], "torch_threads": torch.get_num_threads(),
                                         "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
            emb_texts = oracle_documents(corpus, args.emb_docs)
            lengths = np.array([len(t) for t in emb_texts])
            report["embedding_sample"] = {"docs": len(emb_texts), "median_chars": int(np.median(lengths)),
                                          "over_512_chars": round(float((lengths > 512).mean()), 3),
                                          "over_2000_chars": round(float((lengths > 2000).mean()), 3)}
            report["embedding"] = bench_embedding(emb_dir, emb_texts, devices, args.emb_rounds)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
