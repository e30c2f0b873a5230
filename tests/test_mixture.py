"""Mixtures: budgets, weights and epochs over real shards -> Megatron blends; one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
from test_shards import gloo  # noqa: F401 - a fixture: torch.distributed on gloo, world size 1
from test_tokenizer import shared_run

from arcforge.cli import main
from arcforge.runtime.config import ConfigError
from arcforge.runtime.dataset import DatasetRef, read_dataset
from arcforge.tokenize.mixture import load_blend, load_mixture, parse_tokens, write_mixture
from arcforge.tokenize.spm import Tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, demo_corpus):
    _, run, _ = shared_run(tmp_path_factory, demo_corpus, ["shards", "shards_packed"])
    rows = read_dataset(DatasetRef(str(run / "shards"))).to_pylist()
    tokens = Counter()
    for r in rows:
        tokens[r["group"]] += r["tokens"]
    return run, rows, tokens


def mixture_yaml(run: Path, out: Path, sources: str, *, tokens: str = "1.5M", extra: str = "", cap: float = 4) -> str:
    return f"""
name: m
shards: {run / "shards"}
output: {out}
max_epochs: {cap}
stages:
  - name: s1
    seq_length: 1024
    tokens: {tokens}
    sources:
{sources}
{extra}"""


GOOD = """      - {source: web, epochs: 3.2}
      - {source: wikipedia, bucket: high, weight: 3}
      - {source: wikipedia, bucket: low, weight: 1}
      - {source: code, epochs: 2}
      - {source: books, weight: 1}"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mix.yaml"
    p.write_text(text)
    return p


def test_parse_tokens():
    assert parse_tokens(4096) == 4096
    assert parse_tokens("2.5M") == 2_500_000
    assert parse_tokens("500B") == 500 * 10**9
    assert parse_tokens("15T") == 15 * 10**12
    assert parse_tokens("1_000k") == 1_000_000
    for bad in ("lots", "-3", 0, True):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_per_split_files_take_held_out_shards_for_valid_and_test(shards, tmp_path):
    """``valid:`` names a shards stage that no stage trains on: every stage's per-split.json
    validates (and, without ``test:``, tests) on all of its shards, weighted by tokens; a
    stage that training draws from is refused in one line."""
    run, _, _ = shards
    held = read_dataset(DatasetRef(str(run / "shards_packed"))).to_pylist()
    text = mixture_yaml(run, tmp_path / "out", GOOD) + f"valid: {run / 'shards_packed'}\n"
    plan = load_mixture(_write(tmp_path, text))
    write_mixture(plan)
    per_split = json.loads((tmp_path / "out" / "s1.per-split.json").read_text())
    blend = json.loads((tmp_path / "out" / "s1.blend.json").read_text())
    assert per_split["train"] == blend["data_path"] and per_split["test"] == per_split["valid"]
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(per_split["valid"])
    want = {str(run / "shards_packed" / r["prefix"]): r["tokens"] for r in held if r["tokens"]}
    assert sorted(prefixes) == sorted(want) and not set(prefixes) & set(blend["blend"][0])
    total = sum(want.values())
    assert weights == pytest.approx([want[p] / total for p in prefixes])
    summary = json.loads((tmp_path / "out" / "mixture.json").read_text())["held_out"]
    assert summary["valid"] == {"shards": [str(run / "shards_packed")], "tokens": total,
                                "documents": sum(r["documents"] for r in held if r["tokens"])}
    assert f"valid (per-split.json): {total:,} tokens" in (tmp_path / "out" / "mixture.md").read_text()
    with pytest.raises(ConfigError) as err:
        load_mixture(_write(tmp_path, mixture_yaml(run, tmp_path / "out", GOOD) + f"test: [{run / 'shards'}]\n"))
    assert str(err.value) == (f"{tmp_path / 'mix.yaml'}: test[0]: {run / 'shards'} is a shards stage that training draws "
                              "from; held-out shards must be another tokenize.megatron_shards stage")


