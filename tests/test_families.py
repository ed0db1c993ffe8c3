"""Every decoder-only family taskvec supports, on a tiny random config of the installed transformers:

* capture: :func:`read_states` of left-padded prompts equals ``output_hidden_states`` of each prompt run alone;
* sweep: :func:`run_variants` (prefix cache, batching, layer skipping wherever the probe allows it) equals the naive
  one-forward-per-variant loop, for single-position writes at every layer and multi-position writes;
* patching: :func:`patched_logits` equals a forward with the states replaced by a hand-written pre-hook;

and the families that cannot work are refused with a one-line error. Token ids are passed directly; the tokenizer
stand-in only supplies the pad id (the layer-skipping probe falls back to fixed ids when it cannot tokenize).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from taskvec.errors import ModelNotFoundError
from taskvec.intervene import Edits, LayerSkippingWarning, layer_skipping_ok, patched_logits, read_states
from taskvec.models import LM, profile_of
from taskvec.sweep import Variant, layer_variants, run_variants, run_variants_naive
from taskvec.unembed import direct_head_ok

transformers = pytest.importorskip("transformers")

VOCAB = 256
IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# the common shape of Llama-like configs: 3 layers x 32, grouped-query attention
LLAMA = dict(IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
WINDOW = 4  # sliding windows shorter than the prompts (6..13 tokens) and than the cached prefixes
MIXED = ["sliding_attention", "full_attention", "sliding_attention"]
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)


def _gemma3_multimodal(T):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    text = dict(LLAMA, head_dim=8, sliding_window=WINDOW, layer_types=MIXED)
    return T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3)


# family -> (config factory, layer skipping as the probe must decide it). False where the decoder layers return
# tuples (the skipping path needs a tensor) or share state across layers (Gemma 4's KV-shared layers).
FAMILIES = {
    "llama": (lambda T: T.LlamaConfig(**LLAMA), True),
    "mistral": (lambda T: T.MistralConfig(**LLAMA, sliding_window=WINDOW), True),
    "mixtral": (lambda T: T.MixtralConfig(**LLAMA, sliding_window=WINDOW, num_local_experts=4,
                                          num_experts_per_tok=2), True),
    "qwen2": (lambda T: T.Qwen2Config(**LLAMA), True),
    "qwen3": (lambda T: T.Qwen3Config(**LLAMA, head_dim=8), True),
    "qwen3_moe": (lambda T: T.Qwen3MoeConfig(**LLAMA, **MOE, head_dim=8, num_experts=4), True),
    "qwen3_next": (lambda T: T.Qwen3NextConfig(  # hybrid: linear attention (conv + recurrent cache) and attention
        **LLAMA, **MOE, head_dim=8, num_experts=4, shared_expert_intermediate_size=16, linear_num_value_heads=2,
        linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
        layer_types=["linear_attention", "full_attention", "linear_attention"]), True),
    "gemma": (lambda T: T.GemmaConfig(**LLAMA, head_dim=8), True),
    "gemma2": (lambda T: T.Gemma2Config(**LLAMA, head_dim=8, sliding_window=WINDOW), True),
    "gemma3_text": (lambda T: T.Gemma3TextConfig(**LLAMA, head_dim=8, sliding_window=WINDOW, layer_types=MIXED), True),
    "gemma3": (_gemma3_multimodal, True),  # Gemma3ForConditionalGeneration: model.language_model.layers
    "gemma4_text": (lambda T: T.Gemma4TextConfig(
        **dict(LLAMA, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1), head_dim=16,
        num_kv_shared_layers=2, sliding_window=WINDOW, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB, layer_types=MIXED + ["full_attention"]), False),
    "phi": (lambda T: T.PhiConfig(**LLAMA), True),
    "phi3": (lambda T: T.Phi3Config(**LLAMA), True),
    "olmo2": (lambda T: T.Olmo2Config(**LLAMA), True),
    "granite": (lambda T: T.GraniteConfig(**LLAMA, embedding_multiplier=2.0, residual_multiplier=0.5,
                                          logits_scaling=2.0), True),
    "cohere2": (lambda T: T.Cohere2Config(**LLAMA, sliding_window=WINDOW), True),
    "stablelm": (lambda T: T.StableLmConfig(**LLAMA), True),
    "starcoder2": (lambda T: T.Starcoder2Config(**LLAMA), True),
    "smollm3": (lambda T: T.SmolLM3Config(**LLAMA), True),
    "glm4": (lambda T: T.Glm4Config(**LLAMA, head_dim=8), True),
    "gpt_oss": (lambda T: T.GptOssConfig(**LLAMA, head_dim=8, sliding_window=WINDOW, num_local_experts=4,
                                         num_experts_per_tok=2), True),
    "lfm2": (lambda T: T.Lfm2Config(**{k: v for k, v in LLAMA.items() if k != "max_position_embeddings"},
                                    layer_types=["conv", "full_attention", "conv"]), True),
    "jamba": (lambda T: T.JambaConfig(**LLAMA, num_experts=2, attn_layer_period=2, attn_layer_offset=1,
                                      expert_layer_period=2, expert_layer_offset=1, mamba_d_state=4, mamba_expand=2,
                                      mamba_dt_rank=4, use_mamba_kernels=False), True),
    "falcon_h1": (lambda T: T.FalconH1Config(**LLAMA, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8,
                                             mamba_d_state=8, mamba_chunk_size=16), False),
    # absolute position embeddings (GPT-2, OPT, GPT-Neo) and ALiBi (BLOOM) under left padding; GPT-J, GPT-Neo,
    # Falcon, BLOOM (and Falcon-H1 above) have decoder layers that return tuples
    "gpt2": (lambda T: T.GPT2Config(**IDS, n_embd=32, n_layer=3, n_head=4, n_positions=128), True),
    "gpt_neox": (lambda T: T.GPTNeoXConfig(**IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, max_position_embeddings=128), True),
    "opt": (lambda T: T.OPTConfig(**IDS, hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
                                  max_position_embeddings=128, word_embed_proj_dim=32), True),
    "gptj": (lambda T: T.GPTJConfig(**IDS, n_embd=32, n_layer=3, n_head=4, n_positions=128, rotary_dim=4), False),
    "gpt_neo": (lambda T: T.GPTNeoConfig(**IDS, hidden_size=32, num_layers=3, num_heads=4, max_position_embeddings=128,
                                         attention_types=[[["global", "local"], 1], [["global"], 1]],
                                         window_size=WINDOW), False),
    "falcon": (lambda T: T.FalconConfig(**IDS, hidden_size=32, num_hidden_layers=3, num_attention_heads=4), False),
    "bloom": (lambda T: T.BloomConfig(**IDS, hidden_size=32, n_layer=3, n_head=4), False),
}
LENGTHS = (9, 13, 6, 11)


class _NoTokenizer:
    """Token ids go in directly; only the pad id is needed (its embedding is masked out anyway)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, *args, **kwargs):
        raise TypeError("these tests pass token ids, not text")


