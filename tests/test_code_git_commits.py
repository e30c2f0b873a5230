"""``code.git_commits``: one document per commit, checked against git itself (the ``git``
command, a separate implementation from the libgit2 the stage reads with) on three real
histories from the demo corpus and on a repository written here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import write_config

from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.runtime.runner import Runner

PACKS = ("jamesob-desk", "toqueteos-ts3", "tyba-storable")
RUN = """
name: git
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}}}
stages:
  - name: commits
    uses: code.git_commits
    input: {{files: {files}}}
    engine: {engine}
    params: {params}
"""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True,
                         env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)})
    return out.stdout.decode("utf-8", "replace")


def _git_document(repo: Path, sha: str, merges: str = "skip") -> str:
    """What the stage should write for a commit, from git: the message, a blank line and
    ``git show --no-renames --format=``'s patch."""
    message = _git(repo, "log", "-1", "--format=%B", sha).rstrip("\n")
    extra = ["--diff-merges=first-parent"] if merges == "first_parent" else []
    patch = _git(repo, "show", "--no-color", "--no-renames", "--format=", *extra, sha).lstrip("\n")
    return f"{message}\n\n{patch}" if patch else f"{message}\n"


def _bare_from_pack(tmp: Path, pack: Path) -> Path:
    """A bare repository holding a pack, for the git command (it needs one to read a pack)."""
    repo = tmp / f"{pack.stem}.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    for ext in (".pack", ".idx"):
        shutil.copy(pack.with_suffix(ext), repo / "objects" / "pack" / f"pack-{pack.stem}{ext}")
    return repo


def _all_commits(repo: Path) -> dict[str, int]:
    """Every commit object git finds in the repository -> its number of parents."""
    listed = _git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objecttype) %(objectname)").split("\n")
    shas = [line.split()[1] for line in listed if line.startswith("commit ")]
    parents = _git(repo, "rev-list", "--no-walk=unsorted", "--parents", *shas).splitlines()
    return {line.split()[0]: len(line.split()) - 1 for line in parents}


def test_every_commit_of_three_real_histories_is_what_git_shows(tmp_path, demo_corpus):
    """Oracle: on desk (145 commits), storable (120) and ts3 (30) from go-git's fixtures (295,
    57 of them merges, as git counts them),
    the stage finds exactly the commits git finds, skips exactly the merges, and writes
    each commit's message and patch byte for byte as ``git show --no-renames`` prints them
    (empty new files, binary files, deleted files, function context in hunk headers)."""
    files = [str(demo_corpus / "git" / f"{name}.pack") for name in PACKS]
    cfg = write_config(tmp_path / "run.yaml", RUN.format(root=tmp_path / "out", files=json.dumps(files),
                                                         engine="local", params="{}"))
    assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran"]
    ref = DatasetRef(str(tmp_path / "out" / "git" / "commits"))
    docs = read_dataset(ref).to_pylist()
    stats = read_manifest(ref)["stats"]
    merges = 0
    for name in PACKS:
        repo = _bare_from_pack(tmp_path, demo_corpus / "git" / f"{name}.pack")
        commits = _all_commits(repo)
        mine = [d for d in docs if d["repo"] == name]
        assert sorted(d["commit"] for d in mine) == sorted(s for s, n in commits.items() if n < 2)
        merges += sum(n > 1 for n in commits.values())
        for d in mine:
            assert d["text"] == _git_document(repo, d["commit"]), (name, d["commit"])
            meta = json.loads(d["metadata"])
            assert d["url"] == f"{name}@{d['commit']}" and meta["parents"] == _git(repo, "log", "-1", "--format=%P", d["commit"]).split()
            numstat = [line.split("\t") for line in _git(repo, "show", "--no-renames", "--numstat", "--format=", d["commit"]).split("\n") if line]
            assert meta["files"] == len(numstat)
            assert meta["additions"] == sum(int(a) for a, _, _ in numstat if a != "-")
        times = [json.loads(d["metadata"])["committed_at"] for d in mine]
        assert times == sorted(times)  # in commit-time order
    assert stats["git.commits"] == len(docs) == 238 and stats["git.merges_skipped"] == merges == 57
    assert stats["git.repositories"] == 3 and stats["dropped"] == stats["dropped.merge"] == merges
    # a merge is kept in rejected/ with its message and parents, not lost
    rejected = read_dataset(ref.rejected).to_pylist()
    assert {r["reason"] for r in rejected} == {"merge"} and len(rejected) == merges
    for r in rejected[:5]:
        repo = tmp_path / f"{r['repo']}.git"
        assert r["text"] == _git(repo, "log", "-1", "--format=%B", r["commit"]).rstrip("\n") + "\n"
        assert len(json.loads(r["metadata"])["parents"]) > 1 and r["detail"].endswith("the merged commits are documents")
    joined = "".join(d["text"] for d in docs)
    assert "Binary files " in joined and "\nnew file mode " in joined and "\ndeleted file mode " in joined


