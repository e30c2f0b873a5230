"""Storage through pyarrow filesystems, so local paths and ``s3://`` behave the same.

Tasks open files themselves (no Hadoop S3 jars, no s3a). Only non-secret S3
settings travel in task descriptors; credentials come from the usual AWS chain
(environment, config files, instance roles) on every worker.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from arcforge.pipelines.documents import PARQUET_COMPRESSION


@dataclass(frozen=True)
class S3Options:
    """Non-secret S3 settings; safe to log and to ship to workers."""

    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls) -> S3Options:
        return cls(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), region=os.environ.get("AWS_REGION"))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem for a URI and the path inside it."""
    if is_s3(uri):
        env = S3Options.from_env()
        endpoint = (s3.endpoint_url if s3 else None) or env.endpoint_url
        region = (s3.region if s3 else None) or env.region
        kw: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kw["endpoint_override"] = host.rstrip("/")
            kw["scheme"] = scheme
        if region:
            kw["region"] = region
        return pafs.S3FileSystem(**kw), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write so a reader sees the whole file or nothing.

    Locally: a temp name in the same directory, then rename. On S3 a PUT (or a
    completed multipart upload) is already all-or-nothing.
    """
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
        with fs.open_output_stream(tmp, compression=None) as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path, compression=None) as f:
            f.write(data)


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    return json.loads(read_bytes(fs, path))


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, json.dumps(obj, indent=1, sort_keys=True).encode())


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise deterministically: the same rows always give the same bytes and checksum."""
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression=PARQUET_COMPRESSION,
        row_group_size=64 * 1024,
        write_statistics=True,
        store_schema=True,
    )
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_parquet(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def expand_inputs(patterns: list[str], s3: S3Options | None = None) -> list[str]:
    """Expand file globs (local or s3) into a sorted, de-duplicated URI list."""
    out: list[str] = []
    for pat in patterns:
        if is_s3(pat):
            fs, path = filesystem(pat, s3)
            if any(c in path for c in "*?["):
                base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
                infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
                import fnmatch

                out += [f"s3://{i.path}" for i in infos if i.is_file and fnmatch.fnmatch(i.path, path)]
            elif exists(fs, path):
                out.append(pat)
        else:
            expanded = os.path.abspath(os.path.expanduser(pat))
            out += [p for p in globlib.glob(expanded, recursive=True) if os.path.isfile(p)]
    return sorted(dict.fromkeys(out))


def publish_file(local_path: str, dest_uri: str, name: str, s3: S3Options | None = None) -> dict[str, Any]:
    """Put a finished local file at ``dest_uri/name`` all at once and describe it.

    The sha256 is computed while reading, so large shards are never held in memory.
    """
    h = hashlib.sha256()
    size = 0
    fs, base = filesystem(dest_uri, s3)
    dest = join(base, name)
    fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
    with open(local_path, "rb") as src:
        while chunk := src.read(8 << 20):
            h.update(chunk)
            size += len(chunk)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(local_path, dest) if os.stat(local_path).st_dev == os.stat(base).st_dev else _copy(local_path, dest)
    else:
        with open(local_path, "rb") as src, fs.open_output_stream(dest, compression=None) as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
        os.remove(local_path)
    return {"name": name, "bytes": size, "sha256": h.hexdigest()}


def _copy(src: str, dest: str) -> None:
    import shutil

    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    os.remove(src)
