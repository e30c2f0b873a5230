"""The proxy trainer on real megatron-core and real shards: learning, logs, plot, checkpoints
and exact resume, Muon and AdamW, loss-free balancing, schedules, one-line config errors.

Data: the demo corpus's Gutenberg book (*Botchan*) and a raw (unfiltered) slice of its
Wikipedia XML dump, encoded with a sentencepiece BPE trained here on that text (arcforge's
special-id layout: eod 2, pad 3), written with megatron-core's ``IndexedDatasetBuilder``.
"""

from __future__ import annotations

import bz2
import copy
import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from arcforge.model.train import load_train_config, parse_train_config, step_batch_sizes, train
from arcforge.model.trainlog import COLUMNS, read_csv
from arcforge.runtime.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
# megatron-core 0.16.1 warns about its own deprecations thousands of times per run
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
VOCAB = 1024
SEQ = 64


# ---- data -------------------------------------------------------------------------------


def botchan_docs(corpus: Path) -> list[str]:
    text = (corpus / "books" / "botchan.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    lines = text.splitlines()
    return ["\n".join(lines[i : i + 8]) for i in range(0, len(lines), 8)]


def wiki_docs(corpus: Path, chars: int = 300_000) -> list[str]:
    (dump,) = (corpus / "wiki").glob("*.bz2")
    with bz2.open(dump, "rt", encoding="utf-8") as f:
        raw = f.read(chars)
    return [raw[i : i + 1500] for i in range(0, len(raw), 1500)]


def write_shard(prefix: Path, docs: list[list[int]], eod: int = 2) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for ids in docs:
        arr = np.asarray(list(ids) + [eod], dtype=np.uint16)
        builder.add_document(arr, [len(arr)])
    builder.finalize(str(prefix) + ".idx")
    return str(prefix)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, demo_corpus) -> dict[str, str]:
    """Tokenizer (model + arcforge tokenizer.json) and shards: books, wiki (raw XML), random ids."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("train-data")
    books, wiki = botchan_docs(demo_corpus), wiki_docs(demo_corpus)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(books + wiki), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        num_threads=2, minloglevel=2, max_sentence_length=20000,
    )
    (d / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    assert sp.get_piece_size() == VOCAB and sp.eos_id() == 2 and sp.pad_id() == 3
    (d / "tokenizer.json").write_text(json.dumps({"vocab_size": VOCAB, "eod_id": 2, "pad_id": 3}))
    rng = np.random.default_rng(0)
    rand = [rng.integers(32, VOCAB, size=int(rng.integers(30, 300))).tolist() for _ in range(300)]
    return {
        "dir": str(d),
        "tokenizer": str(d),
        "books": write_shard(d / "books", sp.encode(books)),
        "wiki": write_shard(d / "wiki", sp.encode(wiki)),
        "random": write_shard(d / "random", rand),
    }


def config(corpus: dict[str, str], out: Path, **changes) -> dict:
    """A small proxy-tiny run on the book: seq 64, micro-batch 4, warm-up 4 -> 8 sequences."""
    cfg = {
        "name": "t",
        "output_dir": str(out),
        "seed": 7,
        "threads": 1,  # 2 intra-op threads on 2 cores that other processes share stall badly
        "model": {"preset": "proxy-tiny", "overrides": {"vocab_size": VOCAB}, "seq_length": SEQ},
        "data": {"blend": [[corpus["books"], 1.0]], "split": "90,10,0", "tokenizer": corpus["tokenizer"]},
        "batch": {"micro_batch_size": 4, "global_batch_size": 8, "warmup_start": 4, "warmup_tokens": 1024},
        "train": {"iters": 14},
        "optimizer": {"name": "adamw", "lr": 3e-3, "min_lr": 3e-4, "warmup_iters": 2},
        "eval": {"interval": 5, "iters": 4},
        "checkpoint": {"interval": 0},
        "log": {"print_interval": 0},
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def train_rows(csv_path) -> list[dict]:
    return [r for r in read_csv(csv_path) if r["kind"] == "train"]


def eval_rows(csv_path) -> list[dict]:
    return [r for r in read_csv(csv_path) if r["kind"] == "eval"]


def expert_biases(state: dict) -> dict[str, np.ndarray]:
    return {k.removesuffix(".expert_bias"): v.numpy().copy() for k, v in state.items() if k.endswith("router.expert_bias")}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---- training ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def book_run(corpus, tmp_path_factory):
    """AdamW on the book, 14 steps; MTP weight and bias-update rate switch part-way."""
    out = tmp_path_factory.mktemp("book-run")
    cfg = parse_train_config(config(corpus, out, **{"mtp.switch_tokens": 3072, "balance.bias_update_until_tokens": 5120}))
    return cfg, train(cfg, resume=False)


def test_loss_decreases_and_eval_loss_is_logged(book_run):
    cfg, result = book_run
    rows = train_rows(result.csv)
    assert [r["step"] for r in rows] == list(range(1, 15))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert first > 6.5  # ~ln(1024) = 6.93 at initialisation
    assert last < first - 0.6, (first, last)
    evals = eval_rows(result.csv)
    assert [e["step"] for e in evals] == [5, 10, 14]  # every 5 steps and at the end
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.1
    assert all(e["eval_tokens"] == 4 * 4 * SEQ for e in evals)  # held-out share of the book, same samples
    assert result.final_eval_loss == evals[-1]["eval_loss"] and result.steps == 14


def test_csv_columns_numeric_and_batch_warmup(book_run):
    cfg, result = book_run
    with open(result.csv) as f:
        assert f.readline().strip().split(",") == COLUMNS
    rows = train_rows(result.csv)
    numeric = [c for c in COLUMNS if c not in ("kind", "eval_loss", "eval_tokens")]
    for r in rows:
        for c in numeric:
            assert isinstance(r[c], int | float) and math.isfinite(r[c]), (c, r[c])
        assert r["tokens"] == r["samples"] * SEQ and r["micro_batches"] * 4 == r["batch_size"]
    # the batch ramps from 4 to 8 sequences over the first 1024 tokens, by gradient accumulation
    sizes = [r["batch_size"] for r in rows]
    assert sizes == step_batch_sizes(cfg) and sizes[0] == 4 and sizes[-1] == 8 and sorted(sizes) == sizes
    # cosine LR: linear warm-up over 2 steps, then decaying towards min_lr
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == pytest.approx(3e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 3e-4
    # schedules by tokens seen before the step: MTP weight 0.3 -> 0.1 at 3072, bias rate -> 0 at 5120
    for r in rows:
        before = r["tokens"] - r["batch_size"] * SEQ
        assert r["mtp_weight"] == (0.3 if before < 3072 else 0.1)
        assert r["bias_update_rate"] == (1e-3 if before < 5120 else 0.0)
    assert rows[0]["mtp_loss"] > 6 and all(r["aux_loss"] > 0 for r in rows)
    assert all(1.0 <= r["balance_max_mean"] <= 4.0 for r in rows)  # 8 experts, top-2: at most 8/2


def test_plot_is_a_real_png(book_run):
    _, result = book_run
    png = Path(result.plot)
    w, h = png_size(png)
    assert w > 600 and h > 400 and png.stat().st_size > 20_000


def test_router_counts_drive_the_expert_bias(book_run):
    """Replaying the logged per-expert counts through the loss-free rule reproduces the
    checkpoint's expert biases: counts are right and the update ran after every step."""
    from arcforge.model.checkpoint import load_checkpoint

    cfg, result = book_run
    state, arch, extra = load_checkpoint(result.checkpoint)
    assert extra["step"] == 14 and extra["consumed_samples"] == sum(step_batch_sizes(cfg))
    biases = expert_biases(state)
    assert len(biases) == arch.num_moe_layers + arch.mtp_layers  # 3 decoder MoE layers + the MTP layer
    lines = [json.loads(x) for x in Path(result.output_dir, "router_load.jsonl").read_text().splitlines()]
    rows = train_rows(result.csv)
    assert [x["step"] for x in lines] == list(range(1, 15))
    import torch

    replay = {name: torch.zeros(arch.num_experts) for name in biases}
    for line, row in zip(lines, rows):
        assert set(line["layers"]) == set(biases)
        for name, counts in line["layers"].items():
            c = torch.tensor(counts, dtype=torch.float32)
            assert c.sum() == row["batch_size"] * SEQ * arch.moe_top_k  # every token routed to top-k experts
            replay[name] += torch.sign(c.sum() / c.numel() - c) * row["bias_update_rate"]
    for name, b in biases.items():
        assert np.abs(b).max() > 0, "expert bias never changed"
        np.testing.assert_allclose(b, replay[name].numpy(), rtol=0, atol=1e-6)
    # rate 0 after 5120 tokens: the last steps do not move the bias
    assert rows[-1]["bias_update_rate"] == 0.0


