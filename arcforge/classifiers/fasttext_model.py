"""fastText quality classifiers, DCLM style: one line per document, ``__label__hq`` /
``__label__cc`` labels, bigrams, and the score is the probability of the positive label.

Three things here are shared by training and scoring so they cannot drift apart:
the text preparation (``prepare``: a prefix of ``max_chars`` characters, optionally
lowercased, newlines as spaces, since fastText reads one line per document), the
probability of the positive label (``FastTextScorer``), and the file check
(``check_model_file``).

The file check exists because fastText's loader does not notice damage: a model cut
in half loads and predicts garbage. The check reads the header (magic, version, a
supervised model, its dimension and label count) and verifies from the tail that the
two matrices fill the file exactly, without reading the dictionary or the weights, so
every task can afford it when it validates its params (a DCLM model is gigabytes).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAGIC = 793712314  # fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32
MAX_VERSION = 12
_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, t
_DICT = struct.Struct("<iiiqq")  # size nwords nlabels ntokens pruneidx_size
_MATRIX = struct.Struct("<qq")  # rows, cols
_SUPERVISED = 3
MODEL_FILE = "model.bin"


def _quiet() -> Any:
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # the load-time deprecation notice
    return fasttext


def check_model_file(path: str | os.PathLike[str]) -> dict[str, int]:
    """Header and layout of a supervised fastText ``.bin``; a ValueError (one line) when the
    file is not one, is cut, or is quantized (``.ftz``, whose layout cannot be checked
    without reading it all)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8 + _ARGS.size + _DICT.size)
        if len(head) < 8 + _ARGS.size + _DICT.size:
            raise ValueError(f"{path} is not a fastText model ({size} bytes, shorter than a header)")
        magic, version = struct.unpack_from("<ii", head)
        if magic != MAGIC or not 0 < version <= MAX_VERSION:
            raise ValueError(f"{path} is not a fastText .bin model (no fastText header)")
        args = _ARGS.unpack_from(head, 8)
        dim, word_ngrams, model_kind, bucket = args[0], args[5], args[7], args[8]
        if model_kind != _SUPERVISED:
            raise ValueError(f"{path} is a fastText word-vector model, not a supervised classifier")
        _, nwords, nlabels, _, _ = _DICT.unpack_from(head, 8 + _ARGS.size)
        if dim <= 0 or nwords < 0 or nlabels < 2 or bucket < 0:
            raise ValueError(f"{path}: damaged fastText header (dim {dim}, {nwords} words, {nlabels} labels)")
        out_at = size - _MATRIX.size - nlabels * dim * 4
        in_at = out_at - 1 - (nwords + bucket) * dim * 4 - _MATRIX.size
        if in_at - 1 < len(head) or _read_matrix_header(f, out_at) != (nlabels, dim) or _read_byte(f, out_at - 1) != 0 \
                or _read_matrix_header(f, in_at) != (nwords + bucket, dim) or _read_byte(f, in_at - 1) != 0:
            raise ValueError(
                f"{path}: fastText model is truncated or damaged (its {nwords + bucket}x{dim} and {nlabels}x{dim} "
                f"matrices do not fill its {size} bytes), or quantized (.ftz), which is not supported"
            )
    return {"dim": dim, "words": nwords, "labels": nlabels, "bucket": bucket, "wordNgrams": word_ngrams}


def _read_matrix_header(f: Any, at: int) -> tuple[int, int] | None:
    if at < 0:
        return None
    f.seek(at)
    data = f.read(_MATRIX.size)
    return _MATRIX.unpack(data) if len(data) == _MATRIX.size else None


def _read_byte(f: Any, at: int) -> int | None:
    f.seek(at)
    b = f.read(1)
    return b[0] if b else None


