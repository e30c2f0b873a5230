"""Lineage from input files to blends on a real run: blends record the fingerprints they were
mixed from, `arcforge status` shows the chain and marks stale stages and blends, and
`arcforge train` refuses a stale blend unless --force.

The run (all stages on the local engine): two `io.read` sources (Botchan paragraphs and Python
sources, each row with a `score`) -> a `filter` on the score -> a sentencepiece tokenizer ->
Megatron shards of what the filter kept. It is built once; every test works on a copy of it.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

from arcforge.cli import main
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_manifest
from arcforge.runtime.runner import Runner
from arcforge.tokenize.lineage import BLENDS_DIR, check_blend
from arcforge.tokenize.staleness import check_run
from arcforge.tokenize.mixture import load_mixture, write_mixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

VOCAB = 700


def _inputs(root: Path, corpus: Path) -> None:
    import json as json_mod

    import requests.models

    root.mkdir(parents=True, exist_ok=True)
    text = (corpus / "books" / "botchan.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    lines = text.splitlines()
    paras = ["\n".join(lines[i : i + 8]) for i in range(0, len(lines), 8)]
    with (root / "books.jsonl").open("w") as f:
        for i, p in enumerate(paras):
            f.write(json.dumps({"id": f"b{i}", "text": p, "score": (i % 10) / 10}) + "\n")
    code = [inspect.getsource(requests.models), inspect.getsource(json_mod)]
    code = [c[j : j + 3000] for c in code for j in range(0, len(c), 3000)]
    with (root / "code.jsonl").open("w") as f:
        for i, c in enumerate(code):
            f.write(json.dumps({"id": f"c{i}", "text": c, "score": (i % 5) / 5}) + "\n")


def run_yaml(root: Path, inputs: Path, *, min_score: float = 0.2, seed: int = 7) -> str:
    return f"""name: lin
storage: {{root: "{root}"}}
stages:
  - {{name: books, uses: io.read, input: {{files: ["{inputs}/books.jsonl"]}}, engine: local, params: {{source: books, keep: [score]}}}}
  - {{name: code, uses: io.read, input: {{files: ["{inputs}/code.jsonl"]}}, engine: local, params: {{source: code, keep: [score]}}}}
  - {{name: select, uses: filter, input: [books, code], engine: local, params: {{rules: [{{column: score, op: ">=", value: {min_score}}}]}}}}
  - {{name: tokenizer, uses: tokenize.train_spm, input: [books, code], params: {{vocab_size: {VOCAB}, seed: {seed}, num_threads: 1, verify_docs: 20}}}}
  - {{name: shards, uses: tokenize.megatron_shards, input: select, artifacts: {{tokenizer: tokenizer}}, engine: local}}
"""


MIX = """name: lin-mix
shards: {shards}
output: {out}
max_epochs: 20
stages:
  - name: s1
    seq_length: 64
    tokens: 200K
    sources:
      - {{source: books, weight: 3}}
      - {{source: code, weight: 1}}
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory, demo_corpus):
    root = tmp_path_factory.mktemp("lineage-base")
    _inputs(root / "in", demo_corpus)
    cfg = root / "run.yaml"
    cfg.write_text(run_yaml(root / "runs", root / "in"))
    Runner(load_plan(cfg)).run()
    return root