def test_resume_continues_the_straight_run_exactly(corpus, tmp_path, book_run):
    """4 steps, then a fresh process resumes from the checkpoint for the other 10: the same
    losses, eval losses and final weights as the uninterrupted run."""
    from arcforge.model.checkpoint import load_checkpoint

    straight_cfg, straight = book_run
    d = config(corpus, tmp_path / "split", **{"mtp.switch_tokens": 3072, "balance.bias_update_until_tokens": 5120})
    cfg_path = tmp_path / "split.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    first = train(load_train_config(cfg_path), resume=False, max_steps=4)
    assert first.steps == 4 and Path(first.checkpoint).name == "step_0000004.pt"
    proc = subprocess.run([sys.executable, "-m", "arcforge.cli", "train", str(cfg_path), "--resume", "-q"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 14" in proc.stdout
    a, b = train_rows(straight.csv), train_rows(tmp_path / "split" / "train_log.csv")
    assert [r["step"] for r in b] == list(range(1, 15))
    for col in ("loss", "mtp_loss", "aux_loss", "grad_norm", "lr", "batch_size", "balance_cv"):
        np.testing.assert_allclose([r[col] for r in b], [r[col] for r in a], rtol=1e-5, atol=1e-6, err_msg=col)
    ea, eb = eval_rows(straight.csv), eval_rows(tmp_path / "split" / "train_log.csv")
    assert [e["step"] for e in eb] == [5, 10, 14]
    np.testing.assert_allclose([e["eval_loss"] for e in eb], [e["eval_loss"] for e in ea], rtol=1e-5)
    sa, _, _ = load_checkpoint(straight.checkpoint)
    sb, _, xb = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_0000014.pt")
    assert xb["step"] == 14
    for k in sa:
        np.testing.assert_allclose(sb[k].numpy(), sa[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_muon_trains(corpus, tmp_path):
    cfg = parse_train_config(config(corpus, tmp_path, **{
        "optimizer.name": "muon", "optimizer.lr": 0.02, "optimizer.min_lr": 2e-3,
        "train.iters": 10, "eval.interval": 0, "batch.warmup_start": None,
    }))
    result = train(cfg, resume=False)
    rows = train_rows(result.csv)
    assert len(rows) == 10 and rows[-1]["loss"] < rows[0]["loss"] - 0.6, [r["loss"] for r in rows]
    assert eval_rows(result.csv)[-1]["step"] == 10  # eval at the end even with interval 0
    from arcforge.model.checkpoint import load_checkpoint

    _, _, extra = load_checkpoint(result.checkpoint)
    assert len(extra["optimizer"]["optimizers"]) == 2  # Muon for matrices + AdamW for the rest


def test_random_token_shards_without_tokenizer(corpus, tmp_path):
    """Mechanics on shards without a tokenizer: ids checked against the vocabulary, several
    prefixes blended by weight, checkpoints every 3 steps keeping the last 2, a separate
    validation blend, and a rerun of a finished run does nothing."""
    cfg = parse_train_config(config(corpus, tmp_path, **{
        "data": {"blend": [[corpus["random"], 0.5], [corpus["books"], 0.5]]},
        "eval.data": {"blend": [corpus["wiki"]], "split": "0,1,0"},
        "train.iters": 7, "eval.interval": 3, "checkpoint.interval": 3, "checkpoint.keep": 2,
        "batch.warmup_start": None,
    }))
    result = train(cfg, resume=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000006.pt", "step_0000007.pt"]
    assert [e["step"] for e in eval_rows(result.csv)] == [3, 6, 7]
    again = train(cfg, resume=True)
    assert again.resumed_from == 7 and again.steps == 7
    assert len(train_rows(again.csv)) == 7 and len(eval_rows(again.csv)) == 3


@pytest.mark.timeout(120)
def test_shards_without_documents_in_a_split_share(corpus, tmp_path):
    """A one-document shard has no document in a 10% valid share: megatron-core would count
    epochs of zero tokens forever. In the validation blend it is left out; in the training
    blend (where the whole budget is drawn by weight) it is a one-line error."""
    one = write_shard(tmp_path / "one-doc", [list(range(40, 400))])
    cfg = parse_train_config(config(corpus, tmp_path / "a", **{
        "data": {"blend": [[corpus["books"], 1.0]], "split": "90,10,0"},
        "eval.data": {"blend": [[corpus["books"], 0.5], [one, 0.5]], "split": "90,10,0"},
        "train.iters": 2, "eval.interval": 0, "batch.warmup_start": None,
    }))
    result = train(cfg, resume=False)
    assert [e["step"] for e in eval_rows(result.csv)] == [2]
    cfg = parse_train_config(config(corpus, tmp_path / "b", **{
        "data": {"blend": [[corpus["books"], 0.5], [one, 0.5]], "split": "10,90,0"},
        "train.iters": 2, "eval.interval": 0, "batch.warmup_start": None,
    }))
    with pytest.raises(ConfigError) as info:
        train(cfg, resume=False)
    assert "data: shard" in str(info.value) and "no documents in the train share" in str(info.value)


# ---- configuration errors ---------------------------------------------------------------


def _error(corpus, tmp_path, d: dict) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as info:
        load_train_config(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{p}: "), msg
    return msg


def test_config_errors_are_one_line(corpus, tmp_path):
    base = config(corpus, tmp_path / "out")
    cases = []
    d = copy.deepcopy(base)
    d["optimizer"]["lr_max"] = 1.0
    cases.append((d, "optimizer.lr_max: unknown key"))
    d = copy.deepcopy(base)
    del d["model"]["seq_length"]
    cases.append((d, "model.seq_length: required key is missing"))
    d = copy.deepcopy(base)
    d["batch"]["global_batch_size"] = 6
    cases.append((d, "batch: "))
    d = copy.deepcopy(base)
    d["data"]["blend_file"] = "x.json"
    cases.append((d, "data: "))
    d = copy.deepcopy(base)
    d["data"]["blend"] = [[corpus["dir"] + "/nope", 1.0]]
    cases.append((d, "data.blend: " + corpus["dir"] + "/nope: no Megatron shard"))
    d = copy.deepcopy(base)
    d["model"]["overrides"]["vocab_size"] = 2048
    cases.append((d, "model.overrides.vocab_size: the model has 2048 token ids, the tokenizer"))
    d = copy.deepcopy(base)
    del d["data"]["tokenizer"]
    d["model"]["overrides"]["vocab_size"] = 512
    cases.append((d, "model.overrides.vocab_size: shard " + corpus["books"] + " holds token id"))
    d = copy.deepcopy(base)
    d["model"]["overrides"]["hidden"] = 64
    cases.append((d, "model.overrides.hidden: unknown architecture field"))
    d = copy.deepcopy(base)
    d["parallel"] = {"tp": 2}
    cases.append((d, "parallel.tp: the CPU path runs one process"))
    d = copy.deepcopy(base)
    d["train"] = {"iters": 5, "tokens": "1M"}
    cases.append((d, "train: "))
    d = copy.deepcopy(base)
    d["train"] = {"tokens": "lots"}
    cases.append((d, "train.tokens: "))
    for d, expected in cases:
        msg = _error(corpus, tmp_path, d)
        assert expected in msg, (expected, msg)


def test_cli_reports_config_errors_in_one_line(corpus, tmp_path, capsys):
    from arcforge.cli import main

    d = config(corpus, tmp_path / "out")
    d["optimizer"]["name"] = "sgd"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"{p}: optimizer.name: "), err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_token_budget_sets_the_steps(corpus, tmp_path):
    cfg = parse_train_config(config(corpus, tmp_path, **{"train": {"tokens": "5K"}}))
    sizes = step_batch_sizes(cfg)
    tokens = [sum(sizes[: i + 1]) * SEQ for i in range(len(sizes))]
    assert tokens[-1] >= 5000 > tokens[-2]
    assert sizes[0] == 4 and sizes[-1] == 8 and sorted(sizes) == sizes


def test_shipped_configs_parse():
    cfg = load_train_config(REPO / "configs" / "train.tiny.yaml", check_data=False)
    assert cfg.model.preset == "proxy-tiny" and cfg.device == "cpu"
    assert 12 <= len(step_batch_sizes(cfg)) <= 100
    from arcforge.model.ablate import AblateConfig
    from arcforge.runtime.config import read_yaml as _read_yaml

    ab = AblateConfig(**_read_yaml(str(REPO / "configs" / "ablate.tiny.yaml")))
    assert len(ab.runs) >= 2 and "data" in ab.eval
