"""The batched, prefix-cached sweep engine agrees with the naive one-forward-per-variant loop (on the tiny Llama
with SmolLM2's tokenizer; that a patch moves the real model's predictions: on smollm2-135m, slow)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from taskvec.errors import ChoiceError, EmptyInputError, WidthError
from taskvec.intervene import LayerSkippingWarning, layer_skipping_ok, read_states
from taskvec.prompts import build_prompts, zero_shot
from taskvec.sweep import Variant, layer_variants, patch_layers, run_variants, run_variants_naive


@pytest.fixture(scope="module")
def setup(tiny_llama, capital_trials):
    icl = build_prompts(tiny_llama, capital_trials[:5])
    zs = build_prompts(tiny_llama, zero_shot(capital_trials[:5]))
    return icl, zs


def test_global_sweep_matches_naive_loop(tiny_llama, setup):
    icl, zs = setup
    g = read_states(tiny_llama, [p.ids for p in icl], [[p.query_position] for p in icl]).mean(0)  # [L, 1, d]
    pos = torch.tensor([[p.query_position] for p in zs])
    variants = layer_variants(len(zs), g, pos, range(0, tiny_llama.n_layers, 4))
    fast = run_variants(tiny_llama, [p.ids for p in zs], variants, return_logits=True, max_batch_tokens=64)
    slow = run_variants_naive(tiny_llama, [p.ids for p in zs], variants, return_logits=True)
    assert (fast.logits - slow.logits).abs().max() < 1e-4
    assert torch.equal(fast.top1, slow.top1)


@pytest.mark.parametrize("span", ["single", "from"])
def test_local_multi_position_sweep_matches_naive_loop(tiny_llama, setup, span):
    icl, _ = setup
    pos = torch.tensor([p.answer_positions for p in icl])
    local = read_states(tiny_llama, [p.ids for p in icl], pos)  # [P, L, K, d]
    variants = layer_variants(len(icl), local.flip(0), pos, [1, 3, 5], span=span)  # other prompts' vectors
    variants.append(Variant.clean(0, tiny_llama.d_model))
    fast = run_variants(tiny_llama, [p.ids for p in icl], variants, return_logits=True)
    slow = run_variants_naive(tiny_llama, [p.ids for p in icl], variants, return_logits=True)
    assert (fast.logits - slow.logits).abs().max() < 1e-4


def _global_curve(lm, icl, zs):
    """``patch_layers`` of the ICL prompts' mean query state into the zero-shot prompts' query, at every layer."""
    g = read_states(lm, [p.ids for p in icl], [[p.query_position] for p in icl]).mean(0)[:, 0]  # [L, d]
    df = patch_layers(lm, zs, g, positions="query")
    assert list(df.columns) == ["prompt", "layer", "correct", "target_logprob"]
    assert len(df) == len(zs) * lm.n_layers
    return df


def test_patch_layers_table(tiny_llama, setup):
    icl, zs = setup
    df = _global_curve(tiny_llama, icl, zs)
    assert sorted(df.layer.unique()) == list(range(tiny_llama.n_layers)) and df.prompt.nunique() == len(zs)


@pytest.mark.slow
def test_patch_layers_changes_what_the_real_model_predicts(smol, capital_trials):
    icl = build_prompts(smol, capital_trials[:5])
    df = _global_curve(smol, icl, build_prompts(smol, zero_shot(capital_trials[:5])))
    # patching the final query state of the ICL prompts' mean at layer 0 overwrites the query token embedding:
    by_layer = df.groupby("layer").target_logprob.mean()
    assert by_layer.max() > by_layer.min() + 0.5  # the patch changes what the model predicts


def test_bad_inputs(tiny_llama, setup):
    _, zs = setup
    with pytest.raises(EmptyInputError):
        run_variants(tiny_llama, [p.ids for p in zs], [])
    with pytest.raises(WidthError):
        patch_layers(tiny_llama, zs, torch.zeros(tiny_llama.n_layers, 10))
    with pytest.raises(WidthError, match="one entry per layer"):
        patch_layers(tiny_llama, zs, torch.zeros(3, tiny_llama.d_model))
    with pytest.raises(ChoiceError, match="positions"):
        patch_layers(tiny_llama, zs, torch.zeros(tiny_llama.n_layers, tiny_llama.d_model), positions="everywhere")
    with pytest.raises(ChoiceError, match="mode"):
        run_variants(tiny_llama, [p.ids for p in zs], [Variant.clean(0, tiny_llama.d_model)], mode="multiply")
    with pytest.raises(ChoiceError, match="span"):
        layer_variants(1, torch.zeros(tiny_llama.n_layers, 1, tiny_llama.d_model), torch.tensor([[1]]), [0], span="all")


def test_layer_skipping_matches_the_full_forward(tiny_llama, setup):
    """Bands that start at their first written layer (clean states fed in, lower layers not run) give the same
    logits as running every layer, for replace and add, single and from-layer spans, plus a clean variant."""
    assert layer_skipping_ok(tiny_llama)  # so the skipping path is what runs here
    icl = setup[0][:3]
    pos = torch.tensor([p.answer_positions for p in icl])
    local = read_states(tiny_llama, [p.ids for p in icl], pos)
    variants = layer_variants(len(icl), local.flip(0) * 0.5, pos, range(0, tiny_llama.n_layers, 2), span="single")
    variants += layer_variants(len(icl), local.flip(0), pos, [3], span="from")
    variants.append(Variant.clean(1, tiny_llama.d_model))
    ids = [p.ids for p in icl]
    for mode in ("replace", "add"):
        skip = run_variants(tiny_llama, ids, variants, mode=mode, return_logits=True, max_batch_tokens=1500)
        full = run_variants(tiny_llama, ids, variants, mode=mode, return_logits=True, skip_layers=False)
        assert (skip.logits - full.logits).abs().max() < 1e-4, mode
        assert torch.equal(skip.top1, full.top1)
    # and the layers are restored afterwards: a plain forward still runs all of them
    assert all("forward" not in layer.__dict__ for layer in tiny_llama.profile.layers)


def test_bands_cover_every_variant_once_and_start_at_their_first_layer():
    from taskvec.sweep import _bands

    first = {i: [0, 0, 0, 0, 5, 5, 5, 10, 10, 10, 15, 15, 15, 17, 17, 17, 20, 20, 20, 25, 25, 25][i] for i in range(22)}
    bands = _bands(list(range(22)), first, min_rows=4)
    assert sorted(i for b in bands for i in b) == list(range(22))
    assert all(len(b) >= 4 for b in bands)
    assert _bands(list(range(22)), {i: i for i in range(22)}, min_rows=1) == [[i] for i in range(22)]
    assert _bands([3, 1], None) == [[3, 1]]


# ----------------------------------------------------------------------------- layer skipping is verified, not assumed
def test_layer_skipping_is_verified_once_and_kept_in_the_profile(tiny_llama):
    assert layer_skipping_ok(tiny_llama) is True
    assert tiny_llama.profile.layer_skipping is True and "verified" in tiny_llama.profile.layer_skipping_note
    assert not any(k.startswith("_layer") for k in vars(tiny_llama))  # nothing stashed on the LM object


class _Producer(nn.Module):
    """Runs its decoder layer and leaves the output where a higher layer reads it during the same forward: a
    stand-in for cross-layer KV sharing (a layer that reuses keys/values computed by a layer below)."""

    def __init__(self, layer: nn.Module, shared: dict):
        super().__init__()
        self.layer, self.shared = layer, shared

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        self.shared["h"] = out
        return out


class _Consumer(_Producer):
    """Adds what the producer left in this forward (nothing, if the producer did not run)."""

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        below = self.shared.get("h")
        if below is None or below.shape != out.shape:
            below = torch.zeros_like(out)
        return out + 0.5 * below


def _tiny_llama(tokenizer, bos, cross_layer: bool):
    import transformers

    from taskvec.models import LM, profile_of

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if cross_layer:  # layer 2 reads what layer 1 left; a fresh store per forward, as Gemma 3n/4 build theirs
        shared: dict = {}
        model.model.layers[1] = _Producer(model.model.layers[1], shared)
        model.model.layers[2] = _Consumer(model.model.layers[2], shared)
        model.model.register_forward_pre_hook(lambda module, args: shared.clear())
    model.requires_grad_(False)
    return LM(model, tokenizer, profile_of(model, bos), "tiny-llama" + ("-shared" if cross_layer else ""), {})


def _tiny_sweep(lm, layers, n_prompts=5):
    """Variants that patch other prompts' states at every given layer: enough rows to form bands that skip."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(10, 5000, (n,), generator=gen).tolist() for n in (9, 12, 7, 11, 10, 8, 13, 9)[:n_prompts]]
    pos = torch.tensor([[len(p) - 4, len(p) - 1] for p in prompts])
    states = read_states(lm, prompts, pos)
    variants = layer_variants(len(prompts), states.roll(1, 0) * 3, pos, layers)
    variants.append(Variant.clean(0, lm.d_model))
    assert len(variants) >= 16 and max(int(v.layers.min()) for v in variants if len(v.layers)) > 0
    return prompts, variants


