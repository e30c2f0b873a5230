"""Encoding to Megatron shards: arcforge vs datatrove vs raw sentencepiece, same text, same run.

    .venv/bin/python benchmarks/bench_tokenize.py --datatrove-python /tmp/dtvenv/bin/python

* **Text**: the demo corpus's 105 Wikipedia articles, Botchan's paragraphs and the Python
  sources of a few installed packages, repeated ``--copies`` times into one Parquet part
  (arcforge's input format).
* **Tokenizer**: a sentencepiece BPE trained by ``tokenize.train_spm``'s own code on that
  text (``--vocab``). datatrove only takes Hugging Face ``tokenizers`` files, so the same
  model is converted to a ``tokenizers`` BPE (same vocabulary and ids, merges ranked by
  piece score, byte fallback, the same pre-splitting rules); the script reports how many
  documents the two encode to identical ids, and throughput per *text byte* as well as per
  token, so a small difference in segmentation cannot flatter either side.
* **arcforge**: ``tokenize.megatron_shards``'s partition function on that part: Parquet read,
  grouping by source, encoding, end-of-document ids, megatron-core's ``IndexedDatasetBuilder``
  writing ``.bin``/``.idx``, publishing the files.
* **datatrove**: ``ParquetReader`` -> ``MegatronDocumentTokenizer`` (HF ``tokenizers``
  ``encode_batch``, its own ``.bin``/``.idx`` writer), run in a separate interpreter (its own
  venv, ``--datatrove-python``), because datatrove is not a project dependency.
* **raw sentencepiece**: ``SentencePieceProcessor.encode(list_of_texts)``, nothing else: no
  reading, no end-of-document ids, no writing.

Threads are equal: ``--threads`` for sentencepiece's batch encoder (arcforge and raw) and for
``tokenizers`` (``RAYON_NUM_THREADS``; ``TOKENIZERS_PARALLELISM=false`` when 1). Time is CPU
time of the whole process (user + system, every thread, from ``getrusage``), so the figure
is tokens per CPU-second; wall time is printed too. Each system runs ``--repeats`` times,
interleaved, and its best run is reported.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from arcforge.pipelines.demo.corpus import fetch_demo_corpus
from arcforge.runtime.documents import DOC_SCHEMA, doc_id
from arcforge.runtime.stage import TaskContext
from arcforge.tokenize.shards import ShardParams, write_shards
from arcforge.tokenize.spm import SPECIALS, Tokenizer
from arcforge.tokenize.spm_train import TrainSpmParams, train_model


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def corpus_texts(corpus: Path) -> list[tuple[str, str]]:
    """(source, text) of real documents: Wikipedia, Botchan's paragraphs, Python sources."""
    import email.message
    import json as json_mod

    import requests.models
    import requests.sessions
    import requests.utils

    from arcforge.pipelines.web.sources import WikiParams, read_wikipedia_dump, split_paragraphs

    out: list[tuple[str, str]] = []
    wiki = next((corpus / "wiki").glob("*.bz2"))
    for o in read_wikipedia_dump(str(wiki), pafs.LocalFileSystem(), WikiParams(), TaskContext()):
        out += [("wikipedia", t) for t in o.kept.column("text").to_pylist()]
    out += [("books", p) for p in split_paragraphs((corpus / "books" / "botchan.txt").read_text())]
    for mod in (requests.models, requests.sessions, requests.utils, json_mod, email.message, argparse, inspect):
        out.append(("code", inspect.getsource(mod)))
    return out


def write_part(docs: list[tuple[str, str]], copies: int, path: Path) -> tuple[int, int]:
    rows = [
        {"id": doc_id(str(c), str(i)), "text": text, "source": src}
        for c in range(copies)
        for i, (src, text) in enumerate(docs)
    ]
    table = pa.table({f.name: [r.get(f.name) for r in rows] for f in DOC_SCHEMA}, schema=DOC_SCHEMA)
    pq.write_table(table, path, compression="zstd")
    return len(rows), sum(len(r["text"].encode()) for r in rows)


# -- sentencepiece -> Hugging Face tokenizers -----------------------------------------------


def to_hf_tokenizer(tok: Tokenizer, path: Path) -> None:
    """The sentencepiece BPE as a ``tokenizers`` BPE with the same vocabulary and ids."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    sp = tok.sp
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    first_byte = sp.piece_to_id("<0x00>")
    users = [sp.id_to_piece(i) for i in range(len(SPECIALS), first_byte)]  # "\n", "\t"
    learned = {p: i for p, i in vocab.items() if i >= first_byte and not sp.is_byte(i)}
    merges = []
    for piece, pid in learned.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in learned and right in learned:
                merges.append((vocab[piece], vocab[left], vocab[right], left, right))
    merges.sort()
    model = models.BPE(
        vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token="<unk>", byte_fallback=True, fuse_unk=True
    )
    hf = HFTokenizer(model)
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    # sentencepiece's words (SplitIntoWords with allow_whitespace_only_pieces): a run of
    # spaces and the non-space characters that follow it
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581*[^\u2581]+|\u2581+"), behavior="isolated")
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    hf.add_tokens([AddedToken(u, normalized=False, special=False) for u in users])
    hf.add_special_tokens([AddedToken(s.token, normalized=False, special=True) for s in SPECIALS])
    hf.save(str(path))


DATATROVE_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys, time
    part_dir, tokenizer_json, out_dir, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import MegatronDocumentTokenizer

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    runs = []
    for k in range(repeats):
        reader = ParquetReader(part_dir, glob_pattern="*.parquet", text_key="text", id_key="id")
        writer = MegatronDocumentTokenizer(os.path.join(out_dir, str(k)), tokenizer_name_or_path=tokenizer_json,
                                           eos_token="<|endoftext|>")
        writer.tokenizer  # loaded outside the timing, as arcforge's per-worker setup is
        c0, w0 = cpu(), time.perf_counter()
        writer.run(reader.run(None, rank=0, world_size=1), rank=0, world_size=1)
        c1, w1 = cpu(), time.perf_counter()
        tokens = sum(os.path.getsize(os.path.join(out_dir, str(k), f)) for f in os.listdir(os.path.join(out_dir, str(k)))
                     if f.endswith(".bin")) // writer.token_size
        runs.append({"cpu_s": c1 - c0, "wall_s": w1 - w0, "tokens": tokens})
    print(json.dumps(runs))
    """
)


