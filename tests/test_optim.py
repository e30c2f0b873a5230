"""Muon as the report uses it, checked against torch.optim.Muon; schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from arcforge.model.optim import ExpertLayout, Muon, build_optimizer, orthogonalize
from arcforge.model.schedule import batch_size_at, cosine_lr


def _pair(shape, seed=0):
    torch.manual_seed(seed)
    a = nn.Parameter(torch.randn(*shape))
    b = nn.Parameter(a.detach().clone())
    return a, b


def test_muon_matches_torch_muon_on_plain_matrices():
    ours, ref = _pair((24, 40))
    opt = Muon([ours], lr=0.01, weight_decay=0.1)
    torch_opt = torch.optim.Muon([ref], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        g = torch.randn(24, 40, generator=torch.Generator().manual_seed(step))
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("experts_on_dim", [0, 1, -1])
def test_fused_experts_are_orthogonalised_one_by_one(experts_on_dim):
    n_exp, m, n = 4, 16, 8
    layout = ExpertLayout(n_exp, experts_on_dim)
    shape = (n_exp * m, n) if experts_on_dim == 0 else (m, n_exp * n)
    fused, _ = _pair(shape, seed=1)
    opt = Muon([fused], lr=0.01, weight_decay=0.0, layouts={fused: layout})
    singles = [nn.Parameter(x.clone()) for x in layout.split(fused.detach())]
    ref = torch.optim.Muon(singles, lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    fused.grad = g.clone()
    for s, gs in zip(singles, layout.split(g)):
        s.grad = gs.clone()
    opt.step()
    ref.step()
    torch.testing.assert_close(layout.split(fused.detach()), torch.stack([s.detach() for s in singles]), rtol=0, atol=1e-6)
    # and orthogonalising the stack as one matrix would give something else
    whole = orthogonalize(g, None)
    per_expert = orthogonalize(g, layout)
    assert (whole - per_expert).abs().max() > 1e-2


def test_build_optimizer_puts_embeddings_norms_biases_on_adamw():
    model = nn.ModuleDict(
        {
            "embedding": nn.Embedding(50, 16),
            "proj": nn.Linear(16, 32, bias=True),
            "norm": nn.LayerNorm(32),
            "output_layer": nn.Linear(32, 50, bias=False),
        }
    )
    opt = build_optimizer(model, "muon", lr=1e-3)
    muon, adamw = opt.optimizers
    muon_params = {id(p) for g in muon.param_groups for p in g["params"]}
    assert muon_params == {id(model["proj"].weight)}
    adam_params = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert id(model["embedding"].weight) in adam_params and id(model["output_layer"].weight) in adam_params
    assert id(model["proj"].bias) in adam_params and id(model["norm"].weight) in adam_params
    assert all(g["base_lr"] == 1e-3 for g in opt.param_groups)
    x = torch.randint(0, 50, (4,))
    loss = model["output_layer"](model["norm"](model["proj"](model["embedding"](x)))).logsumexp(-1).mean()
    loss.backward()
    before = model["proj"].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model["proj"].weight)
    state = opt.state_dict()
    opt.load_state_dict(state)
    with pytest.raises(ValueError, match="adamw' or 'muon"):
        build_optimizer(model, "sgd", lr=1e-3)


def test_cosine_schedule_with_warmup():
    kw = dict(max_lr=2.5e-4, min_lr=2.5e-5, warmup_steps=10, total_steps=110)
    assert cosine_lr(0, **kw) == pytest.approx(2.5e-5)
    assert cosine_lr(9, **kw) == pytest.approx(2.5e-4)
    assert cosine_lr(60, **kw) == pytest.approx((2.5e-4 + 2.5e-5) / 2)
    assert cosine_lr(110, **kw) == pytest.approx(2.5e-5)
    lrs = [cosine_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_batch_size_warmup():
    kw = dict(start=4, end=16, ramp_tokens=1000, increment=4)
    assert batch_size_at(0, **kw) == 4
    assert batch_size_at(500, **kw) == 8
    assert batch_size_at(999, **kw) == 12
    assert batch_size_at(1000, **kw) == 16
    assert batch_size_at(10**9, **kw) == 16
    assert math.isclose(batch_size_at(0, start=16, end=16, ramp_tokens=0), 16)


def test_grouped_mlp_weight1_splits_as_megatron_reads_it():
    """GroupedMLP computes expert e with ``weight1.view(E, hidden, -1)[e]``: Muon must orthogonalise that."""
    from arcforge.model.optim import grouped_expert_layout

    n_exp, hidden, ffn2 = 4, 8, 6
    w1 = torch.randn(hidden, n_exp * ffn2)
    layout = grouped_expert_layout("decoder.layers.1.mlp.experts.weight1", w1, n_exp)
    for e in range(n_exp):
        torch.testing.assert_close(layout.split(w1)[e], w1.view(n_exp, hidden, -1)[e], rtol=0, atol=0)
    torch.testing.assert_close(layout.join(layout.split(w1), w1), w1, rtol=0, atol=0)
    w2 = torch.randn(n_exp * ffn2, hidden)
    layout2 = grouped_expert_layout("decoder.layers.1.mlp.experts.weight2", w2, n_exp)
    for e in range(n_exp):
        torch.testing.assert_close(layout2.split(w2)[e], w2.view(n_exp, -1, hidden)[e], rtol=0, atol=0)


def test_fused_adamw_flag_steps_as_torchs_fused_adamw():
    """``use_fused_adamw`` on an AdamW built without the flag (as megatron builds it without
    TE/Apex) steps exactly as ``AdamW(fused=True)`` and, to rounding, as the foreach kernel;
    a saved state loads back with the fused flag re-applied; Muon has no fused kernel."""
    from arcforge.model.optim import use_fused_adamw

    g = torch.Generator().manual_seed(0)
    params = [torch.randn(16, 8, generator=g), torch.randn(8, generator=g)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    results = {}
    for kind in ("flag", "fused", "foreach"):
        ps = [nn.Parameter(p.clone()) for p in params]
        groups = [{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1,
                                **({"fused": True} if kind == "fused" else {"foreach": True} if kind == "foreach" else {}))
        if kind == "flag":
            use_fused_adamw(opt)
        for step in grads:
            for p, gr in zip(ps, step):
                p.grad = gr.clone()
            opt.step()
        results[kind] = ([p.detach() for p in ps], opt)
    for a, b in zip(results["flag"][0], results["fused"][0]):
        assert torch.equal(a, b)
    for a, b in zip(results["flag"][0], results["foreach"][0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    state = results["foreach"][1].state_dict()
    again = results["flag"][1]
    again.load_state_dict(state)
    assert [grp["fused"] for grp in again.param_groups] == [None, None]  # restored with the state...
    use_fused_adamw(again)
    assert all(grp["fused"] is True and grp["foreach"] is False for grp in again.param_groups)  # ...and re-applied
    with pytest.raises(TypeError):
        use_fused_adamw(torch.optim.SGD(params=[nn.Parameter(torch.zeros(2))], lr=0.1))
    with pytest.raises(ValueError, match="fused"):
        build_optimizer(nn.Linear(4, 4), "muon", 1e-3, fused=True)
