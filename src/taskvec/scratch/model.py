"""GPT-2-style model for from-scratch ICL (docs/spec.md B.2, B.3), written once, nanoGPT-style.

A pre-LN decoder with learned absolute positions (GPT-2's maths and parameter names; HF's
:class:`~transformers.GPT2Model` is the tests' oracle, :meth:`ScratchModel.to_gpt2`) driven through embeddings, plus:

* numeric tasks: a linear read-in ``d_in → D`` for x and for y (embedded as ``[y, 0, …, 0]``) and a linear
  read-out ``D → 1``;
* discrete tasks: a token embedding ``V → D`` for x and y and an LM head ``D → V``;
* two learned special embeddings: ``→`` (arrow) and ``*`` (star).

:class:`ScratchModel` is a :class:`~transformers.PreTrainedModel` with its own config class, so checkpoints are
ordinary HF checkpoints (``config.json`` + ``model.safetensors``): ``ScratchModel.from_pretrained(path)``, including
those saved when the backbone was HF's ``GPT2Model`` (same parameter names and layouts; its unused token embedding
is ignored); :meth:`ScratchModel.save_backbone` writes a ``GPT2Model`` checkpoint for GPT-2 tools. ``h_l`` is the
input of ``model.layers[l]`` (use :func:`taskvec.intervene.hooked`). The forward takes what to keep, record and
inject, so the training loss runs the model itself with no work nothing reads (:meth:`ScratchModel.forward`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, PretrainedConfig, PreTrainedModel

import taskvec.artifacts as A
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


class Projection(nn.Module):
    """``x @ weight + bias`` with ``weight [d_in, d_out]``: GPT-2's ``Conv1D`` layout, so that GPT-2 state dicts
    (and every checkpoint this package saved when it wrapped HF's ``GPT2Model``) load as they are."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` → ``[..., d_out]``."""
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention (GPT-2's: one ``c_attn`` projection to q, k, v; ``c_proj`` back)."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.num_heads, self.head_dim = n_head, d // n_head
        self.scaling = self.head_dim ** -0.5
        self.c_attn, self.c_proj = Projection(d, 3 * d), Projection(d, d)

    def forward(self, a: torch.Tensor, keep: torch.Tensor | None = None, kernel: str = "sdpa",
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``a [B, T, D]`` (after ``ln_1``) → attention output ``[B, T, D]``, or ``[B, K, D]`` at the columns
        ``keep [K]`` only (queries there, keys and values everywhere). ``mask``: an additive mask broadcastable to
        ``[B, H, T, T]`` in place of the causal one."""
        B, T, D = a.shape
        H, hd = self.num_heads, self.head_dim
        w, b = self.c_attn.weight, self.c_attn.bias
        if keep is None:
            q, k, v = torch.addmm(b, a.reshape(B * T, D), w).view(B, T, 3, H, hd).unbind(2)
        else:
            k, v = torch.addmm(b[D:], a.reshape(B * T, D), w[:, D:]).view(B, T, 2, H, hd).unbind(2)
            q = torch.addmm(b[:D], a[:, keep].reshape(-1, D), w[:, :D]).view(B, -1, H, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if kernel == "sdpa" and keep is None and mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        else:
            rows = causal_mask(T, a.device, a.dtype) if mask is None else mask.to(a.dtype)
            rows = rows if keep is None else rows[..., keep, :]
            if kernel == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=rows, scale=self.scaling)
            else:
                o = (torch.matmul(q, k.transpose(-1, -2)) * self.scaling + rows).softmax(-1) @ v
        return self.c_proj(o.transpose(1, 2).reshape(B, q.shape[2], D))


class MLP(nn.Module):
    """``D → 4D → D`` with the exact GELU."""

    def __init__(self, d: int):
        super().__init__()
        self.c_fc, self.c_proj = Projection(d, 4 * d), Projection(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """One pre-LN decoder layer: ``h + attn(ln_1(h))``, then ``+ mlp(ln_2(·))``. Its input is ``h_l``: a forward
    pre-hook on it (:func:`taskvec.intervene.hooked`) reads and writes the residual stream."""

    def __init__(self, d: int, n_head: int, eps: float):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d, eps=eps), SelfAttention(d, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(d, eps=eps), MLP(d)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None, kernel: str = "sdpa",
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h [B, T, D]`` → ``[B, T, D]``, or ``[B, K, D]`` at the columns ``keep [K]`` only. ``attention_mask``:
        additive, ``[B or 1, 1, T, T]``, in place of the causal mask (the ``attn_mask.{l}`` hook site writes it)."""
        a = self.attn(self.ln_1(h), keep, kernel, attention_mask)
        h = (h if keep is None else h[:, keep]) + a
        return h + self.mlp(self.ln_2(h))


class Backbone(nn.Module):
    """Learned positions, the decoder layers and the final LayerNorm (GPT-2's parameter names: ``wpe``, ``h``,
    ``ln_f``)."""

    def __init__(self, config: ScratchConfig):
        super().__init__()
        d, eps = config.n_embd, 1e-5  # GPT-2's layer_norm_epsilon
        self.wpe = nn.Embedding(config.n_positions, d)
        self.h = nn.ModuleList(Block(d, config.n_head, eps) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, eps=eps)


class ScratchModel(PreTrainedModel):
    """A GPT-2-style decoder with read-in/read-out; see the module docstring."""

    config_class = ScratchConfig
    base_model_prefix = "transformer"
    _keys_to_ignore_on_load_unexpected = [r"transformer\.wte\.weight"]  # HF GPT2Model's unused token embedding

    def __init__(self, config: ScratchConfig):
        super().__init__(config)
        if config.n_embd % config.n_head:
            raise ConfigError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.transformer = Backbone(config)
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
        if isinstance(module, (nn.Linear, Projection)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

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
            ys = xs.new_zeros((batch, 0))
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

    def embed_x(self, xs: torch.Tensor) -> torch.Tensor:
        """Input embedding of x tokens only: ``[..., d_in]`` floats or ``[...]`` symbols → ``[..., D]``."""
        return self.tok(xs) if self.discrete else self.read_in(xs)

    def forward(self, inputs_embeds: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                record: tuple[int, torch.Tensor] | None = None, inject: tuple[int, int, torch.Tensor] | None = None,
                kernel: str = "sdpa") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Causal forward of ``inputs_embeds [B, T, D]`` to the final hidden states (after
        ``ln_f``), ``[B, T, D]``.

        The arguments leave out the work nothing reads (the training loss uses them; ``hooked`` on
        :attr:`layers` does the same edits and records for any caller):

        Args:
            attention_mask: an additive mask ``[B or 1, 1, T, T]`` (0 where a query may attend, a large negative
                number where not) in place of the causal one, for every layer.
            position_ids: ``[B, T]`` positions (default ``0..T-1``).
            keep: ``[K]`` long columns whose final states are wanted: the last layer runs its queries, attention
                output and MLP only there (keys and values everywhere); returns ``[B, K, D]``.
            record: ``(layer, columns [S])``: also return ``h_layer[:, columns]`` ``[B, S, D]`` (in the graph).
            inject: ``(layer, column, vectors [B, D])``: replace ``h_layer[:, column]`` by ``vectors``.
            kernel: ``"sdpa"`` (``scaled_dot_product_attention``) or ``"eager"`` (batched matmuls, additive causal
                mask, softmax; no faster at these lengths on CPU, see docs/scratch.md).

        Returns:
            the final hidden states, or ``(hidden, recorded)`` when ``record`` is given.
        """
        if kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(ATTENTION_KERNELS)}")
        T = inputs_embeds.shape[1]
        if T > self.config.n_positions:
            raise ConfigError(f"sequence of {T} tokens exceeds the model's {self.config.n_positions} positions")
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ConfigError(f"attention_mask must be an additive [batch, 1, T, T] mask, got {attention_mask.dim()} "
                              "dimensions (sequences here are never padded)")
        tr = self.transformer
        h = inputs_embeds + (tr.wpe.weight[:T] if position_ids is None else tr.wpe(position_ids))
        recorded = None
        last = len(tr.h) - 1
        for i, block in enumerate(tr.h):
            if record is not None and i == record[0]:
                recorded = h[:, record[1]]
            if inject is not None and i == inject[0]:
                col = inject[1]
                h = torch.cat([h[:, :col], inject[2][:, None].to(h.dtype), h[:, col + 1:]], dim=1)
            h = block(h, keep=keep if i == last else None, kernel=kernel, attention_mask=attention_mask)
        h = tr.ln_f(h)
        return h if record is None else (h, recorded)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` → predictions ``[...]`` (numeric) or logits ``[..., V]`` (discrete)."""
        if self.discrete:
            return self.head(hidden)
        return self.read_out(hidden)[..., 0]

    def predict(self, plan: Plan, xs: torch.Tensor, ys: torch.Tensor | None) -> torch.Tensor:
        """Predictions at every prediction slot: ``[B, n]`` (numeric) or logits ``[B, n, V]``."""
        hidden = self(self.embed(plan, xs, ys))
        return self.readout(hidden[:, plan.pred.to(hidden.device)])

    def to_gpt2(self) -> "GPT2Model":
        """The backbone as an HF :class:`~transformers.GPT2Model` with the same weights (its token embedding is
        unused: drive it through ``inputs_embeds``). The tests' oracle, and any GPT-2 tool's way in."""
        from transformers import GPT2Model

        gpt2 = GPT2Model(self.config.gpt2_config())
        missing, unexpected = gpt2.load_state_dict(self.transformer.state_dict(), strict=False)
        if unexpected or any(not k.startswith("wte.") and not k.endswith(".attn.bias") for k in missing):
            raise RuntimeError(f"to_gpt2: the weights do not map ({missing}, {unexpected})")
        return gpt2.to(self.device).eval()

    def save_backbone(self, path: str) -> None:
        """Save the backbone as a bare ``GPT2Model`` checkpoint (readable by any GPT-2 tool) under ``path``."""
        self.to_gpt2().save_pretrained(path)

    def fast_path_ok(self) -> bool:
        """Whether the training loss may use :meth:`fast_query_pass` and ``forward(keep=...)``: no hook anywhere in
        the backbone (:meth:`fast_query_pass` does not call the blocks, and ``keep`` hands the last block's output
        hooks fewer columns)."""
        return not any(m._forward_pre_hooks or m._forward_hooks for m in self.transformer.modules())

    def fast_query_pass(self, layer: int, x_emb: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The ``x→y`` TVP pass without the work θ makes moot: sequences ``[x_q, →_1 … →_s]`` where each ``→_i``
        sees ``x_q`` and itself only (s = 1: the plain ``[x_q, →]`` pass) and ``h_layer`` at ``→_i`` is ``θ_i``.

        Below ``layer`` only ``x_q`` is run (the arrows' states there are overwritten by θ), and only its values
        (a lone token attends to itself: its attention output is its value); from ``layer`` on ``x_q`` needs keys
        and values, never queries, and the last layer runs the arrows only. The attention of ``→_i`` over its two
        keys is a two-way softmax. Same maths as ``tvp_loss`` / ``tvp_loss_shared`` in ``objective.py``.

        Args:
            layer: l*. x_emb: ``[G, D]`` input embeddings of the queries (position 0, before ``wpe``).
            theta: ``[G, s, D]`` task vectors.

        Returns:
            ``[G, s, D]`` final hidden states of the arrows (after ``ln_f``).
        """
        tr = self.transformer
        D = x_emb.shape[-1]
        hx = x_emb + tr.wpe.weight[0]
        ht = theta.to(hx.dtype)
        last = len(tr.h) - 1
        for i, block in enumerate(tr.h):
            attn = block.attn
            w, b = attn.c_attn.weight, attn.c_attn.bias
            H, hd = attn.num_heads, attn.head_dim
            ax = block.ln_1(hx)
            if i < layer:  # x_q alone: its attention output is its value
                vx = torch.addmm(b[2 * D:], ax, w[:, 2 * D:])
                hx = hx + attn.c_proj(vx)
                hx = hx + block.mlp(block.ln_2(hx))
                continue
            kx, vx = torch.addmm(b[D:], ax, w[:, D:]).split(D, dim=-1)  # [G, D] each
            G, s = ht.shape[0], ht.shape[1]
            qt, kt, vt = attn.c_attn(block.ln_1(ht)).view(G, s, 3, H, hd).unbind(2)  # [G, s, H, hd]
            kxh, vxh = kx.view(G, 1, H, hd), vx.view(G, 1, H, hd)
            scores = torch.stack([(qt * kxh).sum(-1), (qt * kt).sum(-1)], dim=-1) * attn.scaling  # [G, s, H, 2]
            p = scores.softmax(-1)
            o = p[..., :1] * vxh + p[..., 1:] * vt
            ht = ht + attn.c_proj(o.reshape(G, s, D))
            ht = ht + block.mlp(block.ln_2(ht))
            if i < last:
                hx = hx + attn.c_proj(vx)
                hx = hx + block.mlp(block.ln_2(hx))
        return tr.ln_f(ht)


ATTENTION_KERNELS = ("sdpa", "eager")

_MASKS: dict = {}


def causal_mask(T: int, device, dtype) -> torch.Tensor:
    """Additive causal mask ``[T, T]`` (0 on and below the diagonal, -inf above), cached per (T, device, dtype)."""
    key = (T, str(device), dtype)
    if key not in _MASKS:
        _MASKS[key] = torch.full((T, T), float("-inf"), device=device, dtype=dtype).triu(1)
    return _MASKS[key]


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
        what = "a file, not a directory" if path.exists() else "no such directory"
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory ({what}; give the model directory "
                                 "a training run saved, e.g. runs/NAME/model)")
    if (path / A.MODEL / A.MODEL_CONFIG).exists() and not (path / A.MODEL_WEIGHTS).exists():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory but a training run: give its model, "
                                 f"{path / 'model'}")
    if not (path / A.MODEL_CONFIG).exists():
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory (no weights)")
    from taskvec.models.registry import checkpoint_type

    model_type = checkpoint_type(path)
    if model_type != ScratchConfig.model_type:
        raise ModelNotFoundError(f"{path} is not a from-scratch model directory but a {model_type!r} checkpoint (a "
                                 "pretrained LM: study it with taskvec study/saliency/dpca/heads --model); give a "
                                 "model saved by taskvec train, e.g. runs/NAME/model")