def test_budget_is_allotted_by_epochs_then_weights(shards, tmp_path):
    run, rows, tok = shards
    plan = load_mixture(_write(tmp_path, mixture_yaml(run, tmp_path / "out", GOOD)))
    (st,) = plan.stages
    assert st.tokens == 1_500_000 and st.train_samples == math.ceil(1_500_000 / 1024)
    by = {(a.source, a.bucket): a for a in st.allocations}
    fixed = 3.2 * tok["web"] + 2 * tok["code"]
    rest = 1_500_000 - fixed
    expect = {
        ("web", None): 3.2 * tok["web"],
        ("code", None): 2 * tok["code"],
        ("wikipedia", "high"): rest * 3 / 5,
        ("wikipedia", "low"): rest / 5,
        ("books", None): rest / 5,
    }
    for key, tokens in expect.items():
        a = by[key]
        group = key[0] + (f"__{key[1]}" if key[1] else "")
        assert a.available == tok[group]
        assert abs(a.tokens - tokens) <= 1
        assert a.epochs == pytest.approx(tokens / tok[group])
        assert a.share == pytest.approx(tokens / 1_500_000)
    assert by[("web", None)].epochs == pytest.approx(3.2)
    assert sum(a.share for a in st.allocations) == pytest.approx(1.0)
    prefixes, weights = st.blend
    assert sum(weights) == pytest.approx(1.0)
    # within a source, each partition's shard is weighted by its tokens
    shard_tokens = {str(run / "shards" / r["prefix"]): r["tokens"] for r in rows}
    for p, w in zip(prefixes, weights):
        group = Path(p).parent.name
        src = next(a for a in st.allocations if any(g.group == group for g in a.groups))
        assert w == pytest.approx(src.share * shard_tokens[p] / src.available, rel=1e-6)
    # the --data-path list is what megatron-core parses back into the same blend
    from megatron.core.datasets.utils import get_blend_from_list

    parsed_prefixes, parsed_weights = get_blend_from_list(st.data_path)
    assert parsed_prefixes == prefixes
    assert parsed_weights == pytest.approx(weights, rel=1e-8)


def test_writes_blends_tables_and_cumulative_epochs(shards, tmp_path):
    run, _, tok = shards
    two_stages = mixture_yaml(
        run, tmp_path / "out", GOOD,
        extra=f"""  - name: mid
    shards: {run / "shards_packed"}
    seq_length: 2048
    sources:
      - {{source: books, epochs: 2.5}}
      - {{source: web, epochs: 0.5}}""",
    )
    plan = load_mixture(_write(tmp_path, two_stages))
    written = write_mixture(plan)
    names = sorted(Path(p).name for p in written)
    assert names == ["mid.blend.json", "mid.per-split.json", "mixture.json", "mixture.md", "s1.blend.json", "s1.per-split.json"]
    blend = json.loads((tmp_path / "out" / "s1.blend.json").read_text())
    assert blend["tokens"] == 1_500_000 and blend["seq_length"] == 1024 and blend["split"] == "99,1,0"
    assert load_blend(str(tmp_path / "out" / "s1.blend.json")) == (blend["blend"][0], blend["blend"][1])
    assert all(Path(p + ".bin").exists() and Path(p + ".idx").exists() for p in blend["blend"][0])
    per_split = json.loads((tmp_path / "out" / "s1.per-split.json").read_text())
    assert per_split == {"train": blend["data_path"], "valid": blend["data_path"], "test": blend["data_path"]}  # none held out
    mid = json.loads((tmp_path / "out" / "mid.blend.json").read_text())
    assert all("/shards_packed/" in p for p in mid["blend"][0])
    # a budget left out is what the epoch targets add up to
    assert mid["tokens"] == pytest.approx(2.5 * plan.stages[1].allocations[0].available + 0.5 * plan.stages[1].allocations[1].available, abs=1)
    totals = {(r["source"], r["bucket"]): r for r in json.loads((tmp_path / "out" / "mixture.json").read_text())["totals"]}
    assert totals[("web", None)]["epochs"] == pytest.approx(3.7, abs=1e-3)
    assert totals[("web", None)]["by_stage"] == {"s1": 3.2, "mid": 0.5}
    md = (tmp_path / "out" / "mixture.md").read_text()
    assert "| web | - | 3.2 epochs |" in md and "## all stages" in md


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_mixture(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    return msg.removeprefix(f"{path}: ")


def test_epoch_cap_and_budget_errors_are_one_line(shards, tmp_path):
    run, _, tok = shards
    out = tmp_path / "out"
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: web, epochs: 5}\n      - {source: books, weight: 1}"))
    assert msg.startswith("stages[s1].sources[0]: web would be repeated 5.00 epochs (")
    assert msg.endswith("over the cap max_epochs=4")
    # a weight can break the cap too: almost the whole budget on the smallest source
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: zh, weight: 1}\n      - {source: books, weight: 1}"))
    assert msg.startswith("stages[s1].sources[0]: zh would be repeated ") and "max_epochs=4" in msg
    # the stage's own cap overrides the mixture's
    text = mixture_yaml(run, out, "      - {source: web, epochs: 3.2}\n      - {source: books, weight: 1}", cap=10).replace("    seq_length: 1024", "    seq_length: 1024\n    max_epochs: 3")
    assert _error(tmp_path, text).endswith("over the cap max_epochs=3")
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: wikipedia, epochs: 1.5}\n      - {source: books, weight: 1}", tokens="100K"))
    assert msg.startswith("stages[s1].tokens: the epoch targets alone need ") and "over the budget of 100K" in msg
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: web, epochs: 1}", tokens="10M"))
    assert msg.startswith("stages[s1].tokens: the epoch targets add up to ")
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: web, weight: 1, epochs: 2}"))
    assert msg.startswith("stages[s1].sources[0]: Value error, give exactly one of weight or epochs")
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: web, wieght: 1}"))
    assert msg == "stages[s1].sources[0].wieght: unknown key"
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: web, weight: 1}", tokens="many"))
    assert msg.startswith("stages[s1].tokens: Value error, expected a token count")
    assert tok["web"] > 0


