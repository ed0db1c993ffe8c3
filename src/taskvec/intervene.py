"""Read and write the residual stream ``h_l`` (the input of decoder layer ``l``) at any (layer, position).

Two primitives, both on the ``h.{l}`` site of the one hook manager (:class:`taskvec.hooks.Hooks`, which always
removes its hooks):

* **record** ``h_l`` at chosen positions of every batch row (one forward pass for all layers);
* **write** vectors at (row, layer, position) triples, replacing ``h_l`` there or adding to it. Writes are
  out-of-place (``index_put``), so gradients flow through the written vectors when they require grad (the
  TVP-loss of from-scratch training uses this).

Both work on any list of decoder layers (``lm.profile.layers`` of a pretrained LM, ``model.h`` of a GPT-2
backbone). Positions here are *columns of the tensor being run*; :mod:`taskvec.sweep` and the helpers below
translate prompt positions through left padding.

Example::

    states = read_states(lm, [ids], positions=[[len(ids) - 1]])   # [1, n_layers, 1, d_model]
    edits = Edits.at(rows=[0], layers=[5], positions=[len(ids) - 1], vectors=states[0, 5])
    logits = patched_logits(lm, [ids], edits)                     # [1, vocab] at the last position
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from taskvec.batching import LAST_LOGITS, check_token_ids, chunks, left_pad
from taskvec.errors import (ChoiceError, EmptyInputError, LayerError, LayerSkippingWarning, NonFiniteError,
                            PositionError, WidthError)
from taskvec.hooks import Hooks, HookSites

MODES = ("replace", "add")


@dataclass
class Edits:
    """A set of residual-stream writes: ``h[layers[e]][rows[e], positions[e]] <- vectors[e]``.

    Attributes:
        rows, layers, positions: ``[E]`` long tensors (positions are tensor columns).
        vectors: ``[E, d_model]``.
        mode: ``"replace"`` or ``"add"``.
    """

    rows: torch.Tensor
    layers: torch.Tensor
    positions: torch.Tensor
    vectors: torch.Tensor
    mode: str = "replace"

    @staticmethod
    def at(rows, layers, positions, vectors, mode: str = "replace") -> "Edits":
        """Build edits from sequences or tensors; ``vectors`` is ``[E, d]`` (or ``[d]`` for a single edit)."""
        vectors = torch.as_tensor(vectors) if not isinstance(vectors, torch.Tensor) else vectors
        if vectors.dim() == 1:
            vectors = vectors[None]
        as_long = lambda x: torch.as_tensor(x, dtype=torch.long).reshape(-1)  # noqa: E731
        return Edits(as_long(rows), as_long(layers), as_long(positions), vectors, mode)

    def __len__(self) -> int:
        return int(self.rows.numel())

    def validate(self, n_layers: int, d_model: int, batch: int, width: int) -> None:
        """Raise a one-line error if any edit is out of range or malformed."""
        if self.mode not in MODES:
            raise ChoiceError(f"edit mode must be one of {MODES}, got {self.mode!r}")
        n = len(self)
        if not (self.layers.numel() == self.positions.numel() == self.vectors.shape[0] == n):
            raise WidthError(
                f"edits disagree in length: {n} rows, {self.layers.numel()} layers, "
                f"{self.positions.numel()} positions, {self.vectors.shape[0]} vectors"
            )
        if self.vectors.dim() != 2 or self.vectors.shape[-1] != d_model:
            raise WidthError(f"vectors must be [n, {d_model}] for this model, got {list(self.vectors.shape)}")
        if n == 0:
            return
        if int(self.layers.min()) < 0 or int(self.layers.max()) >= n_layers:
            bad = int(self.layers[(self.layers < 0) | (self.layers >= n_layers)][0])
            raise LayerError(f"layer {bad} is out of range: this model has layers 0..{n_layers - 1}")
        if int(self.positions.min()) < 0 or int(self.positions.max()) >= width:
            bad = int(self.positions[(self.positions < 0) | (self.positions >= width)][0])
            raise PositionError(f"position {bad} is outside the sequence (length {width})")
        if int(self.rows.min()) < 0 or int(self.rows.max()) >= batch:
            raise PositionError(f"edit row out of range for a batch of {batch}")
        if not torch.isfinite(self.vectors).all():
            raise NonFiniteError("a vector to write contains NaN or inf")


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once every needed state is recorded."""


