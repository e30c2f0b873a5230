"""Run a function call in a persistent child process, bounded by a timeout.

HTML extraction (lxml plus many regexes in trafilatura) can run for minutes or
hang on adversarial pages, and a Python thread cannot be interrupted, so the only
reliable per-document bound is a process that can be killed. Spawning a process
per document would cost far more than the extraction, so, like datatrove's
``ExtractorSandbox``, one child serves every call of a worker process and is
restarted only after a timeout or a crash.

The child is a fresh interpreter (fork + exec, what multiprocessing calls
"spawn"), never a bare ``fork``: Spark and Ray workers run threads (heartbeats,
object-store clients), and a forked copy of a threaded process can deadlock on a
lock another thread held at fork time. It is started with ``subprocess`` rather
than ``multiprocessing``'s spawn context because the latter re-imports the
parent's ``__main__`` in the child: that re-runs an unguarded user script (and
fails), and imports all of Ray's worker module on every restart. Like
multiprocessing, the child gets the parent's ``sys.path`` and talks over a
``multiprocessing.connection.Connection``.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_READY = b"ready"
_PARENT_POLL_S = 1.0
# argv: parent's sys.path as JSON, socket fd, parent pid. sys.path is set before
# importing arcforge so the child imports what the parent would (Spark py-files, Ray working_dir).
_CHILD_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from arcforge.pipelines.web.sandbox import _child_main; "
    "_child_main(int(sys.argv[2]), int(sys.argv[3]))"
)


class SandboxError(RuntimeError):
    """The call raised in the child (``exc_type``/``message`` are the original's), or the child died."""

    def __init__(self, exc_type: str, message: str, child_traceback: str = "") -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.child_traceback = child_traceback


class SandboxTimeout(TimeoutError):
    """The call did not finish in time; the child was killed and restarts on the next call."""


# --------------------------------------------------------------------------- child


def _exit_when_orphaned(parent_pid: int) -> None:
    """A SIGKILLed parent runs no cleanup; the child notices it was re-parented and exits.

    Runs in a thread so that it also fires while a call is busy (unless that call
    holds the GIL in C code for good; socket EOF covers the idle case).
    """
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def _child_main(fd: int, parent_pid: int) -> None:
    """Serve pickled ``(fn, args, kwargs)`` calls until the parent closes the socket or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        conn.send_bytes(_READY)
        while True:
            data = conn.recv_bytes()
            try:
                fn, args, kwargs = pickle.loads(data)
                reply = pickle.dumps((True, fn(*args, **kwargs)), pickle.HIGHEST_PROTOCOL)
            except BaseException as e:  # report everything, SystemExit included, and keep serving
                reply = pickle.dumps((False, type(e).__name__, str(e), traceback.format_exc()))
            conn.send_bytes(reply)
    except (EOFError, OSError):  # parent closed the socket or went away
        return


# -------------------------------------------------------------------------- parent


class TimeoutSandbox:
    """A lazily started child process that runs picklable calls with a timeout.

    ``fn`` and its arguments must be picklable by reference (module-level
    functions, builtins such as ``time.sleep``), and so must the result. Calls
    are serialised by a lock, so one sandbox can be shared by threads.
    """

    def __init__(self, start_timeout: float = 120.0) -> None:
        self.start_timeout = start_timeout  # child start-up (imports) never counts against a call
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._owner_pid: int | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid, or None when no child is running."""
        return self._proc.pid if self._proc is not None and self._owner_pid == os.getpid() else None

    def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Return ``fn(*args, **kwargs)`` computed in the child.

        Raises ``SandboxTimeout`` after ``timeout`` seconds (None waits forever)
        and ``SandboxError`` when the call raised or the child died during it.
        """
        payload = pickle.dumps((fn, args, kwargs), pickle.HIGHEST_PROTOCOL)  # errors here are the caller's
        with self._lock:
            self._ensure_started()
            conn = self._conn
            try:
                conn.send_bytes(payload)
                reply = conn.recv_bytes() if conn.poll(timeout) else None
            except (EOFError, OSError):  # the child died mid-call: segfault, OOM killer, os._exit
                code = self._stop(grace=1.0)
                raise SandboxError("SandboxCrash", f"sandbox child died ({_describe_exit(code)})") from None
            except BaseException:  # interrupted: a late reply would answer the next call, so drop the child
                self._stop()
                raise
            if reply is None:
                self._stop()
                raise SandboxTimeout(f"sandboxed call to {_name(fn)} did not finish in {timeout}s")
        ok, *rest = pickle.loads(reply)
        if ok:
            return rest[0]
        raise SandboxError(*rest)

    def close(self) -> None:
        """Stop the child (it exits on socket EOF); a later call starts a new one."""
        with self._lock:
            self._stop(grace=2.0)

    def __enter__(self) -> TimeoutSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_started(self) -> None:
        if self._owner_pid != os.getpid():  # never started, or inherited through a fork: not ours
            if self._conn is not None:
                self._conn.close()  # our copy of the parent's socket only; its child is left alone
            self._proc = self._conn = None
        elif self._proc is not None and self._proc.poll() is not None:  # died between calls
            self._stop()
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        with ours, theirs:
            argv = [sys.executable, "-c", _CHILD_BOOT, json.dumps(sys.path), str(theirs.fileno()), str(os.getpid())]
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
            conn = Connection(ours.detach())  # `theirs` closes here, so the child's death reads as EOF
        self._proc, self._conn, self._owner_pid = proc, conn, os.getpid()
        try:
            ready = conn.poll(self.start_timeout) and conn.recv_bytes() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._stop(grace=1.0)
            raise SandboxError("SandboxStartError", f"sandbox child did not start ({_describe_exit(code)})")

    def _stop(self, grace: float = 0.0) -> int | None:
        """Close the socket, kill the child if it is still running after `grace` s, return its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None or self._owner_pid != os.getpid():  # a forked copy must not reap its parent's child
            return None
        if grace:  # let a child that is exiting anyway report its own exit code
            try:
                return proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        return proc.wait(5.0)


def _name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', repr(fn))}"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running, killed"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ------------------------------------------------------------------- per process

_SANDBOX: TimeoutSandbox | None = None
_SANDBOX_LOCK = threading.Lock()


def get_sandbox() -> TimeoutSandbox:
    """The sandbox of this process.

    Spark and Ray reuse a worker process for many partitions, so the child (and
    its imports) is paid once per worker rather than once per file.
    """
    global _SANDBOX
    with _SANDBOX_LOCK:
        if _SANDBOX is None:
            _SANDBOX = TimeoutSandbox()
            atexit.register(_SANDBOX.close)
        return _SANDBOX


def _forget_after_fork() -> None:
    """A forked process (Spark's daemon forks its workers) gets its own sandbox and lock."""
    global _SANDBOX, _SANDBOX_LOCK
    _SANDBOX = None
    _SANDBOX_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