def prepare(texts: pa.Array | pa.ChunkedArray, max_chars: int, lowercase: bool = False) -> pa.Array:
    """The text fastText sees, for training and scoring alike, prepared in Arrow (no Python
    loop per row): the first ``max_chars`` characters, optionally lowercased, newlines as
    spaces. That is all fastText needs: it splits words on any whitespace and reads only
    ``\\n`` as the end of a line, so collapsing whitespace runs would give the same words
    (and a regular expression costs as much as the prediction itself)."""
    arr = pc.fill_null(texts, "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.utf8_slice_codeunits(arr, 0, max_chars)  # code points for UTF-8 strings
    if lowercase:
        arr = pc.utf8_lower(arr)
    return pc.replace_substring(arr, "\n", " ")


def fasttext_lines(texts: pa.Array | pa.ChunkedArray, max_chars: int, lowercase: bool = False) -> list[str]:
    return prepare(texts, max_chars, lowercase).to_pylist()


class FastTextScorer:
    """Probability of ``label`` per prepared line, one batched prediction per call.

    For binary models the lines go to the wrapper's own ``multilinePredict`` with the
    ``\\n`` each line needs appended in Arrow: ``model.predict(list)`` would check and
    copy every line in a Python loop first. Top-1 is enough there: p(other) = 1 - p(top)."""

    def __init__(self, model: Any, label: str) -> None:
        labels = list(model.get_labels())
        if label not in labels:
            raise ValueError(f"label {label!r} is not a label of the model (its labels: {', '.join(labels[:10])})")
        self.model = model
        self.label = label
        self.binary = len(labels) == 2
        self._multiline = getattr(getattr(model, "f", None), "multilinePredict", None)

    def proba(self, lines: pa.Array) -> np.ndarray:
        n = len(lines)
        if n == 0:
            return np.zeros(0, np.float64)
        if self.binary:
            if self._multiline is not None:
                entries = pc.binary_join_element_wise(lines, "\n", "").to_pylist()  # line + "\n"
                labels, probs = self._multiline(entries, 1, 0.0, "strict")
            else:
                labels, probs = self.model.predict(lines.to_pylist(), k=1)
            top = np.concatenate(probs).astype(np.float64) if probs else np.zeros(0)
            if len(top) == n:
                is_label = np.fromiter((lab[0] == self.label for lab in labels), bool, count=n)
                # fastText reports p + 1e-5, so 1 - p can dip below 0: clip to the declared range
                return np.clip(np.where(is_label, top, 1.0 - top), 0.0, 1.0)
        labels, probs = self.model.predict(lines.to_pylist(), k=-1)  # several labels: look the label up per row
        return np.clip(np.array([dict(zip(lab, p)).get(self.label, 0.0) for lab, p in zip(labels, probs)], np.float64), 0.0, 1.0)


def load_scorer(path: str, label: str) -> FastTextScorer:
    return FastTextScorer(_quiet().load_model(str(path)), label)


# Training runs in a fresh interpreter: in a process that has trained (or loaded) a model
# before, fastText 0.9.2 with thread=1 gives a different model now and then (it reads memory
# the earlier model left behind); a fresh process gives the same bytes every time.
_TRAIN = (
    "import json, sys, fasttext; fasttext.FastText.eprint = lambda *a, **k: None; "
    "fasttext.train_supervised(input=sys.argv[1], **json.loads(sys.argv[3])).save_model(sys.argv[2])"
)


def train_fasttext(
    lines: list[str], positive: np.ndarray, out_dir: Path, hp: dict[str, Any], labels: tuple[str, str], seed: int
) -> Path:
    """Train on ``lines`` (already prepared by ``fasttext_lines``) and write ``model.bin``.

    The lines are shuffled with ``seed`` first: fastText's SGD walks the file in order, and
    a file sorted by label teaches it the last label. With ``thread: 1`` the result is
    byte-identical for the same input and seed (more threads race, Hogwild style). A
    RuntimeError carries fastText's own message (``Encountered NaN.``: the rate is too high)."""
    order = np.random.default_rng(seed).permutation(len(lines))
    pos_label, neg_label = labels
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, train_path = tempfile.mkstemp(prefix=".train-", suffix=".txt", dir=out_dir)
    tmp = out_dir / (MODEL_FILE + ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(f"{pos_label if positive[i] else neg_label} {lines[i]}\n" for i in order)
        args = json.dumps({**hp, "seed": seed, "verbose": 0, "label": "__label__"})
        proc = subprocess.run([sys.executable, "-c", _TRAIN, train_path, str(tmp), args], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise RuntimeError(last.removeprefix("RuntimeError: "))
    finally:
        os.unlink(train_path)
    target = out_dir / MODEL_FILE
    os.replace(tmp, target)
    return target
