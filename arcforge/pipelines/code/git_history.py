"""``code.git_commits``: a git repository's history, one document per commit in a diff-like
format (its message, then its patch), for GLM-4.5's mid-training commits data.

GLM-4.5 trains on "issues, PRs and commits from GitHub ... commits in a diff-like format"
(``../shared/reference/glm45.md``). The input is git repositories as they are kept: a
directory (a clone with ``.git``, or a bare repository) or a pack file with its ``.idx``
beside it (what a mirror's ``objects/pack/`` holds, and what go-git's fixtures ship). Each
repository is one partition, read with libgit2 (``pygit2``: its wheel bundles libgit2, so
no git binary is needed on a worker).

A document's text is the commit message as written, a blank line, and the patch as
``git show --no-renames --format= <commit>`` prints it: every file's ``diff --git`` header,
modes, ``index`` line and hunks, binary files as ``Binary files ... differ``. Two details
of libgit2's patch text differ from git's and are fixed here: git prints no ``---``/``+++``
lines for a file with no hunks (an empty new file), and git strips the trailing blanks of a
hunk header's function context. tests/test_code_git_commits.py compares every commit of
three real histories with git's own output. Renames are not detected (git's and libgit2's
similarity scores differ, so a rename is a deletion and an addition, as with
``--no-renames``).

Merges (two or more parents) are not documents by default (``merges: skip``): a merged
branch's commits are already documents. Each goes to ``rejected/`` as ``merge`` with its
message and parents (counted as ``git.merges_skipped`` too). ``merges: first_parent`` gives
a merge the patch against its first parent (``git show --diff-merges=first-parent``). A commit whose document would pass ``max_chars`` is
rejected as ``too_large`` (kept in ``rejected/``). Commits are ordered by commit time, then
id, so the output does not depend on how the repository stores its objects. Columns:
``repo`` (the directory or pack name without ``.git``/``.pack``), ``commit`` (its id);
``url`` = ``<repo>@<commit>``; ``metadata``: ``parents``, ``committed_at`` (UTC),
``files``, ``additions``, ``deletions``. Author names and e-mails are not kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from arcforge.runtime import storage
from arcforge.runtime.documents import DOC_SCHEMA, doc_id, dump_metadata, with_columns
from arcforge.runtime.stage import Output, Resources, SourceStage, Split, StageParams, TaskContext, split_rejected

GIT_FIELDS = (pa.field("repo", pa.string()), pa.field("commit", pa.string()))
SCHEMA = with_columns(DOC_SCHEMA, GIT_FIELDS)
BATCH_ROWS = 256
# a hunk header whose function context ends in blanks (libgit2 keeps them, git strips them)
_HUNK_TRAILING = re.compile(rb"^(@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@.*?)[ \t]+$", re.M)
_NO_HUNK_HEADERS = re.compile(rb"^--- .*\n\+\+\+ .*\n", re.M)


class GitCommitsParams(StageParams):
    source: str = "commits"
    merges: Literal["skip", "first_parent"] = "skip"
    max_chars: int = Field(200_000, ge=1)  # a longer document is rejected as too_large


def repo_name(uri: str) -> str:
    """``jamesob-desk.pack`` -> ``jamesob-desk``; ``/x/desk.git`` and ``/x/desk/`` -> ``desk``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".pack", ".git"):
        name = name.removesuffix(suffix)
    return name


def plan_repositories(uris: list[str], s3: Any, params: GitCommitsParams) -> list[Split]:
    """One partition per repository: a ``.pack`` (its ``.idx`` beside it) or a local
    directory holding one; ``.idx`` files a glob also matched are their packs' companions.
    A directory's partition key holds its refs, so a repository that gained commits is
    read again and an unchanged one is not."""
    splits = []
    for uri in uris:
        if uri.endswith(".idx"):
            continue
        if uri.endswith(".pack"):
            idx = uri[: -len(".pack")] + ".idx"
            fs, idx_path = storage.filesystem(idx, s3)
            if not storage.exists(fs, idx_path):
                raise FileNotFoundError(f"{uri} has no index beside it ({idx}); `git index-pack` writes one")
            splits.append(Split(uri, storage.file_size(uri, s3), {"kind": "pack"}))
        elif os.path.isdir(uri):
            splits.append(Split(uri, 0, {"kind": "repository", "refs": _refs_digest(uri)}))
        else:
            raise FileNotFoundError(f"{uri} is neither a .pack file nor a local git repository directory")
    return splits


def check_repositories(uris: list[str], s3: Any, params: GitCommitsParams) -> pa.Schema:
    """At plan time (before any engine starts): every input is a repository or an indexed pack."""
    plan_repositories(uris, s3, params)
    return SCHEMA


def _refs_digest(path: str) -> str:
    import pygit2

    try:
        repo = pygit2.Repository(path)
    except pygit2.GitError as exc:
        raise FileNotFoundError(f"{path} is not a git repository ({exc})") from None
    refs = sorted((name, str(repo.references[name].resolve().target)) for name in repo.references)
    return hashlib.sha256(repr(refs).encode()).hexdigest()[:16]