def _assert_sweep_matches_naive(lm, prompts, variants):
    fast = run_variants(lm, prompts, variants, return_logits=True)
    slow = run_variants_naive(lm, prompts, variants, return_logits=True)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-5)
    return fast, slow


def test_tiny_llama_layer_skipping_is_verified_and_exact(tiny_llama):
    lm = _tiny_llama(tiny_llama.tokenizer, tiny_llama.profile.bos, cross_layer=False)
    assert lm.profile.layer_skipping is None
    prompts, variants = _tiny_sweep(lm, range(4))
    _assert_sweep_matches_naive(lm, prompts, variants)
    assert lm.profile.layer_skipping is True


def test_cross_layer_state_switches_layer_skipping_off(tiny_llama):
    """Layer 2 reads state left by layer 1 in the same forward: a band that starts at layer 2 (layers 0-1 run as
    the identity) would silently compute other numbers. The probe sees it, warns once, and the sweep runs every
    layer and equals the naive loop."""
    lm = _tiny_llama(tiny_llama.tokenizer, tiny_llama.profile.bos, cross_layer=True)
    prompts, variants = _tiny_sweep(lm, range(4))
    with pytest.warns(LayerSkippingWarning, match="layer skipping is off") as caught:
        fast, slow = _assert_sweep_matches_naive(lm, prompts, variants)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert lm.profile.layer_skipping is False and "layer 2" in lm.profile.layer_skipping_note
    # what the unverified rule (layers return a tensor, so skip) computed: other numbers, silently
    lm.profile.layer_skipping = True
    assumed = run_variants(lm, prompts, variants, return_logits=True)
    assert (assumed.logits - slow.logits).abs().max() > 1e-3
    lm.profile.layer_skipping = False


def test_gemma4_shared_kv_layers_switch_layer_skipping_off(tiny_llama):
    """A real family with cross-layer KV sharing (Gemma 4 text: the top ``num_kv_shared_layers`` reuse the keys and
    values of the last unshared layer of their type) gets ``layer_skipping = False`` and exact sweeps."""
    import transformers

    from taskvec.models import LM, profile_of

    torch.manual_seed(0)
    config = transformers.Gemma4TextConfig(
        vocab_size=len(tiny_llama.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_kv_shared_layers=2, sliding_window=8,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=len(tiny_llama.tokenizer),
        max_position_embeddings=256,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    model = transformers.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    lm = LM(model, tiny_llama.tokenizer, profile_of(model, tiny_llama.profile.bos), "tiny-gemma4", {})
    # patch below the shared layers: with an integer logits_to_keep Gemma 4 cuts the sequence to the kept
    # positions on entering them, so writes at earlier positions there have no column to go to
    prompts, variants = _tiny_sweep(lm, [0, 1], n_prompts=8)
    with pytest.warns(LayerSkippingWarning, match="fails on this model"):
        _assert_sweep_matches_naive(lm, prompts, variants)
    assert lm.profile.layer_skipping is False
