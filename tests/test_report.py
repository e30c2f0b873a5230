"""``arcforge report``: the HTML page opened in a real headless Chromium, built from real runs.

Small runs (``io.read`` then a ``filter``, local engine, no Spark or Ray) are made once per
module; the demo pipeline run (``demo_run``, shared with other tests) checks every section
has real content. The page must work offline: every request that is not ``file:``/``data:``
is blocked and the test asserts none was attempted.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest
from browser import chromium_page, offline
from conftest import write_config

from arcforge.cli import main
from arcforge.runtime.config import load_plan
from arcforge.runtime.runner import Runner

SECTIONS = ["funnel", "languages", "scores", "buckets", "dedup", "domains", "samples", "runtime", "checks"]
XSS = 'XSS here <script>window.__xss=1</script> and <img src=x onerror="window.__xss=2"> end'
HUGE_END = "HUGE-DOCUMENT-LAST-WORDS"

CONFIG = """
name: small
storage: {{root: "{root}"}}
stages:
  - {{name: docs, uses: io.read, input: {{files: ["{inputs}"]}}, engine: local, params: {{source: web, keep: [language_score]}}}}
  - name: select
    uses: filter
    input: docs
    engine: local
    params:
      rules:
        - {{column: language_score, op: ">=", value: {threshold}, reason: low_language_score}}
        - {{column: language, op: in, value: [en, de], reason: language_not_selected}}
    checks:
      - {{metric: drop_share, max: 0.9}}
      - {{metric: docs_out, min: 1000, blocking: false}}
{extra}"""

SECOND_FILTER = """  - {name: again, uses: filter, input: select, engine: local,
     params: {rules: [{column: language_score, op: "<=", value: 0.99}]}}
