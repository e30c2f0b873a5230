"""Which stages and blends of a run are stale: the checks behind ``arcforge status``.

A committed stage is stale when the fingerprint the runner would compute now from its
*committed* params and its inputs' current manifests differs from its own (an upstream
stage was re-run, an input file changed, or the stage's code version changed), when the
run config's params differ from the committed ones, or when a stage it reads is stale.
Blends are found through the pointers ``arcforge mix`` leaves in ``<run>/_blends/``, the
run's own folders and ``--blends DIR``, and checked with ``lineage.check_blend``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from arcforge.runtime import storage
from arcforge.runtime.dataset import DatasetRef, read_commits, read_manifest
from arcforge.tokenize.lineage import (
    BLENDS_DIR,
    BlendCheck,
    config_stages,
    read_json_uri,
    check_blend,
    norm_uri,
    read_run_file,
    same_uri,
    short,
)


@dataclass
class StageState:
    name: str
    uses: str
    inputs: list[str]  # upstream stages
    artifacts: dict[str, str]  # artifact name -> stage
    sources: list[str]  # input files, or external datasets (``input: {dataset: ...}``)
    fingerprint: str | None
    committed: float | None
    state: str  # "fresh", "stale", "committed" (not checked), "not run", "incomplete"
    reason: str = ""


def _params_diff(committed: Any, now: Any, key: str = "") -> list[str]:
    """What changed, leaf by leaf: ``rules[0].value 0.2 -> 0.5``."""
    if isinstance(committed, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(committed) | set(now)):
            if committed.get(k) != now.get(k):
                out += _params_diff(committed.get(k), now.get(k), f"{key}.{k}" if key else str(k))
        return out
    if isinstance(committed, list) and isinstance(now, list) and len(committed) == len(now):
        return [d for i, (a, b) in enumerate(zip(committed, now)) if a != b for d in _params_diff(a, b, f"{key}[{i}]")]
    a, b = (json.dumps(x, default=str, sort_keys=True) for x in (committed, now))
    a, b = (x if len(x) <= 60 else x[:57] + "..." for x in (a, b))
    return [f"{key} {a} -> {b}"]


def _first(items: list[str]) -> str:
    return items[0] + (f" and {len(items) - 1} more" if len(items) > 1 else "")


def what_moved(manifest: dict[str, Any], rs: Any, tasks: list[Any]) -> str:
    """Why a stage's fingerprint moved when no input stage was re-committed after it: its code
    version (recorded in manifests since they carry ``version``), or, for a stage that reads
    files, which files moved, came, went or changed size (a file's path and size are in its
    partitions' fingerprints)."""
    then, now = manifest.get("version"), rs.stage.version
    if then is not None and then != now:
        return f"its stage's code version changed ({then} -> {now})"
    if rs.files:
        before, after = set(manifest.get("inputs") or []), set(rs.files)
        gone, new = sorted(before - after), sorted(after - before)
        if gone and [os.path.basename(x) for x in gone] == [os.path.basename(x) for x in new]:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            return f"its input files moved: {gone[0]} is now {new[0]}{more}"
        if gone or new:
            said = ([f"{len(new)} new ({_first(new)})"] if new else []) + ([f"{len(gone)} gone ({_first(gone)})"] if gone else [])
            return "its input files differ from the committed ones: " + "; ".join(said)
        fps: dict[str, set[str]] = {}
        for p in manifest.get("parts") or []:
            fps.setdefault(p.get("input"), set()).add(p.get("fingerprint"))
        changed = sorted({t.input_uri for t in tasks if t.fingerprint not in fps.get(t.input_uri, set())})
        if changed and then is not None:
            return f"input file{'s' if len(changed) > 1 else ''} changed size since it was committed: {_first(changed)}"
    if then is not None:  # same version, same files: the stages it reads changed without a newer commit
        return "its inputs changed since it was committed"
    return "its input files or its stage's code version changed since it was committed"


def check_run(run: str) -> tuple[list[StageState], str | None]:
    """Every stage of a run with its state, and a note when the fingerprint check could not run.

    The fingerprint check re-plans each committed stage as ``arcforge run --dry-run`` does
    (no engine starts) from the run config that ``_run.json`` names, with the stage's
    committed params, against the current manifests of its inputs."""
    info = read_run_file(run) or {"stages": []}
    configured = config_stages(info) or {}
    states: dict[str, StageState] = {}
    for st in info.get("stages", []):
        ref = DatasetRef(storage.join(run, st["name"]))
        m = read_manifest(ref)
        arts = st.get("artifacts")
        if not isinstance(arts, dict):
            raw = (configured.get(st["name"]) or {}).get("artifacts")
            arts = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        sources = [] if st.get("inputs") or m is None else list(m.get("inputs") or [])
        if m is not None:
            state = StageState(st["name"], st.get("uses", "?"), list(st.get("inputs") or []), arts, sources,
                               m.get("fingerprint"), m.get("created"), "committed")
        else:
            n = len(read_commits(ref))
            state = StageState(st["name"], st.get("uses", "?"), list(st.get("inputs") or []), arts, [], None, None,
                               "incomplete" if n else "not run", f"{n} parts done" if n else "")
        states[st["name"]] = state
    note = _fingerprint_check(run, info, states)
    order = [s["name"] for s in info.get("stages", [])]
    for name in order:  # a stage that reads a stale (or missing) stage is stale too
        s = states[name]
        if s.state not in ("fresh", "committed"):
            continue
        for dep in [*s.inputs, *s.artifacts.values()]:
            d = states.get(dep)
            if d is not None and d.state in ("stale", "not run", "incomplete"):
                s.state, s.reason = "stale", f"it reads {dep}, which is {d.state}"
                break
    return [states[n] for n in order], note


def _fingerprint_check(run: str, info: dict[str, Any], states: dict[str, StageState]) -> str | None:
    from arcforge.runtime.config import ConfigError, ResolvedStage, load_plan

    cfg = info.get("config")
    if not cfg:
        return "fingerprints of stages not checked: _run.json names no config"
    if not os.path.exists(cfg):
        return f"fingerprints of stages not checked: the run config {cfg} is not here (run status where the run was started)"
    try:
        plan = load_plan(cfg)
    except ConfigError as exc:
        return f"fingerprints of stages not checked: {exc}"
    from arcforge.runtime.runner import Runner
    from arcforge.runtime.stage import ArtifactStage

    runner = Runner(plan)
    runner.run_ref = DatasetRef(run)  # the directory asked about, wherever the config's root points now
    by_name = {rs.name: rs for rs in plan.stages}
    for name, s in states.items():
        if s.state != "committed":
            continue
        rs = by_name.get(name)
        if rs is None:
            s.reason = f"not in {cfg} any more"
            continue
        if rs.files:
            s.sources = list(rs.files)
        elif rs.datasets:
            s.sources = ["dataset " + d for d in rs.datasets]
        manifest = read_manifest(runner.stage_ref(name)) or {}
        committed = manifest.get("params") or {}
        now = rs.params.model_dump(mode="json")
        # the committed params, as the config would have set them (a stage may read which
        # params were given explicitly: io.read checks only the column keys a config names)
        changed = {k: v for k, v in committed.items() if now.get(k) != v}
        try:
            given = rs.params.model_dump(mode="json", include=rs.params.model_fields_set)
            params = rs.stage.params.model_validate({**given, **changed}) if changed else rs.params
        except ValueError:
            s.state, s.reason = "stale", f"its committed params no longer fit {rs.cfg.uses}'s params"
            continue
        then = ResolvedStage(rs.cfg, rs.stage, params, rs.engine, rs.files, rs.schema, rs.datasets)
        tasks: list[Any] = []
        try:
            if isinstance(rs.stage, ArtifactStage):
                fp = runner._artifact_plan(then)[2]
            else:
                tasks, fp = runner.build_tasks(then)[:2]
        except (RuntimeError, OSError, ValueError) as exc:
            s.state, s.reason = "stale", " ".join(str(exc).split())[:200]
            continue
        if fp != s.fingerprint:
            later = [d for d in [*s.inputs, *s.artifacts.values()]
                     if (states.get(d) and states[d].committed and s.committed and states[d].committed > s.committed)]
            why = f"{', '.join(later)} re-committed after it" if later else what_moved(manifest, rs, tasks)
            s.state, s.reason = "stale", f"{why} (it would be {short(fp)} now)"
            continue
        if now != committed:
            s.state, s.reason = "stale", f"{cfg} changed its params: {'; '.join(_params_diff(committed, now))}"
            continue
        s.state = "fresh"
    return None


# -- finding the blends of a run --------------------------------------------------------------


def _list(uri: str, recursive: bool = False) -> list[Any]:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except OSError:
        return []


def _uri_of(dir_uri: str, info_path: str) -> str:
    """A listed path back as a URI of the same kind as the directory listed."""
    return "s3://" + info_path if storage.is_s3(dir_uri) else info_path


def find_blends(run: str, extra_dirs: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Blend files of a run: registered under ``<run>/_blends/``, in the run's own folders that
    are not stages (e.g. ``<run>/mixture/``), and in ``extra_dirs``. Returns (blend URIs,
    registered blends whose file is gone)."""
    run = norm_uri(run)
    info = read_run_file(run) or {}
    stages = {s["name"] for s in info.get("stages", [])}
    found: list[str] = []
    gone: list[str] = []
    import pyarrow.fs as pafs

    for f in _list(storage.join(run, BLENDS_DIR)):
        if f.type != pafs.FileType.File or not f.path.endswith(".json") or "/.tmp-" in f.path:
            continue
        try:
            ref = read_json_uri(_uri_of(run, f.path)) or {}
        except (OSError, ValueError):
            continue
        blend = ref.get("blend")
        if not blend:
            continue
        fs, p = storage.filesystem(blend)
        (found if storage.exists(fs, p) else gone).append(blend)
    dirs = [_uri_of(run, f.path) for f in _list(run) if f.type == pafs.FileType.Directory
            and f.base_name not in stages and not f.base_name.startswith(("_", "."))]
    for d in dirs:
        found += [_uri_of(d, f.path) for f in _list(d) if f.type == pafs.FileType.File and f.path.endswith(".blend.json")]
    for d in extra_dirs or []:
        d = norm_uri(d)
        found += [_uri_of(d, f.path) for f in _list(d, recursive=True)
                  if f.type == pafs.FileType.File and f.path.endswith(".blend.json")]
    seen, out = set(), []
    for b in sorted(found):
        key = norm_uri(b) if storage.is_s3(b) else os.path.realpath(norm_uri(b))
        if key not in seen:
            seen.add(key)
            out.append(norm_uri(b))
    return out, sorted(set(gone))


def blend_uses_run(check: BlendCheck, data: dict[str, Any] | None, run: str) -> bool:
    """Whether a blend draws from the run: by its lineage, or (no lineage) by its shard prefixes."""
    if check.lineage:
        return any(same_uri(ds.get("run"), run) for ds in check.datasets() + check.datasets(held_out=True))
    prefixes = ((data or {}).get("blend") or [[]])[0]
    root = norm_uri(run)
    if not storage.is_s3(root):
        root = os.path.realpath(root)
        return any(os.path.realpath(p).startswith(root + "/") for p in prefixes if isinstance(p, str))
    return any(isinstance(p, str) and p.startswith(root + "/") for p in prefixes)


def run_blends(run: str, extra_dirs: list[str] | None = None) -> tuple[list[tuple[BlendCheck, dict[str, Any] | None]], list[str]]:
    """Every blend of the run with its check (and its JSON), and registered blends that are gone."""
    uris, gone = find_blends(run, extra_dirs)
    out = []
    for uri in uris:
        try:
            data = read_json_uri(uri)
        except (OSError, ValueError):
            data = None
        check = check_blend(uri, data) if data is not None else BlendCheck(uri, "unreadable", error="not JSON")
        if blend_uses_run(check, data, run):
            out.append((check, data))
    return out, gone


# -- the text arcforge status prints ----------------------------------------------------------


def _files_text(sources: list[str]) -> str:
    if not sources:
        return "its inputs"
    if all(x.startswith("dataset ") for x in sources):
        return ", ".join(sources)
    n = len(sources)
    return f"{n} input file{'s' if n != 1 else ''} ({sources[0]}{', …' if n > 1 else ''})"


@dataclass
class RunLineage:
    """A run's stages with their states, and its blends with their checks (``read_lineage``)."""

    run: str
    states: list[StageState]
    note: str | None
    blends: list[tuple[BlendCheck, dict[str, Any] | None]]
    gone: list[str]


def read_lineage(run: str, extra_dirs: list[str] | None = None) -> RunLineage:
    states, note = check_run(run)
    blends, gone = run_blends(run, extra_dirs)
    return RunLineage(run, states, note, blends, gone)


def out_of_date(lin: RunLineage) -> list[str]:
    """What ``arcforge status --check`` fails on in the lineage, one phrase each: a stage that
    is stale, incomplete or not run; a blend of the run that is stale or gone."""
    found = [f"stage {s.name} is {s.state}" for s in lin.states if s.state not in ("fresh", "committed")]
    found += [f"blend {check.path} is stale" for check, _ in lin.blends if check.state == "stale"]
    found += [f"the per-split file of blend {check.path} is stale (held-out shards)"
              for check, _ in lin.blends if check.held_out_problems]
    return found + [f"blend {g} is gone" for g in lin.gone]


def status_lines(lin: RunLineage) -> list[str]:
    """The lineage part of ``arcforge status``: the stage chain, then every blend of the run."""
    run, states, note, blends, gone = lin.run, lin.states, lin.note, lin.blends, lin.gone
    lines = ["lineage: input files -> stages -> blends (fingerprints: the first 12 hex digits of each _manifest.json's)"]
    width = max([len(s.name) for s in states] + [5])
    by_name = {s.name: s for s in states}
    for s in states:
        upstream = ", ".join(s.inputs) if s.inputs else _files_text(s.sources)
        if s.artifacts:
            upstream += " + artifact " + ", ".join(v if k == v else f"{v} as {k}" for k, v in sorted(s.artifacts.items()))
        state = s.state + (f": {s.reason}" if s.reason else "")
        lines.append(f"  {s.name:<{width}}  {short(s.fingerprint):<12}  {state}  <- {upstream}")
    if note:
        lines.append(f"  ({note})")
    lines.append(f"blends of this run (registered in {storage.join(norm_uri(run), BLENDS_DIR)} by arcforge mix, "
                 "in the run's own folders, or under --blends DIR):")
    if not blends and not gone:
        lines.append("  none found")
    for check, _ in blends:
        lines.append("  " + blend_status(check, by_name, run))
    for g in gone:
        lines.append(f"  {g}: gone (registered by arcforge mix; delete its pointer under {BLENDS_DIR}/ to forget it)")
    return lines


def blend_status(check: BlendCheck, stages: dict[str, StageState], run: str) -> str:
    if check.state in ("unknown", "unreadable"):
        word = "lineage unknown (written before arcforge mix recorded fingerprints)" if check.state == "unknown" else check.message()
        return f"{check.path}: {word}"
    parts = []
    for ds in check.datasets():
        arts = "".join(f" + {a.get('stage')} {short(a.get('fingerprint'))}" for a in (ds.get("artifacts") or {}).values())
        parts.append(f"{ds.get('stage')} {short(ds.get('fingerprint'))}{arts}")
    made = " <- " + ", ".join(parts)
    held = [f"{ds.get('stage')} {short(ds.get('fingerprint'))}" for ds in check.datasets(held_out=True)]
    if held:
        made += " | per-split valid/test <- " + ", ".join(held)
    if check.state == "stale":
        state = "STALE: " + "; ".join(p.text(full=False) for p in check.problems)
        if check.mixture_config:
            state += f"; re-run arcforge mix {check.mixture_config}"
    else:
        upstream = [ds.get("stage") for ds in check.datasets() if same_uri(ds.get("run"), run)
                    and stages.get(ds.get("stage")) is not None and stages[ds.get("stage")].state == "stale"]
        state = f"stale upstream: {', '.join(upstream)} is stale (see above)" if upstream else "fresh"
    if check.held_out_problems:
        state += "; per-split valid/test STALE: " + "; ".join(p.text(full=False) for p in check.held_out_problems)
        if check.state != "stale" and check.mixture_config:
            state += f"; re-run arcforge mix {check.mixture_config}"
    notes = "".join(f"; note: {n}" for n in check.notes)
    return f"{check.path}  {state}{notes} {made}"
