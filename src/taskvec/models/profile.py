"""What taskvec needs to know about a causal LM: where its decoder layers, final norm and unembedding live,
its depth and width, and how prompts must begin (BOS policy).

``h_l`` is the residual stream *entering* decoder layer ``l`` (``hidden_states[l]`` of HF transformers;
``l = 0`` is the embedding output), for ``l`` in ``0 .. n_layers - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from taskvec.errors import LayerError, ModelNotFoundError

# (path to the decoder-layer list, path to the final norm) per architecture family, tried in order.
_LAYER_PATHS = [
    ("model.layers", "model.norm"),  # Llama, Qwen2/3, Mistral, Gemma 1-4, SmolLM, Phi, OLMo, Granite, Cohere, ...
    ("model.language_model.layers", "model.language_model.norm"),  # multimodal wrappers (Gemma3 4B+)
    ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J, GPT-Neo, Falcon, BLOOM
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX, Pythia
    ("model.decoder.layers", "model.decoder.final_layer_norm"),  # OPT
    ("h", "ln_f"),  # bare GPT2Model (from-scratch backbones)
]
_NORM_NAMES = ("final_layernorm", "final_norm", "embedding_norm")
"""Other names of the final norm, beside the decoder layers, where the listed one is absent (Phi, Jamba, Falcon-H1:
``final_layernorm``; LFM2 calls its final norm ``embedding_norm``)."""

_UNSUPPORTED = {
    "gemma3n": "its decoder layers carry several parallel copies of the residual stream (AltUp), so there is no "
               "single h_l to read or write",
    "recurrent_gemma": "it keeps its recurrent state inside its layers instead of a cache it returns, which the "
                       "prefix-cached sweeps need",
}
"""Families whose decoder layers are found but cannot be read, written or swept correctly: refused by name."""


def _get(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass
class BosPolicy:
    """How every prompt starts.

    ``prefix_text`` is prepended to the prompt text (e.g. SmolLM2 needs ``<|endoftext|>``);
    ``add_special_tokens`` is passed to the tokenizer (Gemma's adds ``<bos>`` itself).
    """

    prefix_text: str = ""
    add_special_tokens: bool = True


@dataclass
class LMProfile:
    """Structural facts about a decoder-only model.

    Attributes:
        layers: the decoder layers, in order; ``h_l`` is the input of ``layers[l]``.
        final_norm: the norm applied before the unembedding (``None`` if the model has none).
        unembed: the output embedding (``lm_head``), or ``None`` for a bare backbone.
        n_layers, d_model: depth and width of the residual stream.
        bos: the BOS policy prompts must follow.
        family: the HF ``model_type`` (``"gemma3_text"``, ``"llama"``, ``"gpt2"``, ...).
        layer_skipping: whether a forward may start at layer ``l`` from recorded clean states with the layers
            below run as the identity (what :func:`taskvec.sweep.run_variants` does to save work): ``None`` until
            :func:`taskvec.intervene.layer_skipping_ok` has verified it on this loaded model, then ``True`` or
            ``False``. Families whose layers share keys/values or other state across layers get ``False``.
        layer_skipping_note: how that was decided (the measured logit difference, or why skipping is off).
        direct_head: whether :class:`taskvec.unembed.Unembedding` applied to the decoder stack's output gives the
            model's own logits (``None`` until :func:`taskvec.unembed.direct_head_ok` has checked it).
    """

    layers: list[nn.Module]
    final_norm: nn.Module | None
    unembed: nn.Module | None
    n_layers: int
    d_model: int
    bos: BosPolicy = field(default_factory=BosPolicy)
    family: str = "unknown"
    layer_skipping: bool | None = None
    layer_skipping_note: str = ""
    direct_head: bool | None = None

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it is a valid residual-stream index, else raise :class:`LayerError`."""
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise LayerError(f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}")
        return layer


def profile_of(model: nn.Module, bos: BosPolicy | None = None) -> LMProfile:
    """Build the :class:`LMProfile` of an HF causal LM (or bare decoder backbone).

    Raises :class:`ModelNotFoundError` if the architecture's decoder layers cannot be found, or if it is a family
    taskvec cannot read, write or sweep correctly (:data:`_UNSUPPORTED`). The families checked end to end (capture,
    sweep against the naive loop, patching) are listed in ``tests/test_families.py``.
    """
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    family = str(getattr(cfg, "model_type", "unknown"))
    for name, why in _UNSUPPORTED.items():
        if family.startswith(name):  # gemma3n, gemma3n_text, ...
            raise ModelNotFoundError(f"{type(model).__name__} ({family}) is not supported: {why}")
    for layers_path, norm_path in _LAYER_PATHS:
        layers = _get(model, layers_path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            break
    else:
        raise ModelNotFoundError(
            f"cannot find the decoder layers of {type(model).__name__}; supported: Llama, Qwen, Mistral, Gemma, "
            "GPT-2, GPT-NeoX, OPT and similar decoder-only families"
        )
    norm = _get(model, norm_path)
    if not isinstance(norm, nn.Module):
        parent = layers_path.rpartition(".")[0]
        found = (_get(model, f"{parent}.{name}" if parent else name) for name in _NORM_NAMES)
        norm = next((m for m in found if isinstance(m, nn.Module)), None)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    d_model = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if d_model is None:
        d_model = int(next(p for p in layers[0].parameters()).shape[-1])
    return LMProfile(
        layers=list(layers),
        final_norm=norm if isinstance(norm, nn.Module) else None,
        unembed=unembed,
        n_layers=len(layers),
        d_model=int(d_model),
        bos=bos or BosPolicy(),
        family=family,
    )


def default_bos_policy(tokenizer) -> BosPolicy:
    """The BOS policy for a tokenizer with no named profile: let the tokenizer add its BOS if it does;
    otherwise prepend its ``bos_token`` (or ``eos_token``, as GPT-2 style models use ``<|endoftext|>``)."""
    probe = tokenizer("a", add_special_tokens=True).input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    if len(probe) > len(plain):
        return BosPolicy(prefix_text="", add_special_tokens=True)
    token = tokenizer.bos_token or tokenizer.eos_token
    return BosPolicy(prefix_text=token or "", add_special_tokens=False)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
