"""A small, real demo corpus assembled from files that ship inside public packages.

Almost everything comes through pip, so the corpus needs no network access beyond
the package index a Python environment already uses (three Debian documentation
packages come through ``apt-get download``):

* ``warcs/``  the WARC and ARC samples of the pywb sdist (``sample_archive/warcs/``),
  including deliberately broken ones (``bad.arc``, ``example-bad.warc.gz.bad``);
* ``wiki/``   the shortened English Wikipedia dump in gensim's test data;
* ``books/``  Project Gutenberg's *Botchan* from the sentencepiece sdist;
* ``jsonl/``  the documentation of docutils (its sdist's ``docs/**/*.txt``, public
  domain), one JSON line per file, as datasets are usually handed over: the
  demo reads it with ``io.read`` beside the WARCs;
* ``sources/`` pinned raw material of the quality-classifier labels (crawled pages
  with boilerplate, legacy-encoded CJK blog feeds, Chinese reviews and newspaper
  text, Django's docs, the Debian Reference in zh/ja/de, news and Wikipedia text);
  never pipeline input;
* ``labels/`` and ``multilingual/``: derived, not pinned: the labelled JSONL sets
  and a held-out multilingual input that the ``labels`` package builds from ``sources/``
  (deterministically; rebuilt only when their inputs or the builder change).

Package versions are pinned and every *extracted* file is pinned by sha256
(not the archive: wheels differ by platform and sdists may be re-compressed).
Files are written atomically and checked against the pins; a second call only
re-hashes the ~20 MB already on disk.

    python -m arcforge.pipelines.demo.corpus [--dest DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from lzma import LZMAError
from pathlib import Path
from typing import IO
from zlib import error as _zlib_error

import platformdirs

from arcforge.pipelines.demo.pins import BUNDLES, FILES, PACKAGES, Bundle, CorpusFile, JsonlBundle, Package, TarBundle

# Bump when FILES changes, so an old cache is never mistaken for the new corpus.
CORPUS_VERSION = "3"
CACHE_ENV = "ARCFORGE_CACHE_DIR"
FETCH_WORKERS = 4  # packages downloaded at once
_APT_LOCK = threading.Lock()  # one apt-get at a time
MANIFEST_NAME = "CORPUS.json"


class DemoCorpusError(RuntimeError):
    """The corpus could not be downloaded or assembled."""


class CorpusIntegrityError(DemoCorpusError):
    """A file on disk or in a package does not match its pinned sha256."""

    def __init__(self, path: Path | str, expected: str, actual: str, *, hint: str = "") -> None:
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        msg = f"sha256 mismatch for {path}: expected {expected}, got {actual}"
        super().__init__(f"{msg}. {hint}" if hint else msg)


def demo_corpus_dir() -> Path:
    """Where the corpus lives by default: ``$ARCFORGE_CACHE_DIR`` or the user cache dir."""
    root = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("arcforge")
    return Path(root).expanduser() / "demo-corpus" / CORPUS_VERSION


def manifest() -> dict[str, object]:
    """What CORPUS.json holds: origin package, version, member, sha256 and bytes of each file."""
    return {
        "corpus_version": CORPUS_VERSION,
        "files": [
            {
                "path": f.path,
                "package": f.package,
                "version": PACKAGES[f.package].version,
                "distribution": PACKAGES[f.package].dist,
                "member": f.member,
                "sha256": f.sha256,
                "bytes": f.size,
            }
            for f in (*FILES, *BUNDLES)
        ],
        # Built from the files above by arcforge.pipelines.demo.labels; not pinned (their
        # sha256 are in labels/LABELS.json), rebuilt when missing, changed or stale.
        "derived": [{"path": path, "built_by": "arcforge.pipelines.demo.labels"} for path in _derived_paths()],
    }


def _derived_paths() -> tuple[str, ...]:
    from arcforge.pipelines.demo.labels import DERIVED_PATHS

    return DERIVED_PATHS


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_demo_corpus(root: Path) -> None:
    """Check that every pinned file exists under ``root`` with its pinned sha256."""
    root = Path(root)
    missing = [f.path for f in (*FILES, *BUNDLES) if not (root / f.path).is_file()]
    if missing:
        raise DemoCorpusError(f"demo corpus at {root} is incomplete, missing: {', '.join(missing)}")
    for f in (*FILES, *BUNDLES):
        _check(root / f.path, f)


def _check(path: Path, f: CorpusFile | Bundle) -> None:
    actual = sha256_file(path)
    if actual != f.sha256:
        raise CorpusIntegrityError(
            path, f.sha256, actual, hint="The file was modified or corrupted; delete it to fetch it again."
        )


def fetch_demo_corpus(dest: Path | None = None, *, quiet: bool = False) -> Path:
    """Make sure the demo corpus is complete and verified under ``dest``; return the directory.

    Only missing files are fetched (one pip or apt download per package that lacks a
    file); present files are re-hashed and a mismatch raises :class:`CorpusIntegrityError`.
    Then the derived label sets (the ``labels`` package) are built if missing or stale.
    """
    root = Path(dest).expanduser() if dest is not None else demo_corpus_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        missing: dict[str, list[CorpusFile | Bundle]] = {}
        for f in (*FILES, *BUNDLES):
            path = root / f.path
            if path.is_file():
                _check(path, f)
            else:
                missing.setdefault(f.package, []).append(f)
        _fetch_packages(root, missing, quiet=quiet)
        text = json.dumps(manifest(), indent=2, sort_keys=True) + "\n"
        mpath = root / MANIFEST_NAME
        if not mpath.is_file() or mpath.read_text(encoding="utf-8") != text:
            _write_atomic(mpath, text.encode("utf-8"))
        from arcforge.pipelines.demo.labels import ensure_labels

        built = ensure_labels(root, quiet=quiet)
    if missing or built:
        _say(quiet, f"demo corpus ready: {root}")
    return root


def _fetch_packages(root: Path, missing: dict[str, list[CorpusFile | Bundle]], *, quiet: bool) -> None:
    """Fetch several packages at once (downloads and pip's metadata step mostly wait);
    every one is attempted, then the first failure, in table order, is raised."""
    if len(missing) <= 1:
        for pkg_name, files in missing.items():
            _fetch_package(root, PACKAGES[pkg_name], files, quiet=quiet)
        return
    with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(missing)), thread_name_prefix="corpus") as pool:
        futures = [
            pool.submit(_fetch_package, root, PACKAGES[name], files, quiet=quiet) for name, files in missing.items()
        ]
    for future in futures:
        future.result()


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[demo-corpus] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise concurrent fetches into one directory (POSIX); atomic renames cover the rest."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(root / ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic_output(dest: Path) -> Iterator[IO[bytes]]:
    """A new file beside ``dest`` that replaces it only if the block succeeds.

    Opened with mode ``x`` rather than ``mkstemp`` so it gets the umask's usual
    permissions (0644), not 0600, in a cache other users or services may read.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    with _atomic_output(path) as fh:
        fh.write(data)


def _pip_download(pkg: Package, into: Path, *, quiet: bool) -> Path:
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
    _say(quiet, f"downloading {pkg.requirement} ({pkg.dist}) with pip")
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


def _apt_download(pkg: Package, into: Path, *, quiet: bool) -> Path:
    """Download one pinned Debian package with ``apt-get download name=version`` into ``into``.

    Needs no root; it needs apt's package lists to know that exact version.
    """
    apt = shutil.which("apt-get")
    if apt is None:
        raise DemoCorpusError(
            f"{pkg.requirement} is a Debian package and this host has no apt-get; fetch the demo corpus "
            "on a Debian or Ubuntu host and copy its directory here"
        )
    _say(quiet, f"downloading {pkg.requirement} (deb) with apt-get")
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


def _tar_files(tf: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    for info in tf:
        if not info.isfile():
            continue
        reader = tf.extractfile(info)
        if reader is None:
            continue
        with reader:
            name = info.name[2:] if info.name.startswith("./") else info.name.lstrip("/")
            yield name, reader


def _open_members(archive: Path, pkg: Package) -> Iterator[tuple[str, IO[bytes]]]:
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
            for info in tf:
                if not info.isfile():
                    continue
                reader = tf.extractfile(info)
                if reader is None:
                    continue
                with reader:
                    yield info.name.partition("/")[2], reader


def _fetch_package(root: Path, pkg: Package, files: list[CorpusFile | Bundle], *, quiet: bool) -> None:
    wanted = {f.member: f for f in files if isinstance(f, CorpusFile)}
    bundles: dict[Bundle, dict[str, bytes]] = {b: {} for b in files if isinstance(b, (JsonlBundle, TarBundle))}
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        if pkg.dist == "deb":
            archive = _apt_download(pkg, Path(tmp), quiet=quiet)
        else:
            archive = _pip_download(pkg, Path(tmp), quiet=quiet)
        try:
            for member, reader in _open_members(archive, pkg):
                for b, got in bundles.items():
                    if b.wants(member):
                        got[member] = reader.read()
                f = wanted.pop(member, None)
                if f is None:
                    continue
                _extract_verified(reader, root / f.path, f, origin=f"{archive.name}:{member}")
                if not wanted and not bundles:
                    break
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, LZMAError, _zlib_error) as exc:
            raise DemoCorpusError(f"{archive.name} from {pkg.requirement} is damaged or unreadable: {exc}") from exc
        for b, got in bundles.items():
            _extract_verified(io.BytesIO(b.build(got)), root / b.path, b, origin=f"{archive.name}:{b.member}")
    if wanted:
        raise DemoCorpusError(
            f"{pkg.requirement} does not contain: {', '.join(sorted(wanted))}"
        )
    _say(quiet, f"extracted {len(files)} file(s) from {pkg.requirement}")


def _extract_verified(reader: IO[bytes], dest: Path, f: CorpusFile | Bundle, *, origin: str) -> None:
    """Copy one member to a temp file beside ``dest``, check its sha256, then rename into place."""
    h = hashlib.sha256()
    with _atomic_output(dest) as out:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != f.sha256:  # raising here discards the temp file
            raise CorpusIntegrityError(
                origin, f.sha256, h.hexdigest(), hint=f"Refusing to write {dest}; the package changed upstream."
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m arcforge.pipelines.demo.corpus",
        description="Fetch and verify the arcforge demo corpus; print its directory.",
    )
    parser.add_argument("--dest", type=Path, default=None, help=f"target directory (default: {demo_corpus_dir()})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        path = fetch_demo_corpus(args.dest, quiet=args.quiet)
    except DemoCorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


__all__ = [
    "BUNDLES",
    "CORPUS_VERSION",
    "FILES",
    "PACKAGES",
    "CorpusFile",
    "CorpusIntegrityError",
    "JsonlBundle",
    "Package",
    "TarBundle",
    "DemoCorpusError",
    "demo_corpus_dir",
    "fetch_demo_corpus",
    "main",
    "manifest",
    "verify_demo_corpus",
]


if __name__ == "__main__":
    sys.exit(main())