@contextmanager
def hooked(
    layers: Sequence[nn.Module],
    edits: Edits | None = None,
    record: Mapping[int, torch.Tensor | None] | None = None,
    stop_after_record: bool = False,
    start: tuple[int, torch.Tensor] | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Install pre-hooks that record and/or write ``h_l`` during the forward passes run inside the block.

    Args:
        layers: decoder layers (``h_l`` is the input of ``layers[l]``).
        edits: writes to apply (validated by the caller or by :func:`patched_logits`).
        record: ``{layer: positions}``, positions a ``[batch, K]`` long tensor of columns (or ``None`` for the
            whole sequence). Recording happens before any write at the same layer.
        stop_after_record: end the forward right after the deepest recorded layer's input is read (the
            layers above it and the LM head are never run). Catch nothing: :func:`run_until_recorded` does.
        start: ``(layer, states)``: replace the whole input of ``layers[layer]`` by ``states`` (same shape) before
            any record or write there; with :func:`skipping` the layers below it are not run at all.

    Yields:
        a dict filled during the forward: ``{layer: [batch, K, d_model]}`` (or ``[batch, T, d_model]``).
    """
    recorded: dict[int, torch.Tensor] = {}
    record = dict(record or {})
    by_layer: dict[int, tuple] = {}
    if edits is not None and len(edits):
        for layer in torch.unique(edits.layers).tolist():
            sel = (edits.layers == layer).nonzero().squeeze(-1)
            by_layer[layer] = (edits.rows[sel], edits.positions[sel], sel)
    last = max(record) if (record and stop_after_record) else None

    def at(index: int):
        def fn(hidden: torch.Tensor) -> torch.Tensor | None:
            changed = False
            if start is not None and index == start[0]:
                hidden, changed = start[1].to(device=hidden.device, dtype=hidden.dtype), True
            if index in record:
                pos = record[index]
                if pos is None:
                    recorded[index] = hidden
                else:
                    pos = pos.to(hidden.device)
                    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
                    recorded[index] = hidden[rows, pos]
                if index == last:
                    raise _StopForward
            if index in by_layer:
                rows, pos, sel = by_layer[index]
                vec = edits.vectors[sel.to(edits.vectors.device)].to(device=hidden.device, dtype=hidden.dtype)
                rows, pos = rows.to(hidden.device), pos.to(hidden.device)
                hidden = hidden.index_put((rows, pos), vec, accumulate=edits.mode == "add")
                changed = True
            return hidden if changed else None

        return fn

    hooks = Hooks(HookSites(layers))
    starts = {start[0]} if start is not None else set()
    for index in sorted(set(by_layer) | set(record) | starts):
        hooks.add(f"h.{index}", at(index))
    with hooks:
        yield recorded


@contextmanager
def skipping(layers: Sequence[nn.Module], below: int) -> Iterator[None]:
    """Run ``layers[:below]`` as the identity inside the block (their outputs are replaced through ``start`` of
    :func:`hooked` anyway). Only where :func:`layer_skipping_ok` verified that this gives the full forward's
    numbers (layers that return a plain tensor and read nothing but their input from the layers below)."""
    def identity(hidden_states=None, *args, **kwargs):
        return hidden_states if hidden_states is not None else args[0]

    saved = []
    try:
        for layer in layers[:below]:
            saved.append((layer, layer.__dict__.get("forward")))
            layer.forward = identity
        yield
    finally:
        for layer, original in saved:
            if original is None:
                del layer.forward
            else:
                layer.forward = original


def layers_return_tensor(lm) -> bool:
    """Whether ``lm``'s decoder layers return a bare tensor (transformers 5 Llama/Qwen/Gemma/Mistral do), which
    :func:`skipping` needs (its identity returns a tensor); one one-token forward, not remembered. This is only
    the structural half of the question: :func:`layer_skipping_ok` also checks the numbers."""
    seen = []
    with Hooks(lm).add("out.0", lambda out: seen.append(isinstance(out, torch.Tensor))), torch.no_grad():
        lm.model(input_ids=torch.tensor([[lm.tokenizer.eos_token_id or 0]], device=lm.device), use_cache=False)
    return bool(seen and seen[0])


SKIP_PROBE_TEXT = "The capital of France is Paris. The capital of Japan is Tokyo. The capital of Peru is"
SKIP_RTOL = {"float32": 1e-3, "float64": 1e-3, "other": 5e-2}
"""The probe's tolerance by parameter dtype, as a fraction of scale: logits may differ by ``rtol * max |logit|``
and each position's ``h_{s+1}`` by ``rtol * ||h_{s+1}||`` (L2 over the width).

