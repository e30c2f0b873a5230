"""``arcforge run``: validate, check the storage root, lock the run directory, run.

What the user sees is kept to what they need: progress bars and a summary on
success; on a failure or Ctrl-C one line that says what happened, what is
committed and that re-running resumes. Tracebacks and engine chatter go to the
run's log file (``<run>/_logs/`` for a local root, the user log folder for S3),
whose path the line names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=False)
err = Console(stderr=True)

FILE_ONLY = {"file_only": True}  # a record for the log file alone (a traceback the one-line message sums up)


def log_path_for(plan: Any) -> str:
    """A local file for this invocation's log: beside the run when the root is local."""
    from arcforge.runtime import storage

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if storage.is_s3(plan.run_uri):
        import platformdirs

        folder = Path(platformdirs.user_log_dir("arcforge")) / plan.config.name
    else:
        folder = Path(storage.filesystem(plan.run_uri)[1]) / "_logs"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"run-{stamp}-{os.getpid()}.log")


class RunOutput:
    """Where a run's output goes: the log file gets everything, the terminal what matters.

    Without ``-v`` the process's fd 2 is pointed at the log file for the length of
    the run, so what the engines print themselves (the JVM's incubator warning,
    Spark's log4j lines, Ray's C++ core-worker lines, warcio's warnings, a child's
    traceback on Ctrl-C) lands there. arcforge's own messages and warnings (a
    storage retry, the final line) go to a duplicate of the original stderr.
    """

    def __init__(self, path: str, verbose: bool) -> None:
        self.path, self.verbose = path, verbose
        self._saved_fd: int | None = None
        self.term: Any = sys.stderr
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.term_handler: logging.Handler | None = None

    def __enter__(self) -> RunOutput:
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(logging.INFO)
        if not self.verbose:
            sys.stderr.flush()
            self._saved_fd = os.dup(2)
            self.term = os.fdopen(os.dup(self._saved_fd), "w", buffering=1)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            os.dup2(fd, 2)
            os.close(fd)
            os.environ["ARCFORGE_QUIET"] = "1"
        self.term_handler = logging.StreamHandler(self.term)
        self.term_handler.setLevel(logging.INFO if self.verbose else logging.WARNING)
        self.term_handler.addFilter(lambda rec: not getattr(rec, "file_only", False))
        if not self.verbose:
            self.term_handler.addFilter(lambda rec: rec.name.startswith("arcforge"))
        root.addHandler(self.term_handler)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for h in (self.handler, self.term_handler):
            if h is not None:
                root.removeHandler(h)
                h.close()
        if self._saved_fd is not None:
            sys.stderr.flush()
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
            self._saved_fd = None
            self.term.close()
            self.term = sys.stderr
            os.environ.pop("ARCFORGE_QUIET", None)


def print_dry_run(runner: Any) -> None:
    """One plain line per stage (greppable, and readable in a narrow terminal)."""
    rows = runner.dry_run()
    console.print(f"dry run of {runner.plan.config.name} into {runner.plan.run_uri}", highlight=False)
    width = max(len(r["stage"]) for r in rows)
    for row in rows:
        parts = "" if row["partitions"] is None else f", {row['committed']:,}/{row['partitions']:,} partitions committed"
        console.print(f"  {row['stage']:<{width}}  {row['action']}  [{row['uses']} on {row['engine']}{parts}]",
                      markup=False, highlight=False, soft_wrap=True)
    console.print("nothing was run (--dry-run): no engine started, no data written", highlight=False)


def committed_summary(runner: Any) -> str:
    """'extract (committed), dedup (3 partitions)': what a re-run will not redo."""
    from arcforge.runtime import dataset

    done = []
    for rs in runner.plan.stages:
        ref = runner.stage_ref(rs.name)
        if dataset.read_manifest(ref) is not None:
            done.append(f"{rs.name} (committed)")
        else:
            n = len(dataset.read_commits(ref))
            if n:
                done.append(f"{rs.name} ({n} partition{'s' if n != 1 else ''})")
    return ", ".join(done) or "nothing yet"


def cmd_run(args: argparse.Namespace) -> int:
    from arcforge.cli import RichProgress, report_errors, summary_table, _stats_row
    from arcforge.runtime import failures
    from arcforge.runtime.config import load_plan
    from arcforge.runtime.runlock import RunLock, RunLocked
    from arcforge.runtime.runner import Runner

    plan = load_plan(args.config)  # validates fully before any engine starts
    runner = Runner(plan, progress=RichProgress())
    runner.check_writable()
    if args.dry_run:
        print_dry_run(runner)
        return 0
    log_path = log_path_for(plan)
    lock = RunLock(runner.run_ref, plan.path)
    try:
        lock.acquire(wait_s=args.wait, on_wait=lambda msg: err.print(f"arcforge: {msg}", markup=False, highlight=False,
                                                                      soft_wrap=True))
    except RunLocked as exc:
        err.print(f"arcforge: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 3
    with RunOutput(log_path, args.verbose) as out:
        say = Console(file=out.term, stderr=True, soft_wrap=True)
        if lock.took_over:
            holder = lock.took_over
            say.print(f"arcforge: took over the lock of a run that stopped (pid {holder.get('pid')} on "
                      f"{holder.get('host')}); resuming its work", markup=False, highlight=False)
        try:
            results = runner.run(only=args.only, start=getattr(args, "from"), force=args.force)
        except KeyboardInterrupt:
            logging.getLogger("arcforge").warning("interrupted by the user", exc_info=True, extra=FILE_ONLY)
            say.print(
                f"arcforge: interrupted during stage {runner.current or '?'}; committed: {committed_summary(runner)}. "
                f"Re-run `arcforge run {args.config}` to resume (log: {log_path})",
                markup=False, highlight=False,
            )
            return 130
        except Exception as exc:  # noqa: BLE001 - every run-time failure becomes one line
            logging.getLogger("arcforge").error("run failed", exc_info=exc, extra=FILE_ONLY)
            if getattr(exc, "traceback", ""):  # the first failing row's traceback (runner.StageFailed)
                logging.getLogger("arcforge").error("first failing row:\n%s", exc.traceback, extra=FILE_ONLY)
            say.print(failures.describe(exc, runner.current, log_path), markup=False, highlight=False)
            say.print(f"arcforge: committed: {committed_summary(runner)}; re-running resumes from there",
                      markup=False, highlight=False)
            return 1
        finally:
            lock.release()
    rows = [_stats_row(r.name, r.manifest, r.status) for r in results]
    console.print(summary_table(rows, f"run {plan.config.name}"))
    report_errors(results)
    console.print(f"outputs: {plan.run_uri}")
    return 0


def add_run_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run a pipeline config; committed stages and partitions are skipped")
    r.add_argument("config")
    r.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must be committed)")
    r.add_argument("--from", metavar="STAGE", help="run this stage and every stage after it")
    r.add_argument("--force", action="store_true", help="forget the selected stages' commits and redo them")
    r.add_argument("--dry-run", action="store_true", help="validate and plan; print what would run and what is committed")
    r.add_argument("-v", "--verbose", action="store_true", help="show the engines' own log lines")
    r.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another run holds the run directory, wait up to SECONDS for it (default: stop at once)")
    r.set_defaults(fn=cmd_run)
