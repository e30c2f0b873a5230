"""One run at a time per run directory: a lock file with an owner and a heartbeat.

Two ``arcforge run`` of the same config into the same directory would both redo
the work and overwrite each other's manifests. The first takes
``<run>/_lock.json`` (host, pid, start time, a token) and refreshes its
``heartbeat`` every ``HEARTBEAT_S``; the second reads it and stops with one line
saying who holds it. A lock left by a killed run is stale, and taken over, when
its process is gone (same host) or its heartbeat is older than ``STALE_S``
(another host, or S3 where the pid cannot be checked).

Locally the lock is created with ``O_EXCL``, so two starts cannot both win. On
S3 there is no create-if-absent in pyarrow: the lock is written, then read back
after a short pause, and the run that does not find its own token stops.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from arcforge.runtime import storage
from arcforge.runtime.dataset import DatasetRef

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 15.0
STALE_S = 120.0


class RunLocked(RuntimeError):
    """Another live run holds the lock; the message is one line for the user."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(holder: dict[str, Any], now: float) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    return now - float(holder.get("heartbeat", 0)) > STALE_S


class RunLock:
    """Context manager holding the run directory's lock for the life of a run."""

    def __init__(self, run: DatasetRef, config: str = "") -> None:
        self.run = run
        self.fs, base = run.fs()
        self.path = storage.join(base, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.config = config
        self.took_over: dict[str, Any] | None = None  # the stale holder we replaced, if any
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "config": self.config,
            "started": self.started,
            "heartbeat": now,
        }

    def _read(self) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.fs, self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written: treat as stale below

    def _create_local(self) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
        return True

    def acquire(self, wait_s: float = 0.0, poll_s: float = 2.0, on_wait: Any = None) -> None:
        """Take the lock, or raise ``RunLocked``. ``wait_s > 0``: while another live run holds
        it, poll every ``poll_s`` for up to ``wait_s`` seconds (``on_wait(message)`` once, when
        the wait starts), so runs started together (Dagster's sensor, a schedule) queue."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._acquire_once()
            except RunLocked as exc:
                if time.monotonic() + poll_s > deadline:
                    if wait_s > 0:
                        raise RunLocked(f"{exc} (waited {wait_s:.0f} s)") from None
                    raise
                if on_wait is not None:
                    on_wait(f"{exc}; waiting up to {wait_s:.0f} s")
                    on_wait = None
                time.sleep(poll_s)

    def _acquire_once(self) -> None:
        local = isinstance(self.fs, pafs.LocalFileSystem)
        for _ in range(3):
            if local and self._create_local():
                break
            holder = self._read()
            if holder is not None and holder.get("token") != self.token:
                if holder and not _stale(holder, time.time()):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
                    raise RunLocked(
                        f"{self.run.uri}: another run holds this run directory (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, since {since}); wait for it to finish, or stop it and re-run"
                    )
                self.took_over = holder
                if local:
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
            storage.write_json_atomic(self.fs, self.path, self._record())
            if not local:
                time.sleep(1.0)
                if (self._read() or {}).get("token") != self.token:
                    continue
            break
        else:
            raise RunLocked(f"{self.run.uri}: could not take the run lock; another run is starting here")
        self._thread = threading.Thread(target=self._beat, name="arcforge-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                storage.write_json_atomic(self.fs, self.path, self._record())
            except OSError:
                pass  # a missed heartbeat only matters after STALE_S

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder and holder.get("token") == self.token:
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
