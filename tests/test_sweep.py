"""The batched, prefix-cached sweep engine agrees with the naive one-forward-per-variant loop."""
from __future__ import annotations

import pytest
import torch

from taskvec.errors import EmptyInputError, WidthError
from taskvec.intervene import read_states
from taskvec.prompts import build_prompts, zero_shot
from taskvec.sweep import Variant, layer_variants, patch_layers, run_variants, run_variants_naive


@pytest.fixture(scope="module")
def setup(smol, capital_trials):
    icl = build_prompts(smol, capital_trials[:5])
    zs = build_prompts(smol, zero_shot(capital_trials[:5]))
    return icl, zs


def test_global_sweep_matches_naive_loop(smol, setup):
    icl, zs = setup
    g = read_states(smol, [p.ids for p in icl], [[p.query_position] for p in icl]).mean(0)  # [L, 1, d]
    pos = torch.tensor([[p.query_position] for p in zs])
    variants = layer_variants(len(zs), g, pos, range(0, smol.n_layers, 4))
    fast = run_variants(smol, [p.ids for p in zs], variants, return_logits=True, max_batch_tokens=64)
    slow = run_variants_naive(smol, [p.ids for p in zs], variants, return_logits=True)
    assert (fast.logits - slow.logits).abs().max() < 1e-4
    assert torch.equal(fast.top1, slow.top1)


@pytest.mark.parametrize("span", ["single", "from"])
def test_local_multi_position_sweep_matches_naive_loop(smol, setup, span):
    icl, _ = setup
    pos = torch.tensor([p.answer_positions for p in icl])
    local = read_states(smol, [p.ids for p in icl], pos)  # [P, L, K, d]
    variants = layer_variants(len(icl), local.flip(0), pos, [2, 9, 20], span=span)  # other prompts' vectors
    variants.append(Variant.clean(0, smol.d_model))
    fast = run_variants(smol, [p.ids for p in icl], variants, return_logits=True)
    slow = run_variants_naive(smol, [p.ids for p in icl], variants, return_logits=True)
    assert (fast.logits - slow.logits).abs().max() < 1e-4


def test_patch_layers_table_and_effect(smol, setup):
    icl, zs = setup
    g = read_states(smol, [p.ids for p in icl], [[p.query_position] for p in icl]).mean(0)[:, 0]  # [L, d]
    df = patch_layers(smol, zs, g, positions="query")
    assert list(df.columns) == ["prompt", "layer", "correct", "target_logprob"]
    assert len(df) == len(zs) * smol.n_layers
    # patching the final query state of the ICL prompts' mean at layer 0 overwrites the query token embedding:
    by_layer = df.groupby("layer").target_logprob.mean()
    assert by_layer.max() > by_layer.min() + 0.5  # the patch changes what the model predicts


def test_bad_inputs(smol, setup):
    _, zs = setup
    with pytest.raises(EmptyInputError):
        run_variants(smol, [p.ids for p in zs], [])
    with pytest.raises(WidthError):
        patch_layers(smol, zs, torch.zeros(smol.n_layers, 10))
    with pytest.raises(WidthError, match="one entry per layer"):
        patch_layers(smol, zs, torch.zeros(3, smol.d_model))


def test_layer_skipping_matches_the_full_forward(smol, setup):
    """Bands that start at their first written layer (clean states fed in, lower layers not run) give the same
    logits as running every layer, for replace and add, single and from-layer spans, plus a clean variant."""
    from taskvec.intervene import layers_return_tensor

    assert layers_return_tensor(smol)  # so the skipping path is what runs here
    icl = setup[0][:3]
    pos = torch.tensor([p.answer_positions for p in icl])
    local = read_states(smol, [p.ids for p in icl], pos)
    variants = layer_variants(len(icl), local.flip(0) * 0.5, pos, range(0, smol.n_layers, 5), span="single")
    variants += layer_variants(len(icl), local.flip(0), pos, [17], span="from")
    variants.append(Variant.clean(1, smol.d_model))
    for mode in ("replace", "add"):
        skip = run_variants(smol, [p.ids for p in icl], variants, mode=mode, return_logits=True, max_batch_tokens=1500)
        full = run_variants(smol, [p.ids for p in icl], variants, mode=mode, return_logits=True, skip_layers=False)
        assert (skip.logits - full.logits).abs().max() < 1e-4, mode
        assert torch.equal(skip.top1, full.top1)
    # and the layers are restored afterwards: a plain forward still runs all of them
    assert all("forward" not in layer.__dict__ for layer in smol.profile.layers)
