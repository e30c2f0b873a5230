"""Small stages the runtime tests reference by import path (``pipeline_stages:LINES``).

They are real stages run on the real engines; they only make inputs tiny and
timing controllable (a slow stage gives a kill test a window to hit).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pyarrow as pa

from arcforge.runtime.documents import doc_id, docs_table
from arcforge.runtime.stage import MapStage, NoParams, Output, SourceStage, StageParams, TaskContext, split_rejected


class LinesParams(StageParams):
    source: str = "lines"


def read_lines(path: str, fs, params: LinesParams, ctx: TaskContext) -> Iterator[Output]:  # noqa: ANN001
    with fs.open_input_stream(path) as f:
        lines = f.read().decode().splitlines()
    base = path.rsplit("/", 1)[-1]
    rows = [
        {"id": doc_id(base, str(i)), "text": line, "source": params.source, "url": path}
        for i, line in enumerate(lines)
        if line.strip()
    ]
    yield Output(kept=docs_table(rows))


LINES = SourceStage("test.lines", LinesParams, read_lines)


def read_lines_strict(path: str, fs, params: LinesParams, ctx: TaskContext) -> Iterator[Output]:  # noqa: ANN001
    """Like read_lines, but a file holding the line POISON is a bug in the reader: it raises."""
    for out in read_lines(path, fs, params, ctx):
        if "POISON" in out.kept.column("text").to_pylist():
            raise ValueError("the reader cannot handle POISON")
        yield out


STRICT_LINES = SourceStage("test.strict_lines", LinesParams, read_lines_strict)


class FlakyParams(StageParams):
    marker_dir: str  # a partition fails on its first attempt, recorded by a file here


def read_lines_flaky(path: str, fs, params: FlakyParams, ctx: TaskContext) -> Iterator[Output]:  # noqa: ANN001
    """Fails the first attempt of every partition (a lost worker, a bad node), then reads."""
    marker = os.path.join(params.marker_dir, f"attempt-{ctx.partition}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    yield from read_lines(path, fs, LinesParams(), ctx)


FLAKY_LINES = SourceStage("test.flaky_lines", FlakyParams, read_lines_flaky)


class SlowParams(StageParams):
    seconds: float = 0.0
    min_chars: int = 0


def slow_filter(batch: pa.RecordBatch, params: SlowParams, ctx: TaskContext) -> Output:
    time.sleep(params.seconds)
    ctx.stats.update("slow.batches")
    if os.environ.get("ARCFORGE_TEST_FAIL_ON") and os.environ["ARCFORGE_TEST_FAIL_ON"] in batch.column("text").to_pylist():
        raise ValueError("poisoned record")
    reasons = ["too_short" if len(t) < params.min_chars else None for t in batch.column("text").to_pylist()]
    return split_rejected(batch, reasons)


SLOW_FILTER = MapStage("test.slow_filter", SlowParams, slow_filter, engine="local")


class ScoreParams(StageParams):
    extra_column: bool = False  # return a column the stage does not declare
    forget_score: bool = False  # leave out the column it declares


def score_length(batch: pa.RecordBatch, params: ScoreParams, ctx: TaskContext) -> Output:
    if os.environ.get("ARCFORGE_TEST_FAIL_ON") and os.environ["ARCFORGE_TEST_FAIL_ON"] in batch.column("text").to_pylist():
        raise ValueError("poisoned record")
    table = pa.Table.from_batches([batch])
    if not params.forget_score:
        table = table.append_column("length", pa.array([len(t) for t in batch.column("text").to_pylist()], pa.int64()))
    if params.extra_column:
        table = table.append_column("debug", pa.array(["x"] * batch.num_rows))
    return Output(kept=table)


SCORE_LENGTH = MapStage("test.score_length", ScoreParams, score_length, adds=(pa.field("length", pa.int64()),))


def signal_after_commits(proc, commits, n: int, sig: int, poll: float = 0.2, timeout: float = 240) -> None:  # noqa: ANN001
    """Wait until ``n`` commit records exist under ``commits`` (a ``_commits`` folder), then send
    ``sig`` to the CLI's process group, as a kill or a terminal's Ctrl-C would reach it."""
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(commits.glob("*.json"))) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the signal: {proc.communicate()}")
        time.sleep(poll)
    os.killpg(proc.pid, sig)


WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def make_line_files(directory, n_files: int = 4, n_lines: int = 50, seed: int = 0) -> list:  # noqa: ANN001
    """Text files of random short lines: duplicates and short lines occur by construction."""
    import random

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(n_files):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n_lines)]
        p = directory / f"f{i:02d}.txt"
        p.write_text("\n".join(lines) + "\n")
        paths.append(p)
    return paths


def pipeline_yaml(root: str, inputs: str, *, name: str = "t", filt_engine: str = "local",
                  dedup_engine: str = "local", lines_engine: str = "local", min_chars: int = 12,
                  seconds: float = 0.0, extra: str = "", max_error_fraction: float = 0.01) -> str:
    return f"""