"""


def _inputs(path: Path) -> Path:
    rng = random.Random(7)
    words = "alpha beta gamma delta epsilon river stone cloud".split()
    docs = [{"id": "d000", "text": XSS + "\nsecond line", "url": "https://xss.example.org/a", "language": "en",
             "language_score": 0.99},
            {"id": "d001", "text": "Huge document first line\n" + "lorem ipsum " * 200_000 + HUGE_END,
             "url": "https://big.example.org/b", "language": "en", "language_score": 0.98}]
    for i in range(2, 80):
        docs.append({"id": f"d{i:03d}", "text": f"Document {i} first line\n" + " ".join(rng.choice(words) for _ in range(30 + i)),
                     "url": f"https://site{i % 5}.example.com/p{i}", "language": ["en", "de", "fr"][i % 3],
                     "language_score": round(0.2 + 0.75 * rng.random(), 3)})
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    return path


def _run(base: Path, inputs: Path, threshold: float, extra: str = "") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    cfg = write_config(base / "small.yaml", CONFIG.format(root=base / "runs", inputs=inputs, threshold=threshold, extra=extra))
    assert all(r.status == "ran" for r in Runner(load_plan(cfg)).run())
    return base / "runs" / "small"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report-runs")
    inputs = _inputs(base / "docs.jsonl.gz")
    out = {"a": _run(base / "a", inputs, 0.4), "b": _run(base / "b", inputs, 0.6)}
    # c: `again` has only commit records (its manifest is gone), and `select`'s threshold changed since
    c = _run(base / "c", inputs, 0.4, SECOND_FILTER)
    (c / "again" / "_manifest.json").unlink()
    assert list((c / "again" / "_commits").iterdir())
    write_config(base / "c" / "small.yaml", CONFIG.format(root=base / "c" / "runs", inputs=inputs, threshold=0.5,
                                                          extra=SECOND_FILTER))
    out["c"] = c
    return out


def _report(capsys, run: Path, out: Path, *more: str) -> Path:
    assert main(["report", str(run), "-o", str(out), *more]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out.resolve())
    assert (out.parent / "report.json").is_file()
    return out


def _open(page, path: Path) -> list[str]:
    blocked = offline(page)
    page.goto(path.resolve().as_uri())
    return blocked


def test_report_opens_cleanly_with_every_section(runs, tmp_path, capsys):
    html_path = _report(capsys, runs["a"], tmp_path / "one" / "report.html")
    data = json.loads((tmp_path / "one" / "report.json").read_text())
    assert {"format", "run", "stages", "funnel", "languages", "scores", "buckets", "dedup", "domains", "samples",
            "runtime", "checks"} <= set(data)
    # deterministic: a second report of the same run writes the same report.json
    _report(capsys, runs["a"], tmp_path / "two" / "r.html")
    assert (tmp_path / "two" / "report.json").read_bytes() == (tmp_path / "one" / "report.json").read_bytes()
    select = next(f for f in data["funnel"]["stages"] if f["name"] == "select")
    assert select["docs_in"] == 80 and select["dropped"]["low_language_score"]["docs"] > 0
    assert [t["value"] for t in next(s for s in data["scores"] if s["name"] == "language_score")["thresholds"]] == [0.4]
    with chromium_page() as (page, errors):
        blocked = _open(page, html_path)
        for sid in SECTIONS:
            assert page.locator(f"section#{sid}").count() == 1, sid
            assert page.locator(f"nav a[href='#{sid}']").count() == 1, sid
        assert page.locator("#scores svg line.threshold").count() >= 1
        assert "low_language_score" in page.locator("#funnel").inner_text()
        assert "de" in page.locator("#languages table").inner_text()
        assert "site0.example.com" in page.locator("#domains").inner_text()
        assert "no mixture yet" in page.locator("#buckets").inner_text()
        checks = page.locator("#checks").inner_text()
        assert "drop_share" in checks and "docs_out" in checks and "fail" in checks and "pass" in checks
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert errors == [] and blocked == []


def test_document_text_is_escaped_and_huge_documents_are_cut(runs, tmp_path, capsys):
    html_path = _report(capsys, runs["a"], tmp_path / "report.html")
    text = html_path.read_text()
    assert "<script>window.__xss" not in text and "<img src=x" not in text
    assert HUGE_END not in text and len(text) < 400_000
    report = json.loads((tmp_path / "report.json").read_text())
    assert HUGE_END not in json.dumps(report)
    huge = next(d for d in report["samples"]["kept"]["docs"] if d["id"] == "d001")
    assert huge["cut"] and len(huge["text"]) <= 500 and huge["text_chars"] > 2_000_000
    with chromium_page() as (page, errors):
        blocked = _open(page, html_path)
        assert page.evaluate("window.__xss") is None
        samples = page.locator("#samples").inner_text()
        assert '<script>window.__xss=1</script> and <img src=x onerror="window.__xss=2">' in samples
        assert "Huge document first line" in samples and "2,400,0" in samples  # "cut: 2,400,0xx characters in all"
        assert page.locator("#samples img").count() == 0 and page.locator("script").count() == 0
    assert errors == [] and blocked == []


def test_compare_highlights_a_changed_drop_share(runs, tmp_path, capsys):
    html_path = _report(capsys, runs["a"], tmp_path / "cmp.html", "--compare", str(runs["b"]))
    data = json.loads((tmp_path / "report.json").read_text())
    row = next(d for d in data["compare"]["drops"] if d["reason"] == "low_language_score")
    assert row["diff"] and row["b"] > row["a"] + 0.01
    with chromium_page() as (page, errors):
        blocked = _open(page, html_path)
        assert page.locator("nav a[href='#compare']").count() == 1
        diff = page.locator("#compare tr.diff", has_text="low_language_score")
        assert diff.count() == 1
        assert diff.inner_text().split("\t")[-1].strip() == f"{row['a']:.1%} → {row['b']:.1%}"
        assert page.locator("#compare tr.diff", has_text="language_score").count() >= 2  # the threshold row too
        unchanged = page.locator("#compare tr", has_text="docs").filter(has_text="80 → 80")  # docs out of `docs`
        assert unchanged.count() == 1 and "diff" not in (unchanged.get_attribute("class") or "")
    assert errors == [] and blocked == []


def test_uncommitted_and_stale_stages_render_with_their_state(runs, tmp_path, capsys):
    html_path = _report(capsys, runs["c"], tmp_path / "c.html")
    states = {s["name"]: s["state"] for s in json.loads((tmp_path / "report.json").read_text())["stages"]}
    assert states == {"docs": "fresh", "select": "stale", "again": "incomplete"}
    with chromium_page() as (page, errors):
        blocked = _open(page, html_path)
        funnel = page.locator("#funnel").inner_text()
        assert "stale" in funnel and "not committed" in funnel and "1 parts done" in funnel
        assert "Traceback" not in page.content()
    assert errors == [] and blocked == []


def test_not_a_run_directory_is_one_line_and_exit_2(tmp_path, capsys):
    for path in (tmp_path / "missing", tmp_path):
        assert main(["report", str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_default_output_is_in_the_run_directory(runs, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(runs["a"], run)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.json").is_file()


def test_demo_run_report_has_content_in_every_section(demo_run, tmp_path, capsys):
    run_dir, _ = demo_run
    html_path = _report(capsys, run_dir, tmp_path / "demo.html")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["funnel"]["tokenizer"] and data["dedup"] and data["domains"]["top"] and data["languages"]
    with chromium_page() as (page, errors):
        blocked = _open(page, html_path)
        assert page.locator("#languages table tbody tr").count() >= 2
        assert "en" in page.locator("#languages table").inner_text()
        assert page.locator("#scores svg line.threshold").count() >= 1
        assert page.locator("#scores svg line.cutoff").count() >= 1
        assert page.locator("#dedup .card").count() >= 2 and page.locator("#dedup svg").count() >= 1
        assert page.locator("#domains svg text", has_text="wikipedia.org").count() >= 1
        assert page.locator("#buckets svg").count() >= 1
        assert page.locator("#samples .sample").count() >= 3 and page.locator("#samples details").count() >= 3
        assert page.locator("#runtime pre").count() == 1
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 50_000
    assert errors == [] and blocked == []
