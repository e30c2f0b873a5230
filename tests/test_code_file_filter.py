"""``code.file_filter``: StarCoder's per-extension file rules, checked against NeMo Curator
1.4.0's filters (the oracle, benchmarks/peers/nemo_code_filters.py) on real files."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import write_config

from arcforge.pipelines.code.file_filter import FileFilterParams, file_reasons, rule_key, table
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.runtime.runner import Runner

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks" / "peers"))
from nemo_code_filters import installed_code_files, nemo_verdicts  # noqa: E402

# which NeMo Curator filter each of arcforge's reasons stands for
NEMO_FILTER = {"extension_unknown": "per_extension", "extension_excluded": "per_extension",
               "long_line": "per_extension", "mean_line_length": "per_extension",
               "alphanum_fraction": "per_extension", "alpha_fraction": "per_extension",
               "xml_header": "xml_header", "html_boilerplate": "html_boilerplate"}

# written files for the rules the installed packages hardly exercise
WRITTEN = [
    ("tools/box.py", "# a table drawn in ASCII\n" + "+--------+--------+\n|        |        |\n" * 30),
    ("src/empties.js", "var a = [\n" + "{},\n" * 200 + "];\n"),  # kept: NeMo Curator counts "\\n" and "," as alphanumeric
    ("conf/weights.json", json.dumps([round(i * 0.37, 2) for i in range(400)])),
    ("conf/names.yaml", "names:\n" + "  名前ブロック: abcdef\n" * 50),  # letters: half of them only as str.isalpha counts
    ("src/wide.c", "/* wide */\n" + ("int x = 1; " * 14 + "\n") * 20),
    ("src/UPPER.PY", "import os\n\nprint(os.getcwd())\n"),
    ("build/Makefile", "all:\n\tcc -o a a.c\n"),
    ("build/CMakeLists.txt", "cmake_minimum_required(VERSION 3.20)\nproject(a C)\n"),
    ("notes.txt", "a plain note\n"),
    ("page/empty.html", "<html><head><style>p{color:red}</style></head><body><script>var a=1;</script></body></html>"),
    ("page/ok.html", "<html><body>\n" + "<p>A paragraph that people read, about the code.</p>\n" * 5 + "</body></html>\n"),
    ("lib/x.rest", "Excluded by the table's reviewers\n=================================\n"),
    ("data/feed.js", '<?xml version="1.0"?>\n<feed><entry>not JavaScript</entry></feed>\n'),
]


def _ours(rows: list[dict], **params) -> tuple[list, list]:
    return file_reasons(pa.array([r["text"] for r in rows], pa.string()), [r["path"] for r in rows],
                        FileFilterParams(**params))


def test_keep_decisions_agree_with_nemo_curator_on_real_files():
    """Oracle: on about 500 real, non-empty files of 36 kinds from the installed packages (sources,
    headers, JSON, YAML, minified JavaScript, HTML, reST, CUDA, Fortran, ...) and the
    written ones above, arcforge keeps exactly the files NeMo Curator's filters keep, and
    each dropped file's reason is one NeMo Curator's filters also drop it for."""
    rows = installed_code_files() + [{"id": p, "path": p, "text": t} for p, t in WRITTEN]
    reasons, details = _ours(rows)
    verdicts = nemo_verdicts(rows)
    assert len(verdicts) > 450 and len({rule_key(r["path"]) for r in rows}) > 30
    for row, reason, det in zip(rows, reasons, details):
        if row["id"] in verdicts:  # all but empty files
            assert (reason is None) == (not verdicts[row["id"]]), (row["path"], reason, det, verdicts[row["id"]])
            assert reason is None or NEMO_FILTER[reason] in verdicts[row["id"]], (row["path"], reason)
        else:  # an empty file: kept where its extension is (NeMo Curator divides by zero on it)
            rule = table().get(rule_key(row["path"]) or ("", "?"))
            assert row["text"] == "" and reason == (
                "extension_unknown" if rule is None else None if rule.include else "extension_excluded"), row["path"]
    seen = Counter(reasons)
    assert {r for r in NEMO_FILTER if seen[r]} == set(NEMO_FILTER), seen  # every rule decided some file
    assert seen[None] > 300
    by_path = dict(zip((r["path"] for r in rows), zip(reasons, details)))
    assert by_path["tools/box.py"][0] == "alphanum_fraction" and by_path["conf/weights.json"][0] == "alpha_fraction"
    assert by_path["src/wide.c"] == ("mean_line_length", "mean_line_length=140.454545 (threshold 100)")  # 3,112 / 22 - 1
    assert by_path["conf/names.yaml"][0] is None  # CJK letters are letters (str.isalpha, RE2's \pL)
    assert by_path["notes.txt"] == ("extension_unknown", "file=notes.txt")
    assert by_path["lib/x.rest"] == ("extension_excluded", "file=x.rest language=restructuredtext")
    assert by_path["data/feed.js"][0] == "xml_header"
    assert [by_path[p][0] for p in ("src/empties.js", "src/UPPER.PY", "build/Makefile", "build/CMakeLists.txt", "page/ok.html")] == [None] * 5


def test_the_table_is_nemo_curators():
    """extension_rules.csv is NeMo Curator's code_meta.csv cut to the deciding columns."""
    import csv
    import importlib.util

    meta = Path(importlib.util.find_spec("nemo_curator").origin).parent / "utils" / "code_meta.csv"
    theirs = {(r["language"], r["extension"]): r for r in csv.DictReader(open(meta)) if r["language"]}
    assert set(table()) == set(theirs) and len(theirs) > 290
    for key, rule in table().items():
        r = theirs[key]
        assert rule.include == (r["Include"] == "1"), key
        assert rule.long_line == (int(r["Long_line_threshold"]) if r["Long_line_threshold"].isdigit() else None), key
    assert table()[("json", "json")].alpha == 0.5 and table()[("markdown", "md")].long_line is None


