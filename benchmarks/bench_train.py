"""Training throughput of proxy-tiny on CPU: the arcforge trainer vs a bare megatron-core loop.

Both sides, in the same process and interleaved round by round (so that load from other
processes hits both alike):

* the same model: ``build_model(proxy-tiny, seed)`` (megatron-core ``GPTModel``, MTP, MoE);
* the same data: one megatron-core ``GPTDataset`` (built by the trainer through
  ``BlendedMegatronDatasetBuilder``), read in the same order from sample 0;
* the same optimizer (AdamW, decay / no-decay groups), micro-batch, sequence length,
  gradient accumulation, clipping and expert-bias update.

The arcforge side is ``Trainer.advance``: the trainer's real per-step path (LR/MTP/bias
schedules, ``lm_loss``, clipping, router-load hooks, balance statistics, the CSV and JSONL
rows). Evaluation and checkpoints are periodic and off in this measurement; one checkpoint
save is timed separately. The bare side is the loop a megatron-core user writes by hand:
``model(tokens, position_ids, mask, labels, loss_mask)``, masked mean, backward, step.

Because both start from the same weights and see the same samples, their per-step losses
must agree: the benchmark reports the largest difference as a correctness check.

Reported: tokens/s by wall clock over the counted rounds, the wall-clock ratio, and the
ratio of process CPU time (less sensitive to other processes on a shared machine).

    python benchmarks/bench_train.py [--rounds 13] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import bz2
import io
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def make_data(workdir: Path, vocab: int) -> str:
    """A shard of the demo corpus's book + raw Wikipedia XML, encoded with a sentencepiece BPE
    (arcforge's special-id layout) trained on the same text; written with megatron's builder."""
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from arcforge.pipelines.demo.corpus import fetch_demo_corpus

    corpus = fetch_demo_corpus(quiet=True)
    text = (corpus / "books" / "botchan.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    lines = text.splitlines()
    docs = ["\n".join(lines[i : i + 8]) for i in range(0, len(lines), 8)]
    (dump,) = (corpus / "wiki").glob("*.bz2")
    with bz2.open(dump, "rt", encoding="utf-8") as f:
        raw = f.read(1_500_000)
    docs += [raw[i : i + 3000] for i in range(0, len(raw), 3000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_writer=model, vocab_size=vocab, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2, max_sentence_length=40000,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    prefix = workdir / "bench"
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    n = 0
    for ids in sp.encode(docs):
        arr = np.asarray(ids + [2], dtype=np.uint16)
        builder.add_document(arr, [len(arr)])
        n += len(arr)
    builder.finalize(str(prefix) + ".idx")
    (workdir / "tokenizer.json").write_text(json.dumps({"vocab_size": vocab, "eod_id": 2, "pad_id": 3}))
    print(f"data: {len(docs)} documents, {n:,} tokens, vocab {vocab}", flush=True)
    return str(prefix)


class Bare:
    """The hand-written megatron-core loop."""

    def __init__(self, arch, seq: int, mbs: int, seed: int, lr: float, dataset) -> None:
        import torch

        from arcforge.model.megatron_model import build_model, causal_attention_mask

        self.model = build_model(arch, seq_length=seq, seed=seed)
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW(
            [{"params": [p for _, p in named if p.dim() >= 2]}, {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
        )
        self.mask = causal_attention_mask(seq)
        self.pos = torch.arange(seq).unsqueeze(0).expand(mbs, seq)
        self.ds, self.mbs, self.consumed = dataset, mbs, 0

    def step(self, batch: int) -> float:
        import torch
        from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler
        from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

        from arcforge.model.megatron_model import expert_bias_update

        n_micro = batch // self.mbs
        scale = torch.tensor(1.0 / n_micro)
        MTPLossAutoScaler.set_loss_scale(scale)  # as megatron's schedules do
        MoEAuxLossAutoScaler.set_loss_scale(scale)
        total = 0.0
        for j in range(n_micro):
            items = [self.ds[i] for i in range(self.consumed + j * self.mbs, self.consumed + (j + 1) * self.mbs)]
            tokens = torch.stack([x["tokens"] for x in items])
            labels = torch.stack([x["labels"] for x in items])
            loss_mask = torch.stack([x["loss_mask"] for x in items]).float()
            per_token = self.model(tokens, self.pos, self.mask, labels=labels, loss_mask=loss_mask)
            loss = (per_token * loss_mask).sum() / loss_mask.sum()
            (loss / n_micro).backward()
            total += float(loss.detach()) / n_micro
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        expert_bias_update(self.model)
        self.consumed += batch
        return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=13, help="interleaved rounds (the first is warm-up, not counted)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per side per round")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    ap.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from arcforge.model.train import Trainer, parse_train_config
    from arcforge.model.trainlog import TrainLog

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    vocab = 2048  # proxy-tiny's vocabulary
    prefix = make_data(work, vocab)
    total_steps = args.rounds * args.steps
    cfg = parse_train_config({
        "name": "bench", "output_dir": str(work / "out"), "seed": 1, "threads": args.threads,
        "model": {"preset": "proxy-tiny", "seq_length": args.seq},
        "data": {"blend": [[prefix, 1.0]], "tokenizer": str(work / "tokenizer.json")},
        "batch": {"micro_batch_size": args.micro_batch, "global_batch_size": args.global_batch},
        "train": {"iters": total_steps},
        # a constant LR (warm-up 0, min = max) so that the bare loop's fixed LR matches
        "optimizer": {"name": "adamw", "lr": 1e-3, "min_lr": 1e-3, "warmup_iters": 0},
        "log": {"print_interval": 0, "plot": False},
    }, "bench")
    trainer = Trainer(cfg, resume=False, verbose=False)
    trainer.setup()
    dataset = trainer.train_batches.dataset
    bare = Bare(trainer.arch, args.seq, args.micro_batch, cfg.seed, 1e-3, dataset)
    log = TrainLog(cfg.output_dir)
    tokens_per_step = args.global_batch * args.seq
    wall = {"arcforge": 0.0, "bare": 0.0}
    cpu = {"arcforge": 0.0, "bare": 0.0}
    round_ratios = []
    losses_a, losses_b = [], []
    for r in range(args.rounds):
        order = ("arcforge", "bare") if r % 2 == 0 else ("bare", "arcforge")
        w, c = {}, {}
        for side in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                if side == "arcforge":
                    losses_a.append(trainer.advance(log)["loss"])
                else:
                    losses_b.append(bare.step(args.global_batch))
            w[side], c[side] = time.perf_counter() - t0, time.process_time() - c0
        tps = {k: args.steps * tokens_per_step / v for k, v in w.items()}
        print(f"round {r}{' (warm-up, not counted)' if r == 0 else ''}: arcforge {tps['arcforge']:,.0f} tok/s, "
              f"bare {tps['bare']:,.0f} tok/s (wall), ratio {tps['arcforge'] / tps['bare']:.3f}; "
              f"CPU-time ratio {c['bare'] / c['arcforge']:.3f}", flush=True)
        if r == 0:
            continue
        round_ratios.append(tps["arcforge"] / tps["bare"])
        for k in wall:
            wall[k] += w[k]
            cpu[k] += c[k]
    log.close()
    t0 = time.perf_counter()
    trainer.save()
    save_s = time.perf_counter() - t0
    counted_tokens = (args.rounds - 1) * args.steps * tokens_per_step
    diff = max(abs(a - b) for a, b in zip(losses_a, losses_b))
    out = {
        "model": "proxy-tiny", "params_with_mtp": trainer.arch.total_params(include_mtp=True),
        "seq_length": args.seq, "micro_batch": args.micro_batch, "global_batch": args.global_batch,
        "threads": args.threads, "rounds_counted": args.rounds - 1, "steps_per_round": args.steps,
        "arcforge_tokens_per_s": round(counted_tokens / wall["arcforge"]),
        "bare_tokens_per_s": round(counted_tokens / wall["bare"]),
        "ratio_wall": round(wall["bare"] / wall["arcforge"], 4),
        "ratio_cpu_time": round(cpu["bare"] / cpu["arcforge"], 4),
        "arcforge_tokens_per_cpu_s": round(counted_tokens / cpu["arcforge"]),
        "bare_tokens_per_cpu_s": round(counted_tokens / cpu["bare"]),
        "round_ratio_median": round(statistics.median(round_ratios), 4),
        "round_ratio_min": round(min(round_ratios), 4), "round_ratio_max": round(max(round_ratios), 4),
        "max_abs_loss_diff": diff, "first_loss": losses_a[0], "last_loss": losses_a[-1],
        "checkpoint_save_s": round(save_s, 3), "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not math.isfinite(diff) or diff > 1e-4:
        print(f"WARNING: the trainer and the bare loop disagree on the losses (max diff {diff})", file=sys.stderr)
        return 1
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
