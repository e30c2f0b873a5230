"""Data-quality checks: the config schema's one-line errors, and each metric on a real run."""

from __future__ import annotations

import gzip
import json

import pytest

from arcforge.report.checks import evaluate, evaluate_run, language_counts, status_lines
from arcforge.runtime.checkspec import CheckConfig
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef
from arcforge.runtime.runner import Runner
from conftest import write_config

CONFIG = """
name: checked
storage: {{root: {root}}}
stages:
  - name: read
    uses: io.read
    input: {{files: ["{inputs}"]}}
    engine: local
    params: {{source: t}}
  - name: stats
    uses: text.stats
    input: read
    engine: local
  - name: keep
    uses: filter
    input: stats
    engine: local
    params:
      rules:
        - {{column: n_words, op: ">=", value: 3, reason: few_words}}
        - {{column: n_chars, op: "<=", value: 60, reason: too_long}}
    checks:
{checks}
"""


def _run(tmp_path, checks: str):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for i in range(20):  # 4 with one word, 4 long, 12 kept
            text = "word" if i < 4 else ("many words " * 10 if i < 8 else f"three short words {i}")
            fh.write(json.dumps({"id": f"d{i}", "text": text, "language": "en" if i % 2 else "de"}) + "\n")
    cfg = write_config(tmp_path / "c.yaml", CONFIG.format(root=tmp_path / "runs", inputs=path, checks=checks))
    Runner(load_plan(cfg)).run()
    return tmp_path / "runs" / "checked", cfg


def test_each_metric_against_the_counted_stats(tmp_path, capsys):
    checks = """      - {metric: drop_share, max: 0.5}
      - {metric: drop_share, reason: few_words, min: 0.3, blocking: false}
      - {metric: error_share, max: 0}
      - {metric: docs_out, min: 12, max: 12}
      - {metric: docs_out, name: at_least_13, min: 13}"""
    run, _ = _run(tmp_path, checks)
    got = {o.name: o for o in evaluate_run(str(run))}
    assert got["drop_share"].passed and got["drop_share"].value == pytest.approx(8 / 20)
    few = got["drop_share_few_words"]
    assert few.passed is False and few.value == pytest.approx(4 / 20) and not few.blocking
    assert "4 of 20 documents dropped as few_words" in few.description and "outside 0.3 <= drop_share" in few.description
    assert got["error_share"].passed and got["error_share"].value == 0
    assert got["docs_out"].passed and got["docs_out"].value == 12
    assert got["at_least_13"].passed is False
    lines = status_lines(str(run))
    assert lines[0] == "checks: 3 passed, 2 failed, 0 not evaluated"
    assert lines[1].startswith("  FAIL keep.") and "(warning only)" in "".join(lines)
    from arcforge.cli import main

    assert main(["status", str(run), "--check"]) == 1  # a failed blocking check; the warning does not count
    assert capsys.readouterr().out.strip().splitlines()[-1] == "status --check: 1 problem: check keep.at_least_13 failed"


def test_language_distance_reads_the_language_column(tmp_path):
    run, _ = _run(tmp_path, "      - {metric: docs_out, min: 0}")
    counts = language_counts(DatasetRef(str(run / "keep")))
    assert counts == {"de": 6, "en": 6}  # the kept 12: ids 8..19
    assert language_counts(DatasetRef(str(run / "nope"))) == {}
    near = CheckConfig(metric="language_distance", reference={"en": 1, "de": 1}, max=0.01)
    far = CheckConfig(metric="language_distance", reference={"en": 0.9, "zh": 0.1}, max=0.3)
    assert evaluate(near, "keep", DatasetRef(str(run / "keep"))).value == pytest.approx(0)
    off = evaluate(far, "keep", DatasetRef(str(run / "keep")))
    assert off.passed is False and off.value == pytest.approx(0.5 * (0.4 + 0.5 + 0.1))


def test_a_stage_not_committed_is_not_evaluated(tmp_path):
    check = CheckConfig(metric="drop_share", max=0.1)
    out = evaluate(check, "later", DatasetRef(str(tmp_path / "later")))
    assert out.passed is None and "not committed" in out.description


@pytest.mark.parametrize("check, message", [
    ("{metric: drop_share}", "needs `min`, `max` or both"),
    ("{metric: drop_share, min: 0.5, max: 0.1}", "min 0.5 is above max 0.1"),
    ("{metric: error_share, reason: x, max: 0}", "drop_share only"),
    ("{metric: language_distance, max: 0.1}", "needs `reference`"),
    ("{metric: bucket_max_share, max: 0.5}", "needs a quality.buckets stage"),
    ("{metric: share_of_nonsense, max: 1}", "Input should be"),
    ("{metric: drop_share, max: 1, treshold: 2}", "unknown key"),
])
def test_a_bad_check_is_one_line_before_anything_runs(tmp_path, check, message):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n')
    cfg = write_config(tmp_path / "c.yaml", CONFIG.format(root=tmp_path / "runs", inputs=path, checks=f"      - {check}"))
    with pytest.raises(ConfigError) as err:
        load_plan(cfg)
    text = str(err.value)
    assert text.startswith(f"{cfg}: stages[keep].checks") and message in text and "\n" not in text
    assert not (tmp_path / "runs").exists()
