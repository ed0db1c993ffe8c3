"""Every decoder-only family taskvec supports, on a tiny random config of the installed transformers:

* capture: :func:`read_states` of left-padded prompts equals ``output_hidden_states`` of each prompt run alone;
* sweep: :func:`run_variants` (prefix cache, batching, layer skipping wherever the probe allows it) equals the naive
  one-forward-per-variant loop, for single-position writes at every layer and multi-position writes;
* patching: :func:`patched_logits` equals a forward with the states replaced by a hand-written pre-hook;

and the families that cannot work are refused with a one-line error. The configs, the tokenizer stand-in and the
variant set live in :mod:`taskvec.models.tiny` (benchmarks/gpu_check.py runs the same comparisons on CUDA). Token
ids are passed directly; the tokenizer stand-in only supplies the pad id (the layer-skipping probe falls back to
fixed ids when it cannot tokenize).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from taskvec.errors import ModelNotFoundError
from taskvec.intervene import Edits, LayerSkippingWarning, layer_skipping_ok, patched_logits, read_states
from taskvec.models import profile_of
from taskvec.models.tiny import FAMILIES, IDS, LENGTHS, VOCAB, WINDOW, FamilyUnavailable, build_tiny, sweep_variants
from taskvec.sweep import layer_variants, run_variants, run_variants_naive
from taskvec.unembed import direct_head_ok

transformers = pytest.importorskip("transformers")


def _build(family: str):
    try:
        return build_tiny(family)
    except FamilyUnavailable as err:  # an older transformers without this family
        pytest.skip(str(err))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the spinning threads cost ten times the
    work (measured: 9 s against 100 s for this file on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request):
    """``(family, lm, prompts)``: one tiny model per family, shared by the tests below."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB - 4, (n,), generator=gen).tolist() for n in LENGTHS]
    return request.param, _build(request.param), prompts


