"""Agreement of web.gopher_quality with datatrove's GopherQualityFilter on real documents.

Runs datatrove (0.2.0, with NLTK's English punkt_tab) in its own venv through a
subprocess and prints, per reason, the share of documents where both make the same
decision. To become a test once the test set-up can create that venv and NLTK's data
offline (issue 9).

    .venv/bin/python benchmarks/oracle_gopher.py     # ARCFORGE_DATATROVE_PYTHON, NLTK_DATA override the paths
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
DTX = Path(os.environ.get("ARCFORGE_DATATROVE_PYTHON", "/tmp/dtx/bin/python"))
NLTK_DATA = os.environ.get("NLTK_DATA", "/tmp/nltk_data")
gq = importlib.import_module("arcforge.pipelines.web.heuristics.gopher_quality")


ORACLE = r"""
import json, sys
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter
f = GopherQualityFilter()
out = []
for i, text in enumerate(json.load(open(sys.argv[1]))):
    try:
        r = f.filter(Document(text=text, id=str(i)))
        out.append(None if r is True else (r[1] if isinstance(r, tuple) else "rejected"))
    except Exception as e:
        out.append("error:" + type(e).__name__)
json.dump(out, open(sys.argv[2], "w"))
"""


def real_documents(corpus: Path) -> list[str]:
    """The demo corpus's real documents, plus their sections: Wikipedia articles and docutils
    documents cut at blank lines into groups of 1, 3 and 8 paragraphs (offline, all real text)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_read import corpus_docs

    docs = [t for _, t in corpus_docs(corpus)]
    out = list(docs)
    for text in docs:
        paras = [p for p in text.split("\n\n") if p.strip()]
        if len(paras) < 4:
            continue
        for size in (1, 3, 8):
            out += ["\n\n".join(paras[i:i + size]) for i in range(0, len(paras), size)]
    return out


def main() -> None:
    import tempfile

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    demo_corpus = Path(fetch_demo_corpus(quiet=True))
    tmp_path = Path(tempfile.mkdtemp(prefix="oracle_gopher-"))
    if not DTX.exists():
        raise SystemExit(
            f"the datatrove oracle needs {DTX}: python3.11 -m venv /tmp/dtx && "
            '/tmp/dtx/bin/pip install "datatrove[processing]" && '
            "/tmp/dtx/bin/python -m nltk.downloader -d /tmp/nltk_data punkt_tab"
        )
    texts = real_documents(demo_corpus)
    assert len(texts) >= 10_000, len(texts)
    src, dst = tmp_path / "texts.json", tmp_path / "decisions.json"
    src.write_text(json.dumps(texts), encoding="utf-8")
    env = {**os.environ, "NLTK_DATA": NLTK_DATA}
    subprocess.run([str(DTX), "-c", ORACLE, str(src), str(dst)], check=True, env=env, timeout=1200)
    theirs = json.loads(dst.read_text())
    assert not [t for t in theirs if t and t.startswith("error:")], Counter(theirs).most_common(5)
    ours, _ = gq.gopher_reasons(pa.array(texts), gq.GopherQualityParams())
    # per rule: among the documents either side rejects for that rule (or keeps), the share with the same decision
    report = {}
    for why in sorted({*theirs, *ours}, key=str):
        rows = [i for i in range(len(texts)) if theirs[i] == why or ours[i] == why]
        same = sum(theirs[i] == ours[i] for i in rows)
        report[str(why)] = (same, len(rows))
    overall = sum(a == b for a, b in zip(ours, theirs)) / len(texts)
    print(f"\n{len(texts)} documents, overall agreement {overall:.4%}")
    for why, (same, total) in report.items():
        print(f"  {why:32s} {same}/{total} = {same / total:.4%}")
    bad = [(theirs[i], ours[i], texts[i][:100]) for i in range(len(texts)) if theirs[i] != ours[i]]
    for b in bad[:15]:
        print("  differs:", b)
    print("goal: at least 99.5% per rule")
    for why, (same, total) in report.items():
        if same / total < 0.995:
            print(f"  below the goal: {why} {same}/{total}")


if __name__ == "__main__":
    main()