def test_max_total_epochs_caps_a_source_over_all_stages(shards, tmp_path):
    """Each stage keeps web within its own cap (3 epochs each); summed over both stages it is
    6 epochs, over a mixture-wide cap of 5, and the error names both stages' shares."""
    run, _, _ = shards
    out = tmp_path / "out"
    second = """  - name: s2
    seq_length: 1024
    sources:
      - {source: web, epochs: 3}
      - {source: books, epochs: 1}"""
    text = mixture_yaml(run, out, "      - {source: web, epochs: 3}\n      - {source: books, epochs: 1}", tokens="null", extra=second)
    plan = load_mixture(_write(tmp_path, text))  # no mixture-wide cap: fine
    assert next(r for r in plan.totals() if r["source"] == "web")["epochs"] == 6
    capped = text.replace("max_epochs: 4\n", "max_epochs: 4\nmax_total_epochs: 5\n")
    assert _error(tmp_path, capped) == ("max_total_epochs: web would be repeated 6.00 epochs over all stages "
                                        "(s1 3.00, s2 3.00), over the cap max_total_epochs=5")
    load_mixture(_write(tmp_path, text.replace("max_epochs: 4\n", "max_epochs: 4\nmax_total_epochs: 6\n")))
    assert _error(tmp_path, text.replace("max_epochs: 4\n", "max_epochs: 4\nmax_total_epochs: 0\n")).startswith(
        "max_total_epochs: Input should be greater than 0")


def test_missing_sources_and_shards_are_one_line_errors(shards, tmp_path):
    run, rows, _ = shards
    out = tmp_path / "out"
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: math, weight: 1}"))
    assert msg.startswith("stages[s1].sources[0]: no shards for source 'math' in ")
    assert msg.endswith("(have: books, code, docs, web, wikipedia/high, wikipedia/low, zh)")
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: wikipedia, bucket: top, weight: 1}"))
    assert "no shards for source 'wikipedia' bucket 'top'" in msg
    msg = _error(tmp_path, mixture_yaml(run, out, "      - {source: wikipedia, weight: 1}\n      - {source: wikipedia, bucket: high, weight: 1}"))
    assert msg == "stages[s1].sources[1]: wikipedia/high is already drawn by sources[0]"
    # packed shards must be drawn at their own sequence length
    text = mixture_yaml(run, out, "      - {source: books, weight: 1}").replace(f"shards: {run / 'shards'}", f"shards: {run / 'shards_packed'}")
    msg = _error(tmp_path, text)
    assert msg == "stages[s1].sources[0]: shards of books are packed for 2048 tokens, but the stage trains at seq_length 1024"
    # a shards stage that is not committed, and a shard file that went missing
    msg = _error(tmp_path, mixture_yaml(run, out, GOOD).replace(f"shards: {run / 'shards'}", f"shards: {run / 'nope'}"))
    assert msg.startswith(f"shards: {run / 'nope'} is not a committed dataset")
    copy = tmp_path / "copy" / "shards"
    shutil.copytree(run / "shards", copy)
    victim = next(r for r in rows if r["group"] == "code")["prefix"] + ".idx"
    (copy / victim).unlink()
    msg = _error(tmp_path, mixture_yaml(run, out, GOOD).replace(f"shards: {run / 'shards'}", f"shards: {copy}"))
    assert msg == f"shards: shard {copy / victim} is missing"


