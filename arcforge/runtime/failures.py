"""Turn a failed run into one line for the user; the traceback goes to the run's log.

A partition task that fails raises an error whose text starts with a JSON line
(``tasks.failure_line``): stage, partition, input and cause. Spark wraps it in
py4j and Java stacks, Ray in a ``RayTaskError``; the line is found in whatever
text comes back. Causes that users can fix themselves get a hint.
"""

from __future__ import annotations

import json
import re
import traceback
from typing import Any

from arcforge.runtime.tasks import TASK_FAILED

_LINE = re.compile(re.escape(TASK_FAILED) + r" (\{[^\n]*?\})(?=\\n|\n|$|\s)")

HINTS = (
    (("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"),
     "check the S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the AWS profile) and storage.s3.endpoint_url"),
    (("NoSuchBucket", "NO_SUCH_BUCKET"), "the bucket does not exist on this endpoint; check storage.root and storage.s3.endpoint_url"),
    (("NETWORK_CONNECTION", "Couldn't connect", "Connection refused", "curlCode"),
     "the storage endpoint did not answer; check storage.s3.endpoint_url and that the server is up (retries: storage.s3.retries)"),
    (("No space left",), "the disk is full"),
    (("MemoryError", "OutOfMemory", "Cannot allocate memory"), "a task ran out of memory; use smaller partitions or fewer workers"),
)


def _texts(exc: BaseException) -> list[str]:
    """The exception's text and its causes', plus the traceback text (py4j puts the Python error there)."""
    out, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        out.append(str(node))
        node = node.__cause__ or node.__context__
    out.append("".join(traceback.format_exception(exc)))
    return out


def task_failure(exc: BaseException) -> dict[str, Any] | None:
    """The failure line's fields, when the error came from a partition task."""
    for text in _texts(exc):
        m = _LINE.search(text)
        if m:
            try:
                return json.loads(m.group(1).replace('\\"', '"') if '\\"' in m.group(1) else m.group(1))
            except ValueError:
                continue
    return None


def hint_for(cause: str) -> str:
    for needles, hint in HINTS:
        if any(n in cause for n in needles):
            return hint
    return ""


def describe(exc: BaseException, stage: str | None, log_path: str | None) -> str:
    """One line: where it failed (stage, partition, input), the cause, a hint, the log."""
    log = f" (traceback in {log_path})" if log_path else ""
    if type(exc).__name__ == "StageFailed":  # already one line (runner.StageFailed)
        return f"arcforge: {exc}{log}"
    info = task_failure(exc)
    if info is not None:
        stage_name = info.get("output", "").rstrip("/").rsplit("/", 1)[-1] or stage or "?"
        where = f"stage {stage_name}, partition {info.get('partition')} ({info.get('input', '').rsplit('/', 1)[-1]})"
        cause = info.get("cause", "")
    else:
        where = f"stage {stage}" if stage else "the run"
        cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if len(cause) > 300:
            cause = cause[:300] + "…"
    hint = hint_for(cause)
    tail = f"; {hint}" if hint else ""
    return f"arcforge: {where} failed: {cause}{tail}{log}"