def patch_text(diff: Any) -> str:
    """A libgit2 diff as ``git show --no-renames`` prints it (module docstring)."""
    out = []
    for patch in diff:
        data = patch.data
        if not patch.hunks:
            data = _NO_HUNK_HEADERS.sub(b"", data)
        out.append(_HUNK_TRAILING.sub(rb"\1", data))
    return b"".join(out).decode("utf-8", "replace")


def commit_document(repo: Any, commit: Any) -> tuple[str, dict[str, Any]]:
    """The document text of one commit (message, blank line, patch) and its metadata."""
    if commit.parents:
        diff = repo.diff(commit.parents[0], commit)
    else:
        diff = commit.tree.diff_to_tree(swap=True)  # the root commit: everything added
    patch = patch_text(diff)
    message = commit.raw_message.decode("utf-8", "replace").rstrip("\n")
    stats = diff.stats
    meta = {"parents": [str(p) for p in commit.parent_ids],
            "committed_at": datetime.fromtimestamp(commit.commit_time, timezone.utc).isoformat(),
            "files": stats.files_changed, "additions": stats.insertions, "deletions": stats.deletions}
    return (f"{message}\n\n{patch}" if patch else f"{message}\n"), meta


def _commits(repo: Any) -> list[Any]:
    """Every commit reachable from the refs; a pack without refs: every commit in it."""
    import pygit2

    starts = [repo.references[n].resolve().target for n in repo.references]
    starts = [t for t in starts if repo[t].type == pygit2.enums.ObjectType.COMMIT]
    if not starts:  # an object in two packs is listed twice
        found = {o: repo[o] for o in repo.odb}
        commits = [c for c in found.values() if c.type == pygit2.enums.ObjectType.COMMIT]
    else:
        seen: dict[str, Any] = {}
        walker = repo.walk(starts[0], pygit2.enums.SortMode.NONE)
        for t in starts[1:]:
            walker.push(t)
        for c in walker:
            seen[str(c.id)] = c
        commits = list(seen.values())
    return sorted(commits, key=lambda c: (c.commit_time, str(c.id)))


def _open(path: str, fs: Any, kind: str, tmp: str) -> Any:
    """The repository of a partition; a pack is copied, with its index, into a new bare
    repository (libgit2 reads packs from ``objects/pack/``)."""
    import pygit2

    if kind == "repository":
        return pygit2.Repository(path)
    repo = pygit2.init_repository(tmp, bare=True)
    name = os.path.basename(path)[: -len(".pack")]
    for ext in ("pack", "idx"):
        with fs.open_input_stream(path[: -len(".pack")] + "." + ext) as src, \
                open(os.path.join(tmp, "objects", "pack", f"{name}.{ext}"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return pygit2.Repository(repo.path)


def _merge_row(commit: Any) -> tuple[str, dict[str, Any]]:
    """A merge that is not a document: its message and parents, for ``rejected/``."""
    message = commit.raw_message.decode("utf-8", "replace").rstrip("\n")
    return f"{message}\n", {"parents": [str(p) for p in commit.parent_ids],
                            "committed_at": datetime.fromtimestamp(commit.commit_time, timezone.utc).isoformat()}


def read_commits(path: str, fs: Any, params: GitCommitsParams, ctx: TaskContext) -> Iterator[Output]:
    name = repo_name(path)
    rows: list[dict[str, Any]] = []
    reasons: list[str | None] = []
    details: list[str | None] = []
    with tempfile.TemporaryDirectory(prefix="arcforge-git-") as tmp:
        repo = _open(path, fs, ctx.split.get("kind", "pack"), tmp)
        for commit in _commits(repo):
            sha = str(commit.id)
            if len(commit.parent_ids) > 1 and params.merges == "skip":
                ctx.stats.update("git.merges_skipped")
                text, meta = _merge_row(commit)
                reasons.append("merge")
                details.append(f"{len(commit.parent_ids)} parents; the merged commits are documents")
            else:
                text, meta = commit_document(repo, commit)
                too_large = len(text) > params.max_chars
                reasons.append("too_large" if too_large else None)
                details.append(f"chars={len(text)} (max {params.max_chars})" if too_large else None)
                ctx.stats.update("git.commits")
                ctx.stats.update("git.files_changed", meta["files"])
            rows.append({"id": doc_id("git", name, sha), "text": text, "source": params.source, "url": f"{name}@{sha}",
                         "language": None, "metadata": dump_metadata({"repo": name, "commit": sha, **meta}),
                         "repo": name, "commit": sha})
            if len(rows) >= BATCH_ROWS:
                yield split_rejected(pa.Table.from_pylist(rows, SCHEMA), reasons, details)
                rows, reasons, details = [], [], []
    ctx.stats.update("git.repositories")
    if rows:
        yield split_rejected(pa.Table.from_pylist(rows, SCHEMA), reasons, details)


GIT_COMMITS = SourceStage(
    "code.git_commits", GitCommitsParams, read_commits, schema=SCHEMA, plan=plan_repositories,
    infer_schema=check_repositories, reads_dirs=True,
    resources=Resources(cpus=1), engine="local",
    doc="Git repositories (directories, or .pack files with their .idx) -> one document per commit: "
        "its message and its patch as git show prints it.",
)
