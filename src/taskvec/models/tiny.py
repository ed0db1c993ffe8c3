"""Tiny random configs of every decoder-only family taskvec supports (3 layers x 32 wide, vocabulary 256).

Shared by the family tests (``tests/test_families.py``) and the GPU check (``benchmarks/gpu_check.py``): each
family's config, whether the layer-skipping probe must allow skipping on it, a tokenizer stand-in (token ids go in
directly) and the variant set the sweep is compared on (single-position writes at every layer, multi-position
writes, a from-layer span, a clean variant; and additive writes)::

    from taskvec.models.tiny import FAMILIES, build_tiny, tiny_prompts
    lm = build_tiny("llama")                       # an LM: float32, CPU, eval mode, seeded
    prompts = tiny_prompts()                       # four token-id lists of 9, 13, 6 and 11 tokens
"""
from __future__ import annotations

from typing import Callable

import torch

from taskvec.models.profile import profile_of
from taskvec.models.registry import LM

VOCAB = 256
IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# the common shape of Llama-like configs: 3 layers x 32, grouped-query attention
LLAMA = dict(IDS, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
WINDOW = 4  # sliding windows shorter than the prompts (6..13 tokens) and than the cached prefixes
MIXED = ["sliding_attention", "full_attention", "sliding_attention"]
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)
LENGTHS = (9, 13, 6, 11)


def _gemma3_multimodal(T):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    text = dict(LLAMA, head_dim=8, sliding_window=WINDOW, layer_types=MIXED)
    return T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3)


# family -> (config factory, layer skipping as the probe must decide it). False where the decoder layers return
# tuples (the skipping path needs a tensor) or share state across layers (Gemma 4's KV-shared layers).
FAMILIES: dict[str, tuple[Callable, bool]] = {
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


class FamilyUnavailable(Exception):
    """The installed transformers has no such family (an older version): the caller skips it."""


class NoTokenizer:
    """Token ids go in directly; only the pad id is needed (its embedding is masked out anyway)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return VOCAB

    def __call__(self, *args, **kwargs):
        raise TypeError("tiny models take token ids, not text")


def build_tiny(family: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> LM:
    """The tiny random model of ``family`` on the CPU, in eval mode without gradients: sdpa attention where the
    family has it (what :func:`~taskvec.models.load_model` gets by default), eager otherwise.

    Raises:
        FamilyUnavailable: the installed transformers has no such config class.
    """
    import transformers

    try:
        config = FAMILIES[family][0](transformers)
    except AttributeError as err:  # an older transformers without this family
        raise FamilyUnavailable(f"transformers {transformers.__version__} has no {family}: {err}") from None
    torch.manual_seed(seed)
    model = None
    for attn in ("sdpa", "eager"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
            break
        except ValueError:
            continue
    model.eval().requires_grad_(False)
    return LM(model, NoTokenizer(), profile_of(model), f"tiny-{family}", {})


def tiny_prompts(seed: int = 1, lengths: tuple[int, ...] = LENGTHS) -> list[list[int]]:
    """Random token-id prompts (ids 3..VOCAB-5: no pad, BOS or EOS)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB - 4, (n,), generator=gen).tolist() for n in lengths]


def sweep_variants(lm: LM, prompts: list[list[int]]) -> tuple[list, torch.Tensor, list]:
    """The variant set the sweep is checked on: ``(variants, read_ids, added)``.

    ``variants``: a "global" vector (the mean last-token state) written at the last position at every layer, other
    prompts' states (doubled) at three positions at every layer, the same from layer 1 on (``span="from"``), and one
    clean variant; ``read_ids``: three random token ids per variant; ``added``: half the local states added at the
    first and last layers (``mode="add"``).
    """
    from taskvec.intervene import read_states
    from taskvec.sweep import Variant, layer_variants

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
    added = layer_variants(P, local * 0.5, local_pos, [0, L - 1])
    return variants, read, added
