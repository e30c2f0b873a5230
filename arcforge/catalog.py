"""The one place that names arcforge's built-in stages and config variables.

A config's ``uses:`` is a name from ``STAGES`` or an import path (``pkg.mod:OBJ``)
to a user's own stage. Each entry is an import path, imported only when a config
names it, so validating a config does not import trafilatura, fastText, Spark or
Ray. The runtime reads this table; the modules it names stand on the runtime.
"""

from __future__ import annotations

STAGES: dict[str, str] = {
    # runtime: generic reading and selection
    "io.read": "arcforge.runtime.io.read:READ",
    "filter": "arcforge.runtime.select:FILTER",
    "split": "arcforge.runtime.split:SPLIT",
    "chain": "arcforge.runtime.chain:CHAIN",  # a stage with `steps:`; not named by `uses` itself
    # domain pipelines
    "text.stats": "arcforge.pipelines.web.textstats:TEXT_STATS",
    "web.gopher_quality": "arcforge.pipelines.web.heuristics.gopher_quality:GOPHER_QUALITY",
    "web.gopher_repetition": "arcforge.pipelines.web.heuristics.gopher_repetition:GOPHER_REPETITION",
    "web.c4_quality": "arcforge.pipelines.web.heuristics.c4:C4_QUALITY",
    "web.fineweb_quality": "arcforge.pipelines.web.heuristics.fineweb:FINEWEB_QUALITY",
    "web.extract_warc": "arcforge.pipelines.web.warc:EXTRACT_WARC",
    "web.langid": "arcforge.pipelines.web.langid:LANGID",
    "text.wikipedia_dump": "arcforge.pipelines.web.sources:WIKIPEDIA_DUMP",
    "text.plain_files": "arcforge.pipelines.web.sources:PLAIN_FILES",
    # source code
    "code.file_filter": "arcforge.pipelines.code.file_filter:FILE_FILTER",
    "code.git_commits": "arcforge.pipelines.code.git_history:GIT_COMMITS",
    "code.repo_pack": "arcforge.pipelines.code.repo_pack:REPO_PACK",
    # quality classifiers
    "quality.buckets": "arcforge.classifiers.buckets:BUCKETS",
    "quality.fasttext": "arcforge.classifiers.stages:FASTTEXT_QUALITY",
    "quality.embedding": "arcforge.classifiers.stages:EMBEDDING_QUALITY",
    # dedup and tokenize
    "dedup.exact": "arcforge.dedup.exact:EXACT_DEDUP",
    "dedup.semantic": "arcforge.dedup.semantic:SEMANTIC_DEDUP",
    "dedup.minhash": "arcforge.dedup.fuzzy:MINHASH_DEDUP",
    "dedup.url": "arcforge.dedup.exact:URL_DEDUP",
    "tokenize.train_spm": "arcforge.tokenize.spm_train:TRAIN_SPM",
    "tokenize.megatron_shards": "arcforge.tokenize.shards:MEGATRON_SHARDS",
}


def builtin_variables() -> dict[str, str]:
    """Variables every config may use without setting them (the environment overrides)."""
    from arcforge.pipelines.demo.corpus import demo_corpus_dir

    return {"ARCFORGE_DEMO_CORPUS": str(demo_corpus_dir())}