class Env:
    """A copy of the base run in its own directory, with its run config, mixture and train config."""

    def __init__(self, base: Path, tmp: Path) -> None:
        self.tmp = tmp
        self.inputs = base / "in"
        self.root = tmp / "runs"
        shutil.copytree(base / "runs", self.root)
        self.run = self.root / "lin"
        self.cfg = tmp / "run.yaml"
        self.write_run()
        info = json.loads((self.run / "_run.json").read_text())
        info["config"] = str(self.cfg)  # the copy's own config
        (self.run / "_run.json").write_text(json.dumps(info))
        self.mix = tmp / "mix.yaml"
        self.mix.write_text(MIX.format(shards=self.run / "shards", out=tmp / "blends"))
        self.blend = tmp / "blends" / "s1.blend.json"

    def write_run(self, **kw) -> None:
        self.cfg.write_text(run_yaml(self.root, self.inputs, **kw))

    def rerun(self, only: str | None = None, **kw) -> list:
        self.write_run(**kw)
        return Runner(load_plan(self.cfg)).run(only=only)

    def fp(self, stage: str) -> str:
        return read_manifest(DatasetRef(str(self.run / stage)))["fingerprint"]

    def train_yaml(self, **data) -> Path:
        import yaml

        cfg = {
            "name": "lin", "output_dir": str(self.tmp / "train"), "seed": 1, "threads": 1,
            "model": {"preset": "proxy-tiny", "overrides": {"vocab_size": VOCAB}, "seq_length": 64},
            "data": {"blend_file": str(self.blend), "tokenizer": str(self.run / "tokenizer"), "split": "100,0,0", **data},
            "batch": {"micro_batch_size": 2, "global_batch_size": 2},
            "train": {"iters": 1},
            "checkpoint": {"interval": 0},
            "log": {"print_interval": 0, "plot": False},
        }
        p = self.tmp / "train.yaml"
        p.write_text(yaml.safe_dump(cfg))
        return p


@pytest.fixture
def env(base, tmp_path):
    return Env(base, tmp_path)


def check(capsys, env: Env) -> tuple[int, str]:
    """`arcforge status --check`: its exit code and its verdict line."""
    code = main(["status", str(env.run), "--check"])
    return code, capsys.readouterr().out.strip().splitlines()[-1]


def status(capsys, env: Env, *extra: str) -> dict[str, str]:
    """`arcforge status` of the run: its lineage lines by stage name or blend path."""
    assert main(["status", str(env.run), *extra]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("lineage: input files -> stages -> blends"):].splitlines()
    by = {}
    for ln in lines[1:]:
        s = ln.strip()
        if s:
            by[s.split()[0].rstrip(":")] = s
    by["_text"] = out
    return by


def test_mix_records_lineage_and_the_blend_is_fresh(env, capsys):
    assert main(["mix", str(env.mix)]) == 0
    out = capsys.readouterr().out
    assert f"lineage: {env.run / 'shards'} (shards {env.fp('shards')[:12]}, tokenizer {env.fp('tokenizer')[:12]})" in out
    lin = json.loads(env.blend.read_text())["lineage"]
    assert lin["format"] == "arcforge.lineage/1"
    (ds,) = lin["shards"]
    assert ds["uri"] == str(env.run / "shards") and ds["run"] == str(env.run) and ds["stage"] == "shards"
    assert ds["fingerprint"] == env.fp("shards") and ds["sources"] == ["books", "code"]
    assert ds["artifacts"] == {"tokenizer": {"uri": str(env.run / "tokenizer"), "stage": "tokenizer", "fingerprint": env.fp("tokenizer")}}
    import hashlib

    assert lin["mixture"]["config"] == str(env.mix)
    assert lin["mixture"]["sha256"] == hashlib.sha256(env.mix.read_bytes()).hexdigest()
    assert json.loads((env.tmp / "blends" / "mixture.json").read_text())["lineage"]["shards"][0]["fingerprint"] == env.fp("shards")
    # a pointer in the run, so status finds the blend outside the run directory
    (ref,) = (env.run / BLENDS_DIR).glob("*.json")
    assert json.loads(ref.read_text())["blend"] == str(env.blend)
    assert check_blend(str(env.blend)).state == "fresh"
    st = status(capsys, env)
    for stage in ("books", "code", "select", "tokenizer", "shards"):
        assert f"{env.fp(stage)[:12]}  fresh  <- " in st[stage], st[stage]
    assert "1 input file (" in st["books"] and str(env.inputs / "books.jsonl") in st["books"]
    assert st["select"].endswith("<- books, code")
    assert st["shards"].endswith("<- select + artifact tokenizer")
    assert st[str(env.blend)].startswith(f"{env.blend}  fresh  <- shards {env.fp('shards')[:12]} + tokenizer {env.fp('tokenizer')[:12]}")
    assert check(capsys, env) == (0, "status --check: every stage and blend is current and every blocking check passed")


