"""tokenize.train_spm on real text: exact round trip, fixed special ids, metadata, S3 loading."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

from arcforge.runtime.config import load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.runtime.runner import Runner
from arcforge.tokenize.spm import EOD_ID, PAD_ID, SPECIALS, Tokenizer, token_dtype
from arcforge.tokenize.spm_train import TrainSpmParams, train_model, training_chunks

REPO = Path(__file__).resolve().parents[1]

# Real Chinese text: the opening of Tao Yuanming's 桃花源记 and of the Analects (public
# domain), and a modern paragraph with digits, Latin letters and full-width punctuation.
CHINESE = """晋太元中，武陵人捕鱼为业。缘溪行，忘路之远近。忽逢桃花林，夹岸数百步，中无杂树，芳草鲜美，落英缤纷。渔人甚异之，复前行，欲穷其林。
林尽水源，便得一山，山有小口，仿佛若有光。便舍船，从口入。初极狭，才通人。复行数十步，豁然开朗。土地平旷，屋舍俨然，有良田、美池、桑竹之属。阡陌交通，鸡犬相闻。

子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？”

大型语言模型的预训练数据通常来自网页、代码、数学与科学文献。GLM-4.5 的预训练共使用约 23T 个词元，其中 15T 为通用语料；分词器必须无损地还原原文——包括空格、制表符\t和换行符。
"""


def tab_indented(source: str) -> str:
    """Real Python source re-indented with tabs (as Go, C and Makefiles are)."""
    return re.sub(r"^((?:    )+)", lambda m: "\t" * (len(m.group(1)) // 4), source, flags=re.MULTILINE)


def code_samples() -> dict[str, str]:
    import json as json_mod

    import requests.models
    import requests.sessions

    return {
        "requests_models.py": inspect.getsource(requests.models),
        "requests_sessions_tabs.py": tab_indented(inspect.getsource(requests.sessions)),
        "json_init.py": inspect.getsource(json_mod),
        "Makefile": (REPO / "Makefile").read_text(),  # recipes are tab-indented
    }


def make_inputs(root: Path) -> tuple[Path, Path]:
    code, zh = root / "code", root / "zh"
    code.mkdir(parents=True, exist_ok=True)
    zh.mkdir(parents=True, exist_ok=True)
    for name, text in code_samples().items():
        (code / name).write_text(text)
    (zh / "zh.txt").write_text(CHINESE)
    return code, zh


SHARED_STAGES = """
  - {name: web, uses: web.extract_warc, input: {files: ["CORPUS/warcs/iana.warc.gz", "CORPUS/warcs/example.warc.gz"]}, engine: local, params: {min_text_chars: 20}}
  - {name: wiki, uses: text.wikipedia_dump, input: {files: ["CORPUS/wiki/*.bz2"]}}
  - {name: books, uses: text.plain_files, input: {files: ["CORPUS/books/*.txt"]}, params: {source: books, split: paragraphs}}
  - {name: code, uses: text.plain_files, input: {files: ["INPUTS/code/*"]}, params: {source: code}}
  - {name: zh, uses: text.plain_files, input: {files: ["INPUTS/zh/*.txt"]}, params: {source: zh}}
  - {name: tokenizer, uses: tokenize.train_spm, input: [web, wiki, books, code, zh], params: {vocab_size: 4000, seed: 7}}
  - {name: jsonl, uses: io.read, input: {files: ["CORPUS/jsonl/*.jsonl.gz"]}, engine: local, params: {source: docs}}
  - {name: docs, uses: "test_shards:BUCKETS", input: [web, wiki, books, code, zh, jsonl]}
  - {name: shards, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: local}
  - {name: split, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: local, params: {max_doc_tokens: 512}}
  - {name: shards_packed, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: local, params: {pack_seq_length: 2048}}
  - {name: shards_ray, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: ray, params: {pack_seq_length: 2048}}
  - {name: shards_spark, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: spark}
  - {name: shards_fim, uses: tokenize.megatron_shards, input: docs, artifacts: {tokenizer: tokenizer}, engine: local, params: {fim: {sources: [code, docs], seed: 3}}}
