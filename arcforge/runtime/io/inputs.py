"""Which files an ``io.read`` input names: expansion of folders (plain files, Hugging
Face ``save_to_disk`` folders), the format of each file, and the name each file's ids
are made from (its path relative to the inputs' common folder, never an absolute path).
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from arcforge.runtime import storage

log = logging.getLogger("arcforge.io")

FORMATS = ("jsonl", "parquet", "csv", "text", "hf")
_COMPRESSIONS = ((".gz", "gzip"), (".zst", "zstd"), (".zstd", "zstd"), (".bz2", "bz2"), (".xz", "xz"))
_EXTENSIONS = (
    (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"),
    (".csv", "csv"), (".tsv", "csv"), (".txt", "text"), (".md", "text"), (".arrow", "hf"),
)


@dataclass(frozen=True)
class Entry:
    """One input file: its URI, its name for ids (relative to the input's folder), format."""

    uri: str
    name: str
    size: int
    format: str
    compression: str | None = None
    hf_split: str | None = None


def detect(name: str) -> tuple[str | None, str | None]:
    """(format, compression) from a file name; format None when the extension says nothing."""
    lower = name.lower()
    compression = None
    for suffix, comp in _COMPRESSIONS:
        if lower.endswith(suffix):
            compression, lower = comp, lower[: -len(suffix)]
            break
    for ext, fmt in _EXTENSIONS:
        if lower.endswith(ext):
            if compression and fmt not in ("jsonl", "csv"):
                return None, compression
            return fmt, compression
    return None, compression


def _strip(uri: str) -> str:
    return uri[len("s3://") :] if storage.is_s3(uri) else uri


def _bases(uris: list[str], is_dir: list[bool]) -> list[str]:
    """The folder each input's file names are relative to: the common folder of all
    inputs (a single folder input: the folder itself), so the same data in another
    place gives the same names and ids."""
    own = [_strip(u).rstrip("/") if d else posixpath.dirname(_strip(u)) for u, d in zip(uris, is_dir)]
    try:
        common = posixpath.commonpath(own)
    except ValueError:  # local and S3 inputs together: each relative to its own folder
        return own
    return [common] * len(uris)


def _rel(base: str, uri: str) -> str:
    p = _strip(uri)
    return posixpath.relpath(p, base) if base else p.lstrip("/")


def _list_dir(fs: pafs.FileSystem, path: str, pattern: str | None) -> list[tuple[str, int]]:
    """(path inside the folder, size) of its files, sorted; names starting with '.' or '_'
    (hidden files, _SUCCESS, arcforge's _manifest.json) are skipped, as pyarrow datasets do."""
    infos = storage.retry_transient(fs.get_file_info, pafs.FileSelector(path, recursive=True), what=path)
    out = []
    for info in infos:
        if not info.is_file:
            continue
        rel = posixpath.relpath(info.path, path)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if pattern and not fnmatch.fnmatch(rel, pattern):
            continue
        out.append((rel, info.size))
    return sorted(out)


def _hf_entries(fs: pafs.FileSystem, path: str, uri: str, base: str) -> list[Entry]:
    def one_split(sub_path: str, sub_uri: str, split: str | None) -> list[Entry]:
        state = storage.read_json(fs, storage.join(sub_path, "state.json"))
        out = []
        for data_file in state.get("_data_files", []):
            fpath, furi = storage.join(sub_path, data_file["filename"]), storage.join(sub_uri, data_file["filename"])
            info = storage.retry_transient(fs.get_file_info, fpath, what=furi)
            if info.type != pafs.FileType.File:
                raise ValueError(f"{_rel(base, furi)} is listed in state.json but missing")
            out.append(Entry(furi, _rel(base, furi), info.size, "hf", None, split))
        return out

    dict_json = storage.join(path, "dataset_dict.json")
    if storage.exists(fs, dict_json):
        splits = storage.read_json(fs, dict_json).get("splits", [])
        return [e for s in splits for e in one_split(storage.join(path, s), storage.join(uri, s), s)]
    return one_split(path, uri, None)


def _dir_entries(fs: pafs.FileSystem, path: str, uri: str, base: str, params: Any) -> list[Entry]:
    fmt = params.format
    if fmt in (None, "hf"):
        if storage.exists(fs, storage.join(path, "dataset_dict.json")) or storage.exists(fs, storage.join(path, "state.json")):
            return _hf_entries(fs, path, uri, base)
        if fmt == "hf":
            raise ValueError(f"{_rel(base, uri) or uri} is not a Hugging Face save_to_disk folder (no state.json or dataset_dict.json)")
    files = _list_dir(fs, path, params.glob)
    if fmt is None:
        found = sorted({detect(rel)[0] for rel, _ in files} - {None, "text", "hf"})
        if len(found) > 1:
            raise ValueError(f"folder {_rel(base, uri) or uri} mixes {' and '.join(found)} files; set format (and glob)")
        fmt = found[0] if found else "text"
    if fmt != "text" and params.glob is None:
        chosen = [(rel, size) for rel, size in files if detect(rel)[0] == fmt]
        if len(chosen) < len(files):
            log.warning("io.read: %d file(s) of %s that are not %s are not read", len(files) - len(chosen), uri, fmt)
        files = chosen
    out = []
    for rel, size in files:
        furi = storage.join(uri, rel)
        out.append(Entry(furi, _rel(base, furi), size, fmt, detect(rel)[1] if fmt in ("jsonl", "csv") else None))
    return out


def _file_infos(uris: list[str], s3: Any) -> list[tuple[pafs.FileSystem, str, pafs.FileInfo]]:
    """Type and size of every input. Many S3 inputs are looked up with one listing per
    folder rather than one request per file (a FineWeb dump is thousands of files)."""
    listed: dict[str, pafs.FileInfo] = {}
    s3_uris = [u for u in uris if storage.is_s3(u)]
    if len(s3_uris) > 16:
        for parent in sorted({posixpath.dirname(_strip(u)) for u in s3_uris}):
            fs, path = storage.filesystem(f"s3://{parent}", s3)
            selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
            for info in storage.retry_transient(fs.get_file_info, selector, options=s3, what=parent):
                listed[info.path] = info
    out = []
    for uri in uris:
        fs, path = storage.filesystem(uri, s3)
        info = listed.get(path) or storage.retry_transient(fs.get_file_info, path, options=s3, what=uri)
        out.append((fs, path, info))
    return out


def entries(uris: list[str], s3: Any, params: Any) -> list[Entry]:
    """The input files, in a deterministic order, each with its format and name."""
    if not uris:
        raise ValueError("no input files")
    located = []
    for uri, (fs, path, info) in zip(uris, _file_infos(uris, s3)):
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"{uri} does not exist")
        located.append((uri, fs, path, info))
    bases = _bases([u for u, *_ in located], [i.type == pafs.FileType.Directory for *_, i in located])
    out: list[Entry] = []
    for (uri, fs, path, info), base in zip(located, bases):
        if info.type == pafs.FileType.Directory:
            out += _dir_entries(fs, path, uri.rstrip("/"), base, params)
            continue
        name = _rel(base, uri)
        fmt, compression = detect(name)
        fmt = params.format or fmt
        if fmt is None:
            raise ValueError(f"cannot tell the format of {name} from its extension; set format to one of {', '.join(FORMATS)}")
        out.append(Entry(uri, name, info.size, fmt, compression if fmt in ("jsonl", "csv") else None))
    seen: set[str] = set()
    out = [e for e in out if not (e.uri in seen or seen.add(e.uri))]  # a folder and its own files
    if not out:
        raise ValueError(f"no files to read in {', '.join(uris)}" + (f" matching glob {params.glob!r}" if params.glob else ""))
    kinds = sorted({e.format for e in out})
    if len(kinds) > 1:
        raise ValueError(f"the inputs mix {' and '.join(kinds)} files; use one io.read stage per format")
    return out
