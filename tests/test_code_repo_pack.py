"""Repository-level code packing: imports read by tree-sitter, resolved in the repository,
checked against Python's own import machinery (``modulefinder``) on real installed packages,
the dependency order, and the ``code.repo_pack`` stage on the local engine, Spark and Ray."""

from __future__ import annotations

import json
import modulefinder
import os
import posixpath
import random
import shutil
from pathlib import Path

import pytest
from conftest import write_config

from arcforge.pipelines.code.imports import RepoIndex, go_module, implied_packages, imports
from arcforge.pipelines.code.languages import language_of, path_comment
from arcforge.pipelines.code.repo_order import Order, chunk_blocks, dependency_order, min_unmet_first
from arcforge.pipelines.code.repo_pack import RepoPackParams, split_repo_path
from arcforge.runtime.config import ConfigError, load_plan
from arcforge.runtime.dataset import DatasetRef, read_dataset, read_manifest
from arcforge.runtime.runner import Runner

# ---------------------------------------------------------------------------- reading imports


def test_imports_are_read_as_written_in_each_language():
    py = "from __future__ import annotations\nimport os, a.b as c\nfrom .x import y, z as w\nfrom ..p.q import (r)\n" \
         "from . import m\nfrom k import *\ndef f():\n    import g\nimport os\n"
    assert imports(py, "python") == ["__future__|annotations", "os", "a.b", ".x|y", ".x|z", "..p.q|r", ".|m", "k", "g"]
    js = 'import a from "./a";\nconst d = require("./d");\nimport("./e");\nfoo("./no");\nexport * from "./c";\nimport "x";\n'
    assert imports(js, "javascript") == ["./a", "./d", "./e", "./c", "x"]
    ts = 'import {a} from "./a";\nimport type {B} from "../b";\nconst x: number = require("./d");\nlet y = <T,>(z: T) => z;\n'
    assert imports(ts, "typescript") == ["./a", "../b", "./d"]
    assert imports('import A from "./A";\nconst e = <div>{import("./lazy")}</div>;\n', "tsx") == ["./A", "./lazy"]
    assert imports('#include "a.h"\n#include <numpy/x.h>\nint main(void) { return 0; }\n', "c") == ["a.h", "<numpy/x.h>"]
    assert imports('#include "v.hpp"\ntemplate <class T> struct S {};\n', "c++") == ["v.hpp"]
    assert imports("package a.b;\nimport a.c.D;\nimport a.e.*;\nimport static a.f.G.h;\nclass X {}\n", "java") == \
        ["a.c.D", "a.e.*", "a.f.G.h"]
    go = 'package main\nimport "fmt"\nimport (\n  "github.com/x/y/pkg/z"\n  alias "github.com/x/y/q"\n)\n'
    assert imports(go, "go") == ["fmt", "github.com/x/y/pkg/z", "github.com/x/y/q"]
    assert imports("def broken(:\n  import ok\n", "python") == ["ok"]  # a syntax error costs only what it breaks
    assert imports("fn main() {}", "rust") == [] and imports("", "python") == []


def test_languages_and_path_comments():
    assert [language_of(p) for p in ("a/B.PY", "x.hpp", "m.mjs", "v.tsx", "README.md", "Makefile")] == \
        ["python", "c++", "javascript", "tsx", None, None]
    assert path_comment("a/b.py", "python") == "# a/b.py"
    assert path_comment("a/b.go", "go") == "// a/b.go"
    assert path_comment("q.sql", "sql") == "-- q.sql"
    assert path_comment("README.md", None) == "# README.md"
    assert path_comment("s/base.css", "css") == "/* s/base.css */"
    assert path_comment("t/a.html", language_of("t/a.HTML")) == "<!-- t/a.html -->"


# ---------------------------------------------------------------------------- resolving them


