"""GPT-2-style model for from-scratch ICL (docs/spec.md B.2, B.3).

An HF :class:`~transformers.GPT2Model` backbone (pre-LN, learned absolute positions) driven through
``inputs_embeds``, plus:

* numeric tasks: a linear read-in ``d_in → D`` for x and for y (embedded as ``[y, 0, …, 0]``) and a linear
  read-out ``D → 1``;
* discrete tasks: a token embedding ``V → D`` for x and y and an LM head ``D → V``;
* two learned special embeddings: ``→`` (arrow) and ``*`` (star).

:class:`ScratchModel` is a :class:`~transformers.PreTrainedModel` with its own config class, so checkpoints are
ordinary HF checkpoints (``config.json`` + ``model.safetensors``): ``ScratchModel.from_pretrained(path)``; the
backbone alone opens with ``GPT2Model.from_pretrained(path, subfolder=...)`` after
:meth:`ScratchModel.save_backbone`. ``h_l`` is the input of ``model.transformer.h[l]`` (use
:func:`taskvec.intervene.hooked` on :attr:`ScratchModel.layers`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model, PretrainedConfig, PreTrainedModel

from taskvec.errors import ConfigError
from taskvec.scratch.layouts import Plan

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 32},  # tests
    "cpu-small": {"n_layer": 6, "n_head": 4, "n_embd": 128},
    "paper": {"n_layer": 12, "n_head": 8, "n_embd": 256},
}


class ScratchConfig(PretrainedConfig):
    """Config of a from-scratch ICL model.

    Args:
        n_layer, n_head, n_embd, n_positions: backbone shape.
        d_in: width of numeric inputs (ignored when ``vocab > 0``).
        vocab: number of symbols of a discrete task (0 for numeric tasks).
        task: the :class:`~taskvec.scratch.tasks.TaskConfig` it was trained on, as a dict.
        layout: the token layout it was trained on.
        tvp_layer: l* of the TVP-loss it was trained with (``None`` for a vanilla model).
    """

    model_type = "taskvec_scratch"

    def __init__(self, n_layer: int = 6, n_head: int = 4, n_embd: int = 128, n_positions: int = 256,
                 d_in: int = 10, vocab: int = 0, task: dict | None = None, layout: str = "x→y",
                 tvp_layer: int | None = None, **kwargs):
        self.n_layer, self.n_head, self.n_embd, self.n_positions = n_layer, n_head, n_embd, n_positions
        self.d_in, self.vocab = d_in, vocab
        self.task = task or {}
        self.layout = layout
        self.tvp_layer = tvp_layer
        super().__init__(**kwargs)

    def gpt2_config(self) -> GPT2Config:
        return GPT2Config(
            vocab_size=1, n_positions=self.n_positions, n_embd=self.n_embd, n_layer=self.n_layer,
            n_head=self.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=None, eos_token_id=None, activation_function="gelu",
        )


class ScratchModel(PreTrainedModel):
    """GPT-2 backbone + read-in/read-out; see the module docstring."""

    config_class = ScratchConfig
    base_model_prefix = "transformer"
    _supports_sdpa = True

    def __init__(self, config: ScratchConfig):
        super().__init__(config)
        if config.n_embd % config.n_head:
            raise ConfigError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.transformer = GPT2Model(config.gpt2_config())
        self.freeze_unused()
        d = config.n_embd
        self.discrete = config.vocab > 0
        if self.discrete:
            self.tok = nn.Embedding(config.vocab, d)
            self.head = nn.Linear(d, config.vocab)
        else:
            self.read_in = nn.Linear(config.d_in, d)
            self.read_out = nn.Linear(d, 1)
        self.special = nn.Embedding(2, d)  # 0: arrow, 1: star
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear,)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif type(module).__name__ == "Conv1D":  # GPT-2's attention/MLP projections
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def freeze_unused(self) -> None:
        """GPT-2's token embedding is never used (we feed ``inputs_embeds``): no grads, no optimizer state.
        Call again after ``from_pretrained`` (loading may rebuild parameters)."""
        self.transformer.wte.weight.requires_grad_(False)

    @property
    def layers(self) -> list[nn.Module]:
        """Decoder layers; ``h_l`` is the input of ``layers[l]``."""
        return list(self.transformer.h)

    @property
    def n_layers(self) -> int:
        return self.config.n_layer

    def embed(self, plan: Plan, xs: torch.Tensor, ys: torch.Tensor | None) -> torch.Tensor:
        """Embedding sequence of a plan.

        Args:
            xs: ``[B, n, d_in]`` floats or ``[B, n]`` symbols.
            ys: ``[B, n]`` or ``[B, n - 1]`` labels (a query's y is never placed), or ``None`` if ``n == 1``.

        Returns:
            ``[B, T, D]`` with ``T = plan.length``.
        """
        batch, n = xs.shape[0], xs.shape[1]
        if n != plan.n:
            raise ConfigError(f"plan is for {plan.n} examples but got {n}")
        if ys is None:
            ys = xs.new_zeros((batch, 0)) if self.discrete else xs.new_zeros((batch, 0))
        if ys.shape[1] < n:
            ys = torch.cat([ys, ys.new_zeros((batch, n - ys.shape[1]))], dim=1)
        if self.discrete:
            ex, ey = self.tok(xs), self.tok(ys)
        else:
            if xs.shape[-1] != self.config.d_in:
                raise ConfigError(f"inputs have width {xs.shape[-1]} but the model reads {self.config.d_in}")
            ex = self.read_in(xs)
            ey = self.read_in(F.pad(ys[..., None], (0, self.config.d_in - 1)))
        specials = self.special.weight[None].expand(batch, -1, -1)
        pieces = torch.cat([ex, ey, specials], dim=1)  # [B, 2n + 2, D]
        return pieces[:, plan.gather.to(pieces.device)]

    def forward(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        """Run the backbone. ``inputs_embeds [B, T, D]`` → final hidden states ``[B, T, D]`` (after ``ln_f``)."""
        if inputs_embeds.shape[1] > self.config.n_positions:
            raise ConfigError(
                f"sequence of {inputs_embeds.shape[1]} tokens exceeds the model's {self.config.n_positions} positions"
            )
        out = self.transformer(inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
        return out.last_hidden_state

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → predictions ``[...]`` (numeric) or logits ``[..., V]`` (discrete)."""
        if self.discrete:
            return self.head(hidden)
        return self.read_out(hidden)[..., 0]

    def predict(self, plan: Plan, xs: torch.Tensor, ys: torch.Tensor | None) -> torch.Tensor:
        """Predictions at every prediction slot: ``[B, n]`` (numeric) or logits ``[B, n, V]``."""
        hidden = self(self.embed(plan, xs, ys))
        return self.readout(hidden[:, plan.pred.to(hidden.device)])

    def save_backbone(self, path: str) -> None:
        """Save the bare ``GPT2Model`` (readable by any GPT-2 tool) under ``path``."""
        self.transformer.save_pretrained(path)


def positions_for(k_max: int) -> int:
    """Learned positions of a model trained on ``k_max`` examples per sequence: room for twice as many
    examples (context-length OOD evaluation) at 3 tokens each, plus one."""
    return 3 * (2 * k_max + 2)


def trained_k_max(n_positions: int) -> int:
    """Inverse of :func:`positions_for`: examples per training sequence of a model with ``n_positions``."""
    return n_positions // 6 - 1


def build_model(preset: str = "cpu-small", *, d_in: int = 10, vocab: int = 0, n_positions: int = 256,
                task: dict | None = None, layout: str = "x→y", tvp_layer: int | None = None,
                **overrides: int) -> ScratchModel:
    """A fresh model from a named preset (``tiny``, ``cpu-small``, ``paper``) with optional shape overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    cfg = ScratchConfig(**shape, n_positions=n_positions, d_in=d_in, vocab=vocab, task=task, layout=layout,
                       tvp_layer=tvp_layer)
    return ScratchModel(cfg)


def check_model_dir(path) -> None:
    """Raise :class:`~taskvec.errors.ModelNotFoundError` (one line) unless ``path`` is a saved from-scratch model
    directory (``config.json`` + weights). Reads no weights: call it before any work."""
    from pathlib import Path

    from taskvec.errors import ModelNotFoundError

    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no such directory; give the "
                                 "model directory a training run saved, e.g. runs/NAME/model)")
    if (path / "model" / "config.json").exists() and not (path / "model.safetensors").exists():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory but a training run: give its model, "
                                 f"{path / 'model'}")
    if not (path / "config.json").exists():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no weights)")
