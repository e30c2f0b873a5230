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
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from lzma import LZMAError
from pathlib import Path
from typing import IO
from zlib import error as _zlib_error

import platformdirs

from arcforge.pipelines.demo.packages import DemoCorpusError, open_members, say
from arcforge.pipelines.demo.packages import apt_download as _apt_download
from arcforge.pipelines.demo.packages import pip_download as _pip_download
from arcforge.pipelines.demo.pins import BUNDLES, FILES, PACKAGES, Bundle, CorpusFile, EscBundle, JsonlBundle, Package, TarBundle

_say = say
_open_members = open_members

# Bump when FILES changes, so an old cache is never mistaken for the new corpus.
CORPUS_VERSION = "3"
CACHE_ENV = "ARCFORGE_CACHE_DIR"
FETCH_WORKERS = 4  # packages downloaded at once
MANIFEST_NAME = "CORPUS.json"


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


def _fetch_package(root: Path, pkg: Package, files: list[CorpusFile | Bundle], *, quiet: bool) -> None:
    wanted = {f.member: f for f in files if isinstance(f, CorpusFile)}
    bundles: dict[Bundle, dict[str, bytes]] = {b: {} for b in files if isinstance(b, (JsonlBundle, TarBundle, EscBundle))}
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        if pkg.dist == "deb":
            archive = _apt_download(pkg, Path(tmp), quiet=quiet)
        else:
            archive = _pip_download(pkg, Path(tmp), quiet=quiet)
        try:
            for member, reader in _open_members(archive, pkg):
                data = None  # read once, however many bundles want the member
                for b, got in bundles.items():
                    if b.wants(member):
                        data = reader.read() if data is None else data
                        got[member] = data
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