def test_resolution_in_each_language():
    idx = RepoIndex([
        "src/pkg/__init__.py", "src/pkg/core.py", "src/pkg/sub/__init__.py", "src/pkg/sub/leaf.py", "scripts/run.py",
        "scripts/helper.py", "tests/test_core.py",
        "web/app.js", "web/lib/util.ts", "web/lib/index.js", "web/view.jsx", "web/lib/types.d.ts",
        "c/main.c", "c/inc/lib.h", "include/proj/api.h", "c/stdio.h",
        "java/src/com/acme/Foo.java", "java/src/com/acme/util/Bar.java", "java/src/com/acme/util/Baz.java",
        "go/internal/store/store.go", "go/internal/store/cache.go", "go/cmd/main.go", "go/go.mod", "tools/lint/lint.go",
    ], go_modules={"go": go_module('// the shop\nmodule "example.com/shop" // v2 later\n\ngo 1.22\n')})
    py = "src/pkg/sub/leaf.py"
    assert idx.resolve(py, "python", "..|core") == ["src/pkg/core.py"]  # from .. import core
    assert idx.resolve(py, "python", ".|x") == ["src/pkg/sub/__init__.py"]  # x is a name in the package
    assert idx.resolve(py, "python", "pkg.core|thing") == ["src/pkg/core.py"]  # by its package-qualified name
    assert idx.resolve(py, "python", "pkg.sub|leaf") == []  # itself: not an edge
    assert idx.resolve(py, "python", "os") == [] and idx.resolve(py, "python", "core") == []  # no implicit relative in a package
    assert idx.resolve("scripts/run.py", "python", "helper") == ["scripts/helper.py"]  # a script's directory
    assert idx.resolve("tests/test_core.py", "python", "pkg|core") == ["src/pkg/core.py"]
    assert idx.resolve("web/app.js", "javascript", "./lib/util") == ["web/lib/util.ts"]
    assert idx.resolve("web/app.js", "javascript", "./lib") == ["web/lib/index.js"]
    assert idx.resolve("web/lib/util.ts", "typescript", "../view") == ["web/view.jsx"]
    assert idx.resolve("web/view.jsx", "javascript", "./lib/types") == ["web/lib/types.d.ts"]
    assert idx.resolve("web/app.js", "javascript", "react") == []
    assert idx.resolve("c/main.c", "c", "inc/lib.h") == ["c/inc/lib.h"]  # beside the file
    assert idx.resolve("c/main.c", "c", "proj/api.h") == ["include/proj/api.h"]  # an -I directory's header
    assert idx.resolve("c/main.c", "c", "<proj/api.h>") == ["include/proj/api.h"]
    assert idx.resolve("c/main.c", "c", "<stdlib.h>") == [] and idx.resolve("c/main.c", "c", "<stdio.h>") == ["c/stdio.h"]
    foo = "java/src/com/acme/Foo.java"
    assert idx.resolve(foo, "java", "com.acme.util.Bar") == ["java/src/com/acme/util/Bar.java"]
    assert idx.resolve(foo, "java", "com.acme.util.Bar.CONST") == ["java/src/com/acme/util/Bar.java"]  # import static
    assert idx.resolve(foo, "java", "com.acme.util.*") == ["java/src/com/acme/util/Bar.java", "java/src/com/acme/util/Baz.java"]
    assert idx.resolve(foo, "java", "java.util.List") == []
    assert idx.resolve("go/cmd/main.go", "go", "example.com/shop/internal/store") == \
        ["go/internal/store/cache.go", "go/internal/store/store.go"]
    assert idx.resolve("go/cmd/main.go", "go", "example.com/shop/internal") == []  # no .go file there
    assert idx.resolve("go/cmd/main.go", "go", "github.com/acme/tools/lint") == ["tools/lint/lint.go"]  # no go.mod: by its end
    assert idx.resolve("go/cmd/main.go", "go", "fmt") == []


def test_packages_without_their_init_file():
    """An empty ``__init__.py`` is often missing from code data (an empty document): relative
    imports still show the package, and a dotted name still finds its file by its path."""
    paths = ["lib/pkg/a.py", "lib/pkg/json.py", "lib/pkg/sub/b.py", "app/main.py", "app/util.py"]
    specs = {"lib/pkg/a.py": ["json", ".json|x"], "lib/pkg/sub/b.py": ["..|a"], "app/main.py": ["pkg.sub.b", "util"]}
    assert implied_packages(specs) == {"lib/pkg", "lib/pkg/sub"}
    idx = RepoIndex(paths, packages=implied_packages(specs))
    assert idx.resolve("lib/pkg/a.py", "python", "json") == []  # the standard library's, not the sibling
    assert idx.resolve("lib/pkg/a.py", "python", ".json|x") == ["lib/pkg/json.py"]
    assert idx.resolve("lib/pkg/sub/b.py", "python", "..|a") == ["lib/pkg/a.py"]
    assert idx.resolve("app/main.py", "python", "pkg.sub.b") == ["lib/pkg/sub/b.py"]
    assert idx.resolve("app/main.py", "python", "util") == ["app/util.py"]  # a script's directory
    assert RepoIndex(paths).resolve("lib/pkg/a.py", "python", "json") == ["lib/pkg/json.py"]  # what the hint prevents