def test_upstream_change_makes_the_blend_stale_and_train_refuses_it(env, capsys):
    assert main(["mix", str(env.mix)]) == 0
    old = env.fp("shards")
    capsys.readouterr()
    # a stricter filter, and the pipeline re-run: select and shards change, the blend does not
    results = {r.name: r.status for r in env.rerun(min_score=0.6)}
    assert results == {"books": "skipped", "code": "skipped", "select": "ran", "tokenizer": "skipped", "shards": "ran"}
    new = env.fp("shards")
    assert new != old
    st = status(capsys, env)
    for stage in ("books", "code", "select", "tokenizer", "shards"):
        assert "  fresh  <- " in st[stage], st[stage]
    line = st[str(env.blend)]
    assert f"STALE: stage shards of run {env.run} has fingerprint {new[:12]} now, the blend was mixed from {old[:12]}" in line
    assert f"re-run arcforge mix {env.mix}" in line
    chk = check_blend(str(env.blend))
    assert chk.state == "stale" and [(p.stage, p.recorded, p.current) for p in chk.problems] == [("shards", old, new)]

    # train refuses in one line naming the blend, the stage and both fingerprints
    cfg = env.train_yaml()
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"{cfg}: data.blend_file: {env.blend} is stale: stage shards of run {env.run} has fingerprint {new} now, "
                          f"the blend was mixed from {old}; re-run arcforge mix {env.mix}, or pass --force")
    assert not (env.tmp / "train").exists()
    # --force warns and trains
    assert main(["train", str(cfg), "--force", "-q"]) == 0
    captured = capsys.readouterr()
    assert f"warning: {cfg}: data.blend_file: {env.blend} is stale: stage shards" in captured.err
    assert "training on it anyway" in captured.err
    assert "lin: step 1, 128 tokens" in captured.out
    # as does the config key
    with pytest.raises(ConfigError):
        from arcforge.model.train import load_train_config

        load_train_config(env.train_yaml())
    load_train_config(env.train_yaml(allow_stale=True))
    # mixing again makes it fresh, and train no longer complains
    assert main(["mix", str(env.mix)]) == 0
    capsys.readouterr()
    assert check_blend(str(env.blend)).state == "fresh"
    load_train_config(env.train_yaml())
    assert "stale" not in capsys.readouterr().err
    assert status(capsys, env)[str(env.blend)].startswith(f"{env.blend}  fresh")


def test_a_stage_rerun_alone_makes_what_reads_it_stale(env, capsys):
    assert main(["mix", str(env.mix)]) == 0
    old_select = env.fp("select")
    capsys.readouterr()
    # the config says a new threshold but nothing was re-run: select is stale by its params
    env.write_run(min_score=0.5)
    st = status(capsys, env)
    assert f"stale: {env.cfg} changed its params: rules[0].value 0.2 -> 0.5  <- books, code" in st["select"], st["select"]
    assert "stale: it reads select, which is stale" in st["shards"]
    assert "fresh  <- " in st["books"] and "fresh  <- " in st["tokenizer"]
    assert "stale upstream: shards is stale" in st[str(env.blend)]
    assert check_blend(str(env.blend)).state == "fresh"  # the blend matches the shards it names
    assert check(capsys, env) == (1, "status --check: 2 problems: stage select is stale; stage shards is stale")
    # only select re-run: select is fresh, shards is stale because its input moved on
    (r,) = env.rerun(only="select", min_score=0.5)
    assert r.status == "ran" and env.fp("select") != old_select
    st = status(capsys, env)
    assert "fresh  <- books, code" in st["select"]
    assert "stale: select re-committed after it (it would be " in st["shards"], st["shards"]
    assert "stale upstream: shards is stale" in st[str(env.blend)]
    # re-running shards makes the chain fresh and the blend stale
    env.rerun(only="shards", min_score=0.5)
    st = status(capsys, env)
    assert "fresh  <- select + artifact tokenizer" in st["shards"]
    assert "STALE: stage shards of run" in st[str(env.blend)]
    assert check(capsys, env) == (1, f"status --check: 1 problem: blend {env.blend} is stale")


