"""``arcforge.model.dispatch``: the host-sync-free token dispatcher for one rank, against
megatron-core 0.16.1's own dispatchers on the same MoE layer, alone and in a built model, and
through the trainer's CPU backend (fp32 on CPU; its speed needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_steps, tiny_train_config, write_random_shard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _moe_layer_pair(dispatcher_type: str, experts: str):
    """Two MoE layers of proxy-tiny (8 experts top-2, shared expert) with the same weights:
    megatron's ``dispatcher_type`` dispatcher and ``DeviceMoELayer``."""
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from arcforge.model.arch import get_preset, to_transformer_config
    from arcforge.model.dispatch import DeviceMoELayer
    from arcforge.model.megatron_model import init_runtime, local_specs

    init_runtime("cpu")
    arch = get_preset("proxy-tiny")
    config = to_transformer_config(arch, moe_token_dispatcher_type=dispatcher_type,
                                   moe_grouped_gemm=experts == "grouped")
    block, _ = local_specs(arch, config, experts=experts)
    moe_spec = next(s for s in block.layer_specs if s.submodules.mlp.module is MoELayer).submodules.mlp
    torch.manual_seed(0)
    ref = MoELayer(config, submodules=moe_spec.submodules, layer_number=2)
    new = DeviceMoELayer(config, submodules=moe_spec.submodules, layer_number=2)
    new.load_state_dict(ref.state_dict())
    return arch, ref, new


@pytest.mark.parametrize("tokens,experts,k,collapsed", [(1000, 32, 4, False), (1000, 32, 4, True), (9, 8, 2, False),
                                                        (5, 4, 4, False), (3, 16, 1, False)])
def test_expert_major_order_counts_the_permutation_topk_and_argsort_gave(tokens, experts, k, collapsed):
    """``expert_major_order`` (two cumulative sums, no sort) against the first version's
    formulation on the same routing map: each token's experts by ``topk`` of the map (put in
    ascending order, which the new one promises), then a stable ``argsort`` of the flat expert
    ids. Same experts, same order, same inverse, exactly; also when every token picks the same
    ``k`` experts (a collapsed layer) and when ``k`` is every expert. As a custom operator its
    declared output shapes match what it returns (``opcheck``)."""
    from arcforge.model.dispatch import expert_major_order

    gen = torch.Generator().manual_seed(tokens + k)
    scores = torch.rand(tokens, experts, generator=gen)
    if collapsed:
        scores[:, :k] += 2.0
    routing_map = torch.zeros(tokens, experts, dtype=torch.bool).scatter_(1, scores.topk(k, dim=1).indices, True)
    got_experts, order, inverse = expert_major_order(routing_map, k)
    want_experts = routing_map.to(torch.int8).topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    want_order = torch.argsort(want_experts.reshape(-1), stable=True)
    assert torch.equal(got_experts, want_experts)
    assert torch.equal(order, want_order)
    assert torch.equal(inverse[order], torch.arange(tokens * k)) and torch.equal(order[inverse], torch.arange(tokens * k))
    torch.library.opcheck(expert_major_order, (routing_map, k))  # its fake shapes and schema, as compile uses them