def test_python_imports_read_as_pythons_own_parser_reads_them(demo_corpus):
    """Oracle: on the code demo's 243 real files, tree-sitter's reading of every import
    equals the standard library's ``ast`` (benchmarks/peers/python_ast_imports.py)."""
    import gzip
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks" / "peers"))
    from python_ast_imports import ast_imports

    rows = [json.loads(line) for f in sorted((demo_corpus / "code").glob("*.jsonl.gz"))
            for line in gzip.open(f, "rt", encoding="utf-8")]
    texts = [r["text"] for r in rows if r["url"].endswith(".py")]
    assert len(texts) > 200 and sum(len(ast_imports(t)) for t in texts) > 1000
    for t in texts:
        assert imports(t, "python") == ast_imports(t), t[:200]


class _Finder(modulefinder.ModuleFinder):
    """``modulefinder`` without its cache of failed bare names: it records a failed absolute
    ``import json`` under ``json`` and then skips a later ``from .json import x`` in the same
    package (``fsspec.spec`` does both), and it fails on namespace packages."""

    def _safe_import_hook(self, name, caller, fromlist, level=-1):  # noqa: ANN001, ANN202
        try:
            self.import_hook(name, caller, level=level)
        except (ImportError, SyntaxError, AttributeError):  # AttributeError: a namespace package has no loader
            self._add_badmodule(name, caller)
            return
        for sub in fromlist or ():
            try:
                self.import_hook(name, caller, [sub], level=level)
            except (ImportError, AttributeError):
                self._add_badmodule(f"{name}.{sub}", caller)


@pytest.mark.parametrize("package", ["datasketch", "fsspec"])
def test_python_edges_reach_what_pythons_import_machinery_loads(tmp_path, package):
    """Oracle: for every module of a real installed package, the files ``modulefinder`` (the
    standard library's static import scanner, on Python's own path finder) loads for
    ``import <module>`` are the files reachable from it over arcforge's edges, plus the
    ``__init__.py`` of every package on the way (Python runs those; they are not edges)."""
    src = Path(__import__(package).__file__).parent
    shutil.copytree(src, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    for d, _, fs in os.walk(tmp_path / package):  # modulefinder cannot load namespace packages (PEP 420)
        if "__init__.py" not in fs:
            Path(d, "__init__.py").write_text("")
    root = str(tmp_path)
    paths = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(tmp_path / package)
                   for f in fs if f.endswith(".py"))
    idx = RepoIndex(paths)
    deps = {p: {q for spec in imports(Path(root, p).read_text(), "python") for q in idx.resolve(p, "python", spec)}
            for p in paths}

    def packages_of(p: str) -> list[str]:
        out, d = [], posixpath.dirname(p)
        while d in idx.packages:
            out.append(f"{d}/__init__.py")
            d = posixpath.dirname(d)
        return out

    assert sum(map(len, deps.values())) > len(paths) // 2  # the packages do import themselves
    for p in paths:
        module = idx._module_name(p)
        top = posixpath.dirname(p)
        for _ in range(module.count(".") + p.endswith("__init__.py")):
            top = posixpath.dirname(top)
        script = tmp_path / "script.py"
        script.write_text(f"import {module}\n")
        finder = _Finder(path=list(dict.fromkeys([os.path.join(root, top), root])))
        finder.run_script(str(script))
        loaded = {os.path.relpath(m.__file__, root) for m in finder.modules.values()
                  if m.__file__ and m.__file__.startswith(root + os.sep) and m.__file__ != str(script)}
        reached, todo = set(), [p, *packages_of(p)]
        while todo:
            q = todo.pop()
            if q not in reached:
                reached.add(q)
                todo += [*deps[q], *packages_of(q)]
        assert reached == loaded, (p, sorted(loaded - reached), sorted(reached - loaded))


