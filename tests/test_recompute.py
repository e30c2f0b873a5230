"""``model.recompute`` (activation recompute, megatron's ``recompute_granularity``): the train
config's three choices mapped to megatron's keys, the trainer's steps unchanged by them on CPU
(recompute trades compute for memory, never the result), and the dry-run's estimate following
the config. Runs megatron's own recompute code: ``CheckpointFunction`` (full) and
``CheckpointWithoutOutput`` (selective norms and expert activation, which needed
``te_shims.apply_no_te_shims``: without Transformer Engine it raised ``NameError``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_same_steps, tiny_train_config, write_random_shard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


def test_recompute_settings_are_megatrons_keys():
    from arcforge.model.arch import get_preset, recompute_settings, to_transformer_config

    assert recompute_settings("none", grouped_experts=True) == {}
    assert recompute_settings("selective", grouped_experts=False) == {
        "recompute_granularity": "selective", "recompute_modules": ["core_attn", "layernorm"]}
    assert recompute_settings("selective", grouped_experts=True)["recompute_modules"] == ["core_attn", "layernorm", "moe_act"]
    assert recompute_settings("full", grouped_experts=False) == {
        "recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    with pytest.raises(ValueError, match="recompute"):
        recompute_settings("some", grouped_experts=False)
    arch = get_preset("proxy-tiny")  # megatron accepts each mapping (moe_act needs grouped experts)
    for kind, grouped in (("selective", False), ("selective", True), ("full", False)):
        c = to_transformer_config(arch, moe_grouped_gemm=grouped, **recompute_settings(kind, grouped_experts=grouped))
        assert c.recompute_granularity == kind


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    return write_random_shard(str(tmp_path_factory.mktemp("rshard") / "rand"), 80)


def _cfg(tmp_path: Path, prefix: str, name: str, recompute: str, experts: str):
    return tiny_train_config(tmp_path, prefix, name, kernels={"experts": experts}, model={"recompute": recompute})


@pytest.mark.parametrize("recompute,experts", [("full", "sequential"), ("selective", "sequential"),
                                               ("selective", "grouped")])
def test_recompute_leaves_the_steps_unchanged(tmp_path, shard, recompute, experts):
    from arcforge.model.train_loop import started
    from arcforge.runtime.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.recompute"):
        _cfg(tmp_path, shard, "bad", "sometimes", experts)
    base = _cfg(tmp_path, shard, "base", "none", experts)
    rec = _cfg(tmp_path, shard, "rec", recompute, experts)
    with started(base, resume=False, verbose=False) as a, started(rec, resume=False, verbose=False) as b:
        assert b.model.config.recompute_granularity == recompute and a.model.config.recompute_granularity is None
        assert ("moe_act" in (b.model.config.recompute_modules or [])) == (recompute == "selective" and experts == "grouped")
        assert_same_steps(a, b, rel=1e-5)
        # fp32 sums in another order differ by ~1e-8; Adam turns that into up to ~1e-5 on entries
        # whose gradient is near zero: within a tenth of one learning-rate step (1e-3)
        pb = dict(b.model.named_parameters())
        for n, p in a.model.named_parameters():
            torch.testing.assert_close(pb[n], p, rtol=0, atol=1e-4, msg=n)


def test_dry_run_follows_the_configs_recompute(tmp_path):
    src = (ROOT / "configs" / "train.proxy-1b.gpu.yaml").read_text()
    cfg = tmp_path / "full.yaml"
    cfg.write_text(src.replace("  compile: layers ", "  recompute: full\n  compile: none ").replace("  dispatcher: device ", "  dispatcher: megatron "))
    run = lambda *a: subprocess.run([sys.executable, "-m", "arcforge.cli", "train", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    full, flag, none = run(str(cfg), "--dry-run"), run(str(cfg), "--dry-run", "--recompute", "none"), \
        run("configs/train.proxy-1b.gpu.yaml", "--dry-run")
    assert full.returncode == flag.returncode == none.returncode == 0, full.stderr + flag.stderr + none.stderr
    assert "recompute full" in full.stdout and "recompute none" in flag.stdout and "recompute none" in none.stdout
    act = [float(p.stdout.split("activations")[1].split("GiB")[0]) for p in (full, none)]
    assert act[0] < act[1] / 4  # full recompute keeps each layer's input only