@pytest.mark.parametrize("repeats", [1, 4])
def test_row_gather_has_index_selects_gradient_without_index_add(repeats):
    """``RowGather`` (the dispatcher's gathers) against autograd's ``index_select`` on the same
    rows, double precision: each of 6 rows read by ``repeats`` outputs in a shuffled order (the
    dispatch with k = 4; the combine's permutation with 1). Its backward is a gather and a sum:
    no ``index_add`` runs (autograd's backward of ``index_select`` is one)."""
    from torch.profiler import profile

    from arcforge.model.dispatch import RowGather

    gen = torch.Generator().manual_seed(0)
    slots = torch.randperm(6 * repeats, generator=gen)  # output i reads row slots[i] // repeats
    index = torch.div(slots, repeats, rounding_mode="floor")
    readers = torch.empty_like(slots).scatter_(0, slots, torch.arange(slots.numel()))
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen)
    up = torch.randn(6 * repeats, 5, dtype=torch.float64, generator=gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    with profile() as prof:
        (RowGather.apply(a, index, readers, repeats) * up).sum().backward()
    (b.index_select(0, index) * up).sum().backward()
    assert torch.equal(RowGather.apply(x, index, readers, repeats), x.index_select(0, index))
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert not [e.key for e in prof.key_averages() if "index_add" in e.key]
    assert torch.autograd.gradcheck(lambda t: RowGather.apply(t, index, readers, repeats), (x.clone().requires_grad_(),))


@pytest.mark.parametrize("experts", ["sequential", "grouped"])
def test_device_dispatcher_equals_megatrons_on_one_moe_layer(experts):
    """Same output, same gradients (input, router, experts, shared expert), same tokens per
    expert, and the experts see the same rows in the same order. The oracle is megatron's
    ``allgather`` dispatcher (the CPU path's): its ``alltoall`` one asks for a CUDA stream when
    built, and with one rank both permute with the same ``moe_utils.permute``/``unpermute``."""
    dispatcher_type = "allgather"
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

    arch, ref, new = _moe_layer_pair(dispatcher_type, experts)
    assert type(new.token_dispatcher).__name__ == "DeviceTokenDispatcher"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, arch.hidden_size, generator=g)  # [s, b, h]
    up = torch.randn(16, 3, arch.hidden_size, generator=g)
    seen = {}

    def grab(name):
        def hook(_module, args):
            seen[name] = (args[0].detach().clone(), args[1].detach().cpu().clone())
        return hook

    results = []
    for name, layer in (("ref", ref), ("new", new)):
        layer.train()
        layer.experts.register_forward_pre_hook(grab(name))
        inp = x.clone().requires_grad_()
        out, bias = layer(inp)
        assert bias is None
        (out * up).sum().backward()
        results.append((out.detach(), inp.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}))
        clear_aux_losses_tracker()
    (o1, gx1, gp1), (o2, gx2, gp2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-6)
    assert gp1.keys() == gp2.keys()
    for n in gp1:
        torch.testing.assert_close(gp2[n], gp1[n], rtol=1e-4, atol=1e-6, msg=n)
    rows1, counts1 = seen["ref"]
    rows2, counts2 = seen["new"]
    assert counts2.tolist() == counts1.tolist() and sum(counts1.tolist()) == 48 * arch.moe_top_k
    torch.testing.assert_close(rows2, rows1)  # the same permutation, not only the same sums


def test_device_dispatcher_refuses_what_it_does_not_do():
    from arcforge.model.arch import get_preset, to_transformer_config
    from arcforge.model.dispatch import DeviceTokenDispatcher
    from arcforge.model.megatron_model import init_runtime
    from megatron.core.transformer.moe.moe_utils import get_default_pg_collection

    init_runtime("cpu")
    arch = get_preset("proxy-tiny")
    pg = get_default_pg_collection()
    with pytest.raises(ValueError, match="dropless"):
        DeviceTokenDispatcher(8, list(range(8)), to_transformer_config(arch, moe_expert_capacity_factor=1.0), pg)
    with pytest.raises(ValueError, match="shared expert"):
        DeviceTokenDispatcher(8, list(range(8)), to_transformer_config(arch, moe_shared_expert_overlap=True,
                                                                           moe_token_dispatcher_type="alltoall"), pg)


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    return write_random_shard(str(tmp_path_factory.mktemp("dshard") / "rand"), 80)


def test_trainer_with_the_device_dispatcher_takes_the_same_steps(tmp_path, shard):
    """The CPU backend with ``kernels.dispatcher: device`` (and grouped experts, as on the GPU)
    takes the same two steps as with megatron's dispatcher: loss, MTP, aux, gradient norm, the
    router load (the expert-bias update reads it) and every parameter after the steps."""
    from arcforge.model.kernels import uses
    from arcforge.model.train_loop import started
    from arcforge.runtime.config import ConfigError

    with pytest.raises(ConfigError, match=r"kernels\.dispatcher: device needs every expert on each rank"):
        tiny_train_config(tmp_path, shard, "bad", kernels={"dispatcher": "device"}, device="cuda", dtype="bf16",
                          parallel={"ep": 2})
    with pytest.raises(ConfigError, match=r"kernels\.dispatcher"):
        tiny_train_config(tmp_path, shard, "bad", kernels={"dispatcher": "fast"})
    base = tiny_train_config(tmp_path, shard, "megatron", kernels={"experts": "grouped"})
    dev = tiny_train_config(tmp_path, shard, "device", kernels={"experts": "grouped", "dispatcher": "device"})
    with started(base, resume=False, verbose=False) as a, started(dev, resume=False, verbose=False) as b:
        assert uses(a.model)["dispatcher"] == "megatron" and uses(b.model)["dispatcher"] == "device"
        b.model.load_state_dict(a.model.state_dict())  # the same parameters under the same names
        assert_same_steps(a, b)
        pb = dict(b.model.named_parameters())
        for n, p in a.model.named_parameters():
            torch.testing.assert_close(pb[n], p, rtol=1e-4, atol=1e-6, msg=n)
