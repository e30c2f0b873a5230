"""Storage through pyarrow filesystems, so local paths and ``s3://`` behave the same.

Tasks open files themselves (no Hadoop S3 jars, no s3a). Only non-secret S3
settings travel in task descriptors; credentials come from the usual AWS chain
(environment, config files, instance roles) on every worker.

Every filesystem is built here, by :func:`filesystem`, from one ``S3Options``:
the run's ``storage.s3`` settings. A process that runs a pipeline calls
:func:`configure` once (the runner on the driver, ``execute_task`` on each
worker), so a reader deep inside a stage (the tokenizer, the shards) that passes
no options still talks to the run's endpoint, never to a default one.

Errors that may pass (S3 5xx, throttling, timeouts, refused or reset
connections) are retried with exponential backoff by :func:`retry_transient`;
the budget (``retries``) is part of the options.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import logging
import time
import io
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from arcforge.runtime.documents import PARQUET_COMPRESSION


@dataclass(frozen=True)
class S3Options:
    """Non-secret S3 settings; safe to log and to ship to workers."""

    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    retries: int = 6  # attempts after the first, with backoff 0.5 s, 1 s, 2 s, ... (about 30 s in all)
    backoff_s: float = 0.5
    max_backoff_s: float = 16.0

    @classmethod
    def from_env(cls) -> S3Options:
        return cls(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"), region=os.environ.get("AWS_REGION"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_ACTIVE: S3Options | None = None
_log = logging.getLogger("arcforge.storage")


def configure(options: S3Options) -> None:
    """Make ``options`` this process's storage settings (see the module docstring)."""
    global _ACTIVE
    _ACTIVE = options


def active_options() -> S3Options:
    return _ACTIVE if _ACTIVE is not None else S3Options.from_env()


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem for a URI and the path inside it.

    ``s3`` defaults to the process's configured options (:func:`configure`); the
    ``AWS_ENDPOINT_URL``/``AWS_REGION`` environment fills what neither sets.
    """
    if is_s3(uri):
        opts = s3 or active_options()
        env = S3Options.from_env()
        endpoint = opts.endpoint_url or env.endpoint_url
        region = opts.region or env.region
        kw: dict[str, Any] = {
            "connect_timeout": opts.connect_timeout_s,
            "request_timeout": opts.request_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        }
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kw["endpoint_override"] = host.rstrip("/")
            kw["scheme"] = scheme
        if region:
            kw["region"] = region
        return pafs.S3FileSystem(**kw), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


# Messages of errors that may pass: pyarrow's S3 errors are OSErrors whose text names
# the AWS error or the curl failure; local errors (no such file, permission) never match.
_TRANSIENT = (
    "NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Connection refused", "Connection reset",
    "connection was reset", "Broken pipe", "timed out", "Timeout", "TIMEOUT", "SLOW_DOWN", "SlowDown",
    "SERVICE_UNAVAILABLE", "ServiceUnavailable", "INTERNAL_FAILURE", "InternalError", "THROTTLING",
    "HTTP response code 500", "HTTP response code 502", "HTTP response code 503", "HTTP response code 504",
    "Unable to connect", "Empty reply", "EOF occurred",
)


def is_transient(exc: BaseException) -> bool:
    """Whether an error may pass on its own (and is worth a retry)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return any(m in str(exc) for m in _TRANSIENT)
    return False


def retry_transient(fn: Any, *args: Any, options: S3Options | None = None, what: str = "", **kw: Any) -> Any:
    """Call ``fn`` and retry it with exponential backoff while it fails transiently.

    Used for whole partition tasks (a task is a pure function that overwrites its
    own part, so re-running it is safe) and for the driver's small reads and writes.
    """
    opts = options or active_options()
    delay = opts.backoff_s
    for attempt in range(opts.retries + 1):
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - filtered by is_transient
            if attempt >= opts.retries or not is_transient(exc):
                raise
            _log.warning(
                "transient storage error%s (attempt %d of %d, retrying in %.1fs): %s",
                f" in {what}" if what else "", attempt + 1, opts.retries + 1, delay, " ".join(str(exc).split())[:300],
            )
            time.sleep(delay)
            delay = min(delay * 2, opts.max_backoff_s)
    raise AssertionError("unreachable")


def file_size(uri: str, s3: S3Options | None = None) -> int:
    fs, path = filesystem(uri, s3)
    info = retry_transient(fs.get_file_info, path, options=s3, what=uri)
    if info.type == pafs.FileType.NotFound:
        return -1
    return info.size if info.type == pafs.FileType.File else 0


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return retry_transient(fs.get_file_info, path, what=path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    def read() -> bytes:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()

    return retry_transient(read, what=path)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    retry_transient(_write_bytes_atomic, fs, path, data, what=path)


def _write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
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


# One set of writer options for every part, so the same rows always give the same bytes.
PARQUET_OPTIONS: dict[str, Any] = {"compression": PARQUET_COMPRESSION, "write_statistics": True, "store_schema": True}


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise deterministically: the same rows always give the same bytes and checksum."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=64 * 1024, **PARQUET_OPTIONS)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_parquet(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns)


def expand_inputs(patterns: list[str], s3: S3Options | None = None, *, dirs: bool = False) -> list[str]:
    """Expand file globs (local or s3) into a sorted, de-duplicated URI list.

    With ``dirs``, a pattern may also name directories (a dataset folder), which
    are kept as they are for the reader to open."""
    out: list[str] = []
    for pat in patterns:
        if is_s3(pat):
            fs, path = filesystem(pat, s3)
            if any(c in path for c in "*?["):
                base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
                infos = retry_transient(fs.get_file_info, pafs.FileSelector(base, recursive=True), options=s3, what=pat)
                import fnmatch

                out += [f"s3://{i.path}" for i in infos if (i.is_file or dirs) and fnmatch.fnmatch(i.path, path)]
            else:
                kind = retry_transient(fs.get_file_info, path, options=s3, what=pat).type
                if kind == pafs.FileType.File or (dirs and kind == pafs.FileType.Directory):
                    out.append(pat.rstrip("/"))
        else:
            expanded = os.path.abspath(os.path.expanduser(pat))
            out += [p for p in globlib.glob(expanded, recursive=True) if os.path.isfile(p) or (dirs and os.path.isdir(p))]
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
        def upload() -> None:
            with open(local_path, "rb") as src, fs.open_output_stream(dest, compression=None) as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)

        retry_transient(upload, options=s3, what=f"upload of {name}")
        os.remove(local_path)
    return {"name": name, "bytes": size, "sha256": h.hexdigest()}


def publish_json(obj: Any, dest_uri: str, name: str, s3: S3Options | None = None) -> dict[str, Any]:
    """``publish_file`` of ``obj`` as indented, key-sorted JSON (a stage's report file)."""
    import json
    import tempfile

    fd, local = tempfile.mkstemp(prefix="arcforge-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    return publish_file(local, dest_uri, name, s3)


def _copy(src: str, dest: str) -> None:
    import shutil

    tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    os.remove(src)
