"""What the GPU benchmarks run: the synthetic shard, the train config of each arcforge run, the
runs of one preset in order, and the MTP layer's share of the FLOPs.

Split from ``bench_gpu_mfu.py`` (which runs and times the children): ``gpu_syncs.py`` and
``routing_balance.py`` write their configs with the same ``write_config``, and
``tests/test_gpu_check_plan.py`` checks on CPU that every run ``gpu_check.sh`` asks for gives a
config the trainer accepts, before a GPU is lent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))  # moe_ref: the reference's shapes and FLOPs

VOCAB, EOD, PAD = 4000, 2, 3
DEFAULT_MBS = {"proxy-100m": 8, "proxy-1b": 4, "proxy-tiny": 8}


def make_data(out: str | Path, *, tokens: int = 2_000_000, vocab: int = VOCAB, seed: int = 0) -> str:
    """A synthetic Megatron shard ``DIR/synthetic`` (.bin/.idx, uint16) plus ``DIR/tokenizer.json``.

    Documents of 256-6,000 tokens drawn from a fixed random first-order Markov chain (each id
    has 8 successors chosen from a Zipf-like distribution over ids 4..vocab-1): learnable,
    unevenly used tokens, deterministic for a seed; ids 0-3 are arcforge's specials (2 = eod
    ends each document, the pad id 3 never occurs). Written with megatron-core's
    ``IndexedDatasetBuilder`` (``arcforge.tokenize.shards.megatron_builder``). About 1 s per
    million tokens."""
    import numpy as np

    from arcforge.tokenize.shards import megatron_builder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "synthetic"
    if Path(str(prefix) + ".idx").exists() and (out / "tokenizer.json").exists():
        return str(prefix)
    rng = np.random.default_rng(seed)
    ids = np.arange(4, vocab)
    p = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
    p /= p.sum()
    succ = rng.choice(ids, size=(vocab, 8), p=p).astype(np.uint16)
    builder = megatron_builder()(str(prefix) + ".bin", dtype=np.uint16)
    n = docs = 0
    while n < tokens:
        length = int(rng.integers(256, 6000))
        pick = rng.integers(0, 8, size=length)
        doc = np.empty(length + 1, dtype=np.uint16)
        t = int(rng.choice(ids, p=p))
        for i in range(length):
            doc[i] = t
            t = int(succ[t, pick[i]])
        doc[length] = EOD
        builder.add_document(doc, [len(doc)])
        n += len(doc)
        docs += 1
    builder.finalize(str(prefix) + ".idx")
    (out / "tokenizer.json").write_text(json.dumps({"vocab_size": vocab, "eod_id": EOD, "pad_id": PAD}))
    print(f"synthetic data: {docs} documents, {n:,} tokens, vocab {vocab} -> {prefix}.bin/.idx", flush=True)
    return str(prefix)


TEXT_DIR = ROOT / "benchmarks" / "gpu_text"  # text_shard's output, carried to the GPU machine like gpu_wheels/


def text_shard(blend_file: str | Path, out: str | Path = TEXT_DIR, tokenizer: str | Path | None = None) -> str:
    """Real text for the GPU benchmarks: every document of a blend written by ``arcforge mix``
    (after ``make demo``: ``runs/demo/mixture/pretrain_1_general.blend.json``, the demo's
    stage-1 mixture of web, Wikipedia, books, docs and multilingual text), each once, merged
    into one Megatron shard ``OUT/text.{bin,idx}`` with megatron-core's builder
    (``add_index``), plus ``OUT/tokenizer.json``.

    Why: the synthetic shard is a Markov chain, on which proxy-1b's routing collapses within a
    few steps; issue 12 asks for the speed with real data and real routing. The GPU machine
    cannot run the demo pipeline (no Java, no time), so the shard is built here and carried.
    The tokenizer (default: the blend's run's ``tokenizer`` stage) must have the synthetic
    shard's vocabulary and special ids, so the GPU configs train on either unchanged; else one
    line, and nothing is written."""
    import numpy as np

    from arcforge.model.data import read_tokenizer_info
    from arcforge.tokenize.shards import megatron_builder

    blend_file = Path(blend_file)
    meta = json.loads(blend_file.read_text())
    paths = meta["data_path"]
    prefixes = paths[1::2] if len(paths) > 1 and _is_number(paths[0]) else paths
    tokenizer = Path(tokenizer) if tokenizer else blend_file.parent.parent / "tokenizer"
    info = read_tokenizer_info(str(tokenizer))
    if (info.vocab_size, info.eod_id, info.pad_id) != (VOCAB, EOD, PAD):
        raise SystemExit(f"mfu_plan: {info.source}: vocabulary {info.vocab_size}, eod {info.eod_id}, pad {info.pad_id}; "
                         f"the GPU configs expect {VOCAB}, {EOD}, {PAD} (the synthetic shard's)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "text"
    builder = megatron_builder()(str(prefix) + ".bin", dtype=np.uint16)
    for p in prefixes:
        builder.add_index(p)
    builder.finalize(str(prefix) + ".idx")
    (out / "tokenizer.json").write_text(json.dumps({"vocab_size": VOCAB, "eod_id": EOD, "pad_id": PAD}))
    tokens = (out / "text.bin").stat().st_size // 2
    print(f"text: {len(prefixes)} shards of {blend_file}, {tokens:,} tokens -> {prefix}.bin/.idx", flush=True)
    return str(prefix)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def shape(preset: str):
    from moe_ref import shape_from_arch

    from arcforge.model.arch import get_preset

    return shape_from_arch(get_preset(preset), VOCAB)


def mtp_flops_per_token(preset: str, seq: int, mtp_layers: int) -> float:
    """What the MTP layers add per token, by the same formula (the headline MFU leaves them out,
    as the reference has none): each has ``eh_proj`` (2 x hidden -> hidden), one MoE layer with
    its attention, and a second pass through the output layer."""
    from moe_ref import attention_params, moe_params

    s = shape(preset)
    return mtp_layers * (6 * (2 * s.H * s.H + attention_params(s) + moe_params(s) + s.H * s.V) + 12 * s.H * seq)


def parse_variant(text: str) -> tuple[str | None, str]:
    """``[PRESET:]auto`` or ``[PRESET:]ATTENTION,EXPERTS[,DISPATCHER]`` -> (preset or None, variant)."""
    preset, _, variant = text.rpartition(":")
    if variant != "auto":
        parts = variant.split(",")
        att, exp, disp = (parts + ["megatron"])[:3] if len(parts) in (2, 3) else ("?", "?", "?")
        if (att not in ("sdpa", "local", "auto") or exp not in ("grouped", "sequential", "auto")
                or disp not in ("megatron", "device")):
            raise SystemExit(f"bench_gpu_mfu: --kernels {text!r}: expected auto or ATTENTION,EXPERTS[,DISPATCHER] with "
                             "attention sdpa|local|auto, experts grouped|sequential|auto, dispatcher megatron|device")
    return preset or None, variant


def plan_runs(preset: str, variants: list[tuple[str | None, str]], sides: str, ref_compile: bool,
              levers: list[str]) -> list[tuple[list[str], str | None]]:
    """The child runs for one preset, in order, each with its lever (None for the variants and
    the reference): the first kernel variant and the reference first (for time-boxed callers),
    then the other variants, then the levers."""
    ours = [["--child", "arcforge", "--variant", v] for p, v in variants if p in (None, preset)] if "arcforge" in sides else []
    refs = [["--child", "reference"]] + ([["--child", "reference", "--compile"]] if ref_compile else []) \
        if "reference" in sides else []
    runs = [(x, None) for x in ours[:1] + refs + ours[1:]]
    if "arcforge" in sides:
        runs += [(["--child", "arcforge", *shlex.split(spec)], spec)
                 for p, spec in map(parse_lever, levers) if p in (None, preset)]
    return runs


LEVER_FLAGS = {"--mbs", "--accum", "--set", "--variant", "--profile"}


def parse_lever(text: str) -> tuple[str | None, str]:
    """``[PRESET:]ARGS`` -> (preset or None, ARGS): one more arcforge run with these child
    arguments (only ``--mbs``, ``--accum``, ``--set``, ``--variant``, ``--profile``; each with its
    value)."""
    head, sep, rest = text.partition(":")
    preset, spec = (head, rest) if sep and not head.startswith("-") and " " not in head else (None, text)
    words = shlex.split(spec)
    if not words or len(words) % 2 or any(w not in LEVER_FLAGS for w in words[::2]):
        raise SystemExit(f"bench_gpu_mfu: --lever {text!r}: expected [PRESET:]ARGS with pairs of "
                         f"{', '.join(sorted(LEVER_FLAGS))} and a value")
    if "--variant" in words:
        parse_variant(words[words.index("--variant") + 1])
    return preset, spec


def set_label(item: str, sep: str = "=") -> str:
    """``model.overrides.mtp_layers=0`` -> ``mtp_layers=0`` (``sep`` between key and value)."""
    key, _, value = item.partition("=")
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", f"{key.rpartition('.')[2]}{sep}{value}")


def write_config(preset: str, data: str, workdir: str, *, mbs: int, accum: int, iters: int, seq: int,
            kernels: str = "auto", sets: list[str] = ()) -> str:
    """configs/train.<preset>.gpu.yaml with this run's data, batch, step count, kernels and output
    dir, then ``sets`` (``dotted.key=YAML value``, e.g. ``model.overrides.mtp_layers=0``)."""
    import yaml

    from arcforge.runtime.config import read_yaml

    os.environ["ARCFORGE_GPU_DATA"] = data
    src = ROOT / "configs" / f"train.{preset}.gpu.yaml"
    cfg = read_yaml(str(src))
    tag = preset if kernels == "auto" else f"{preset}-{kernels.replace(',', '-')}"
    tag += "".join("_" + set_label(x, "-") for x in sets)
    cfg["name"] = f"mfu-{tag}"
    cfg["output_dir"] = str(Path(workdir) / tag)
    if kernels != "auto":
        att, exp, disp = (kernels.split(",") + ["megatron"])[:3]
        cfg["kernels"] = {"attention": att, "experts": exp, "dispatcher": disp}
    cfg["model"]["seq_length"] = seq
    cfg["batch"] = {"micro_batch_size": mbs, "global_batch_size": mbs * accum}
    cfg["train"] = {"iters": iters}
    cfg["data"]["split"] = "100,0,0"  # no validation share: no evaluation at the end
    cfg["eval"] = {"interval": 0}
    cfg["checkpoint"] = {"interval": 0, "keep": 1}
    cfg["log"] = {"print_interval": 1, "plot": False}
    for item in sets:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    path = Path(workdir) / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def lever_sets(extra: list[str]) -> frozenset[str]:
    """The ``--set KEY=VALUE`` items of one child run's arguments."""
    return frozenset(v for k, v in zip(extra, extra[1:]) if k == "--set")


