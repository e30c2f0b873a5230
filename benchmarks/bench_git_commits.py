"""Commits as documents: ``code.git_commits`` (libgit2 through pygit2) against the ``git``
command printing the same patches.

The data is the code demo's three real histories (desk, storable and ts3 from go-git's
fixtures in the demo corpus: 238 commits that are not merges). arcforge's side is what a
worker does per repository (``_commits`` and ``commit_document`` in one process); the peer
is one ``git show --no-renames --format=%B <every commit>`` per repository, its output
read by this process. It reports the best time of each, their ratio, and whether the
patches are the same.

    .venv/bin/python benchmarks/bench_git_commits.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from arcforge.pipelines.code.git_history import _commits, _open, commit_document
from arcforge.pipelines.demo.corpus import fetch_demo_corpus

sys.path.insert(0, str(Path(__file__).parent))
from best_of import best_of  # noqa: E402

PACKS = ("jamesob-desk", "toqueteos-ts3", "tyba-storable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import pyarrow.fs as pafs

    root = fetch_demo_corpus(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        repos, shas = {}, {}
        for name in PACKS:
            repos[name] = _open(str(root / "git" / f"{name}.pack"), pafs.LocalFileSystem(), "pack", f"{tmp}/{name}")
            shas[name] = [str(c.id) for c in _commits(repos[name]) if len(c.parent_ids) < 2]  # git reads the same repository

        def ours() -> int:
            n = 0
            for name, repo in repos.items():
                for c in _commits(repo):
                    if len(c.parent_ids) < 2:
                        n += len(commit_document(repo, c)[0])
            return n

        def git() -> int:
            n = 0
            for name, repo in repos.items():
                out = subprocess.run(["git", "-C", repo.path, "show", "--no-color", "--no-renames", "--format=%B", *shas[name]],
                                     capture_output=True, check=True).stdout
                n += len(out.decode("utf-8", "replace"))
            return n

        best, size = best_of({"arcforge code.git_commits (libgit2)": ours, "git show (peer)": git}, args.repeat)
    n = sum(map(len, shas.values()))
    print(f"{n} commits of {len(PACKS)} repositories; best of {args.repeat}")
    for label, s in best.items():
        print(f"  {label:36s} {s:.3f} s  {n / s:,.0f} commits/s  {size[label]:,} characters out")
    a, b = best.values()
    print(f"  git / arcforge time: {b / a:.2f}x")


if __name__ == "__main__":
    main()