def test_c_includes_reach_what_gcc_lists(tmp_path):
    """Oracle: for every public header of the installed numpy, the repository's headers that
    ``gcc -MM`` (the preprocessor itself; ``-MG``: a missing system header is not an error)
    lists as its dependencies are the headers reachable from it over arcforge's edges.
    numpy's headers include each other both as ``"npy_common.h"`` and ``<numpy/npy_common.h>``."""
    import subprocess
    import sysconfig

    import numpy

    shutil.copytree(Path(numpy.get_include()) / "numpy", tmp_path / "numpy")
    paths = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "numpy").rglob("*") if p.suffix in (".h", ".c"))
    idx = RepoIndex(paths)
    deps = {p: {q for spec in imports(Path(tmp_path, p).read_text(errors="replace"), "c") for q in idx.resolve(p, "c", spec)}
            for p in paths}
    headers = [p for p in paths if p.endswith(".h")]
    assert len(headers) > 20 and sum(map(len, deps.values())) > 20
    for p in headers:
        out = subprocess.run(["gcc", "-MM", "-MG", "-I.", f"-I{sysconfig.get_paths()['include']}", "-x", "c", p],
                             cwd=tmp_path, capture_output=True, text=True, check=False).stdout
        listed = {w for w in out.replace("\\\n", " ").split()[1:] if w in idx.paths}
        reached, todo = set(), [p]
        while todo:
            q = todo.pop()
            if q not in reached:
                reached.add(q)
                todo += deps[q]
        assert listed and reached == listed, (p, sorted(listed - reached), sorted(reached - listed))


# ---------------------------------------------------------------------------- ordering and packing


def test_order_follows_imports_breaks_cycles_and_is_deterministic():
    import networkx as nx

    rng = random.Random(0)
    for trial in range(60):
        n = rng.randint(1, 25)
        paths = [f"f{i:02d}.py" for i in range(n)]
        back = 0.0 if trial < 30 else 0.05  # the first half acyclic, then some imports of later files (cycles)
        deps = {p: {paths[j] for j in range(n) if j != i and rng.random() < (0.3 if j < i else back)}
                for i, p in enumerate(paths)}
        names = paths[:]
        rng.shuffle(names)  # the order must not come from the names' order
        rename = dict(zip(paths, names))
        renamed = {rename[p]: {rename[d] for d in ds} for p, ds in deps.items()}
        order = dependency_order(sorted(renamed), renamed)
        assert sorted(order.paths) == sorted(names) and order.edges == sum(map(len, deps.values()))
        assert dependency_order(sorted(renamed, reverse=True), renamed) == order  # input order does not matter
        pos = {p: i for i, p in enumerate(order.paths)}
        graph = nx.DiGraph([(d, p) for p, ds in renamed.items() for d in ds])
        in_cycle = {p: i for i, c in enumerate(nx.strongly_connected_components(graph)) for p in c}
        outside = [(d, p) for p, ds in renamed.items() for d in ds if in_cycle[d] != in_cycle[p]]
        assert all(pos[d] < pos[p] for d, p in outside), trial  # an import outside a cycle: always respected
        broken = [(d, p) for p, ds in renamed.items() for d in ds if pos[d] > pos[p]]
        assert (order.cycles_broken == 0) == (not broken) and order.cycles_broken <= len(broken)
        if back == 0.0:  # acyclic: exactly DeepSeek-Coder's rule over the whole repository
            assert order.cycles_broken == 0 and order.paths == min_unmet_first(sorted(renamed), renamed)[0]
    cyc = dependency_order(["a", "b", "c", "d"], {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "x", "d"}})
    # a, b, c wait on one file each (a cycle): the smallest path, a, goes first with its import of b
    # unmet; then c (which imports a), b (imports c), and d (imports a; x is not in the repository)
    assert cyc.paths == ["a", "c", "b", "d"] and cyc.cycles_broken == 1 and cyc.edges == 4
    # two cycles, the first importing the second: DeepSeek-Coder's rule alone places b before c,
    # which b imports; the condensed order keeps the cycle {c, d} first
    two = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}
    assert min_unmet_first(["a", "b", "c", "d"], two) == (["a", "b", "c", "d"], 3)
    assert dependency_order(["a", "b", "c", "d"], two) == Order(["c", "d", "a", "b"], 5, 2)


def test_chunks_cut_only_at_file_boundaries():
    blocks = ["a" * 40, "b" * 30, "c" * 25, "d" * 200, "e" * 10, "f" * 10]
    chunks = chunk_blocks(blocks, 100)
    assert chunks == [[0, 1, 2], [3], [4, 5]]  # 40+1+30+1+25 = 97; the 200-character file stands alone
    assert [i for c in chunks for i in c] == list(range(len(blocks)))
    assert chunk_blocks(blocks, 10_000) == [list(range(6))] and chunk_blocks([], 5) == []