def test_cli_mix_prints_the_table_and_fails_in_one_line(shards, tmp_path, capsys):
    run, _, _ = shards
    path = _write(tmp_path, mixture_yaml(run, tmp_path / "out", GOOD))
    assert main(["mix", str(path), "--out", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert "s1: 1,500,000 tokens, seq_length 1024" in out and "3.20" in out and "3.2 epochs" in out
    assert (tmp_path / "elsewhere" / "s1.blend.json").exists() and not (tmp_path / "out").exists()
    bad = _write(tmp_path, mixture_yaml(run, tmp_path / "out", "      - {source: web, epochs: 9}\n      - {source: books, weight: 1}"))
    assert main(["mix", str(bad)]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "web would be repeated 9.00 epochs" in lines[0]


def test_the_demo_mixture_config_gives_every_bucket_its_epochs():
    from arcforge.tokenize.bucket_epochs import parse_table
    from arcforge.tokenize.mixture_spec import read_spec

    spec, _ = read_spec(str(REPO / "configs" / "mixture.demo.yaml"))
    assert [s.name for s in spec.stages] == ["pretrain_1_general", "pretrain_2_upsampled", "mid_packed_2k"]
    assert spec.valid.endswith("/demo/shards_eval") and spec.test is None  # held out: no stage draws from it
    tables = {src.source: src.buckets for src in spec.stages[0].sources}
    assert set(tables) == {"web", "wikipedia", "books", "multilingual"} and all(tables.values())
    for table in tables.values():  # every bucket 0-19 exactly once (a gap or overlap is a config error)
        ranges, _ = parse_table(table, None)
        covered = sorted(b for r in ranges for b in range(r.first, r.last + 1))
        assert covered == list(range(20))
    web = {r.label: r.epochs for r in parse_table(tables["web"], None)[0]}
    assert web == {"18-19": 3.2, "12-17": 2, "5-11": 1, "0-4": 0}  # Nemotron-CC style: best ~3.2 epochs, worst dropped


def test_a_mixture_draws_megatron_samples_in_its_shares(shards, tmp_path, monkeypatch, gloo):  # noqa: F811
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    run, _, _ = shards
    extra = f"""
  - name: packed
    shards: {run / "shards_packed"}
    seq_length: 2048
    tokens: 300K
    max_epochs: 3
    sources:
      - {{source: books, epochs: 2}}
      - {{source: wikipedia, weight: 1}}"""
    plan = load_mixture(_write(tmp_path, mixture_yaml(run, tmp_path / "out", GOOD, extra=extra)))
    web = next(a for a in plan.stages[0].allocations if a.source == "web")
    assert web.epochs == pytest.approx(3.2)
    write_mixture(plan, str(tmp_path / "blends"))
    tok = Tokenizer.load(str(run / "tokenizer"))
    for st in plan.stages:
        blend = load_blend(str(tmp_path / "blends" / f"{st.name}.blend.json"))
        cfg = GPTDatasetConfig(
            random_seed=7, sequence_length=st.seq_length, blend=blend, split="100,0,0",
            tokenizer=tok.megatron_tokenizer(), reset_position_ids=True, reset_attention_mask=True,
            eod_mask_loss=True, path_to_cache=str(tmp_path / "cache"),
        )
        train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [st.train_samples, 0, 0], lambda: True, cfg).build()
        assert len(train) >= st.train_samples
        drawn = Counter()
        for i in range(len(train)):
            drawn[Path(blend[0][int(train.dataset_index[i])]).parent.name.split("__")[0]] += 1
        planned = Counter()
        for a in st.allocations:  # a source's buckets are separate allocations of one shard folder prefix
            planned[a.source] += a.share
        for source, share in planned.items():
            assert drawn[source] / len(train) == pytest.approx(share, abs=0.01), (st.name, source)
        assert train[len(train) - 1]["tokens"].shape == (st.seq_length,)


# ---------------------------------------------------------------------------- per-bucket epochs

BUCKET_RUN = """
name: bk
storage: {{root: "{root}"}}
stages:
  - {{name: web, uses: io.read, input: {{files: ["{inputs}/web.jsonl"]}}, engine: local, params: {{source: web, keep: [quality_edu], partition_mb: 0.05}}}}
  - {{name: books, uses: io.read, input: {{files: ["{inputs}/books.jsonl"]}}, engine: local, params: {{source: books}}}}
  - {{name: scored, uses: quality.buckets, input: web, engine: local, params: {{scores: [quality_edu]}}}}
  - {{name: tokenizer, uses: tokenize.train_spm, input: [scored, books], params: {{vocab_size: 400, seed: 1, num_threads: 1}}}}
  - {{name: shards, uses: tokenize.megatron_shards, input: [scored, books], artifacts: {{tokenizer: tokenizer}}, engine: local}}
"""


@pytest.fixture(scope="module")
def bucket_shards(tmp_path_factory):
    """Real shards grouped by quality.buckets' int `bucket`: web documents scored with 7
    distinct values (so only some of the 20 buckets have documents) and books without buckets.
    The text is Python's own English documentation (pydoc's topics), cut into documents."""
    from pydoc_data.topics import topics

    from arcforge.runtime.config import load_plan
    from arcforge.runtime.runner import Runner

    root = tmp_path_factory.mktemp("bucket_mix")
    lines = [ln for _, text in sorted(topics.items()) for ln in text.splitlines() if ln.strip()]
    docs = ["\n".join(lines[i : i + 12]) for i in range(0, len(lines), 12)]
    (root / "in").mkdir()
    with open(root / "in" / "web.jsonl", "w") as f:
        for i, text in enumerate(docs[:450]):
            f.write(json.dumps({"id": f"w{i}", "text": text, "quality_edu": (i * 5 % 7) / 7}) + "\n")
    with open(root / "in" / "books.jsonl", "w") as f:
        for i, text in enumerate(docs[450:]):
            f.write(json.dumps({"id": f"b{i}", "text": text}) + "\n")
    cfg = root / "run.yaml"
    cfg.write_text(BUCKET_RUN.format(root=root / "runs", inputs=root / "in"))
    Runner(load_plan(cfg)).run()
    run = root / "runs" / "bk"
    tokens = Counter()
    for r in read_dataset(DatasetRef(str(run / "shards"))).to_pylist():
        tokens[(r["source"], r["bucket"])] += r["tokens"]
    return run, tokens


TABLE = '{"18-19": 3, "12-17": 2, "5-11": 1, "0-4": 0}'


def bucket_yaml(run: Path, out: Path, table: str = TABLE, extra: str = "", tokens: str = "") -> str:
    return f"""
name: b
shards: {run / "shards"}
output: {out}
stages:
  - name: s1
    seq_length: 256
{tokens}    sources:
      - source: web
        buckets: {table}
{extra}      - {{source: books, epochs: 1}}
"""


def test_bucket_table_expands_to_every_bucket_with_its_epochs(bucket_shards, tmp_path):
    run, tok = bucket_shards
    have = sorted(int(b) for s, b in tok if s == "web")
    assert 3 <= len(have) < 20 and ("books", None) in tok  # some buckets hold documents, some none
    plan = load_mixture(_write(tmp_path, bucket_yaml(run, tmp_path / "out")))
    (st,) = plan.stages
    web = [a for a in st.allocations if a.source == "web"]
    assert [a.bucket for a in web] == [str(b) for b in range(20)]  # every bucket, in order
    epochs_of = {**dict.fromkeys(range(0, 5), 0), **dict.fromkeys(range(5, 12), 1), **dict.fromkeys(range(12, 18), 2), 18: 3, 19: 3}
    for a in web:
        b = int(a.bucket)
        available = tok.get(("web", a.bucket), 0)
        assert a.available == available and a.range == next(r for r in ("0-4", "5-11", "12-17", "18-19") if b in _rng(r))
        assert a.tokens == round(epochs_of[b] * available)
        assert a.dropped == (epochs_of[b] == 0)
        assert a.epochs == (pytest.approx(epochs_of[b]) if available else 0.0)
        assert a.asked == ("dropped (0-4)" if b < 5 else f"{epochs_of[b]} epochs ({a.range})" + ("" if available else ", no shards"))
    budget = sum(epochs_of[int(b)] * n for (s, b), n in tok.items() if s == "web") + tok[("books", None)]
    assert st.tokens == round(budget)
    assert sum(a.share for a in st.allocations) == pytest.approx(1.0)
    # the blend draws only the buckets with epochs and shards, each shard by its tokens
    prefixes, weights = st.blend
    drawn = {Path(p).parent.name for p in prefixes}
    assert drawn == {f"web__{b}" for b in have if b >= 5} | {"books"}
    assert sum(weights) == pytest.approx(1.0)
    written = write_mixture(plan)
    blend = json.loads((tmp_path / "out" / "s1.blend.json").read_text())
    rows = [r for r in blend["sources"] if r["source"] == "web"]
    assert len(rows) == 20 and [r["bucket"] for r in rows] == [str(b) for b in range(20)]
    assert all(r["tokens"] == 0 and r["dropped"] for r in rows[:5]) and not any(r["dropped"] for r in rows[5:])
    md = (tmp_path / "out" / "mixture.md").read_text()
    assert "| web | 0 | dropped (0-4) |" in md and "| web | 19 | 3 epochs (18-19) |" in md
    assert any(", no shards |" in ln for ln in md.splitlines())
    assert len(written) == 4
    # cumulative totals: the buckets that have shards, in numeric order (2 before 11)
    assert [r["bucket"] for r in plan.totals() if r["source"] == "web"] == [str(b) for b in have]


def _rng(label: str) -> range:
    a, _, b = label.partition("-")
    return range(int(a), int(b or a) + 1)


def test_bucket_tables_errors_are_one_line(bucket_shards, tmp_path):
    run, _ = bucket_shards
    out = tmp_path / "out"
    key = "stages[s1].sources[0].buckets: "
    msg = _error(tmp_path, bucket_yaml(run, out, '{"18-19": 3, "0-4": 0}'))
    assert msg == key + "Value error, bucket(s) 5-17 not covered; expected ranges that cover 0-19 exactly once"
    msg = _error(tmp_path, bucket_yaml(run, out, '{"10-19": 3, "0-10": 1}'))
    assert msg == key + "Value error, bucket 10 is in both '0-10' and '10-19'; expected each of 0-19 exactly once"
    msg = _error(tmp_path, bucket_yaml(run, out, '{"top": 3, "0-18": 1}'))
    assert msg == key + "Value error, 'top' is not a bucket range; expected 'A-B' or 'A' with whole numbers 0 <= A <= B"
    msg = _error(tmp_path, bucket_yaml(run, out, '{"9-0": 3}'))
    assert msg.startswith(key + "Value error, '9-0' is not a bucket range")
    msg = _error(tmp_path, bucket_yaml(run, out, '{"0-19": -1}'))
    assert msg == key + "Value error, '0-19': epochs must be a number >= 0 (0 drops the buckets), got -1"
    # n_buckets makes a short table an error, and shards beyond the table are one too
    msg = _error(tmp_path, bucket_yaml(run, out, '{"0-9": 1}\n        n_buckets: 12'))
    assert msg == key + "Value error, bucket(s) 10-11 not covered; expected ranges that cover 0-11 exactly once"
    msg = _error(tmp_path, bucket_yaml(run, out, '{"0-9": 1}'))
    assert msg.startswith(key + "the shards of 'web' have bucket(s) '1") and "outside the table's 0-9" in msg
    # a table and a weight, and a table over a source whose shards have no buckets
    msg = _error(tmp_path, bucket_yaml(run, out, TABLE + "\n        weight: 1"))
    assert msg.startswith("stages[s1].sources[0]: Value error, give either a buckets table or weight, not both")
    text = bucket_yaml(run, out).replace("{source: books, epochs: 1}", '{source: books, buckets: {"0-19": 1}}')
    assert _error(tmp_path, text).startswith("stages[s1].sources[1].buckets: the shards of 'books' have bucket(s) (no bucket) outside")
    # the cap applies to each bucket, and a plain entry cannot draw a bucket the table holds
    msg = _error(tmp_path, bucket_yaml(run, out, '{"18-19": 5, "0-17": 1}'))
    assert msg.startswith("stages[s1].sources[0]: web/1") and "over the cap max_epochs=4" in msg
    msg = _error(tmp_path, bucket_yaml(run, out, extra="      - {source: web, bucket: '19', weight: 1}\n", tokens="    tokens: 10M\n"))
    assert msg.startswith("stages[s1].sources[1]: web/19 is already drawn by sources[0]")
    # every bucket dropped and nothing else: no budget to speak of
    msg = _error(tmp_path, bucket_yaml(run, out, '{"0-19": 0}').replace("      - {source: books, epochs: 1}\n", ""))
    assert msg == "stages[s1].sources: the stage draws no tokens (every bucket is dropped or has no shards)"


def test_cli_mix_shows_every_bucket(bucket_shards, tmp_path, capsys):
    run, _ = bucket_shards
    path = _write(tmp_path, bucket_yaml(run, tmp_path / "out"))
    assert main(["mix", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("dropped (0-4)") == 5 and "3 epochs (18-19)" in out and "no shards" in out