Measured worst case of the skipping path against the full forward, as such a fraction: 1.0e-6 on smollm2-135m
and 1.5e-6 on gemma3-270m in float32; 1.4e-2 on smollm2-135m in bfloat16 (CPU). A layer that really reads state
from a skipped layer changes the numbers by a sizeable fraction of their scale (or fails outright, as Gemma 4's
shared-KV layers do). So 1e-3 for 32/64-bit floats (three orders of magnitude above the noise) and 5e-2 for half
precision; a false alarm costs only speed (full forwards), never correctness."""


def _probe_ids(lm) -> torch.Tensor:
    vocab = lm.model.get_input_embeddings().num_embeddings
    try:
        bos = lm.profile.bos
        ids = lm.tokenizer(bos.prefix_text + SKIP_PROBE_TEXT, add_special_tokens=bos.add_special_tokens).input_ids
    except Exception:  # noqa: BLE001 - a tokenizer that cannot do this still gets a probe
        ids = []
    if len(ids) < 4:
        ids = list(range(1, 17))
    return torch.tensor([[int(i) % vocab for i in ids]], device=lm.device)


@torch.no_grad()
def probe_layer_skipping(lm) -> tuple[bool, str, bool]:
    """The check behind :func:`layer_skipping_ok` (run every time it is called; the result is not kept here).

    A short prompt is run as one full forward (reference logits, clean ``h_l`` at every layer), then as
    :func:`taskvec.sweep.run_variants` runs a band: the prefix through a KV cache, the suffix started at layer
    ``s`` from the clean states with the layers below run as the identity.

    * For every ``s = 1 .. n_layers - 2`` only layer ``s`` is run and its output must equal the clean
      ``h_{s+1}``. A layer ``j`` that reads state left by a layer ``i < j`` (shared keys/values, caches) fails at
      ``s = j``, where every layer below it is skipped; these runs cost about one forward in all.
    * At ``s = n_layers // 2`` and ``s = n_layers - 1`` the forward runs on to the logits, which must equal the
      reference logits.

    Returns:
        ``(ok, note, failed)``: ``failed`` is true when the skipping path ran and disagreed or raised (worth a
        warning), false when skipping is verified or simply not applicable (tuple-returning layers).
    """
    layers, n = lm.profile.layers, len(lm.profile.layers)
    if n < 2:
        return True, "one decoder layer: nothing to skip", False
    model, stack = lm.model, backbone(lm.model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    rtol = SKIP_RTOL.get(dtype, SKIP_RTOL["other"])
    ids = _probe_ids(lm)
    T = ids.shape[1]
    split = T // 2
    mask = torch.ones_like(ids)
    positions = torch.arange(T, device=ids.device)[None]
    suffix = dict(input_ids=ids[:, split:], attention_mask=mask, position_ids=positions[:, split:], use_cache=True)
    worst, where, what = 0.0, 0, ""
    try:
        returns = []
        layer_returns = Hooks(HookSites(layers)).add("out.0", lambda out: returns.append(isinstance(out, torch.Tensor)))
        with layer_returns, hooked(layers, record={l: None for l in range(1, n)}) as rec:  # reference logits and
            ref = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,  # clean states
                        logits_to_keep=1).logits[:, -1].float()
        if not (returns and returns[0]):
            return False, "decoder layers return tuples; skipping needs layers that return a tensor", False
        clean = {l: rec[l][:, split:].float() for l in rec}
        prefix = model(input_ids=ids[:, :split], attention_mask=mask[:, :split], position_ids=positions[:, :split],
                       use_cache=True, logits_to_keep=1).past_key_values
        logit_tol = rtol * max(float(ref.abs().max()), 1e-3)
        for s in range(1, n):
            begin = (s, rec[s][:, split:])
            if s < n - 1:  # layer s alone: its output against the clean h_{s+1}
                with hooked(layers, start=begin, record={s + 1: None}, stop_after_record=True) as out, \
                        skipping(layers, s):
                    run_until_recorded(stack, past_key_values=copy.deepcopy(prefix), **suffix)
                got, want = out[s + 1].float(), clean[s + 1]
                err = float(((got - want).norm(dim=-1) / want.norm(dim=-1).clamp_min(1e-6)).max()) / rtol
                if not err <= worst:  # NaN counts as worst
                    worst, where, what = err, s, f"layer {s}'s output"
            if s in (n // 2, n - 1):  # and on to the logits, exactly as a sweep band runs
                with hooked(layers, start=begin), skipping(layers, s):
                    logits = model(past_key_values=copy.deepcopy(prefix), logits_to_keep=1,
                                   **suffix).logits[:, -1].float()
                err = float((logits - ref).abs().max()) / logit_tol
                if not err <= worst:
                    worst, where, what = err, s, "the logits"
    except Exception as err:  # noqa: BLE001 - any failure of the skipping path means: do not skip
        first = (str(err).strip().splitlines() or [""])[0][:160]
        return False, f"the skipping path fails on this model ({type(err).__name__}: {first})", True
    if not worst <= 1.0:
        return False, (f"starting at layer {where} with the layers below skipped changes {what} by {worst:.3g} "
                       f"times the tolerance (rtol {rtol:g}): a layer depends on more than the residual stream of the "
                       "layers below (e.g. cross-layer KV sharing)"), True
    return True, (f"verified at every start layer: largest deviation {worst:.2g} x the tolerance (rtol {rtol:g}"
                  + (f", {what} from start layer {where})" if what else ")")), False


def layer_skipping_ok(lm, warn: bool = True) -> bool:
    """Whether sweeps may start at a variant's first written layer and run the layers below as the identity.

    Verified once per loaded model by :func:`probe_layer_skipping` and kept in ``lm.profile.layer_skipping``
    (with ``lm.profile.layer_skipping_note`` saying why); when the probe disagrees or fails, a one-line
    :class:`LayerSkippingWarning` says so and sweeps fall back to full forwards.
    """
    profile = lm.profile
    if profile.layer_skipping is None:
        ok, note, failed = probe_layer_skipping(lm)
        profile.layer_skipping, profile.layer_skipping_note = ok, note
        if failed and warn:
            warnings.warn(f"{getattr(lm, 'name', 'model')}: layer skipping is off, sweeps run every layer ({note})",
                          LayerSkippingWarning, stacklevel=2)
    return bool(profile.layer_skipping)


def run_until_recorded(fn, *args, **kwargs):
    """Call ``fn`` and swallow the early stop raised by ``hooked(..., stop_after_record=True)``."""
    try:
        return fn(*args, **kwargs)
    except _StopForward:
        return None


def _positions_tensor(positions, n_prompts: int) -> torch.Tensor:
    pos = torch.as_tensor(positions, dtype=torch.long)
    if pos.dim() == 1:
        pos = pos[:, None]
    if pos.shape[0] != n_prompts:
        raise PositionError(f"got positions for {pos.shape[0]} prompts but {n_prompts} prompts")
    return pos


@torch.no_grad()
def read_states(
    lm,
    prompts: Sequence[Sequence[int]],
    positions,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    edits: Edits | None = None,
) -> torch.Tensor:
    """Read ``h_l`` at given prompt positions for many prompts, all layers in one forward pass per batch.

    Args:
        lm: an :class:`~taskvec.models.LM`.
        prompts: token-id lists (as built by :mod:`taskvec.prompts`).
        positions: ``[n_prompts, K]`` positions in each prompt's own coordinates (negative counts from the end).
        layers: which layers (default: all ``0 .. n_layers - 1``).
        batch_size: prompts per forward pass.
        edits: writes applied during the same passes (``rows`` index ``prompts``, positions are prompt
            positions): the states read downstream of a patch (e.g. the query state of a patched prompt). A state
            read at the layer of a write is read before the write.

    Returns:
        ``[n_prompts, n_selected_layers, K, d_model]`` float tensor on the CPU.
    """
    if len(prompts) == 0:
        raise EmptyInputError("empty prompt list: give at least one prompt")
    profile = lm.profile
    layers = list(range(profile.n_layers)) if layers is None else [profile.check_layer(int(l)) for l in layers]
    pos = _positions_tensor(positions, len(prompts))
    _check_edit_rows(edits, len(prompts))
    check_token_ids(prompts, lm.model.get_input_embeddings().num_embeddings)
    lengths = torch.tensor([len(p) for p in prompts])
    pos = torch.where(pos < 0, pos + lengths[:, None], pos)
    if (pos < 0).any() or (pos >= lengths[:, None]).any():
        b = int(((pos < 0) | (pos >= lengths[:, None])).any(-1).nonzero()[0])
        raise PositionError(f"prompt {b}: a position in {pos[b].tolist()} is outside its {int(lengths[b])} tokens")
    out = torch.empty(len(prompts), len(layers), pos.shape[1], profile.d_model)
    pad = lm.tokenizer.pad_token_id
    for rng in chunks(len(prompts), batch_size):
        batch = left_pad([prompts[i] for i in rng], pad).to(lm.device)
        cols = pos[rng.start:rng.stop].to(lm.device) + batch.offsets[:, None]
        with hooked(profile.layers, _batch_edits(edits, rng, batch, profile), {l: cols for l in layers},
                    stop_after_record=True) as rec:
            run_until_recorded(
                backbone(lm.model), input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False,
            )
        out[rng.start:rng.stop] = torch.stack([rec[l] for l in layers], dim=1).float().cpu()
    return out


def _check_edit_rows(edits: Edits | None, n_prompts: int) -> None:
    """Raise a one-line :class:`PositionError` for an edit whose row is not one of the ``n_prompts`` prompts."""
    if edits is not None and len(edits) and (int(edits.rows.min()) < 0 or int(edits.rows.max()) >= n_prompts):
        bad = int(edits.rows[(edits.rows < 0) | (edits.rows >= n_prompts)][0])
        raise PositionError(f"an edit's row {bad} is outside the batch: rows index the {n_prompts} prompts "
                            f"(0..{n_prompts - 1})")


def _batch_edits(edits: Edits | None, rng: range, batch, profile) -> Edits | None:
    """The edits of prompts ``rng`` as rows and columns of their left-padded ``batch`` (validated)."""
    if edits is None:
        return None
    if not len(edits):
        edits.validate(profile.n_layers, profile.d_model, batch.input_ids.shape[0], batch.input_ids.shape[1])
        return None
    keep = (edits.rows >= rng.start) & (edits.rows < rng.stop)
    rows = edits.rows[keep] - rng.start
    lengths = batch.lengths.cpu()[rows]
    pos = edits.positions[keep]
    if ((pos < 0) | (pos >= lengths)).any():
        raise PositionError("an edit position lies outside its prompt")
    out = Edits(rows, edits.layers[keep], pos + batch.offsets.cpu()[rows], edits.vectors[keep], edits.mode)
    out.validate(profile.n_layers, profile.d_model, batch.input_ids.shape[0], batch.input_ids.shape[1])
    return out


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``model.base_model``), or the model itself."""
    return getattr(model, "base_model", model)


@torch.no_grad()
def patched_logits(
    lm,
    prompts: Sequence[Sequence[int]],
    edits: Edits | None = None,
    positions_are_prompt_positions: bool = True,
) -> torch.Tensor:
    """One plain forward pass of a batch with edits applied; logits at each prompt's last token.

    This is the reference ("naive") path: it runs every prompt in full. Edits' ``rows`` index ``prompts``;
    positions are prompt positions (translated through left padding) unless told otherwise.

    Returns:
        ``[n_prompts, vocab]`` float logits.
    """
    check_token_ids(prompts, lm.model.get_input_embeddings().num_embeddings)
    batch = left_pad(prompts, lm.tokenizer.pad_token_id).to(lm.device)
    if edits is not None:
        _check_edit_rows(edits, len(prompts))
        if positions_are_prompt_positions:  # prompt positions -> batch columns, as read_states does per batch
            edits = _batch_edits(edits, range(len(prompts)), batch, lm.profile)
        else:
            edits.validate(lm.n_layers, lm.d_model, batch.input_ids.shape[0], batch.input_ids.shape[1])
    with hooked(lm.profile.layers, edits=edits):
        out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False, logits_to_keep=LAST_LOGITS)
    return out.logits[:, -1].float()
