"""Quality classifiers: train -> card -> score, on real text from the demo corpus.

The labelled task is real, if topical: is a passage **encyclopedic prose** (label
``wiki``: paragraphs of Wikipedia articles from the demo dump) or not (label ``docs``:
paragraphs of the docutils documentation, reStructuredText with markup; label
``book``: four-line passages of the novel *Botchan*)? ``positive: wiki`` makes it
binary, wiki vs the rest, as a FineWeb-Edu or DCLM classifier is "good" vs the rest.
Every number below is measured, with fixed seeds; the floors sit well under what
the models reach (see the asserts) so a real regression, not noise, fails them.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from arcforge.classifiers.embedding_model import load_head
from arcforge.classifiers.fasttext_model import check_model_file, fasttext_lines
from arcforge.classifiers.spec import load_train_config
from arcforge.classifiers.stages import FastTextQualityParams, load_fasttext, score_fasttext
from arcforge.classifiers.train import train_classifier
from arcforge.runtime import dataset
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.distribution import read_stats
from arcforge.runtime.documents import DOC_SCHEMA, docs_table
from arcforge.runtime.runner import Runner
from arcforge.runtime.stage import TaskContext

FT_HP = "{dim: 32, bucket: 50000, epoch: 25, lr: 0.5}"  # small data: more epochs, a higher rate than DCLM's


# ------------------------------------------------------------------------------------------ data


def _wiki_paragraphs(root: Path, n: int) -> list[str]:
    from arcforge.pipelines.web.sources import WikiParams, read_wikipedia_dump, split_paragraphs

    out: list[str] = []
    for dump in sorted((root / "wiki").glob("*.bz2")):
        for part in read_wikipedia_dump(str(dump), pafs.LocalFileSystem(), WikiParams(), TaskContext()):
            for text in part.kept.column("text").to_pylist():
                out += [p for p in split_paragraphs(text) if len(p) >= 150][:3]  # a few per article: many topics
            if len(out) >= n:
                return out[:n]
    return out


def _doc_paragraphs(root: Path, n: int) -> list[str]:
    import gzip

    from arcforge.pipelines.web.sources import split_paragraphs

    out: list[str] = []
    with gzip.open(root / "jsonl" / "docutils-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            out += [p for p in split_paragraphs(json.loads(line)["text"]) if len(p) >= 150][:6]
    return out[:n]


def _book_passages(root: Path, n: int) -> list[str]:
    lines = [ln.strip() for ln in (root / "books" / "botchan.txt").read_text(encoding="utf-8-sig").splitlines()]
    body = lines[40:-400]  # past the Gutenberg header, before its licence
    return [p for p in (" ".join(body[i : i + 4]) for i in range(0, len(body) - 4, 4)) if len(p) >= 150][:n]


@pytest.fixture(scope="module")
def passages(demo_corpus: Path) -> dict[str, list[str]]:
    return {"wiki": _wiki_paragraphs(demo_corpus, 300), "docs": _doc_paragraphs(demo_corpus, 150), "book": _book_passages(demo_corpus, 150)}


def _write_labelled(folder: Path, passages: dict[str, list[str]], per_label: dict[str, int]) -> list[Path]:
    """wiki and docs rows as JSONL, book rows as Parquet: both readers are exercised."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = folder / "wiki_docs.jsonl", folder / "book.parquet"
    with jsonl.open("w") as f:
        for label in ("wiki", "docs"):
            for t in passages[label][: per_label[label]]:
                f.write(json.dumps({"text": t, "label": label, "origin": "demo"}) + "\n")
    book = passages["book"][: per_label["book"]]
    pq.write_table(pa.table({"text": book, "label": ["book"] * len(book)}), parquet)
    return [jsonl, parquet]


def _config(path: Path, files: list[Path], output: Path, kind: str, extra: str = "", seed: int = 7, max_chars: int = 1000) -> Path:
    path.write_text(
        f"name: wiki_vs_rest\nkind: {kind}\ndata: {{files: {json.dumps([str(f) for f in files])}, text_key: text, label_key: label}}\n"
        f"positive: wiki\nholdout: 0.25\nseed: {seed}\nmax_chars: {max_chars}\noutput: {output}\n{extra}"
    )
    return path