def _build(family: str):
    factory = FAMILIES[family][0]
    try:
        config = factory(transformers)
    except AttributeError as err:  # an older transformers without this family
        pytest.skip(f"transformers {transformers.__version__} has no {family}: {err}")
    torch.manual_seed(0)
    model = None
    for attn in ("sdpa", "eager"):  # sdpa where the family has it (what load_model gets by default)
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn,
                                                                  dtype=torch.float32)
            break
        except ValueError:
            continue
    model.eval().requires_grad_(False)
    return LM(model, _NoTokenizer(), profile_of(model), f"tiny-{family}", {})


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
    L, P = lm.n_layers, len(prompts)
    last = torch.tensor([[len(p) - 1] for p in prompts])
    g = read_states(lm, prompts, last).mean(0)  # a "global" vector per layer: [L, 1, d]
    variants = layer_variants(P, g, last, range(L))  # single-position writes at every layer
    local_pos = torch.tensor([[1, len(p) // 2, len(p) - 1] for p in prompts])
    local = read_states(lm, prompts, local_pos).roll(1, 0) * 2  # other prompts' states, at three positions
    variants += layer_variants(P, local, local_pos, range(L))
    variants += layer_variants(P, local, local_pos, [1], span="from")
    variants.append(Variant.clean(2, lm.d_model))
    read = torch.randint(0, VOCAB, (len(variants), 3), generator=torch.Generator().manual_seed(2))
    slow = run_variants_naive(lm, prompts, variants, read_ids=read, return_logits=True)
    devs = []
    for kwargs in (dict(), dict(max_batch_tokens=200), dict(skip_layers=False)):  # 200: two padded groups
        fast = run_variants(lm, prompts, variants, read_ids=read, return_logits=True, **kwargs)
        dev = float((fast.logits.log_softmax(-1) - slow.logits.log_softmax(-1)).abs().max())
        assert dev < 1e-4, (family, kwargs, dev)
        torch.testing.assert_close(fast.logprobs, slow.logprobs, rtol=0, atol=1e-4)
        assert torch.equal(fast.top1, slow.top1), (family, kwargs)
        devs.append(dev)
    added = layer_variants(P, local * 0.5, local_pos, [0, L - 1])
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