def run_datatrove(python: str, part_dir: Path, tokenizer_json: Path, out: Path, threads: int, repeats: int) -> list[dict]:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), RAYON_RS_NUM_CPUS=str(threads))
    env["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
    env.pop("PYTHONPATH", None)
    res = subprocess.run(
        [python, "-c", DATATROVE_SCRIPT, str(part_dir), str(tokenizer_json), str(out), str(repeats)],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if res.returncode != 0:
        raise SystemExit(f"datatrove run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_arcforge(tok: Tokenizer, part: Path, out: Path, threads: int) -> dict:
    params = ShardParams(num_threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    ctx = TaskContext(state=tok, partition=0, output_uri=str(out))
    c0, w0 = cpu_seconds(), time.perf_counter()
    rows = [r for o in write_shards(str(part), pafs.LocalFileSystem(), params, ctx) for r in o.kept.to_pylist()]
    c1, w1 = cpu_seconds(), time.perf_counter()
    return {"cpu_s": c1 - c0, "wall_s": w1 - w0, "tokens": sum(r["tokens"] for r in rows)}


def run_raw(tok: Tokenizer, texts: list[str], threads: int) -> dict:
    c0, w0 = cpu_seconds(), time.perf_counter()
    ids = tok.sp.encode(texts, num_threads=threads)
    c1, w1 = cpu_seconds(), time.perf_counter()
    return {"cpu_s": c1 - c0, "wall_s": w1 - w0, "tokens": sum(map(len, ids))}


def agreement(tok: Tokenizer, tokenizer_json: Path, texts: list[str]) -> tuple[float, float]:
    """Share of documents encoded to identical ids, and HF/spm token-count ratio."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(tokenizer_json))
    same = total_a = total_b = 0
    for t in texts:
        a, b = tok.encode(t), hf.encode(t, add_special_tokens=False).ids
        same += a == b
        total_a += len(a)
        total_b += len(b)
    return same / len(texts), total_b / total_a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON", "/tmp/dtvenv/bin/python"),
                    help="python of a venv with datatrove[io,processing,cli] (env DATATROVE_PYTHON)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    docs = corpus_texts(fetch_demo_corpus(quiet=True))
    part_dir = work / "part"
    part_dir.mkdir()
    part = part_dir / "part-00000.parquet"
    n_docs, n_bytes = write_part(docs, args.copies, part)
    texts = pq.read_table(part, columns=["text"]).column("text").to_pylist()

    t0 = time.perf_counter()
    params = TrainSpmParams(vocab_size=args.vocab, num_threads=2)
    model = train_model([t for _, t in docs], params)
    (work / "tok").mkdir()
    (work / "tok" / "tokenizer.model").write_bytes(model)
    tok = Tokenizer(str(work / "tok" / "tokenizer.model"))
    hf_json = work / "hf-tokenizer.json"
    to_hf_tokenizer(tok, hf_json)
    same, ratio = agreement(tok, hf_json, [t for _, t in docs])
    print(f"text: {n_docs:,} documents, {n_bytes / 1e6:.1f} MB; tokenizer: vocab {tok.vocab_size:,} "
          f"(trained in {time.perf_counter() - t0:.1f}s); HF conversion: {same:.1%} of documents identical, "
          f"HF/spm token ratio {ratio:.4f}; threads {args.threads}")

    from arcforge.tokenize.shards import megatron_builder

    megatron_builder()  # imported once per worker in a run; not part of encoding
    results: dict[str, list[dict]] = {"arcforge": [], "raw sentencepiece": [], "datatrove": []}
    for k in range(args.repeats):  # interleaved, so a noisy neighbour hurts every system alike
        results["arcforge"].append(run_arcforge(tok, part, work / f"arc{k}", args.threads))
        results["raw sentencepiece"].append(run_raw(tok, texts, args.threads))
        results["datatrove"] += run_datatrove(args.datatrove_python, part_dir, hf_json, work / f"dt{k}", args.threads, 1)

    best = {name: min(runs, key=lambda r: r["cpu_s"]) for name, runs in results.items()}
    dt = best["datatrove"]["tokens"] / best["datatrove"]["cpu_s"]
    raw = best["raw sentencepiece"]["tokens"] / best["raw sentencepiece"]["cpu_s"]
    print("\n| system | tokens | CPU s (best) | CPU s (median) | wall s (best) | tokens / CPU-s | MB text / CPU-s | vs datatrove | vs raw sentencepiece |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("raw sentencepiece", "arcforge", "datatrove"):
        r = best[name]
        rate = r["tokens"] / r["cpu_s"]
        median = statistics.median(x["cpu_s"] for x in results[name])
        print(f"| {name} | {r['tokens']:,} | {r['cpu_s']:.2f} | {median:.2f} | {min(x['wall_s'] for x in results[name]):.2f} | "
              f"{rate / 1e6:.3f}M | {n_bytes / 1e6 / r['cpu_s']:.2f} | {rate / dt:.2f}x | {rate / raw:.2f}x |")


if __name__ == "__main__":
    main()
