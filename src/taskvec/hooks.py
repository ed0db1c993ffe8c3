"""Named hook sites and the one hook manager that serves them.

Every intervention in taskvec — reading or writing the residual stream, one attention head's output, the attention
mask a layer sees — is a function attached to a **named site** through :class:`Hooks`, which installs the PyTorch
hooks on entering its ``with`` block and always removes them on leaving it (also when the forward raises). The
names follow TransformerLens's habit of saying what the value is:

* ``h.{l}`` — the residual stream entering decoder layer ``l``, ``[batch, T, d_model]`` (pre-hook of layer ``l``);
* ``attn_mask.{l}`` — the attention mask layer ``l`` receives (``[batch, 1, T, T]`` additive, or whatever the
  model passes; ``None`` when it passes none) (pre-hook of layer ``l``);
* ``heads.{l}`` — the attention-head outputs of layer ``l`` before the output projection,
  ``[batch, T, n_heads, head_dim]`` (pre-hook of ``o_proj`` / ``c_proj`` / ``dense`` / ``out_proj``);
* ``out.{l}`` — what decoder layer ``l`` returns, a tensor or a tuple (forward hook of layer ``l``).

A function returns a replacement value or ``None`` (keep the value). Several functions on one site run in the order
they were added; on one layer, ``attn_mask`` functions run before ``h`` functions.

Example::

    from taskvec.hooks import Hooks, HookSites

    seen = {}
    with Hooks(HookSites.of(lm)).add("h.5", lambda h: seen.setdefault(5, h)).add("heads.3", zero_head_0):
        lm.model(input_ids=ids)

The engines built on it: :func:`taskvec.intervene.hooked` (record / write ``h_l``, start a forward at a layer),
the heads analysis (``heads.{l}``) and the from-scratch evaluation (``attn_mask.{l}``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from taskvec.errors import ChoiceError, ConfigError
from taskvec.models.profile import _get

SITE_KINDS = ("h", "attn_mask", "heads", "out")
_OUT_PROJ = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.out_proj", "attn.out_proj",
             "attn.o_proj")
"""Where the attention output projection lives in a decoder layer, per family (Llama/Qwen/Gemma/Mistral, GPT-2,
GPT-NeoX, OPT, others)."""

SiteFn = Callable[[Any], Any]


@dataclass
class HookSites:
    """Where the named sites of one model live.

    Attributes:
        layers: the decoder layers in order (``h.{l}`` is the input of ``layers[l]``).
        config: the model config (for the head count of ``heads.{l}``); ``None`` for a bare stack of layers.
    """

    layers: Sequence[nn.Module]
    config: Any = None
    _heads: tuple | None = field(default=None, repr=False)

    @staticmethod
    def of(model: Any) -> "HookSites":
        """The sites of an :class:`~taskvec.models.LM` (``lm.profile.layers``), a from-scratch model (``.layers``),
        or a plain list of decoder layers."""
        if hasattr(model, "profile"):
            return HookSites(model.profile.layers, getattr(model.model, "config", None))
        if isinstance(model, (list, tuple, nn.ModuleList)):
            return HookSites(list(model))
        layers = getattr(model, "layers", None)
        if layers is None:
            raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}")
        return HookSites(list(layers), getattr(model, "config", None))

    def head_geometry(self) -> tuple[list[nn.Module], int, int]:
        """``(out_projections, n_heads, head_dim)``: per layer, the module whose input is the concatenation of the
        head outputs; the number of heads; the width of one head's slice."""
        if self._heads is None:
            cfg = getattr(self.config, "text_config", None) or self.config
            n_heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
            if not n_heads:
                raise ConfigError("cannot find the number of attention heads of this model (no num_attention_heads "
                                  "or n_head in its config)")
            projs = []
            for layer in self.layers:
                proj = next((p for p in (_get(layer, path) for path in _OUT_PROJ) if p is not None), None)
                if proj is None:
                    raise ConfigError(f"cannot find the attention output projection of {type(layer).__name__} "
                                      f"(looked for {', '.join(_OUT_PROJ)})")
                projs.append(proj)
            p0 = projs[0]
            width = p0.in_features if hasattr(p0, "in_features") else p0.weight.shape[0]  # GPT-2 Conv1D: [in, out]
            if width % n_heads:
                raise ConfigError(f"output projection width {width} is not divisible by {n_heads} heads")
            self._heads = (projs, int(n_heads), int(width // n_heads))
        return self._heads

    def parse(self, site: str) -> tuple[str, int]:
        """``"h.5"`` -> ``("h", 5)``; a malformed name or a layer out of range is a one-line :class:`ChoiceError`."""
        kind, _, index = site.partition(".")
        if kind not in SITE_KINDS or not index.lstrip("-").isdigit():
            raise ChoiceError(f"unknown hook site {site!r}: use one of "
                              f"{', '.join(k + '.<layer>' for k in SITE_KINDS)}")
        layer = int(index)
        if not 0 <= layer < len(self.layers):
            raise ChoiceError(f"hook site {site!r}: layer {layer} is out of range, this model has layers "
                              f"0..{len(self.layers) - 1}")
        return kind, layer


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a decoder layer's pre-hook sees (first positional argument or ``hidden_states=``)."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The call arguments with the residual stream replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _mask_of(args: tuple, kwargs: dict) -> Any:
    if "attention_mask" in kwargs:
        return kwargs["attention_mask"]
    return args[2] if len(args) > 2 else None  # GPT2Block(hidden, past, attention_mask, ...)


def _with_mask(args: tuple, kwargs: dict, mask: Any) -> tuple[tuple, dict]:
    if "attention_mask" not in kwargs and len(args) > 2:
        return (*args[:2], mask, *args[3:]), kwargs
    return args, {**kwargs, "attention_mask": mask}


class Hooks:
    """The hook manager: attach functions to named sites, run forwards inside ``with``, hooks gone afterwards.

    Args:
        sites: a :class:`HookSites`, or anything :meth:`HookSites.of` accepts (an ``LM``, a from-scratch model,
            a list of decoder layers).
    """

    def __init__(self, sites: HookSites | Any):
        self.sites = sites if isinstance(sites, HookSites) else HookSites.of(sites)
        self._fns: dict[tuple[str, int], list[SiteFn]] = defaultdict(list)
        self._handles: list = []
        self.recorded: dict = {}
        """A place for the functions to leave what they read (``{layer: tensor}`` by convention)."""

    def add(self, site: str, fn: SiteFn) -> "Hooks":
        """Attach ``fn`` to ``site`` (see the table above); returns ``self`` so calls chain."""
        if self._handles:
            raise ConfigError("add hooks before entering the with-block, not inside it")
        self._fns[self.sites.parse(site)].append(fn)
        return self

    def __len__(self) -> int:
        return sum(len(v) for v in self._fns.values())

    def _layer_pre_hook(self, index: int) -> Callable:
        mask_fns, h_fns = self._fns.get(("attn_mask", index), []), self._fns.get(("h", index), [])

        def hook(module, args, kwargs):
            changed = False
            for fn in mask_fns:
                new = fn(_mask_of(args, kwargs))
                if new is not None:
                    args, kwargs, changed = *_with_mask(args, kwargs, new), True
            for fn in h_fns:
                new = fn(hidden_of(args, kwargs))
                if new is not None:
                    args, kwargs, changed = *with_hidden(args, kwargs, new), True
            return (args, kwargs) if changed else None

        return hook

    def _heads_pre_hook(self, index: int, n_heads: int, head_dim: int) -> Callable:
        fns = self._fns[("heads", index)]

        def hook(module, args):
            x = args[0]
            heads = x.reshape(*x.shape[:-1], n_heads, head_dim)
            changed = False
            for fn in fns:
                new = fn(heads)
                if new is not None:
                    heads, changed = new, True
            return (heads.reshape(x.shape), *args[1:]) if changed else None

        return hook

    def _out_hook(self, index: int) -> Callable:
        fns = self._fns[("out", index)]

        def hook(module, args, output):
            changed = False
            for fn in fns:
                new = fn(output)
                if new is not None:
                    output, changed = new, True
            return output if changed else None

        return hook

    def __enter__(self) -> "Hooks":
        try:
            pre_layers = sorted({i for kind, i in self._fns if kind in ("h", "attn_mask")})
            for i in pre_layers:
                self._handles.append(self.sites.layers[i].register_forward_pre_hook(self._layer_pre_hook(i),
                                                                                    with_kwargs=True))
            head_layers = sorted(i for kind, i in self._fns if kind == "heads")
            if head_layers:
                projs, n_heads, head_dim = self.sites.head_geometry()
                for i in head_layers:
                    self._handles.append(projs[i].register_forward_pre_hook(self._heads_pre_hook(i, n_heads,
                                                                                                 head_dim)))
            for i in sorted(i for kind, i in self._fns if kind == "out"):
                self._handles.append(self.sites.layers[i].register_forward_hook(self._out_hook(i)))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self._remove()
