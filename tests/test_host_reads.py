"""``arcforge.model.host_reads``: the operations that make the host read tensor data (on a GPU, a
sync) are counted on CPU by the line that asked, and the GPU path's layers with the device
dispatcher make none, where megatron's own dispatcher makes some in every MoE layer."""

from __future__ import annotations

import inspect

import pytest
import torch

from arcforge.model.host_reads import HostReads

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _line() -> int:
    return inspect.currentframe().f_back.f_lineno


def test_counts_reads_by_operation_and_line_and_nothing_else():
    x = torch.arange(8.0)
    mask = x > 2
    with HostReads() as reads:
        y = (x * 2 + 1).softmax(0)[torch.tensor([1, 3])]  # device-only work: no read
        x2 = x.clone()
        x2[mask] = 0  # masked_fill_ inside index_put: no read
        base = _line()
        x.sum().item()
        float(x[0])
        x.tolist()
        x.cpu()
        x[mask]
        torch.nonzero(x)
        x.masked_select(mask)
        x2[mask] = y.sum() * torch.ones(int(mask.sum()))  # a tensor value: index_put expands the mask
    here = __file__.split("/")[-1]
    got = {(op, int(site.split(":")[1].split(" ")[0]) - base) for (op, site), _ in reads.counts.items()}
    assert all(here in site for _, site in reads.counts)
    assert got == {("_local_scalar_dense", 1), ("_local_scalar_dense", 2), ("tolist", 3), ("cpu", 4),
                   ("index", 5), ("nonzero", 6), ("masked_select", 7), ("_local_scalar_dense", 8),
                   ("index_put_", 8)}
    assert reads.total == 9 and reads.in_layers() == 0


def _reads_of_one_step(dispatcher: str) -> HostReads:
    """One forward and backward of proxy-tiny (1 dense, 3 MoE layers and the MTP layer; grouped
    experts, SDPA) with the trainer's router-load hooks, as the GPU path builds it."""
    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model, causal_attention_mask, init_runtime, lm_loss
    from arcforge.model.trainlog import RouterLoad

    init_runtime("cpu", seed=0)
    arch = get_preset("proxy-tiny")
    model = build_model(arch, seq_length=32, seed=0, attention="sdpa", experts="grouped", dispatcher=dispatcher)
    model.train()
    load = RouterLoad(model)
    g = torch.Generator().manual_seed(0)
    tokens, labels = (torch.randint(4, arch.vocab_size, (2, 32), generator=g) for _ in range(2))
    mask = causal_attention_mask(32)
    with HostReads() as reads:
        lm_loss(model, tokens, labels, attention_mask=mask).loss.backward()
    load.remove()
    return reads


def test_device_dispatcher_layers_read_nothing_where_megatrons_read_in_every_moe_layer():
    from arcforge.model.arch import get_preset

    arch = get_preset("proxy-tiny")
    moe_layers = arch.num_moe_layers + (arch.mtp_layers or 0)  # the MTP layer is an MoE layer too
    device = _reads_of_one_step("device")
    assert device.in_layers() == 0, device.by_site()
    # what is left is lm_loss's logging of the step's losses (one place per loss kind)
    assert {site.split(":")[0] for site, _ in device.by_site()} == {"arcforge/model/megatron_model.py"}, device.by_site()
    megatron = _reads_of_one_step("megatron")
    per_layer = [n for site, n in megatron.by_site() if site.startswith("megatron/core/transformer/moe/")]
    assert megatron.in_layers() >= 2 * moe_layers and per_layer and min(per_layer) == moe_layers, megatron.by_site()
