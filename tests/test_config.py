"""Config errors are one line naming the file, the key and the expectation, before any engine starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pipeline_stages import make_line_files

from arcforge.runtime.config import ConfigError, load_plan

GOOD = """
name: t
storage: {{root: "{root}"}}
stages:
  - {{name: lines, uses: "pipeline_stages:LINES", input: {{files: ["{inputs}/*.txt"]}}}}
  - {{name: filt, uses: "pipeline_stages:SLOW_FILTER", input: lines, params: {{min_chars: 3}}}}
"""


@pytest.fixture()
def env(tmp_path):
    make_line_files(tmp_path / "in", n_files=1, n_lines=3)
    return {"root": str(tmp_path / "runs"), "inputs": str(tmp_path / "in")}


def _error(tmp_path, text: str) -> str:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_plan(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{cfg}: ")
    return msg.removeprefix(f"{cfg}: ")


def test_good_config_resolves(tmp_path, env):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD.format(**env))
    plan = load_plan(cfg)
    assert [s.name for s in plan.stages] == ["lines", "filt"]
    assert plan.stages[1].params.min_chars == 3


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("name: t\n", "name: t\ncolour: blue\n"), "colour: unknown key"),
        (lambda t: t.replace("min_chars: 3", "min_chars: lots"), "stages[filt].params.min_chars: Input should be a valid integer"),
        (lambda t: t.replace("min_chars: 3", "min_char: 3"), "stages[filt].params.min_char: unknown key"),
        (lambda t: t.replace("input: lines", "input: nowhere"), "stages[filt].input: 'nowhere' is not a stage of this run"),
        (lambda t: t.replace('uses: "pipeline_stages:SLOW_FILTER"', "uses: web.nothing"), "stages[filt].uses: unknown stage 'web.nothing'"),
        (lambda t: t.replace("/*.txt", "/*.warc"), "stages[lines].input.files: no file matches"),
        (lambda t: t.replace('storage: {root: "', 'storage: {rot: "'), "storage.rot: unknown key"),
        (lambda t: t.replace("  - {name: filt", "  - {engine: spark, name: filt").replace("engine: spark", "engine: flink"), "stages[filt].engine: Input should be 'local', 'spark' or 'ray'"),
        (lambda t: t + '  - {name: d, uses: "pipeline_stages:LOCAL_ONLY", input: lines, engine: spark}\n', "stages[d].engine: test.local_only runs on local, not 'spark'"),
        (lambda t: t.replace('root: "', 'root: "${ARCFORGE_UNSET_VAR_FOR_TEST}'), "environment variable ${ARCFORGE_UNSET_VAR_FOR_TEST} is not set"),
        (lambda t: t.replace("stages:", "stages: ["), "not valid YAML at line"),
        (lambda t: t.replace("name: t\n", ""), "name: required key is missing"),
        # Ray Client cannot run Ray Data (checked by hand on a ray start --head: the first dataset fails)
        (lambda t: t.replace("name: t\n", 'name: t\nengines: {ray: {address: "ray://head:10001"}}\n'),
         "engines.ray.address: Value error, a Ray Client address (ray://) cannot run Ray Data, which the Ray engine uses"),
    ],
)
def test_config_errors_are_one_clear_line(tmp_path, env, edit, expected):
    msg = _error(tmp_path, edit(GOOD.format(**env)))
    assert expected in msg, msg


def test_cli_prints_one_line_and_exits_2_without_starting_engines(tmp_path, env):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(GOOD.format(**env).replace("min_chars: 3", "min_chars: lots"))
    proc = subprocess.run(
        [sys.executable, "-m", "arcforge.cli", "run", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"{cfg}: stages[filt].params.min_chars: Input should be a valid integer, unable to parse string as an integer (got 'lots')"]
    assert "Spark" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()
