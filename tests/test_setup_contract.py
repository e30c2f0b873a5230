"""The set-up contract: a missing Java is one clear line; the README opens with the two commands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_says_what_to_install_when_java_is_missing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "bash", "sh", "sed", "head", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = subprocess.run(["make", "-s", "check-java"], cwd=ROOT, env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert proc.returncode != 0
    first = proc.stderr.splitlines()[0]
    assert first.startswith("make: Java is missing") and "openjdk-17" in first


def test_make_passes_the_java_check_here():
    assert subprocess.run(["make", "-s", "check-java"], cwd=ROOT, capture_output=True).returncode == 0


def test_readme_starts_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ")[0]
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