def failed_settings(sets: frozenset[str], failed: list[frozenset[str]], passed: list[frozenset[str]]) -> str:
    """The settings to blame if a run with ``sets`` would fail as an earlier one did ('' if none):
    for a failed run F and a run S that passed, F - S are the settings only the failure had; a
    later run holding all of them is skipped (e.g. a new kernel choice that breaks on the GPU:
    its first lever fails, the same lever without it passes, the other levers with it need not
    run). Failures by running out of memory or time are not recorded (see ``stops_compiled_runs``)."""
    for f in failed:
        for ok in passed:
            blame = f - ok
            if blame and blame <= sets:
                return ", ".join(sorted(blame))
    return ""


def stops_compiled_runs(r: dict) -> str:
    """Why a compiled run's result means the later compiled runs would fail too ('' if not): a
    timeout (the compile did not finish) or an error that is not running out of memory (a
    larger micro-batch may not fit where a smaller one did; anything else is the compile's)."""
    error = r.get("error", "")
    if not error:
        return ""
    if error.startswith("timed out"):
        return error
    if "out of memory" in (error + r.get("tail", "")).lower():
        return ""
    return f"failed ({error})"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build the GPU benchmarks' real-text shard from a blend (after make demo)")
    ap.add_argument("--text-from", required=True, metavar="BLEND_JSON",
                    help="e.g. runs/demo/mixture/pretrain_1_general.blend.json")
    ap.add_argument("--out", default=str(TEXT_DIR))
    ap.add_argument("--tokenizer", default=None, help="default: the blend's run's tokenizer stage")
    a = ap.parse_args()
    text_shard(a.text_from, a.out, a.tokenizer)
