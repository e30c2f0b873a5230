"""``model.compile: layers`` (``arcforge.model.compile``) on CPU: every transformer layer of the
megatron model traces into one graph (no graph breaks), layers of a kind share their graph,
the compiled model computes what the eager one does (dynamo + AOT autograd, then inductor's
generated code through the trainer), the shims it needs change nothing, and the config refuses
the kernels it cannot serve. Its speed on a GPU needs a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_steps, tiny_train_config, write_random_shard

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _pair(num_layers: int):
    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model

    arch = get_preset("proxy-tiny").with_overrides(num_layers=num_layers)
    models = [build_model(arch, seq_length=32, seed=0, attention="sdpa", experts="grouped", dispatcher="device")
              for _ in range(2)]
    for m in models:
        m.train()
    for (n1, p1), (n2, p2) in zip(*(m.named_parameters() for m in models)):
        assert n1 == n2 and torch.equal(p1, p2), n1
    return arch, models


def test_compiled_layers_trace_whole_share_graphs_and_equal_eager():
    """proxy-tiny with 6 layers (1 dense, 5 MoE, plus the MTP layer), each layer compiled
    with AOT autograd (``aot_eager``: the traced forward and backward graphs, run by torch's
    own kernels): no graph break, 3 graphs (dense; MoE, whose layer number is a graph input;
    the MTP layer's own arguments) whatever the layer count, and the same losses and gradients
    as eager, from the first step on: ``lm_loss`` creates megatron's aux-loss tracker entries
    before the first forward (``reset_loss_trackers(model)``), so no compiled layer creates
    one and every layer runs compiled from its first call (three steps are taken: the graph
    count is 3 after the first and stays 3)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from arcforge.model.compile import compile_layers
    from arcforge.model.megatron_model import lm_loss

    arch, (ref, new) = _pair(6)
    torch._dynamo.reset()
    counters.clear()
    assert compile_layers(new, backend="aot_eager") == 7
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        tokens, labels = (torch.randint(4, arch.vocab_size, (2, 32), generator=g) for _ in range(2))
        outs = []
        for model in (ref, new):
            model.zero_grad(set_to_none=True)
            out = lm_loss(model, tokens, labels, loss_scale=0.5)
            out.loss.backward()
            outs.append(out)
        assert outs[1].lm_loss == pytest.approx(outs[0].lm_loss, rel=1e-6)
        assert outs[1].mtp_losses == pytest.approx(outs[0].mtp_losses, rel=1e-6)
        assert outs[1].aux_losses == pytest.approx(outs[0].aux_losses, rel=1e-6)
        for (name, p), q in zip(ref.named_parameters(), new.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
        # compiled from the first call: an eager first call (which kept eager activations, the
        # run's memory peak on the GPU) would leave no graph after step 0
        assert counters["stats"]["unique_graphs"] == 3, (step, dict(counters["stats"]))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 3
    # evaluation: no grad, eval mode (recompiled once for the mode, same numbers)
    with torch.no_grad():
        for m in (ref, new):
            m.eval()
        evals = [lm_loss(m, tokens, labels).per_token for m in (ref, new)]
    torch.testing.assert_close(evals[1], evals[0], rtol=1e-5, atol=1e-6)


def test_compile_shims_change_nothing():
    """The aux-loss scaler still gives the aux loss the main loss's backward scale (set by
    ``set_loss_scale``, kept in place), and the row-parallel linear's group lookup returns
    what megatron's returns, without its warning."""
    import warnings

    from megatron.core import utils as mutils
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    from arcforge.model import compile as mc
    from arcforge.model.megatron_model import init_runtime

    init_runtime("cpu")
    mc.apply_compile_shims()
    for scale in (torch.tensor(0.25), torch.tensor([3.0])):  # arcforge's CPU loop, megatron's schedules
        MoEAuxLossAutoScaler.set_loss_scale(scale)
        x = torch.ones(3, requires_grad=True)
        aux = torch.tensor(2.0, requires_grad=True)
        MoEAuxLossAutoScaler.apply(x, aux).sum().backward()
        assert aux.grad.shape == () and aux.grad.item() == scale.item() and torch.equal(x.grad, torch.ones(3))
    held = MoEAuxLossAutoScaler.main_loss_backward_scale
    assert held.item() == 3.0 and held.shape == ()
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor([0.5]))
    assert MoEAuxLossAutoScaler.main_loss_backward_scale is held and held.item() == 0.5  # updated in place
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for expert in (False, True):
            assert mc._tp_group_if_none(None, is_expert=expert) is mutils.get_tensor_model_parallel_group_if_none(
                None, is_expert=expert)
        marker = object()
        assert mc._tp_group_if_none(marker) is marker
    assert sum("tp_group is None" in str(w.message) for w in caught) == 2  # megatron's calls only


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    return write_random_shard(str(tmp_path_factory.mktemp("cshard") / "rand"), 80)


def test_trainer_with_compiled_layers_takes_the_same_steps(tmp_path, shard):
    """The CPU backend with ``model.compile: layers`` (inductor: generated C++ kernels on CPU,
    ``arcforge::grouped_mm`` called as it is) takes the same two steps as the eager model:
    loss, MTP, aux, gradient norm and router load (counted by the trainer's forward hooks on
    the routers, inside the compiled layers), within fp32 reordering error, with no graph break."""
    from torch._dynamo.utils import counters

    from arcforge.model.compile import transformer_layers
    from arcforge.model.train_loop import started

    counters.clear()
    kernels = {"attention": "sdpa", "experts": "grouped", "dispatcher": "device"}
    eager = tiny_train_config(tmp_path, shard, "eager", kernels=kernels)
    # inductor options reach torch.compile (model.compile_options): its trace of each graph it lowers
    trace = tmp_path / "inductor-trace"
    comp = tiny_train_config(tmp_path, shard, "compiled", kernels=kernels, model={"compile": "layers", "compile_options": {
        "trace.enabled": True, "trace.debug_dir": str(trace), "fx_graph_cache": False}})
    with started(eager, resume=False, verbose=False) as a, started(comp, resume=False, verbose=False) as b:
        b.model.load_state_dict(a.model.state_dict())
        assert all(getattr(layer.forward, "_torchdynamo_orig_callable", None) is not None
                   for layer in transformer_layers(b.model))
        assert_same_steps(a, b, rel=1e-4)
    assert list(trace.rglob("output_code.py")), sorted(str(p) for p in trace.rglob("*"))[:20]
    # the trainer's router-load hooks trace into the layers' graphs too, one graph for all MoE
    # layers (proxy-tiny: 3 of them; a per-router Python constant in the hook would recompile each)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 3


def test_config_refuses_compile_where_a_layer_cannot_be_one_graph(tmp_path, shard):
    from arcforge.runtime.config import ConfigError

    with pytest.raises(ConfigError, match=r"^bad\.yaml: model\.compile: layers needs .*kernels\.dispatcher: megatron "
                                          r"\(needs device\); kernels\.experts: sequential \(needs grouped\)"):
        tiny_train_config(tmp_path, shard, "bad", model={"compile": "layers"})
    with pytest.raises(ConfigError, match=r"model\.recompute: selective \(needs none\)"):
        tiny_train_config(tmp_path, shard, "bad", model={"compile": "layers", "recompute": "selective"},
                          kernels={"attention": "sdpa", "experts": "grouped", "dispatcher": "device"})
    with pytest.raises(ConfigError, match=r"model\.compile"):
        tiny_train_config(tmp_path, shard, "bad", model={"compile": "everything"})
    ok_kernels = {"attention": "sdpa", "experts": "grouped", "dispatcher": "device"}
    for model, message in (
            ({"compile_options": {"coordinate_descent_tuning": True}}, r"compile_options needs model\.compile: layers"),
            ({"compile": "layers", "compile_options": {"coordinate_decent_tuning": True}},
             r"compile_options\.coordinate_decent_tuning: not an inductor option"),
            ({"compile": "layers", "compile_options": {"triton.cudagraphs": True}},
             r"compile_options\.triton\.cudagraphs: not supported")):
        with pytest.raises(ConfigError, match=r"^bad\.yaml: model\." + message):
            tiny_train_config(tmp_path, shard, "bad", model=model, kernels=ok_kernels)
