"""The trainer split (issue 12): the backend protocol, the shared loss-free balancing rule, the
no-TE shim, one Muon for both paths, the megatron backend's optimizer checkpoint format, and
the CPU/GPU parity entry point (run here on CPU only: no GPU in CI)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import assert_same_steps, tiny_train_config, write_random_shard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


# ---- the protocol and the facade ------------------------------------------------------------


def test_both_backends_implement_the_protocol():
    from arcforge.model.backend import Backend, get_backend
    from arcforge.model.backend_cpu import CpuBackend
    from arcforge.model.backend_megatron import MegatronBackend

    for cls in (CpuBackend, MegatronBackend):
        assert isinstance(cls(), Backend)
    assert isinstance(get_backend("cpu"), CpuBackend)
    assert isinstance(get_backend("cuda"), MegatronBackend)  # importable without a GPU
    with pytest.raises(ValueError):
        get_backend("tpu")


def test_facade_reexports_the_public_names():
    import arcforge.model.train as facade
    from arcforge.model import train_config, train_loop

    for name in ("TrainConfig", "TrainResult", "Trainer", "load_train_config", "parse_train_config",
                 "step_batch_sizes", "train"):
        assert hasattr(facade, name), name
    assert facade.Trainer is train_loop.Trainer and facade.TrainConfig is train_config.TrainConfig
    assert len(Path(facade.__file__).read_text().splitlines()) < 80


def test_split_modules_stay_small():
    root = Path(__file__).resolve().parents[1] / "arcforge" / "model"
    for name in ("train_config", "train_data", "train_loop", "backend", "backend_cpu", "backend_megatron", "losses",
                 "parity_check"):
        assert len((root / f"{name}.py").read_text().splitlines()) < 450, name


# ---- loss-free balancing: one rule for both paths ---------------------------------------------


def test_bias_update_rule_moves_loaded_experts_down():
    from arcforge.model.megatron_model import updated_expert_bias

    counts = torch.tensor([10.0, 2.0, 6.0, 6.0])  # mean 6
    bias = torch.tensor([0.0, 0.0, 0.5, -0.5])
    out = updated_expert_bias(counts, bias, 1e-3)
    assert torch.allclose(out, torch.tensor([-1e-3, 1e-3, 0.5, -0.5]))
    assert torch.equal(bias, torch.tensor([0.0, 0.0, 0.5, -0.5]))  # pure
    # several layers at once, and rate 0 leaves the bias alone
    stacked = torch.stack([counts, counts.flip(0)])
    out2 = updated_expert_bias(stacked, torch.zeros(2, 4), 0.01)
    assert torch.allclose(out2, torch.tensor([[-0.01, 0.01, 0, 0], [0, 0, 0.01, -0.01]]))
    assert torch.equal(updated_expert_bias(counts, bias, 0.0), bias)


def test_bias_update_matches_megatron_rule():
    """megatron-core 0.16.1's own ``get_updated_expert_bias`` (the GPU path's former update,
    whose all-reduce is a no-op in a world of one) gives the same biases."""
    from arcforge.model import cpu_compat

    cpu_compat.apply(0, force=True)
    from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

    from arcforge.model.megatron_model import updated_expert_bias

    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (3, 8), generator=gen).float()
    bias = torch.randn(3, 8, generator=gen)
    assert torch.equal(updated_expert_bias(counts, bias, 1e-3), get_updated_expert_bias(counts.clone(), bias, 1e-3))


def test_megatron_backend_turns_off_megatrons_own_update():
    """finalize_model_grads updates the bias (and zeroes the counts) only under
    ``moe_router_enable_expert_bias``; the backend switches it off after the routers exist
    and calls the shared update itself after the optimizer step."""
    import inspect

    from arcforge.model import backend_megatron

    src = inspect.getsource(backend_megatron.MegatronBackend)
    assert "config.moe_router_enable_expert_bias = False" in src
    assert "expert_bias_update(_unwrap(t.model), update_rate=rates.bias_rate)" in src
    assert "reset_loss_trackers(_unwrap(t.model))" in src


# ---- no Transformer Engine -------------------------------------------------------------------


def test_no_te_shim_is_shared_and_makes_the_router_gemm_run(monkeypatch):
    from arcforge.model import cpu_compat

    cpu_compat.apply(0, force=True)
    from megatron.core.transformer.moe import moe_utils

    from arcforge.model.te_shims import apply_no_te_shims, have_transformer_engine

    if have_transformer_engine():
        pytest.skip("Transformer Engine imports here")
    monkeypatch.delattr(moe_utils, "te_general_gemm", raising=False)
    x, w = torch.randn(5, 4), torch.randn(3, 4)
    with pytest.raises(NameError):
        moe_utils.router_gating_linear(x, w, None, torch.float32)
    apply_no_te_shims()
    apply_no_te_shims()  # idempotent
    assert moe_utils.te_general_gemm is None
    assert torch.allclose(moe_utils.router_gating_linear(x, w, None, torch.float32), x @ w.t())


# ---- one Muon --------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5, bias=True)
        self.norm = nn.LayerNorm(5)
        self.experts = nn.ModuleDict({"weight1": nn.Linear(5, 8, bias=False)})
        self.output_layer = nn.Linear(5, 11, bias=False)


def test_gpu_muon_groups_step_like_the_cpu_muon():
    """The megatron backend replaces the torch AdamW inside each megatron optimizer by
    ``optim.muon_adamw`` over that optimizer's groups: fp32 main copies of the params, megatron's
    extra keys, weight decay already scaled by ``wd_mult``. On the same tensors it steps exactly
    as the CPU path's ``build_optimizer("muon")``."""
    from arcforge.model.optim import build_optimizer, muon_adamw

    torch.manual_seed(0)
    cpu_model = Tiny()
    named = list(cpu_model.named_parameters())
    mains = {n: p.detach().clone().requires_grad_(True) for n, p in named}  # megatron's main params
    names = {id(mains[n]): n for n, _ in named}
    mg = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, amsgrad=False, is_expert_parallel=False, default_config=True,
              lr_mult=1.0, is_decoupled_lr=False, max_lr=1e-3, min_lr=1e-4)
    groups = [{**mg, "params": [mains[n] for n, p in named if p.dim() >= 2], "wd_mult": 1.0, "weight_decay": 0.1},
              {**mg, "params": [mains[n] for n, p in named if p.dim() < 2], "wd_mult": 0.0, "weight_decay": 0.0}]
    gpu_opt = muon_adamw(groups, names, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    cpu_opt = build_optimizer(cpu_model, "muon", lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert len(gpu_opt.optimizers) == len(cpu_opt.optimizers) == 2
    assert all(g.get("is_expert_parallel") is False for g in gpu_opt.param_groups)  # megatron's keys kept
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for n, p in named:
            g = torch.randn(p.shape, generator=gen)
            p.grad, mains[n].grad = g.clone(), g.clone()
        cpu_opt.step()
        gpu_opt.step()
    for n, p in named:
        assert torch.equal(p.detach(), mains[n].detach()), n
    assert set(gpu_opt.state) == set(mains.values())  # the combined state view megatron reads


def _megatron_sub(sharded: bool):
    """A stand-in for one megatron sub-optimizer as the backend reads it: an inner torch AdamW
    over fp32 main weights, held as whole copies (``fp32_from_float16_groups``) or, as the
    distributed optimizer holds them, as this rank's flat slices (``shard_fp32_from_float16_groups``)."""
    main = [torch.zeros(6), torch.zeros(4)] if sharded else [torch.zeros(3), torch.zeros(2, 2)]
    inner = torch.optim.AdamW([{"params": main}], lr=0.1)
    key = "shard_fp32_from_float16_groups" if sharded else "fp32_from_float16_groups"
    return SimpleNamespace(optimizer=inner, **{key: [main]}), main


def _trainer(sub, *, distributed: bool = False, dp: int = 1):
    return SimpleNamespace(optimizer=SimpleNamespace(chained_optimizers=[sub]), dp=dp,
                           cfg=SimpleNamespace(_path="cfg", optimizer=SimpleNamespace(fused=False, distributed=distributed)))


@pytest.mark.parametrize("sharded", [False, True], ids=["whole", "distributed"])
def test_megatron_optimizer_state_round_trip(sharded):
    """The backend's checkpoint format: each megatron sub-optimizer's inner torch state plus its
    fp32 main weights (restored into the main copies, which the model state does not hold);
    under the distributed optimizer, this rank's slices and the data-parallel size they were
    cut for."""
    from arcforge.model.backend_megatron import OPTIMIZER_FORMAT, MegatronBackend

    sub, main = _megatron_sub(sharded)
    for q in main:
        q.grad = torch.ones_like(q)
    sub.optimizer.step()
    state = MegatronBackend().optimizer_state(_trainer(sub, distributed=sharded, dp=2))
    assert state["format"] == OPTIMIZER_FORMAT and state["sharded_over"] == (2 if sharded else None)
    sub2, main2 = _megatron_sub(sharded)
    MegatronBackend().load_optimizer(_trainer(sub2, distributed=sharded, dp=2), state)
    for a, b in zip(main, main2):
        assert torch.equal(a, b) and a.abs().sum() > 0
    assert sub2.optimizer.state_dict()["state"][0]["step"] == 1


def test_megatron_optimizer_state_refuses_another_sharding():
    """A sharded state resumed whole, whole resumed sharded, or shards cut for another
    data-parallel size: one ConfigError saying what to set, nothing loaded."""
    from arcforge.model.backend_megatron import MegatronBackend
    from arcforge.runtime.config import ConfigError

    sharded = MegatronBackend().optimizer_state(_trainer(_megatron_sub(True)[0], distributed=True, dp=2))
    whole = MegatronBackend().optimizer_state(_trainer(_megatron_sub(False)[0]))
    cases = [(sharded, _trainer(_megatron_sub(False)[0]), "saved sharded over 2 data-parallel ranks and this run's "
              "is whole (not distributed); set optimizer.distributed: true"),
             (whole, _trainer(_megatron_sub(True)[0], distributed=True, dp=2), "saved whole (not distributed) and "
              "this run's is sharded over 2 data-parallel ranks; set optimizer.distributed: false"),
             (sharded, _trainer(_megatron_sub(True)[0], distributed=True, dp=4), "sharded over 4")]
    for state, t, msg in cases:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            MegatronBackend().load_optimizer(t, state)
        assert not t.optimizer.chained_optimizers[0].optimizer.state  # nothing was loaded


def test_distributed_optimizer_config_is_checked_before_megatron(tmp_path):
    """``optimizer.distributed`` is for AdamW on the GPU path: Muon and the CPU path refuse it
    in one line."""
    from arcforge.runtime.config import ConfigError

    shard = write_random_shard(str(tmp_path / "rand"), 40)
    with pytest.raises(ConfigError, match="optimizer: Value error, distributed is for adamw"):
        tiny_train_config(tmp_path, shard, "muon", optimizer={"name": "muon", "distributed": True})
    with pytest.raises(ConfigError, match="optimizer.distributed: the CPU path runs one process"):
        tiny_train_config(tmp_path, shard, "cpu", optimizer={"distributed": True})


# ---- parity entry point (CPU) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def random_shard(tmp_path_factory) -> str:
    return write_random_shard(str(tmp_path_factory.mktemp("shard") / "rand"), 120)


def _config(tmp_path: Path, prefix: str) -> Path:
    import yaml

    cfg = {"name": "parity", "output_dir": str(tmp_path / "out"), "seed": 3, "threads": 1,
           "model": {"preset": "proxy-tiny", "seq_length": 32},
           "data": {"blend": [prefix], "split": "90,10,0"},
           "batch": {"micro_batch_size": 2, "global_batch_size": 4},
           "train": {"iters": 6}, "eval": {"iters": 1},
           "optimizer": {"name": "adamw", "lr": 1e-3, "warmup_iters": 1},
           "log": {"print_interval": 0, "plot": False}}
    path = tmp_path / "parity.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(300)
def test_parity_check_cli_and_the_loop_agree(tmp_path, random_shard, capsys):
    """``python -m arcforge.model.parity_check CONFIG --device cpu --steps N --out FILE`` writes
    the first N losses; with megatron's own initialisation they are the rows ``train`` logs for
    the same config (the loop, the data order and the schedules are shared); two runs with the
    device-independent initialisation agree exactly, and ``--compare-with`` says so."""
    from arcforge.model.parity_check import compare, main
    from arcforge.model.train import load_train_config, train
    from arcforge.model.trainlog import read_csv

    path = _config(tmp_path, random_shard)
    a, b, m = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    assert main([str(path), "--device", "cpu", "--steps", "3", "--out", str(a)]) == 0
    capsys.readouterr()
    assert main([str(path), "--device", "cpu", "--steps", "3", "--out", str(b), "--compare-with", str(a)]) == 0
    printed = capsys.readouterr().out
    assert "parity ok: cpu and cpu losses agree over 3 steps (max relative difference 0.0000" in printed
    assert "mtp_loss rel.diff  aux_loss rel.diff  grad_norm rel.diff  balance_max_mean rel.diff" in printed
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["loss"] == rb["loss"] and len(ra["loss"]) == 3 and ra["device"] == "cpu" and ra["dtype"] == "fp32"
    assert all(isinstance(x, float) for x in ra["mtp_loss"] + ra["aux_loss"] + ra["grad_norm"])
    assert compare(ra, rb) == []
    assert compare({**ra, "loss": [x * 1.1 for x in ra["loss"]]}, rb)  # 10% off: flagged
    assert main([str(path), "--device", "cpu", "--steps", "3", "--out", str(m), "--init", "megatron"]) == 0
    rm = json.loads(m.read_text())
    result = train(load_train_config(path), resume=False, max_steps=3)
    rows = [r for r in read_csv(result.csv) if r["kind"] == "train"]
    assert [r["loss"] for r in rows] == pytest.approx(rm["loss"], rel=1e-6)
    assert [r["mtp_loss"] for r in rows] == pytest.approx(rm["mtp_loss"], rel=1e-6)
    assert not (tmp_path / "out" / "parity").exists()  # the parity runs used scratch directories


def test_parity_config_takes_the_plain_kernels_on_cpu(tmp_path, random_shard):
    """A GPU config with megatron's fused loss and TF32 GEMMs (bf16 / CUDA only) gets their
    plain forms, fp32 and parallel sizes 1 for its CPU side; its CUDA side keeps them all."""
    import yaml

    from arcforge.model.parity_check import parity_config

    path = _config(tmp_path, random_shard)
    cfg = yaml.safe_load(path.read_text())
    cfg.update(device="cuda", dtype="bf16", kernels={"cross_entropy": "fused", "fp32_matmul": "tf32"},
               parallel={"tp": 1, "pp": 1, "ep": 2})
    path.write_text(yaml.safe_dump(cfg))
    cpu, gpu = parity_config(str(path), "cpu", str(tmp_path / "c")), parity_config(str(path), "cuda", str(tmp_path / "g"))
    assert (cpu.dtype, cpu.kernels.cross_entropy, cpu.kernels.fp32_matmul, cpu.parallel.ep) == ("fp32", "plain", "ieee", 1)
    assert (gpu.dtype, gpu.kernels.cross_entropy, gpu.kernels.fp32_matmul, gpu.parallel.ep) == ("bf16", "fused", "tf32", 2)


def test_parity_weights_reach_whole_and_sliced_main_weights():
    """``parity_check.set_weights`` writes the same values into the bf16 parameters and into
    megatron's fp32 main weights, whole (``main_param``) or flat (``main_param_sharded``, as the
    distributed optimizer marks them); a slice of a parameter (more than one data-parallel rank)
    is refused by name."""
    from arcforge.model.parity_check import parity_weights, set_weights

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False)).to(torch.bfloat16)
    w, b, w2 = model.parameters()
    w.main_param = torch.zeros(3, 4)  # whole (Float16OptimizerWithFloat16Params)
    b.main_param, b.main_param_sharded = torch.zeros(3), True
    w2.main_param, w2.main_param_sharded = torch.zeros(6), True  # flat, the whole of it on one rank
    values = parity_weights(model, seed=5, std=0.5)
    set_weights(model, values)
    assert torch.equal(w.main_param, values["0.weight"]) and torch.equal(w.float(), values["0.weight"].bfloat16().float())
    assert torch.equal(b.main_param, values["0.bias"]) and torch.equal(w2.main_param, values["1.weight"].reshape(-1))
    w2.main_param = torch.zeros(3)  # half of it: another rank holds the rest
    with pytest.raises(ValueError, match="1.weight's main weights are split over data-parallel ranks"):
        set_weights(model, values)