def _written_repo(path: Path) -> Path:
    """A repository with the cases real histories have few of: an empty file, a binary
    file, a rename, text that is not UTF-8, a merge."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.org", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@example.org"}

    def commit(message: str, when: int, *extra: str) -> None:
        stamp = {"GIT_AUTHOR_DATE": f"{when} +0000", "GIT_COMMITTER_DATE": f"{when} +0000"}
        subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", message, *extra], check=True,
                       env={**os.environ, **env, **stamp})

    (path / "a.py").write_text("def f():\n    return 1\n" + "".join(f"x{i} = {i}\n" for i in range(40)))
    (path / "empty.txt").write_text("")
    commit("start\n\nwith a body", 1_600_000_000)
    (path / "logo.bin").write_bytes(bytes(range(256)) * 4)
    (path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (path / "a.py").write_text("def f():\n    return 2\n" + "".join(f"x{i} = {i}\n" for i in range(40)))
    commit("binary, latin-1, a change in a function", 1_600_000_100)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "-b", "side"], check=True)
    subprocess.run(["git", "-C", str(path), "mv", "a.py", "b.py"], check=True)
    commit("rename a.py", 1_600_000_200)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)
    (path / "c.py").write_text("print('c')\n")
    commit("add c", 1_600_000_300)
    subprocess.run(["git", "-C", str(path), "merge", "-q", "--no-ff", "-m", "merge side", "side"], check=True,
                   env={**os.environ, **env, "GIT_AUTHOR_DATE": "1600000400 +0000", "GIT_COMMITTER_DATE": "1600000400 +0000"})
    return path


def test_a_repository_directory_merges_resume_and_engines(tmp_path, spark):
    repo = _written_repo(tmp_path / "proj")
    files = json.dumps([str(repo)])
    shas = {}
    for engine in ("local", "spark"):
        cfg = write_config(tmp_path / f"{engine}.yaml", RUN.format(root=tmp_path / engine, files=files, engine=engine,
                                                                   params="{merges: first_parent}"))
        assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran"]
        ref = DatasetRef(str(tmp_path / engine / "git" / "commits"))
        shas[engine] = [p["sha256"] for p in read_manifest(ref)["parts"]]
    assert shas["local"] == shas["spark"]
    docs = read_dataset(DatasetRef(str(tmp_path / "local" / "git" / "commits"))).to_pylist()
    assert [d["text"].split("\n")[0] for d in docs] == ["start", "binary, latin-1, a change in a function",
                                                         "rename a.py", "add c", "merge side"]
    for d in docs:
        assert d["text"] == _git_document(repo, d["commit"], merges="first_parent"), d["commit"]
        assert d["repo"] == "proj"
    assert "Binary files /dev/null and b/logo.bin differ" in docs[1]["text"]
    assert "caf\ufffd cr\ufffdme" in docs[1]["text"]  # not UTF-8: replaced, as everywhere else
    assert "deleted file mode" in docs[2]["text"] and "new file mode" in docs[2]["text"]  # no rename detection
    # unchanged refs: nothing to do; a new commit: the repository is read again
    cfg = tmp_path / "local.yaml"
    assert [r.status for r in Runner(load_plan(cfg)).run()] == ["skipped"]
    (repo / "d.py").write_text("print('d')\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "add d"], check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "a",
                        "GIT_COMMITTER_EMAIL": "a@x"})
    [again] = Runner(load_plan(cfg)).run()
    assert again.status == "ran" and len(read_dataset(DatasetRef(str(tmp_path / "local" / "git" / "commits")))) == 6
    # merges rejected by default; a commit over max_chars is rejected with its size, not lost
    cfg = write_config(tmp_path / "small.yaml", RUN.format(root=tmp_path / "small", files=files, engine="local",
                                                           params="{max_chars: 600}"))
    Runner(load_plan(cfg)).run()
    ref = DatasetRef(str(tmp_path / "small" / "git" / "commits"))
    stats = read_manifest(ref)["stats"]
    rejected = read_dataset(ref.rejected).to_pylist()
    assert stats["git.merges_skipped"] == 1 and stats["git.commits"] == 5
    big = [r for r in rejected if r["reason"] == "too_large"]
    assert sorted(r["reason"] for r in rejected) == ["merge"] + ["too_large"] * len(big) and big
    assert all(len(r["text"]) > 600 and r["detail"].endswith("(max 600)") for r in big)
    assert len(big) + len(read_dataset(ref)) == 5  # every commit: a document, or rejected with its size


def test_a_pack_without_its_index_is_a_config_error(tmp_path, demo_corpus):
    pack = tmp_path / "lone.pack"
    shutil.copy(demo_corpus / "git" / "toqueteos-ts3.pack", pack)
    cfg = write_config(tmp_path / "bad.yaml", RUN.format(root=tmp_path, files=json.dumps([str(pack)]), engine="local",
                                                         params="{}"))
    with pytest.raises(ConfigError, match=r"bad.yaml: stages\[commits\]\.input\.files: .*lone.pack has no index beside it"):
        load_plan(cfg)