def test_params_change_what_is_dropped():
    rows = [{"path": p, "text": t} for p, t in [
        ("notes.txt", "a plain note\n"), ("a/short.py", "x = 1\n"), ("a/long.py", "y = 2\n" * 30), ("a/none", "data\n"),
        ("a/empty.py", ""), (None, "x = 1\n"),
    ]]
    assert _ours(rows)[0] == ["extension_unknown", None, None, "extension_unknown", None, "no_path"]
    reasons, details = _ours(rows, unknown="keep", min_lines=5, max_lines=20, keep_empty=False)
    assert reasons == [None, "too_few_lines", "too_many_lines", None, "empty", "no_path"]
    assert details[1] == "lines=2 (threshold 5)" and details[5] == "column 'path' is null"
    reasons, _ = _ours(rows, extensions={"txt": {"language": "text", "long_line": 5}})
    assert reasons[0] == "long_line"
    with pytest.raises(ValueError, match="language"):
        FileFilterParams(extensions={"txt": {"include": True}})


RUN = """
name: code
storage: {{root: "{root}"}}
stages:
  - {{name: files, uses: io.read, input: {{files: ["{inputs}"]}}, engine: local, params: {{source: code, keep: [path], keep_empty: true}}}}
  - name: kept
    uses: code.file_filter
    input: files
    params: {params}
"""


def test_the_stage_keeps_every_dropped_file_in_rejected(tmp_path):
    rows = [{"id": f"w{i}", "path": p, "text": t} for i, (p, t) in enumerate(WRITTEN)]
    rows.append({"id": "e", "path": "pkg/__init__.py", "text": ""})
    inputs = tmp_path / "files.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = write_config(tmp_path / "run.yaml", RUN.format(root=tmp_path, inputs=inputs, params="{}"))
    assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran", "ran"]
    ref = DatasetRef(str(tmp_path / "code" / "kept"))
    kept = read_dataset(ref).to_pylist()
    rejected = read_dataset(ref.rejected).to_pylist()
    expected, _ = _ours(rows)
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r, x in zip(rows, expected) if x is None)
    assert {r["id"]: r["reason"] for r in rejected} == {r["id"]: x for r, x in zip(rows, expected) if x is not None}
    assert all(r["text"] and r["path"] and r["detail"] for r in rejected)  # the whole row, with why
    stats = read_manifest(ref)["stats"]
    assert stats["dropped"] == len(rejected) and stats["filter.alphanum_fraction"] == 1
    assert any(r["id"] == "e" for r in kept)  # the empty __init__.py


def test_a_missing_path_column_and_a_bad_rule_are_config_errors(tmp_path):
    inputs = tmp_path / "files.jsonl"
    inputs.write_text(json.dumps({"id": "a", "text": "x = 1\n", "path": "a.py"}) + "\n")
    cfg = write_config(tmp_path / "a.yaml", RUN.format(root=tmp_path, inputs=inputs, params="{path: file}"))
    with pytest.raises(ConfigError, match=r"stages\[kept\]: code.file_filter reads column\(s\) \['file'\]"):
        load_plan(cfg)
    cfg = write_config(tmp_path / "b.yaml", RUN.format(root=tmp_path, inputs=inputs,
                                                       params="{extensions: {txt: {long_line: 0, language: text}}}"))
    with pytest.raises(ConfigError, match=r"b.yaml.*extensions.txt.long_line"):
        load_plan(cfg)


def test_counting_ascii_characters_on_utf8_bytes():
    """``ascii_counts`` (the alphanumeric share) equals Python's count on multi-byte text,
    empty strings and an Arrow slice that starts mid-buffer."""
    from arcforge.runtime.rules import ascii_counts

    values = ["", "ab,c\n", "名前ブロック: x1!", "é" * 7 + "?.", "", "z"]
    arr = pa.array(values, pa.string())
    for start in range(len(values)):
        part = arr.slice(start)
        want = [sum(ch in "abcxz1\n,.?!" for ch in v) for v in values[start:]]
        assert ascii_counts(part, "abcxz1\n,.?!").tolist() == want
    assert ascii_counts(pa.array(["", ""], pa.string()), "a").tolist() == [0, 0]
