"""``embedding_init_std``: the word embeddings' init scale, and what it does to routing at step 0.

With megatron's default (every weight, embeddings included, N(0, 0.02)) the layers' outputs
outweigh the embeddings in the residual stream from the start, the tokens' router inputs share
one direction more with depth, and the experts' load is uneven before any training (proxy-1b on
real text: max/mean load 2.5 in its first MoE layer, 6.5 in its worst, of at most 8). The
option changes only the embedding's draw, and at 1.0 (torch's ``nn.Embedding`` default, the
reference's) the load is even from the first layer on."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _model_and_router_loads(embedding_init_std: float | None):
    """proxy-tiny with 8 layers at init, one forward on seeded random tokens: the model and the
    (common-direction share, max/mean load) of every MoE layer's router input."""
    from arcforge.model.arch import get_preset
    from arcforge.model.megatron_model import build_model, lm_loss

    arch = get_preset("proxy-tiny").with_overrides(num_layers=8, embedding_init_std=embedding_init_std)
    model = build_model(arch, seq_length=256, seed=0, attention="sdpa", experts="grouped", dispatcher="device")
    loads = []

    def record(router, args):
        h = args[0].detach().reshape(-1, args[0].shape[-1])
        common = (h.mean(0).pow(2).sum() / h.pow(2).sum(1).mean()).item()
        chosen = (torch.sigmoid(h @ router.weight.t()) + router.expert_bias).topk(router.topk, dim=-1).indices
        load = torch.bincount(chosen.flatten(), minlength=router.weight.shape[0]).float()
        loads.append((common, (load.max() / load.mean()).item()))

    for name, module in model.named_modules():
        if name.startswith("decoder.") and name.endswith("mlp.router"):
            module.register_forward_pre_hook(record)
    tokens = torch.randint(4, arch.vocab_size, (4, 257), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lm_loss(model, tokens[:, :-1], tokens[:, 1:])
    return model, loads


def test_embedding_init_std_changes_only_the_embedding_and_evens_the_initial_routing():
    default, default_loads = _model_and_router_loads(None)
    wide, wide_loads = _model_and_router_loads(1.0)
    emb = "embedding.word_embeddings.weight"
    params = dict(wide.named_parameters())
    assert default.get_parameter(emb).std().item() == pytest.approx(0.02, rel=0.05)
    assert params[emb].std().item() == pytest.approx(1.0, rel=0.05)
    for name, p in default.named_parameters():  # the same seeded draws everywhere else
        if name != emb:
            assert torch.equal(p, params[name]), name
    assert len(default_loads) == len(wide_loads) == 7  # 1 dense layer, 7 MoE layers
    # the mechanism: at 0.02 the router inputs share a direction, growing with depth; at 1.0 hardly
    assert default_loads[-1][0] > 4 * default_loads[0][0] and default_loads[-1][0] > 0.03
    assert max(c for c, _ in wide_loads) < 0.005
    # and its effect: the load is more even in every layer but none, and on average clearly
    mean = lambda loads: sum(x for _, x in loads) / len(loads)  # noqa: E731
    assert mean(wide_loads) < mean(default_loads) - 0.1
    assert sum(w < d for (_, w), (_, d) in zip(wide_loads, default_loads)) >= len(wide_loads) - 1


def test_embedding_init_std_refuses_tied_embeddings():
    from pydantic import ValidationError

    from arcforge.model.arch import get_preset

    with pytest.raises(ValidationError, match="embedding_init_std needs untied embeddings"):
        get_preset("proxy-tiny").with_overrides(tie_embeddings=True, embedding_init_std=1.0)