name: {name}
storage: {{root: "{root}"}}
engines: {{spark: {{master: "local[2]"}}, ray: {{num_cpus: 2}}}}
stages:
  - {{name: lines, uses: "pipeline_stages:LINES", input: {{files: ["{inputs}"]}}, engine: {lines_engine}}}
  - {{name: filt, uses: "pipeline_stages:SLOW_FILTER", input: lines, engine: {filt_engine}, params: {{min_chars: {min_chars}, seconds: {seconds}}}, max_error_fraction: {max_error_fraction}}}
  - {{name: dedup, uses: dedup.exact, input: filt, engine: {dedup_engine}}}
{extra}"""


# An artifact stage and a partition stage that uses it: a word list, then one side file per part.
class VocabParams(StageParams):
    top: int = 3


def build_vocab(params: VocabParams, ctx) -> dict:  # noqa: ANN001
    import collections

    from arcforge.runtime import storage
    from arcforge.runtime.dataset import read_dataset

    counts = collections.Counter()
    for ref in ctx.inputs:
        for text in read_dataset(ref, ["text"]).column("text").to_pylist():
            counts.update(text.split())
    words = [w for w, _ in counts.most_common(params.top)]
    fs, base = ctx.output.fs()
    storage.write_json_atomic(fs, storage.join(base, "vocab.json"), words)
    ctx.stats.update("vocab.words", len(words))
    return {"files": [{"name": "vocab.json"}], "meta": {"words": words}}


from arcforge.runtime.stage import ArtifactStage, PartitionStage  # noqa: E402

VOCAB = ArtifactStage("test.vocab", VocabParams, build_vocab)


def load_vocab(params, artifacts):  # noqa: ANN001, ANN201
    from arcforge.runtime import storage

    fs, base = storage.filesystem(artifacts["vocab"])
    return storage.read_json(fs, storage.join(base, "vocab.json"))


COUNT_SCHEMA = pa.schema([("part", pa.string()), ("hits", pa.int64())])


def count_vocab(path, fs, params, ctx):  # noqa: ANN001, ANN201
    import tempfile

    from arcforge.runtime import storage

    texts = storage.read_parquet(fs, path, ["text"]).column("text").to_pylist()
    hits = sum(w in ctx.state for t in texts for w in t.split())
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt") as f:
        f.write(f"{hits}\n")
    ctx.publish_file(f.name, f"hits/part-{ctx.partition:05d}.txt")
    yield Output(kept=pa.table({"part": [path.rsplit("/", 1)[-1]], "hits": [hits]}, schema=COUNT_SCHEMA))


COUNT_VOCAB = PartitionStage("test.count_vocab", NoParams, count_vocab, schema=COUNT_SCHEMA, setup=load_vocab)


from arcforge.runtime.stage import GlobalStage  # noqa: E402


class _LocalOnly(GlobalStage):
    engines = ("local",)

    def run(self, ctx):  # noqa: ANN001, ANN201
        return []


LOCAL_ONLY = _LocalOnly("test.local_only", NoParams)


# Global stages that break a run once per marker directory (``marker_dir``): the first run is
# killed or fails in the middle of the stage, the re-run finds the marker and goes on.
import signal  # noqa: E402

from arcforge.dedup.fuzzy import MinhashDedup, MinhashParams  # noqa: E402
from arcforge.dedup.semantic import SemanticDedup, SemanticDedupParams  # noqa: E402


class _BreaksOnce:
    def run(self, ctx):  # noqa: ANN001, ANN201
        self._marker = os.path.join(ctx.stage.params.marker_dir, "broken")
        return super().run(ctx)

    def first_time(self) -> bool:
        """True once per marker directory (and leaves the marker)."""
        if os.path.exists(self._marker):
            return False
        open(self._marker, "w").close()
        return True


class KillMinhashParams(MinhashParams):
    marker_dir: str = ""


class KillingMinhash(_BreaksOnce, MinhashDedup):
    """SIGKILLs its own process after the second round of the connected components."""

    def component_round(self, stats) -> None:  # noqa: ANN001
        super().component_round(stats)
        if stats.rounds == 2 and self.first_time():
            os.kill(os.getpid(), signal.SIGKILL)


KILLING_MINHASH = KillingMinhash("test.killing_minhash", KillMinhashParams, engine="local")


class FailSemanticParams(SemanticDedupParams):
    marker_dir: str = ""


class FailingSemantic(_BreaksOnce, SemanticDedup):
    """Fails once every partition is embedded: the re-run resumes from the kept embeddings."""

    def embedded(self, n: int) -> None:
        super().embedded(n)
        if self.first_time():
            raise RuntimeError("failing once after the embeddings, as a test asks")


FAILING_SEMANTIC = FailingSemantic("test.failing_semantic", FailSemanticParams, engine="local")