def test_a_retrained_tokenizer_makes_the_blend_stale(env, capsys):
    assert main(["mix", str(env.mix)]) == 0
    old = env.fp("tokenizer")
    (r,) = env.rerun(only="tokenizer", seed=8)
    assert r.status == "ran" and env.fp("tokenizer") != old
    chk = check_blend(str(env.blend))
    assert chk.state == "stale"
    (p,) = chk.problems
    assert (p.what, p.stage, p.recorded, p.current) == ("tokenizer", "tokenizer", old, env.fp("tokenizer"))
    assert chk.message() == (f"{env.blend} is stale: tokenizer stage tokenizer of run {env.run} has fingerprint "
                             f"{env.fp('tokenizer')} now, the blend was mixed from {old}")
    capsys.readouterr()
    st = status(capsys, env)
    assert "stale: tokenizer re-committed after it" in st["shards"]
    assert f"STALE: tokenizer stage tokenizer of run {env.run} has fingerprint {env.fp('tokenizer')[:12]} now" in st[str(env.blend)]


def test_old_blends_without_lineage_are_unknown_not_stale(env, capsys, tmp_path):
    from arcforge.model.train import load_train_config

    plan = load_mixture(env.mix)
    write_mixture(plan, str(tmp_path / "old"))
    old = tmp_path / "old" / "s1.blend.json"
    data = json.loads(old.read_text())
    del data["lineage"]  # what arcforge mix wrote before blends carried fingerprints
    old.write_text(json.dumps(data))
    for ref in (env.run / BLENDS_DIR).glob("*.json"):
        ref.unlink()
    assert check_blend(str(old)).state == "unknown"
    st = status(capsys, env)
    assert "none found" in st["_text"]
    # found with --blends (it draws from this run's shards), reported as unknown
    st = status(capsys, env, "--blends", str(tmp_path / "old"))
    assert st[str(old)] == f"{old}: lineage unknown (written before arcforge mix recorded fingerprints)"
    # an old blend in the run's own folder is found without --blends
    (env.run / "mixture").mkdir()
    shutil.copy(old, env.run / "mixture" / "s1.blend.json")
    st = status(capsys, env)
    assert "lineage unknown" in st[str(env.run / "mixture" / "s1.blend.json")]
    # train reads it, with a note, and does not refuse it even after the shards changed
    env.rerun(min_score=0.6)
    load_train_config(env.train_yaml(blend_file=str(old)))
    assert f"note: data.blend_file: {old} has no lineage" in capsys.readouterr().err


def test_check_run_without_the_run_config_still_lists_the_chain(env):
    env.cfg.unlink()
    states, note = check_run(str(env.run))
    assert [s.name for s in states] == ["books", "code", "select", "tokenizer", "shards"]
    assert all(s.state == "committed" for s in states)
    assert note and "not checked" in note and str(env.cfg) in note


HELD = "  - {{name: held, uses: tokenize.megatron_shards, input: {src}, artifacts: {{tokenizer: tokenizer}}, engine: local}}\n"