def test_capture_equals_output_hidden_states_under_left_padding(tiny):
    family, lm, prompts = tiny
    assert lm.profile.family.startswith(family.split("_")[0]) and lm.n_layers >= 3
    assert lm.profile.final_norm is not None and lm.profile.unembed is not None
    pos = [[0, 1, len(p) // 2, len(p) - 2, len(p) - 1] for p in prompts]
    states = read_states(lm, prompts, pos, batch_size=3)  # two batches, the first left-padded
    worst = 0.0
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            hs = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for layer in range(lm.n_layers):
                want = hs[layer][0, pos[i]]
                torch.testing.assert_close(states[i, layer], want, rtol=0, atol=1e-5, msg=lambda m: f"{family} "
                                           f"prompt {i} layer {layer}: {m}")
                worst = max(worst, float((states[i, layer] - want).abs().max()))
    print(f"{family}: capture max |dev| {worst:.2g}")


def test_sweep_equals_naive_loop(tiny):
    family, lm, prompts = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerSkippingWarning)  # the decision is asserted instead
        skipping = layer_skipping_ok(lm)
    assert skipping is FAMILIES[family][1], lm.profile.layer_skipping_note
    assert direct_head_ok(lm), f"{family}: the LM head applied to the stack's output is not the model's logits"
    variants, read, added = sweep_variants(lm, prompts)  # every layer single and multi-position, from, clean
    slow = run_variants_naive(lm, prompts, variants, read_ids=read, return_logits=True)
    devs = []
    for kwargs in (dict(), dict(max_batch_tokens=200), dict(skip_layers=False)):  # 200: two padded groups
        fast = run_variants(lm, prompts, variants, read_ids=read, return_logits=True, **kwargs)
        dev = float((fast.logits.log_softmax(-1) - slow.logits.log_softmax(-1)).abs().max())
        assert dev < 1e-4, (family, kwargs, dev)
        torch.testing.assert_close(fast.logprobs, slow.logprobs, rtol=0, atol=1e-4)
        assert torch.equal(fast.top1, slow.top1), (family, kwargs)
        devs.append(dev)
    fast = run_variants(lm, prompts, added, mode="add", return_logits=True)
    slow_add = run_variants_naive(lm, prompts, added, mode="add", return_logits=True)
    devs.append(float((fast.logits.log_softmax(-1) - slow_add.logits.log_softmax(-1)).abs().max()))
    assert devs[-1] < 1e-4, (family, "add", devs[-1])
    # the writes matter: patched variants do not all predict what the clean prompt does
    assert (slow.logits[:-1] - slow.logits[-1:]).abs().max() > 1e-3
    print(f"{family}: layer skipping {skipping} ({lm.profile.layer_skipping_note}); sweep max |dlogprob| "
          f"{max(devs):.2g}")


def test_patched_logits_equals_a_hand_hooked_forward(tiny):
    """Writes into prompt 0 of a left-padded batch (two low layers mid-prompt; the top layer before the end, a KV-shared
    layer on Gemma 4) against prompt 0 run alone with a plain pre-hook doing the same writes."""
    family, lm, prompts = tiny
    L, n = lm.n_layers, len(prompts[0])
    writes = [(0, n // 2), (1, n // 2 + 1), (L - 1, n - 3)]
    vectors = torch.randn(len(writes), lm.d_model, generator=torch.Generator().manual_seed(3)) * 3
    edits = Edits.at([0] * len(writes), [w[0] for w in writes], [w[1] for w in writes], vectors)
    got = patched_logits(lm, prompts, edits)[0]
    clean = patched_logits(lm, prompts[:1])[0]

    def write(layer):
        def hook(module, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            for (l, p), v in zip(writes, vectors):
                if l == layer:
                    h[0, p] = v
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
        return hook

    handles = [lm.profile.layers[l].register_forward_pre_hook(write(l), with_kwargs=True) for l, _ in writes]
    try:
        with torch.no_grad():
            want = lm.model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (got - clean).abs().max() > 1e-3  # the writes changed the prediction
    print(f"{family}: patched_logits max |dev| {float((got - want).abs().max()):.2g}")


@pytest.mark.parametrize("family, config, match", [
    ("gemma3n_text", lambda T: T.Gemma3nTextConfig(
        **IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, num_kv_shared_layers=2, sliding_window=WINDOW,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB, laurel_rank=4, altup_num_inputs=2,
        activation_sparsity_pattern=[0.0] * 4), "AltUp"),
    ("recurrent_gemma", lambda T: T.RecurrentGemmaConfig(
        **IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, lru_width=32, attention_window_size=WINDOW), "recurrent state"),
    ("mamba", lambda T: T.MambaConfig(**IDS, hidden_size=32, num_hidden_layers=2, state_size=4),
     "cannot find the decoder layers"),
])
def test_families_that_cannot_work_are_refused(family, config, match):
    """Gemma 3n's layers carry a stack of residual streams (no single h_l); RecurrentGemma's sweep prefix has no cache
    to share; Mamba has no attention decoder layers at all."""
    try:
        config = config(transformers)
    except AttributeError:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ModelNotFoundError, match=match) as err:
        profile_of(model)
    assert "\n" not in str(err.value)


def test_sweep_runs_the_whole_model_where_the_head_is_not_the_plain_unembedding():
    """A logit transform :class:`~taskvec.unembed.Unembedding` does not know (here a hook scaling the head's
    output): the probe says no, and the sweep still gives the naive loop's numbers through whole-model forwards."""
    lm = _build("llama")
    lm.model.lm_head.register_forward_hook(lambda module, args, out: out * 3.0 + 1.0)
    assert not direct_head_ok(lm) and lm.profile.direct_head is False
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB - 4, (n,), generator=gen).tolist() for n in LENGTHS]
    last = torch.tensor([[len(p) - 1] for p in prompts])
    variants = layer_variants(len(prompts), read_states(lm, prompts, last).mean(0), last, range(lm.n_layers))
    read = torch.randint(0, VOCAB, (len(variants), 2), generator=gen)
    fast = run_variants(lm, prompts, variants, read_ids=read, return_logits=True)
    slow = run_variants_naive(lm, prompts, variants, read_ids=read, return_logits=True)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, rtol=0, atol=1e-4)
    assert torch.equal(fast.top1, slow.top1)