def test_repo_and_path_columns():
    assert split_repo_path("acme/x", "./src//a.py", None) == ("acme/x", "src/a.py")
    assert split_repo_path(None, "src/a.py", None) == (None, "src/a.py")
    assert split_repo_path("r", None, None) == ("r", None)
    assert split_repo_path(None, "acme/x/src/a.py", 2) == ("acme/x", "src/a.py")
    assert split_repo_path(None, "acme/a.py", 2) == (None, "acme/a.py")  # no file below the repository
    assert split_repo_path(None, "win\\dir\\a.c", 1) == ("win", "dir/a.c")
    assert RepoPackParams(repo_depth=1).repo_column() == "repo" and RepoPackParams(repo="name").repo_column() == "name"


# ---------------------------------------------------------------------------- the stage


RUN = """
name: code
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}, ray: {{num_cpus: 2}}}}
stages:
  - {{name: files, uses: io.read, input: {{files: ["{inputs}"]}}, engine: local, params: {{source: code, keep: [repo, path], partition_mb: 0.2, keep_empty: true}}}}
  - {{name: repos, uses: code.repo_pack, input: files, engine: {engine}, params: {{max_chars: {max_chars}}}}}
"""


def _package_files(package: str, repo: str) -> list[dict]:
    src = Path(__import__(package).__file__).parent
    return [{"repo": repo, "path": f"{package}/{p.relative_to(src).as_posix()}", "text": p.read_text()}
            for p in sorted(src.rglob("*.py")) if "__pycache__" not in p.parts]


def test_the_stage_packs_each_repository_on_every_engine(tmp_path, spark, ray_local):
    files = _package_files("datasketch", "ekzhu/datasketch") + _package_files("fsspec", "fsspec/filesystem_spec")
    files.append({"repo": "ekzhu/datasketch", "path": "datasketch/lsh.py", "text": "# a second copy of one path\n"})
    files.append({"repo": None, "path": "orphan.py", "text": "print('no repository')\n"})
    random.Random(1).shuffle(files)  # files of one repository spread over the input parts
    for i, f in enumerate(files):
        f["id"] = f"f{i:03d}"
    inputs = tmp_path / "files.jsonl"
    inputs.write_text("".join(json.dumps(f) + "\n" for f in files))
    shas = {}
    for engine in ("local", "spark", "ray"):
        cfg = write_config(tmp_path / f"{engine}.yaml", RUN.format(root=tmp_path / engine, inputs=inputs, engine=engine,
                                                                    max_chars=10_000_000))
        assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran", "ran"]
        ref = DatasetRef(str(tmp_path / engine / "code" / "repos"))
        manifest = read_manifest(ref)
        shas[engine] = [p["sha256"] for p in manifest["parts"]]
        assert [r.status for r in Runner(load_plan(cfg)).run()] == ["skipped", "skipped"]
    assert shas["spark"] == shas["local"] == shas["ray"]
    assert len(manifest["parts"]) > 1
    # a run killed after committing some parts: the re-run writes only the others, the same bytes
    out = tmp_path / "local" / "code" / "repos"
    lost = [p["name"] for p in manifest["parts"] if p["rows"]][-1]  # a part holding a repository's documents
    for path in (out / "_manifest.json", out / "_commits" / f"{lost}.json", out / lost):
        path.unlink()
    cfg = tmp_path / "local.yaml"
    [_, again] = Runner(load_plan(cfg)).run()
    assert again.status == "resumed" and again.ran == 1 and again.partitions == len(manifest["parts"])
    assert [p["sha256"] for p in read_manifest(DatasetRef(str(out)))["parts"]] == shas["local"]
    docs = read_dataset(DatasetRef(str(tmp_path / "local" / "code" / "repos"))).to_pylist()
    assert sorted(d["repo"] for d in docs) == ["ekzhu/datasketch", "fsspec/filesystem_spec"]
    stats = read_manifest(DatasetRef(str(tmp_path / "local" / "code" / "repos")))["stats"]
    assert stats["docs_in"] == len(files) and stats["code.repos"] == 2 and stats["code.files_packed"] == len(files) - 2
    assert stats["dropped.no_repo"] == 1 and stats["dropped.duplicate_path"] == 1
    assert stats["code.import_edges"] > 100 and stats["code.imports_external"] > 0
    rejected = read_dataset(DatasetRef(str(tmp_path / "local" / "code" / "repos" / "rejected"))).to_pylist()
    by_reason = {r["reason"]: r for r in rejected}
    dup = by_reason["duplicate_path"]
    original = next(f for f in files if f["path"] == "datasketch/lsh.py" and f["id"] != dup["id"])
    assert min(dup["id"], original["id"]) == original["id"] and dup["detail"] == f"same_as={original['id']}"
    assert by_reason["no_repo"]["path"] == "orphan.py"  # the rejected row keeps its columns
    for doc in docs:
        meta = json.loads(doc["metadata"])
        mine = {f["path"]: f for f in files if f["repo"] == doc["repo"] and f["id"] != dup["id"]}
        assert sorted(meta["paths"]) == sorted(mine) and doc["repo_files"] == len(mine) and doc["language"] == "python"
        assert doc["url"] == doc["repo"] and doc["source"] == "code" and doc["path"] is None
        for p in meta["paths"]:  # each file once, after its path comment, whole
            assert doc["text"].count(f"# {p}\n{mine[p]['text']}") == 1
        idx = RepoIndex(list(mine))
        pos = {p: i for i, p in enumerate(meta["paths"])}
        if doc["repo"] == "ekzhu/datasketch":  # no import cycle: every file after what it imports
            for p, f in mine.items():
                for spec in imports(f["text"], "python"):
                    assert all(pos[q] < pos[p] for q in idx.resolve(p, "python", spec)), (p, spec)
    # a small max_chars cuts each repository at file boundaries, in the same order
    cfg = write_config(tmp_path / "cut.yaml", RUN.format(root=tmp_path / "cut", inputs=inputs, engine="local", max_chars=60_000))
    Runner(load_plan(cfg)).run()
    parts = read_dataset(DatasetRef(str(tmp_path / "cut" / "code" / "repos"))).to_pylist()
    for doc in docs:
        mine = sorted((p for p in parts if p["repo"] == doc["repo"]), key=lambda p: json.loads(p["metadata"])["part"])
        metas = [json.loads(p["metadata"]) for p in mine]
        assert len(mine) > 1 and [m["part"] for m in metas] == list(range(len(mine))) == list(range(metas[0]["parts"]))
        assert [q for m in metas for q in m["paths"]] == json.loads(doc["metadata"])["paths"]
        assert "\n".join(p["text"] for p in mine) == doc["text"]
        assert all(len(p["text"]) <= 60_000 or p["repo_files"] == 1 for p in mine)