def test_a_rerun_held_out_stage_makes_the_per_split_file_stale_not_the_training_blend(env, capsys):
    from arcforge.model.train import load_train_config

    def run_held(src: str) -> None:
        env.cfg.write_text(run_yaml(env.root, env.inputs) + HELD.format(src=src))
        (r,) = Runner(load_plan(env.cfg)).run(only="held")
        assert r.status == "ran"

    run_held("books")
    env.mix.write_text(env.mix.read_text() + f"valid: {env.run / 'held'}\n")
    assert main(["mix", str(env.mix)]) == 0
    lin = json.loads(env.blend.read_text())["lineage"]
    (h,) = lin["held_out"]
    old = env.fp("held")
    assert (h["stage"], h["run"], h["fingerprint"], h["splits"]) == ("held", str(env.run), old, ["valid", "test"])
    assert h["artifacts"]["tokenizer"]["fingerprint"] == env.fp("tokenizer")
    assert [d["stage"] for d in lin["shards"]] == ["shards"]  # training draws from shards alone
    capsys.readouterr()
    assert check(capsys, env)[0] == 0
    assert f"| per-split valid/test <- held {old[:12]}" in status(capsys, env)[str(env.blend)]

    run_held("code")  # the held-out stage re-run on other text
    new = env.fp("held")
    assert new != old
    chk = check_blend(str(env.blend))
    assert chk.state == "fresh" and not chk.problems  # the training blend still matches its shards
    assert [(p.what, p.stage, p.recorded, p.current) for p in chk.held_out_problems] == [("held-out shards", "held", old, new)]
    line = status(capsys, env)[str(env.blend)]
    assert line.startswith(f"{env.blend}  fresh; per-split valid/test STALE: held-out shards stage held of run {env.run} "
                           f"has fingerprint {new[:12]} now, the blend was mixed from {old[:12]}; re-run arcforge mix {env.mix}"), line
    assert check(capsys, env) == (1, f"status --check: 1 problem: the per-split file of blend {env.blend} is stale (held-out shards)")
    # train reads the training blend, unchanged: a note, not a refusal
    load_train_config(env.train_yaml())
    per_split = env.tmp / "blends" / "s1.per-split.json"
    assert f"note: data.blend_file: the valid/test blends of {per_split} are stale: held-out shards stage held" in capsys.readouterr().err

    assert main(["mix", str(env.mix)]) == 0  # mixed again: fresh, valid drawn from the new held-out shards
    capsys.readouterr()
    assert not check_blend(str(env.blend)).held_out_problems
    assert check(capsys, env)[0] == 0
    valid = json.loads(per_split.read_text())["valid"]
    assert valid[1::2] and all(p.startswith(str(env.run / "held") + "/") for p in valid[1::2])


def test_status_says_which_input_files_moved_or_changed_and_which_code_version(env, capsys, monkeypatch):
    from arcforge.runtime.stage import resolve_stage

    assert json.loads((env.run / "books" / "_manifest.json").read_text())["version"] == "1"
    # the same files under another directory (a corpus cache moved): every source stage says where
    moved = env.tmp / "moved-inputs"
    shutil.copytree(env.inputs, moved)
    env.cfg.write_text(run_yaml(env.root, moved))
    st = status(capsys, env)
    assert (f"stale: its input files moved: {env.inputs / 'books.jsonl'} is now {moved / 'books.jsonl'} (it would be "
            in st["books"]), st["books"]
    assert "stale: it reads books, which is stale" in st["select"]
    # another file listed as well: the new one is named
    env.cfg.write_text(run_yaml(env.root, env.inputs).replace(
        f'files: ["{env.inputs}/books.jsonl"]', f'files: ["{env.inputs}/books.jsonl", "{env.inputs}/code.jsonl"]'))
    st = status(capsys, env)
    assert f"stale: its input files differ from the committed ones: 1 new ({env.inputs / 'code.jsonl'}) (it would be " in st["books"]
    # one file grown: that file is named
    with (moved / "code.jsonl").open("a") as f:
        f.write(json.dumps({"id": "extra", "text": "x = 1", "score": 0.5}) + "\n")
    env.cfg.write_text(run_yaml(env.root, env.inputs))
    shutil.copy(moved / "code.jsonl", env.inputs / "code.jsonl")
    st = status(capsys, env)
    assert f"stale: input file changed size since it was committed: {env.inputs / 'code.jsonl'} (it would be " in st["code"]
    assert "fresh  <- " in st["books"]
    # a new code version of io.read
    monkeypatch.setattr(resolve_stage("io.read"), "version", "2")
    st = status(capsys, env)
    assert "stale: its stage's code version changed (1 -> 2) (it would be " in st["books"], st["books"]