def test_fused_adamw_takes_the_same_steps_and_resumes_fused(tmp_path):
    """``optimizer.fused: true`` on the CPU backend: the same two steps as the foreach AdamW,
    every group fused; a foreach checkpoint resumed with ``fused: true`` (and another
    ``model.recompute``, which is no reason to refuse a resume) steps fused
    (``load_state_dict`` restores the saved flags; the backend re-applies them); Muon refuses
    it in one line."""
    from arcforge.model.train_loop import started
    from arcforge.runtime.config import ConfigError

    shard = write_random_shard(str(tmp_path / "rand"), 80)
    with pytest.raises(ConfigError, match="fused is for adamw"):
        tiny_train_config(tmp_path, shard, "bad", optimizer={"name": "muon", "fused": True})
    base = tiny_train_config(tmp_path, shard, "foreach")
    fused = tiny_train_config(tmp_path, shard, "fused", optimizer={"fused": True})
    with started(base, resume=False, verbose=False) as a, started(fused, resume=False, verbose=False) as b:
        assert all(g["fused"] is True for g in b.optimizer.param_groups)
        assert not any(g["fused"] for g in a.optimizer.param_groups)
        assert_same_steps(a, b, rel=1e-5)
        a.save()
    switched = tiny_train_config(tmp_path, shard, "foreach", optimizer={"fused": True}, model={"recompute": "full"},
                                 train={"iters": 3})
    with started(switched, resume=True, verbose=False) as c:
        assert c.step == 2 and all(g["fused"] is True and g["foreach"] is False for g in c.optimizer.param_groups)
        c.advance(None)


def test_resume_ignores_how_the_layers_run_not_what_they_are():
    """A checkpoint written before ``model.compile`` / ``compile_options`` existed (or with other
    values) resumes; a changed ``model`` key that shapes the trajectory does not."""
    from arcforge.model.train_loop import _resume_view

    saved = {"model": {"preset": "proxy-tiny", "seq_length": 32, "recompute": "none"}}
    now = {"model": {"preset": "proxy-tiny", "seq_length": 32, "recompute": "full", "compile": "layers",
                     "compile_options": {"coordinate_descent_tuning": True}}}
    assert _resume_view(saved, "model") == _resume_view(now, "model")
    now["model"]["seq_length"] = 64
    assert _resume_view(saved, "model") != _resume_view(now, "model")