@pytest.fixture(scope="module")
def ft(tmp_path_factory, passages):
    """A fastText model on 600 passages (300 wiki, 150 docs, 150 book)."""
    root = tmp_path_factory.mktemp("ft")
    files = _write_labelled(root / "data", passages, {"wiki": 300, "docs": 150, "book": 150})
    cfg = _config(root / "ft.yaml", files, root / "model", "fasttext", f"fasttext: {FT_HP}\n")
    plan = load_train_config(cfg)
    return {"root": root, "files": files, "cfg": cfg, "plan": plan, "card": train_classifier(plan)}


@pytest.fixture(scope="module")
def emb(tmp_path_factory, passages):
    """An embedding model on 200 passages (MiniLM on 2 CPU cores: ~15-50 short passages/s)."""
    root = tmp_path_factory.mktemp("emb")
    files = _write_labelled(root / "data", passages, {"wiki": 100, "docs": 50, "book": 50})
    cfg = _config(root / "emb.yaml", files, root / "model", "embedding", "embedding: {device: cpu, batch_size: 32}\n", max_chars=256)
    plan = load_train_config(cfg)
    return {"root": root, "files": files, "plan": plan, "card": train_classifier(plan)}


def _held_out(files: list[Path], seed: int, holdout: float) -> tuple[list[str], np.ndarray]:
    """The held-out texts and labels, recomputed from the files as the trainer splits them."""
    from arcforge.classifiers.data import holdout_mask

    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    rows += pq.read_table(files[1]).to_pylist()
    texts = [r["text"] for r in rows]
    mask = holdout_mask(texts, holdout, seed)
    return [t for t, m in zip(texts, mask) if m], np.array([r["label"] == "wiki" for r, m in zip(rows, mask) if m])


def _batch(texts: list[str]) -> pa.RecordBatch:
    return docs_table([{"id": str(i), "text": t, "source": "t"} for i, t in enumerate(texts)], DOC_SCHEMA).to_batches()[0]


# ------------------------------------------------------------------------------------------ training


def test_fasttext_card_and_metrics(ft):
    card, plan = ft["card"], ft["plan"]
    model_dir = plan.output
    assert card["kind"] == "fasttext" and card["name"] == "wiki_vs_rest"
    assert card["data"]["labels"] == {"book": 150, "docs": 150, "wiki": 300}
    assert card["data"]["classes"] == {"positive": 300, "negative": 300}
    for src in card["data"]["sources"]:  # sha256 of the files' bytes, and a fingerprint over them
        assert src["sha256"] == hashlib.sha256(Path(src["file"]).read_bytes()).hexdigest()
    assert card["data"]["fingerprint"] == "sha256:" + hashlib.sha256("".join(s["sha256"] + "\n" for s in card["data"]["sources"]).encode()).hexdigest()
    assert card["split"]["train"]["examples"] + card["split"]["held_out"]["examples"] == 600
    assert card["model"]["sha256"] == hashlib.sha256((model_dir / "model.bin").read_bytes()).hexdigest()
    assert card["hyperparameters"]["thread"] == 1 and card["hyperparameters"]["wordNgrams"] == 2
    assert card["libraries"]["fasttext-numpy2-wheel"] and card["libraries"]["scikit-learn"]
    assert json.loads((model_dir / "model_card.json").read_text()) == card
    m = card["metrics"]  # measured: ROC AUC 0.980, F1 0.929 on 148 held-out passages
    assert m["roc_auc"] >= 0.93 and m["f1"] >= 0.8 and m["precision"] >= 0.7 and m["recall"] >= 0.8, m
    assert check_model_file(model_dir / "model.bin")["labels"] == 2