"""
_SHARED: dict = {}


def shared_run(tmp_path_factory, corpus: Path, stages: list[str]) -> tuple[Path, Path, dict]:  # noqa: ANN001
    """One demo-like run (named ``demo``) shared by the tokenizer, shard and mixture tests
    of a session; each caller runs the stages it needs, committed ones are reused.
    Returns (config path, run directory, results by stage)."""
    if not _SHARED:
        root = tmp_path_factory.mktemp("shared")
        make_inputs(root / "in")
        stages_yaml = SHARED_STAGES.replace("CORPUS", str(corpus)).replace("INPUTS", str(root / "in"))
        cfg = root / "run.yaml"
        cfg.write_text(
            f'name: demo\nstorage: {{root: "{root / "runs"}"}}\n'
            f"engines: {{spark: {{master: \"local[2]\"}}, ray: {{num_cpus: 2}}}}\nstages:{stages_yaml}"
        )
        _SHARED.update(cfg=cfg, run=root / "runs" / "demo", results={})
    plan = load_plan(_SHARED["cfg"])
    runner = Runner(plan)
    by_name = {rs.name: rs for rs in plan.stages}
    wanted = set(stages)
    for rs in reversed(plan.stages):  # with every stage they depend on
        if rs.name in wanted:
            wanted |= set(rs.cfg.input_stages()) | set(rs.cfg.artifacts.values())
    for rs in plan.stages:
        if rs.name in wanted and rs.name not in _SHARED["results"]:
            _SHARED["results"][rs.name] = runner.run_stage(by_name[rs.name])
    return _SHARED["cfg"], _SHARED["run"], _SHARED["results"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_corpus):
    _, run, results = shared_run(tmp_path_factory, demo_corpus, ["tokenizer"])
    return run, results, Tokenizer.load(str(run / "tokenizer"))


def test_special_tokens_have_their_documented_fixed_ids(trained):
    _, _, tok = trained
    expected = {
        "unk": 0, "bos": 1, "eod": 2, "pad": 3, "fim_prefix": 4, "fim_middle": 5, "fim_suffix": 6,
        "think": 7, "think_end": 8, "nothink": 9, "system": 10, "user": 11, "assistant": 12, "observation": 13,
    }
    for name, i in expected.items():
        assert tok.special_id(name) == i
        assert tok.id_to_piece(i) == next(s.token for s in SPECIALS if s.name == name)
    assert tok.special_id("<|endoftext|>") == tok.eod_id == EOD_ID == 2
    assert tok.special_id("eos") == 2 and tok.pad_id == PAD_ID == 3
    assert [tok.id_to_piece(i) for i in range(14, 32)] == [f"<|reserved_{i}|>" for i in range(14, 32)]
    assert tok.sp.eos_id() == 2 and tok.sp.pad_id() == 3 and tok.sp.bos_id() == 1 and tok.sp.unk_id() == 0
    # newline and tab are single pieces right after the specials, then the 256 bytes
    assert tok.encode("\n") == [32] and tok.encode("\t") == [33] and tok.encode("\n\n\t") == [32, 32, 33]
    assert tok.id_to_piece(34) == "<0x00>" and tok.id_to_piece(289) == "<0xFF>"
    with pytest.raises(KeyError, match="no special token"):
        tok.special_id("eot")


def test_megatron_reads_the_same_eod_and_pad_from_the_model(trained):
    run, _, tok = trained
    mt = tok.megatron_tokenizer()
    assert mt.eod == tok.eod_id == 2
    assert mt.pad == tok.pad_id == 3
    assert mt.vocab_size == tok.vocab_size == 4000
    text = "The quick brown fox jumps over the lazy dog.\n\tdef f(x):\n\t\treturn x  # 42"
    assert list(mt.tokenize(text)) == tok.encode(text)
    # the metadata file beside the model is what MegatronTokenizer.from_pretrained looks for
    from megatron.core.tokenizers import MegatronTokenizer

    mt2 = MegatronTokenizer.from_pretrained(str(run / "tokenizer" / "tokenizer.model"))
    assert mt2.eod == 2 and mt2.detokenize(tok.encode(text)) == text


def test_exact_round_trip_on_real_text(trained, demo_corpus):
    run, _, tok = trained
    wiki = read_dataset(DatasetRef(str(run / "wiki")), ["text"]).column("text").to_pylist()
    assert len(wiki) > 100
    botchan = (demo_corpus / "books" / "botchan.txt").read_text()
    texts = wiki + [botchan, CHINESE, *code_samples().values()]
    for i, text in enumerate(texts):
        ids = tok.encode(text)
        assert tok.decode(ids) == text, f"text {i} does not round-trip"
        assert max(ids) < tok.vocab_size and min(ids) >= 0
        assert not any(0 < t < 32 for t in ids), "ordinary text produced a special id"
    batch = tok.encode_batch(texts[:40], num_threads=2)
    assert batch == [tok.encode(t) for t in texts[:40]]


@pytest.mark.parametrize(
    "text",
    [
        "",
        " leading and trailing spaces  ",
        "multiple   spaces\tand\ttabs\r\nwindows line\r\n\n\n",
        "\u2581 sentencepiece's own whitespace mark \u2581\u2581 in text",
        "literal specials: <|endoftext|> <think>x</think> /nothink <|user|>",
        "NUL\x00 and controls \x1b[0m \x7f",
        "emoji 🧪🚀, combining é vs é, ideographic space\u3000here, ＦＵＬＬＷＩＤＴＨ",
        "数字 1234567890 和 ３．１４",
        "    indented\n        more\n\t\tmixed \t \n",
    ],
)
def test_exact_round_trip_on_edge_cases(trained, text):
    tok = trained[2]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_batch([text, text])[1]) == text


def test_special_strings_in_text_stay_text_unless_allowed(trained):
    tok = trained[2]
    text = "a<|endoftext|>b"
    plain = tok.encode(text)
    assert EOD_ID not in plain  # a web page cannot forge a document boundary
    allowed = tok.encode(text, allow_special=True)
    assert allowed.count(EOD_ID) == 1 and tok.decode(allowed) == text
    chat = "<|system|>be brief<|user|>2+2?<|assistant|><think>4</think>4<|endoftext|>"
    ids = tok.encode(chat, allow_special=True)
    assert [i for i in ids if i < 32] == [10, 11, 12, 7, 8, 2]
    assert tok.decode(ids) == chat
    assert tok.decode(ids, skip_special=True) == "be brief2+2?44"
    fim = [tok.special_id("fim_prefix"), *tok.encode("def f("), tok.special_id("fim_suffix"), *tok.encode("):"), tok.special_id("fim_middle")]
    assert tok.decode(fim) == "<|fim_prefix|>def f(<|fim_suffix|>):<|fim_middle|>"


def test_digits_are_split(trained):
    tok = trained[2]
    pieces = [tok.id_to_piece(i) for i in tok.encode("in 2025 there were 151552 tokens")]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("2025") + list("151552")


def test_metadata_records_the_sample_and_the_model_hash(trained):
    run, results, tok = trained
    meta = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    model = (run / "tokenizer" / "tokenizer.model").read_bytes()
    assert meta["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert meta["vocab_size"] == 4000 and meta["eod_id"] == 2 and meta["pad_id"] == 3
    assert meta["token_dtype"] == "uint16"
    assert {s["token"]: s["id"] for s in meta["special_tokens"]} == tok.special_tokens
    assert meta["user_symbols"] == {"\n": 32, "\t": 33} and meta["first_byte_id"] == 34
    assert meta["trainer"]["normalization_rule_name"] == "identity" and meta["trainer"]["byte_fallback"]
    sample = meta["sample"]
    inputs = {i["stage"]: i for i in sample["inputs"]}
    assert set(inputs) == {"web", "wiki", "books", "code", "zh"}
    for name in inputs:
        assert inputs[name]["fingerprint"] == results[name].manifest["fingerprint"]
    total_rows = sum(results[n].manifest["rows"] for n in inputs)
    assert sample["docs"] == total_rows and sample["rate"] == 1.0  # the default caps take everything here
    assert sample["sources"]["zh"] == 1 and sample["sources"]["code"] == 4
    assert meta["verified_roundtrip_docs"] == 200
    manifest = results["tokenizer"].manifest
    assert manifest["kind"] == "artifact"
    files = {f["name"]: f for f in manifest["files"]}
    assert files["tokenizer.model"]["sha256"] == meta["model_sha256"]
    assert manifest["meta"]["sample"]["chars"] == sample["chars"] > 3_000_000


def test_sampling_caps_seed_and_determinism(trained, tmp_path):
    run, results, _ = trained
    from arcforge.runtime.stage import ArtifactContext
    from arcforge.tokenize.spm_train import build_tokenizer, sample_documents

    inputs = [DatasetRef(str(run / n)) for n in ("web", "wiki", "books", "code", "zh")]
    few = sample_documents(inputs, TrainSpmParams(sample_docs=50, seed=1))
    assert few.docs == 50 and few.rate < 1
    assert sample_documents(inputs, TrainSpmParams(sample_docs=50, seed=1)).texts == few.texts
    assert sample_documents(inputs, TrainSpmParams(sample_docs=50, seed=2)).texts != few.texts
    capped = sample_documents(inputs, TrainSpmParams(sample_chars=200_000))
    assert capped.chars >= 200_000 and capped.chars - max(map(len, capped.texts)) < 200_000
    # training is deterministic: same sample and params, same model bytes
    params = TrainSpmParams(vocab_size=800, sample_chars=300_000)
    texts = sample_documents(inputs, params).texts
    assert train_model(texts, params) == train_model(texts, params)
    # a vocabulary the sample cannot fill is a clear error
    ctx = ArtifactContext(inputs[4:], DatasetRef(str(tmp_path / "tok")), {}, None)
    with pytest.raises(ValueError, match="vocab_size=60000 is too large"):
        build_tokenizer(TrainSpmParams(vocab_size=60000), ctx)


def test_training_chunks_respect_the_limit_and_lose_nothing():
    text = ("word " * 50 + "\n") * 40 + "x" * 900
    chunks = list(training_chunks([text], 256))
    assert "".join(chunks) == text
    assert max(map(len, chunks)) <= 256
    assert sum(c.endswith(("\n", " ")) for c in chunks) >= len(chunks) - 5  # cut at whitespace where possible


def test_token_dtype_follows_megatron():
    assert token_dtype(4000) is np.uint16
    assert token_dtype(65536) is np.uint16  # ids up to 65,535 fit
    assert token_dtype(65537) is np.int32
    assert token_dtype(151552) is np.int32  # GLM-4.5


def test_load_from_s3_caches_by_hash(trained, s3_endpoint, tmp_path, monkeypatch):
    import boto3

    run, _, tok = trained
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="arcforge-tok")
    for f in (run / "tokenizer").glob("*.json"):
        s3.upload_file(str(f), "arcforge-tok", f"t/tokenizer/{f.name}")
    s3.upload_file(str(run / "tokenizer" / "tokenizer.model"), "arcforge-tok", "t/tokenizer/tokenizer.model")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    remote = Tokenizer.load("s3://arcforge-tok/t/tokenizer", cache_dir=str(tmp_path / "cache"))
    sha = remote.meta["model_sha256"]
    assert remote.model_path == str(tmp_path / "cache" / sha / "tokenizer.model")
    assert remote.encode(CHINESE) == tok.encode(CHINESE)
    assert (tmp_path / "cache" / sha / "tokenizer_metadata.json").exists()
    # a corrupted cache entry is replaced, not trusted
    (tmp_path / "cache" / sha / "tokenizer.model").write_bytes(b"garbage")
    again = Tokenizer.load("s3://arcforge-tok/t/tokenizer", cache_dir=str(tmp_path / "cache"))
    assert again.decode(again.encode(CHINESE)) == CHINESE


def test_stage_rerun_is_skipped(trained):
    run, results, _ = trained
    cfg = run.parent.parent / "run.yaml"
    again = Runner(load_plan(cfg)).run(only="tokenizer")
    assert again[0].status == "skipped"
    assert read_manifest(DatasetRef(str(run / "tokenizer")))["fingerprint"] == results["tokenizer"].manifest["fingerprint"]
