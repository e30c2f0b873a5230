"""Lineage from input files to training blends: what a blend was mixed from, and what is stale.

``arcforge mix`` records in every ``<stage>.blend.json`` (and in ``mixture.json``) a
``lineage`` object::

    {"format": "arcforge.lineage/1", "created": 1717171717.1,
     "mixture": {"name": "demo", "config": "/abs/configs/mixture.demo.yaml",
                 "sha256": "<sha256 of the config file's bytes>",
                 "fingerprint": "<fingerprint of the validated, ${VAR}-expanded config>"},
     "shards": [{"uri": "/abs/runs/demo/shards", "run": "/abs/runs/demo", "stage": "shards",
                 "fingerprint": "<its _manifest.json's fingerprint>", "committed": 1717171000.0,
                 "rows": 40, "sources": ["books", "web", "wikipedia/high"],
                 "artifacts": {"tokenizer": {"uri": "/abs/runs/demo/tokenizer", "stage": "tokenizer",
                                             "fingerprint": "<the tokenizer's manifest fingerprint>"}}}],
     "held_out": [{"uri": "/abs/runs/demo/shards_eval", ..., "splits": ["valid", "test"]}]}

(``held_out``: the mixture's ``valid:``/``test:`` shards stages, which only the
``<stage>.per-split.json`` beside the blend uses)

and leaves a pointer ``<run>/_blends/<hash>.json`` (``{"format": "arcforge.blend-ref/1",
"blend": URI, ...}``) in every run it drew shards from, so ``arcforge status <run>`` finds the
blends made from that run wherever ``output`` put them.

Stale rules (``check_blend``): a blend is **stale** when a shards stage it names has no
committed manifest now, or its manifest's fingerprint differs from the recorded one, or the
recorded artifact (the tokenizer) has a different fingerprint now. The same change in a
``held_out`` stage makes the per-split file's valid/test blends stale
(``BlendCheck.held_out_problems``) but not the training blend: ``arcforge train`` notes it,
``arcforge status`` flags it. A blend without
``lineage`` (written before it existed) is **unknown**, never stale. ``check_run`` adds the
stage chain: a committed stage is stale when the fingerprint the runner would compute now
from its *committed* params and its inputs' current manifests differs from its own (an
upstream stage was re-run, an input file changed, or the stage's code version changed), when
the run config's params differ from the committed ones, or when a stage it reads is stale.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcforge.runtime import storage
from arcforge.runtime.dataset import DatasetRef, read_manifest
from arcforge.runtime.runner import RUN_FILE

LINEAGE_FORMAT = "arcforge.lineage/1"
BLEND_REF_FORMAT = "arcforge.blend-ref/1"
BLENDS_DIR = "_blends"  # in a run directory: pointers to the blends mixed from it


def short(fp: str | None) -> str:
    return (fp or "-")[:12]


def norm_uri(uri: str) -> str:
    """One spelling per location: absolute local paths, ``s3://`` URIs without a trailing slash."""
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def same_uri(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    a, b = norm_uri(a), norm_uri(b)
    if storage.is_s3(a) or storage.is_s3(b):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def parent_uri(uri: str) -> str:
    return norm_uri(uri).rsplit("/", 1)[0]


def read_json_uri(uri: str) -> Any | None:
    fs, path = storage.filesystem(uri)
    if not storage.exists(fs, path):
        return None
    return storage.read_json(fs, path)


def read_run_file(run: str) -> dict[str, Any] | None:
    return read_json_uri(storage.join(run, RUN_FILE))


def run_of(dataset_uri: str) -> str | None:
    """The run directory a stage directory belongs to (its parent holds ``_run.json``), else None."""
    parent = parent_uri(dataset_uri)
    fs, path = storage.filesystem(parent)
    return parent if storage.exists(fs, storage.join(path, RUN_FILE)) else None


def file_sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


# -- what a run's config says about a stage's artifacts ----------------------------------------


def config_stages(run_info: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The run config's stage entries by name (raw YAML, ``${VAR}`` expanded), if it can be read."""
    from arcforge.runtime.config import ConfigError, read_yaml

    cfg = run_info.get("config")
    if not cfg or not os.path.exists(cfg):
        return None
    try:
        data = read_yaml(cfg)
    except ConfigError:
        return None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, list):
        return None
    return {s["name"]: s for s in stages if isinstance(s, dict) and isinstance(s.get("name"), str)}


def stage_artifacts(run: str, stage: str, run_info: dict[str, Any] | None = None) -> dict[str, str] | None:
    """``{artifact name: stage}`` a stage of a run was built with; None when it cannot be told.

    From ``_run.json`` when it records them, else from the run config it names, else (for
    ``tokenize.megatron_shards``) the run's only ``tokenize.train_spm`` stage."""
    info = run_info if run_info is not None else read_run_file(run)
    if not info:
        return None
    entry = next((s for s in info.get("stages", []) if s.get("name") == stage), None)
    if entry is None:
        return None
    if isinstance(entry.get("artifacts"), dict):
        return dict(entry["artifacts"])
    stages = config_stages(info)
    if stages is not None and stage in stages:
        arts = stages[stage].get("artifacts") or {}
        return {str(k): str(v) for k, v in arts.items()} if isinstance(arts, dict) else None
    if entry.get("uses") == "tokenize.megatron_shards":
        spm = [s["name"] for s in info.get("stages", []) if s.get("uses") == "tokenize.train_spm"]
        if len(spm) == 1:
            return {"tokenizer": spm[0]}
    return None


# -- recording (arcforge mix) ------------------------------------------------------------------


def dataset_lineage(uri: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a blend records about one shards dataset it draws from."""
    uri = norm_uri(uri)
    run = run_of(uri)
    stage = manifest.get("stage") or uri.rsplit("/", 1)[-1]
    entry: dict[str, Any] = {
        "uri": uri,
        "run": run,
        "stage": stage,
        "fingerprint": manifest.get("fingerprint"),
        "committed": manifest.get("created"),
        "rows": manifest.get("rows"),
        "sources": [],
        "artifacts": None,  # unknown (no run, or the run does not say)
    }
    if run is not None:
        arts = stage_artifacts(run, stage)
        if arts is not None:
            entry["artifacts"] = {}
            for name, dep in sorted(arts.items()):
                dep_uri = storage.join(run, dep)
                m = read_manifest(DatasetRef(dep_uri))
                entry["artifacts"][name] = {"uri": dep_uri, "stage": dep, "fingerprint": m and m.get("fingerprint")}
    return entry


def mixture_identity(path: str, spec: Any) -> dict[str, Any]:
    from arcforge.runtime.dataset import fingerprint

    return {
        "name": spec.name,
        "config": os.path.abspath(path),
        "sha256": file_sha256(path),
        "fingerprint": fingerprint(spec.model_dump(mode="json")),
    }


def blend_lineage(
    mixture: dict[str, Any], datasets: dict[str, dict[str, Any]], used: dict[str, list[str]],
    held_out: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The ``lineage`` object of a blend that draws ``used[uri]`` (source labels) from each dataset;
    ``held_out[uri]``: the splits (``valid``, ``test``) of the per-split file a dataset makes."""
    shards = []
    for uri in sorted(used):
        entry = dict(datasets[uri])
        entry["sources"] = sorted(set(used[uri]))
        shards.append(entry)
    out = {"format": LINEAGE_FORMAT, "created": time.time(), "mixture": dict(mixture), "shards": shards}
    if held_out:
        out["held_out"] = [{**datasets[uri], "sources": [], "splits": sorted(set(held_out[uri]), reverse=True)}
                           for uri in sorted(held_out)]
    return out


def blend_ref_name(blend_uri: str) -> str:
    digest = hashlib.sha256(norm_uri(blend_uri).encode()).hexdigest()[:16]
    stem = norm_uri(blend_uri).rsplit("/", 1)[-1].removesuffix(".blend.json")
    return f"{stem}-{digest}.json"


def register_blend(run: str, blend_uri: str, mixture: dict[str, Any], stage: str) -> str:
    """Leave a pointer to a blend in a run directory; return its URI."""
    ref = storage.join(run, BLENDS_DIR, blend_ref_name(blend_uri))
    fs, path = storage.filesystem(ref)
    storage.write_json_atomic(fs, path, {
        "format": BLEND_REF_FORMAT, "blend": norm_uri(blend_uri), "stage": stage,
        "mixture": mixture.get("config"), "written": time.time(),
    })
    return ref


# -- checking a blend (arcforge train, arcforge status) ----------------------------------------


@dataclass
class Problem:
    stage: str  # the stage whose fingerprint moved (a shards stage or its artifact)
    run: str | None
    recorded: str | None
    current: str | None  # None: not committed now
    what: str  # "shards" or the artifact's name

    def text(self, full: bool = True) -> str:
        fmt = (lambda x: x or "-") if full else short
        where = f"stage {self.stage}" + (f" of run {self.run}" if self.run else "")
        if self.what != "shards":
            where = f"{self.what} {where}"
        if self.current is None:
            return f"{where} is not committed now (the blend was mixed from {fmt(self.recorded)})"
        return f"{where} has fingerprint {fmt(self.current)} now, the blend was mixed from {fmt(self.recorded)}"


@dataclass
class BlendCheck:
    path: str
    state: str  # "fresh", "stale", "unknown" (no lineage), "unreadable"
    lineage: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    held_out_problems: list[Problem] = field(default_factory=list)  # the per-split file's valid/test shards
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def mixture_config(self) -> str | None:
        return ((self.lineage or {}).get("mixture") or {}).get("config")

    def message(self) -> str:
        """One line: the blend, the stage and both fingerprints."""
        if self.state == "unknown":
            return f"{self.path} has no lineage (written before arcforge mix recorded fingerprints): not checked"
        if self.state == "unreadable":
            return f"{self.path}: cannot read the blend ({self.error})"
        if not self.problems:
            return f"{self.path} is fresh"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.path} is stale: {self.problems[0].text()}{more}"

    def datasets(self, held_out: bool = False) -> list[dict[str, Any]]:
        """The shards datasets the blend draws from (``held_out``: its per-split file's valid/test ones)."""
        return [d for d in (self.lineage or {}).get("held_out" if held_out else "shards") or [] if isinstance(d, dict)]

    def per_split_message(self) -> str | None:
        """One line when the per-split file's held-out blends are stale, else None."""
        if not self.held_out_problems:
            return None
        per_split = self.path.removesuffix(".blend.json") + ".per-split.json"
        more = f" (and {len(self.held_out_problems) - 1} more)" if len(self.held_out_problems) > 1 else ""
        return f"the valid/test blends of {per_split} are stale: {self.held_out_problems[0].text()}{more}"


def check_blend(path: str, data: dict[str, Any] | None = None) -> BlendCheck:
    """Compare the fingerprints a blend recorded with the manifests as they are now."""
    if data is None:
        try:
            data = read_json_uri(path)
        except (OSError, ValueError) as exc:
            return BlendCheck(path, "unreadable", error=" ".join(str(exc).split())[:200])
        if data is None:
            return BlendCheck(path, "unreadable", error="no such file")
    lineage = data.get("lineage") if isinstance(data, dict) else None
    shards = lineage.get("shards") if isinstance(lineage, dict) else None
    if not isinstance(shards, list) or not shards or not all(isinstance(d, dict) and d.get("uri") for d in shards):
        return BlendCheck(path, "unknown")
    check = BlendCheck(path, "fresh", lineage)

    def current(uri: str) -> tuple[bool, str | None]:
        try:
            m = read_manifest(DatasetRef(uri))
        except OSError as exc:  # unreachable storage: say so, do not call the blend stale for it
            check.notes.append(f"cannot read {uri}/_manifest.json ({' '.join(str(exc).split())[:120]})")
            return False, None
        return True, (m.get("fingerprint") if m else None)

    def moved(ds: dict[str, Any], what: str) -> list[Problem]:
        found = []
        ok, now = current(ds["uri"])
        if ok and now != ds.get("fingerprint"):
            found.append(Problem(ds.get("stage", ds["uri"]), ds.get("run"), ds.get("fingerprint"), now, what))
        for name, art in sorted((ds.get("artifacts") or {}).items()):
            if not isinstance(art, dict) or not art.get("uri"):
                continue
            ok, now = current(art["uri"])
            if ok and now != art.get("fingerprint"):
                found.append(Problem(art.get("stage", art["uri"]), ds.get("run"), art.get("fingerprint"), now, name))
        return found

    for ds in shards:
        check.problems += moved(ds, "shards")
    for ds in check.datasets(held_out=True):
        if ds.get("uri"):
            check.held_out_problems += moved(ds, "held-out shards")
    if check.problems:
        check.state = "stale"
    mix = lineage.get("mixture") or {}
    cfg = mix.get("config")
    if cfg and mix.get("sha256") and os.path.exists(cfg) and file_sha256(cfg) != mix["sha256"]:
        check.notes.append(f"the mixture config {cfg} changed since this blend was mixed")
    return check


# -- the stage chain of a run (arcforge status) ------------------------------------------------