def test_a_missing_repo_column_is_a_config_error(tmp_path):
    inputs = tmp_path / "files.jsonl"
    inputs.write_text(json.dumps({"id": "a", "text": "x = 1\n", "path": "a.py"}) + "\n")
    cfg = write_config(tmp_path / "bad.yaml", RUN.format(root=tmp_path, inputs=inputs, engine="local", max_chars=10)
                       .replace("keep: [repo, path]", "keep: [path]"))
    with pytest.raises(ConfigError, match=r"stages\[repos\]: code.repo_pack reads column\(s\) \['repo'\]"):
        load_plan(cfg)


def test_the_code_demo_packs_docutils_and_pywb(tmp_path, demo_corpus, monkeypatch, capsys):
    """configs/code.demo.yaml on the demo corpus: two real projects' files (pinned sdists)."""
    import gzip

    monkeypatch.setenv("ARCFORGE_RUNS", str(tmp_path))
    monkeypatch.setenv("ARCFORGE_DEMO_CORPUS", str(demo_corpus))
    cfg = Path(__file__).parent.parent / "configs" / "code.demo.yaml"
    assert [r.status for r in Runner(load_plan(cfg)).run()] == ["ran"] * 6
    every = {}
    for bundle in sorted((demo_corpus / "code").glob("*.jsonl.gz")):
        for line in gzip.open(bundle, "rt", encoding="utf-8"):
            row = json.loads(line)
            every[row["url"]] = row["text"]
    # the file filter: every Python file kept; the minified libraries pywb vendors dropped
    # for their long lines, with every input file either kept or in rejected/
    filtered = DatasetRef(str(tmp_path / "code-demo" / "code_filter"))
    rejected = {r["url"]: r["reason"] for r in read_dataset(filtered.rejected).to_pylist()}
    files = {u: every[u] for u in read_dataset(filtered, columns=["url"]).column("url").to_pylist()}
    assert sorted([*files, *rejected]) == sorted(every) and not any(u.endswith(".py") for u in rejected)
    assert {rejected[f"pywb-2.10.0/pywb/static/{m}"] for m in
            ("js/bootstrap.min.js", "js/jquery-latest.min.js", "css/bootstrap.min.css")} == {"long_line"}
    assert set(rejected.values()) == {"long_line", "html_boilerplate"} and any(u.endswith(".js") for u in files)
    ref = DatasetRef(str(tmp_path / "code-demo" / "repos"))
    stats = read_manifest(ref)["stats"]
    assert stats["docs_in"] == len(files) > 200 and stats["code.files_packed"] == len(files) and stats.get("dropped", 0) == 0
    assert stats["code.repos"] == 2 and stats["code.import_edges"] > 400
    docs = read_dataset(ref).to_pylist()
    assert {d["repo"] for d in docs} == {"docutils-0.21.2", "pywb-2.10.0"}
    seen = []
    for d in docs:
        meta = json.loads(d["metadata"])
        assert len(d["text"]) <= 200_000 or d["repo_files"] == 1
        for p in meta["paths"]:
            block = f"{path_comment(p, language_of(p))}\n{files[d['repo'] + '/' + p]}"
            assert block in d["text"], p
            seen.append(f"{d['repo']}/{p}")
    assert sorted(seen) == sorted(files)  # every file once, in one document
    first = {d["repo"]: json.loads(d["metadata"])["paths"][0] for d in docs if json.loads(d["metadata"])["part"] == 0}
    # docutils/__init__.py imports nothing of docutils: it opens the project
    assert first["docutils-0.21.2"] == "docutils/__init__.py"
    # the packed repositories in Megatron shards, about half of them fill-in-the-middle transformed
    shards = read_manifest(DatasetRef(str(tmp_path / "code-demo" / "code_shards")))["stats"]
    commits = read_manifest(DatasetRef(str(tmp_path / "code-demo" / "commits")))["stats"]
    assert commits["git.commits"] == 238 and commits["git.repositories"] == 3  # tests/test_code_git_commits.py
    assert shards["docs_in"] == len(docs) + commits["git.commits"] and shards["shard.tokens"] > 500_000
    assert 0 < shards["shard.fim_psm"] + shards["shard.fim_spm"] < len(docs) and shards["shard.fim_spm"] > 0
    from megatron.core.datasets.indexed_dataset import IndexedDataset  # megatron's own reader

    from arcforge.tokenize.spm import Tokenizer

    tok = Tokenizer.load(str(tmp_path / "code-demo" / "code_tokenizer"))
    ids = {name: tok.special_id(name) for name in ("fim_prefix", "fim_middle", "fim_suffix")}
    seen_ids = {name: 0 for name in ids}
    n_docs = 0
    for idx in sorted((tmp_path / "code-demo" / "code_shards" / "shards" / "code").glob("*.idx")):
        ds = IndexedDataset(str(idx.with_suffix("")))
        n_docs += len(ds)
        for i in range(len(ds)):
            row = ds[i].tolist()
            for name, value in ids.items():
                seen_ids[name] += row.count(value)
            assert row[-1] == tok.eod_id
    # each transformed document holds each FIM sentinel once; the others hold none
    assert n_docs == len(docs) and set(seen_ids.values()) == {shards["shard.fim_psm"] + shards["shard.fim_spm"]}
    n_commits = 0  # the commits have their own shards, without FIM (`fim.sources: [code]`)
    for idx in sorted((tmp_path / "code-demo" / "code_shards" / "shards" / "commits").glob("*.idx")):
        ds = IndexedDataset(str(idx.with_suffix("")))
        n_commits += len(ds)
        assert not any(set(ds[i].tolist()) & set(ids.values()) for i in range(len(ds)))
    assert n_commits == commits["git.commits"]
    from arcforge.cli import main

    assert main(["status", str(tmp_path / "code-demo")]) == 0
    out = capsys.readouterr().out
    assert (f"repositories: 2 ({len(files)} files in {len(docs)} documents); imports: {stats['code.import_edges']:,} "
            f"between files of a repository, {stats['code.imports_external']:,} external; "
            f"{stats['code.cycles_broken']} files placed in an import cycle before a file they import") in out