def test_fasttext_same_input_and_seed_same_model_via_cli(ft, tmp_path, capsys):
    """thread: 1 makes fastText deterministic: the same bytes, the same metrics. Through the CLI."""
    from arcforge.cli import main

    cfg = _config(tmp_path / "again.yaml", ft["files"], tmp_path / "again", "fasttext", f"fasttext: {FT_HP}\n")
    assert main(["classifiers", "train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "held out: precision" in out and "ROC AUC" in out and "model_card.json" in out
    again = json.loads((tmp_path / "again" / "model_card.json").read_text())
    assert (tmp_path / "again" / "model.bin").read_bytes() == (ft["plan"].output / "model.bin").read_bytes()
    assert again["metrics"] == ft["card"]["metrics"] and again["data"]["fingerprint"] == ft["card"]["data"]["fingerprint"]
    other = _config(tmp_path / "seed.yaml", ft["files"], tmp_path / "seed", "fasttext", f"fasttext: {FT_HP}\n", seed=8)
    card8 = train_classifier(load_train_config(other))
    assert card8["split"]["held_out"] != ft["card"]["split"]["held_out"]  # the seed moves the split
    # the same config and data again: up to date, nothing retrained; a changed model file or --force retrains
    created = again["created"]
    assert main(["classifiers", "train", str(cfg)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert json.loads((tmp_path / "again" / "model_card.json").read_text())["created"] == created
    (tmp_path / "again" / "model.bin").write_bytes(b"damaged")
    assert main(["classifiers", "train", str(cfg)]) == 0
    assert "held out: precision" in capsys.readouterr().out
    assert (tmp_path / "again" / "model.bin").read_bytes() == (ft["plan"].output / "model.bin").read_bytes()
    assert main(["classifiers", "train", str(cfg), "--force"]) == 0 and "held out" in capsys.readouterr().out


def test_embedding_card_and_metrics(emb):
    card = emb["card"]
    assert card["kind"] == "embedding" and card["model"]["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert card["model"]["device"] == "cpu" and card["model"]["converged"]
    assert card["data"]["labels"] == {"book": 50, "docs": 50, "wiki": 100}
    head = load_head(emb["plan"].output / "head.npz")
    assert head.coef.shape == (384,) and head.meta["max_chars"] == 256
    m = card["metrics"]  # measured: ROC AUC 0.999, F1 0.960 on 55 held-out passages
    assert m["roc_auc"] >= 0.95 and m["f1"] >= 0.85, m


# ------------------------------------------------------------------------------------------ scoring


def test_fasttext_stage_reproduces_the_cards_metrics(ft):
    """The stage scores with the card's label, max_chars and text preparation: its scores on
    the held-out texts give the card's ROC AUC exactly."""
    from sklearn.metrics import roc_auc_score

    params = FastTextQualityParams(model=str(ft["plan"].output), name="wiki")
    assert (params.label, params.max_chars, params.lowercase) == ("__label__hq", 1000, False)
    assert params.model_fingerprint == "sha256:" + ft["card"]["model"]["sha256"]
    texts, y = _held_out(ft["files"], 7, 0.25)
    out = score_fasttext(_batch(texts), params, TaskContext(state=load_fasttext(params, {})))
    scores = np.array(out.kept.column("quality_wiki").to_pylist())
    assert out.kept.num_rows == len(texts) and out.rejected is None  # nothing dropped
    assert ((scores >= 0) & (scores <= 1)).all()
    assert round(roc_auc_score(y, scores), 6) == ft["card"]["metrics"]["roc_auc"]
    assert scores[y].mean() > 0.7 > 0.3 > scores[~y].mean()


def test_fasttext_lines_are_single_lines():
    lines = fasttext_lines(pa.array(["Two\nlines\r\n\tand  tabs", "ÉCOLE longue", None]), 9, lowercase=True)
    assert lines == ["two lines", "école lon", ""]
    spaced = fasttext_lines(pa.array(["a\r\n\tb  c"]), 100)[0]
    assert "\n" not in spaced and spaced.split() == ["a", "b", "c"]  # fastText's words: the same as collapsed


def test_a_bare_fasttext_model_needs_its_label(ft, tmp_path):
    """A DCLM-style .bin without a card: the positive label must be given."""
    bare = tmp_path / "dclm_like.bin"
    bare.write_bytes((ft["plan"].output / "model.bin").read_bytes())
    with pytest.raises(ValidationError, match="give `label:`"):
        FastTextQualityParams(model=str(bare), name="q")
    params = FastTextQualityParams(model=str(bare), name="q", label="__label__cc", max_chars=1000)
    state = load_fasttext(params, {})
    texts, y = _held_out(ft["files"], 7, 0.25)
    low = score_fasttext(_batch(texts), params, TaskContext(state=state)).kept.column("quality_q").to_numpy()
    assert low[~y].mean() > low[y].mean()  # the other label's probability
    with pytest.raises(ValidationError, match="the model file changed"):
        FastTextQualityParams(model=str(bare), name="q", label="__label__hq", model_fingerprint="sha256:" + "0" * 64)


RUN = """
name: q
storage: {{root: "{root}"}}
stages:
  - {{name: docs, uses: io.read, engine: local, input: {{files: ["{docs}"]}}}}
  - {{name: ft, uses: quality.fasttext, engine: {engine}, input: docs, params: {{model: "{ft}", name: wiki}}}}
  - {{name: em, uses: quality.embedding, engine: {engine}, input: ft, params: {{model: "{em}", name: wiki_emb, device: cpu}}}}
  - {{name: keep, uses: filter, engine: local, input: em, params: {{rules: [{{column: quality_wiki, op: ">=", value: 0.5}}]}}}}
"""


def test_stages_on_local_and_ray_give_identical_scores(ft, emb, tmp_path, ray_local):
    from sklearn.metrics import roc_auc_score

    texts, y = _held_out(emb["files"], 7, 0.25)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    tables = {}
    for engine in ("local", "ray"):
        cfg = tmp_path / f"{engine}.yaml"
        cfg.write_text(RUN.format(root=tmp_path / engine, docs=docs, engine=engine, ft=ft["plan"].output, em=emb["plan"].output))
        results = Runner(load_plan(cfg)).run()
        assert [r.status for r in results] == ["ran"] * 4
        run = tmp_path / engine / "q"
        tables[engine] = dataset.read_dataset(DatasetRef(str(run / "em")))
        field = tables[engine].schema.field("quality_wiki_emb")
        assert field.type == pa.float32() and field.metadata == {b"arcforge.range": b"0,1"}
        stats = read_stats(DatasetRef(str(run / "em")))["attributes"]
        assert stats["quality_wiki"]["histogram"]["range"] == "declared" and stats["quality_wiki"]["histogram_exact"]
        assert dataset.read_manifest(DatasetRef(str(run / "ft")))["rows"] == len(texts)  # scorers drop nothing
    local, ray = tables["local"], tables["ray"]
    assert local.num_rows == len(texts)
    for col in ("id", "quality_wiki", "quality_wiki_emb"):
        assert local.column(col).to_pylist() == ray.column(col).to_pylist()
    # the stage reads max_chars from the head and scores as training did: the card's ROC AUC, exactly
    assert load_plan(tmp_path / "local.yaml").stages[2].params.max_chars == 256
    by_id = dict(zip(local.column("id").to_pylist(), local.column("quality_wiki_emb").to_pylist()))
    emb_scores = np.array([by_id[f"d{i}"] for i in range(len(texts))])
    assert round(roc_auc_score(y, emb_scores), 6) == emb["card"]["metrics"]["roc_auc"]
    assert emb_scores[y].mean() > 0.7 > 0.3 > emb_scores[~y].mean()


# ------------------------------------------------------------------------------------------ config errors


def _run_config(tmp_path: Path, uses: str, model: str) -> Path:
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"id": "a", "text": "A paragraph about the history of anarchism in Europe."}) + "\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f'name: q\nstorage: {{root: "{tmp_path / "runs"}"}}\nstages:\n'
        f'  - {{name: docs, uses: io.read, input: {{files: ["{docs}"]}}}}\n'
        f'  - {{name: score, uses: {uses}, input: docs, params: {{model: "{model}", name: x}}}}\n'
    )
    return cfg


def _plan_error(cfg: Path, key: str = "model") -> str:
    with pytest.raises(ConfigError) as info:
        load_plan(cfg)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{cfg}: stages[score].params.{key}: "), msg
    return msg


def test_missing_model_is_one_config_line_from_arcforge_run(tmp_path):
    cfg = _run_config(tmp_path, "quality.fasttext", str(tmp_path / "nowhere"))
    assert "no such model file or directory" in _plan_error(cfg)
    out = subprocess.run([sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{cfg}: stages[score].params.model: "), out.stderr
    assert not (tmp_path / "runs" / "q" / "score").exists()  # nothing started


def test_missing_embedding_head_in_a_directory(tmp_path):
    (tmp_path / "empty_model").mkdir()
    assert "has no head.npz" in _plan_error(_run_config(tmp_path, "quality.embedding", str(tmp_path / "empty_model")))


@pytest.mark.parametrize("kind", ["random", "truncated", "embedding_random", "wrong_kind"])
def test_corrupt_model_is_a_config_error(kind, ft, emb, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    rnd = random.Random(5).randbytes(4096)
    if kind == "random":
        (model_dir / "model.bin").write_bytes(rnd)
        uses, expected = "quality.fasttext", "is not a fastText .bin model"
    elif kind == "truncated":  # fastText itself would load this and predict garbage
        data = (ft["plan"].output / "model.bin").read_bytes()
        (model_dir / "model.bin").write_bytes(data[: len(data) - 1000])
        uses, expected = "quality.fasttext", "truncated or damaged"
    elif kind == "embedding_random":
        (model_dir / "head.npz").write_bytes(rnd)
        uses, expected = "quality.embedding", "is not an embedding head .npz"
    else:  # an embedding model's directory (its card names head.npz) with a stray fastText file
        for name in ("head.npz", "model_card.json"):
            (model_dir / name).write_bytes((emb["plan"].output / name).read_bytes())
        (model_dir / "model.bin").write_bytes((ft["plan"].output / "model.bin").read_bytes())
        uses, expected = "quality.fasttext", "no model card beside"
    key = "label" if kind == "wrong_kind" else "model"  # the fix is to name the positive label
    assert expected in _plan_error(_run_config(tmp_path, uses, str(model_dir)), key)
    if kind == "wrong_kind":
        assert "is not a fastText .bin model" in _plan_error(_run_config(tmp_path, uses, str(model_dir / "head.npz")))


def test_a_quality_step_of_a_fused_chain_plans_its_column_and_reports_bad_params_on_its_key(ft, tmp_path):
    """A chain step's column comes from its params; a bad step param is one line with the file and key."""
    cfg = _run_config(tmp_path, "quality.fasttext", str(ft["plan"].output))
    text = cfg.read_text().replace("{name: score, uses: quality.fasttext, input: docs, params:", "{name: score, input: docs, steps: [{uses: text.stats}, {uses: quality.fasttext, params:")
    cfg.write_text(text.replace("name: x}}", "name: x}}]}"))
    planned = load_plan(cfg).stages[1].schema
    assert planned.names[-1] == "quality_x" and "n_words" in planned.names
    cfg.write_text(cfg.read_text().replace(str(ft["plan"].output), str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError) as info:
        load_plan(cfg)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{cfg}: stages[score].steps[quality.fasttext].params.model: "), msg
    assert "no such model file or directory" in msg


# ------------------------------------------------------------------------------------------ languages


def test_languages_scores_only_the_listed_languages(ft):
    """languages: [en] scores the English rows exactly as scoring every row would; the rest get null."""
    texts, _ = _held_out(ft["files"], 7, 0.25)
    texts = texts[:40]
    langs = ["en", "de", None, "zh"] * 10
    batch = _batch(texts)
    batch = batch.set_column(batch.schema.get_field_index("language"), "language", pa.array(langs, pa.string()))
    every = FastTextQualityParams(model=str(ft["plan"].output), name="q")
    only_en = FastTextQualityParams(model=str(ft["plan"].output), name="q", languages=["en"])
    state = load_fasttext(every, {})
    all_scores = score_fasttext(batch, every, TaskContext(state=state)).kept.column("quality_q").to_pylist()
    ctx = TaskContext(state=state)
    out = score_fasttext(batch, only_en, ctx).kept
    scores = out.column("quality_q").to_pylist()
    assert out.num_rows == 40 and out.schema.field("quality_q").type == pa.float32()
    assert [s for s, lang in zip(scores, langs) if lang == "en"] == [s for s, lang in zip(all_scores, langs) if lang == "en"]
    assert all(s is None for s, lang in zip(scores, langs) if lang != "en") and None not in all_scores
    assert ctx.stats.as_dict() == {"quality_q.not_in_languages": 30}
    none = score_fasttext(batch.slice(1, 2), only_en, TaskContext(state=state)).kept  # no English row: nothing to score
    assert none.column("quality_q").null_count == 2
    both = FastTextQualityParams(model=str(ft["plan"].output), name="q", languages=["de", "en"])
    assert score_fasttext(batch, both, TaskContext(state=state)).kept.column("quality_q").null_count == 20
    with pytest.raises(ValidationError, match="languages"):
        FastTextQualityParams(model=str(ft["plan"].output), name="q", languages=[])


def test_languages_needs_a_language_column_upstream(ft, tmp_path):
    """An external dataset without `language`: a config error naming the column, before any engine."""
    pq.write_table(pa.table({"id": ["a"], "text": ["A paragraph about the history of anarchism in Europe."]}), tmp_path / "ext.parquet")
    cfg = tmp_path / "config.yaml"
    stage = f'{{name: score, uses: quality.fasttext, input: {{dataset: "{tmp_path / "ext.parquet"}"}}, params: {{model: "{ft["plan"].output}", name: x'
    cfg.write_text(f'name: q\nstorage: {{root: "{tmp_path / "runs"}"}}\nstages:\n  - {stage}, languages: [en]}}}}\n')
    with pytest.raises(ConfigError) as info:
        load_plan(cfg)
    assert str(info.value).startswith(f"{cfg}: stages[score]: quality.fasttext reads column(s) ['language'], which no upstream stage declares")
    cfg.write_text(cfg.read_text().replace(", languages: [en]", ""))
    assert load_plan(cfg).stages[0].schema.names == ["id", "text", "quality_x"]  # without languages, no language needed


BUCKETS_RUN = """
name: b
storage: {{root: "{root}"}}
stages:
  - {{name: docs, uses: io.read, input: {{files: ["{docs}"]}}}}
  - {{name: ft, uses: quality.fasttext, engine: local, input: docs, params: {{model: "{ft}", name: en, languages: [en]}}}}
  - {{name: buckets, uses: quality.buckets, engine: local, input: ft, params: {{scores: [quality_en], n_buckets: 4, weight: docs}}}}
"""


def test_unscored_languages_stay_out_of_the_bucket_percentiles(ft, tmp_path):
    """The cut-offs over a mixed corpus scored with languages: [en] are those of its English
    documents alone; the other documents are bucket 0 (the ensemble max ignores them)."""
    texts, _ = _held_out(ft["files"], 7, 0.25)
    rows = [{"id": f"d{i}", "text": t, "language": "en" if i % 3 else "fr"} for i, t in enumerate(texts)]
    cutoffs = {}
    for name, subset in (("mixed", rows), ("english", [r for r in rows if r["language"] == "en"])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in subset))
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(BUCKETS_RUN.format(root=tmp_path / name, docs=tmp_path / f"{name}.jsonl", ft=ft["plan"].output))
        Runner(load_plan(cfg)).run()
        out = tmp_path / name / "b" / "buckets"
        cutoffs[name] = json.loads(next(out.rglob("buckets.json")).read_text())["cutoffs"]
        table = dataset.read_dataset(DatasetRef(str(out)))
        by_lang = {}
        for r in table.to_pylist():
            by_lang.setdefault(r["language"], []).append((r["quality_en"], r["bucket"]))
        assert all(s is not None for s, _ in by_lang["en"]) and len({b for _, b in by_lang["en"]}) == 4
        assert all(s is None and b == 0 for s, b in by_lang.get("fr", []))
    assert len(cutoffs["mixed"]["quality_en"]) == 3 and cutoffs["mixed"] == cutoffs["english"]


def _train_error(tmp_path: Path, text: str) -> str:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        train_classifier(load_train_config(cfg))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{cfg}: ")
    return msg.removeprefix(f"{cfg}: ")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("kind: fasttext", "kind: bert"), "kind: Input should be 'fasttext' or 'embedding' (got 'bert')"),
        (lambda t: t.replace("wiki_docs.jsonl", "missing.jsonl"), "data.files: no file matches '"),
        (lambda t: t.replace("label_key: label", "label_key: quality"), "data.label_key: 'quality' is not a column of wiki_docs.jsonl; its columns are: text, label, origin"),
        (lambda t: t.replace("positive: wiki", "positive: news"), "positive: 'news' is not a label of the data"),
        (lambda t: t.replace("holdout: 0.25", "holdout: 1.5"), "holdout: Input should be less than 1"),
        (lambda t: t + "embedding: {C: 2}\n", "embedding: hyperparameters for kind embedding, but kind is fasttext"),
        (lambda t: t + "fasttext: {dim: 0}\n", "fasttext.dim: Input should be greater than or equal to 1"),
        (lambda t: t + "colour: red\n", "colour: unknown key"),
    ],
)
def test_train_config_errors(ft, tmp_path, edit, expected):
    text = _config(tmp_path / "base.yaml", ft["files"], tmp_path / "out", "fasttext").read_text()
    assert expected in _train_error(tmp_path, edit(text))
