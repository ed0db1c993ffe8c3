"""Saliency of information flow (docs/spec.md A.5; after Wang et al. 2023, *Label Words are Anchors*).

Per layer ``l`` and prompt, the saliency matrix is ``I_l = | sum_h A_{h,l} * dLoss/dA_{h,l} |`` (``[T, T]``, row
``i`` = the attending token, column ``j`` = the token attended to; ``I[i, j]`` is the flow ``j -> i``), with ``A``
the post-softmax attention probabilities and the diagonal zeroed. ``Loss`` is the cross-entropy of the target at the
query position, over the full vocabulary (``loss="vocab"``) or over the label words only (``loss="label"``;
``"auto"`` picks ``label`` when prompts have label words).

Flows reported per layer (means over the pairs of each group, causal pairs ``j < i`` only):

* ``answers_to_query``: ``I[q, a_i]`` for every answer position ``a_i`` and the query position ``q``;
* ``inputs_to_answers``: ``I[a_i, j]`` for ``j`` a token of demonstration ``i``'s *own* input ``x_i``;
* ``inputs_to_query``: ``I[q, j]`` for ``j`` a token of any demonstration input;
* ``rest``: every other causal pair ``j < i``.

Attention probabilities are only materialized by eager attention: :func:`saliency` switches the model to eager
for the run and restores its previous implementation afterwards (also on error).

Example::

    lm = taskvec.load_model("smollm2-135m")
    prompts = build_prompts(lm, trials)
    result = saliency(lm, prompts, batch_size=4)
    result.flows                      # DataFrame: prompt, layer, answers_to_query, inputs_to_answers, ...
    result.flows_per_layer()          # mean over prompts
    plot_flows(result.flows_per_layer(), "out/saliency")   # PNG + SVG
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from taskvec.batching import chunks, left_pad
from taskvec.errors import (ChoiceError, EagerAttentionError, EmptyInputError, NonFiniteError, RangeError,
                            TokenizationError)

FLOWS = ("answers_to_query", "inputs_to_answers", "inputs_to_query", "rest")
LossKind = Literal["auto", "vocab", "label"]
LOSSES: tuple[str, ...] = ("auto", "vocab", "label")


# ----------------------------------------------------------------------------------------------- eager switching
@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch an HF model to eager attention inside the block and restore its implementation afterwards.

    Raises :class:`EagerAttentionError` if the model has no switchable attention implementation.
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if config is None or before is None:
        raise EagerAttentionError(
            f"{type(model).__name__} has no attention implementation setting; saliency needs eager attention "
            "(an HF transformers model loaded with attn_implementation='eager')"
        )
    switched = before != "eager"
    if switched:
        try:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
            else:
                config._attn_implementation = "eager"
        except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
            raise EagerAttentionError(
                f"cannot switch {type(model).__name__} to eager attention ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                "saliency needs attention probabilities: load the model with attn_implementation='eager'"
            ) from err
    try:
        yield
    finally:
        if switched:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(before)
            else:
                config._attn_implementation = before


# ----------------------------------------------------------------------------------------------- token groups
def input_token_spans(lm, prompt) -> list[list[int]]:
    """Token positions of each demonstration's input ``x_i`` in ``prompt`` (prompt coordinates).

    The prompt text is re-tokenized with character offsets (same BOS policy as :func:`~taskvec.prompts.build_prompts`);
    a token belongs to ``x_i`` when its characters overlap ``x_i``'s and it lies before the answer position ``a_i``.

    Returns:
        ``n_demos`` lists of positions.
    """
    tok, bos = lm.tokenizer, lm.profile.bos
    full = bos.prefix_text + prompt.text
    enc = tok(full, add_special_tokens=bos.add_special_tokens, return_offsets_mapping=True)
    if list(enc.input_ids) != list(prompt.ids):
        raise TokenizationError("cannot recover the demonstration inputs: the prompt's tokens do not match its text")
    offsets, shift, cursor, spans = enc.offset_mapping, len(bos.prefix_text), 0, []
    for i, demo in enumerate(prompt.trial.demos[: len(prompt.answer_positions)]):
        start = prompt.text.find(demo.input, cursor)
        if start < 0:
            raise TokenizationError(f"demonstration input {demo.input!r} not found in the prompt text")
        end = start + len(demo.input)
        cursor = end
        s, e = start + shift, end + shift
        span = [t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s and t < prompt.answer_positions[i]]
        spans.append(span)
    return spans


def flow_masks(lm, prompt) -> dict[str, torch.Tensor]:
    """Boolean ``[T, T]`` masks (row = attending token ``i``, column = source ``j``) of the four flow groups."""
    T, q = len(prompt.ids), prompt.query_position
    spans = input_token_spans(lm, prompt)
    masks = {name: torch.zeros(T, T, dtype=torch.bool) for name in FLOWS}
    answers = torch.tensor(prompt.answer_positions, dtype=torch.long)
    masks["answers_to_query"][q, answers] = True
    for a, span in zip(prompt.answer_positions, spans):
        if span:
            masks["inputs_to_answers"][a, torch.tensor(span)] = True
    all_inputs = sorted({t for span in spans for t in span})
    if all_inputs:
        masks["inputs_to_query"][q, torch.tensor(all_inputs)] = True
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    taken = masks["answers_to_query"] | masks["inputs_to_answers"] | masks["inputs_to_query"]
    masks["rest"] = causal & ~taken
    return masks


# ----------------------------------------------------------------------------------------------- the computation
@dataclass
class SaliencyResult:
    """Saliency flows.

    Attributes:
        flows: one row per (prompt, layer): ``prompt, layer`` and the four :data:`FLOWS` columns.
        matrices: ``{prompt: [n_layers, T, T]}`` saliency matrices, only when asked for (``keep_matrices``).
        loss: which loss was differentiated (``"vocab"`` or ``"label"``).
    """

    flows: pd.DataFrame
    loss: str
    matrices: dict[int, torch.Tensor] = field(default_factory=dict)

    def flows_per_layer(self) -> pd.DataFrame:
        """Mean and 95% half-interval over prompts per layer: columns ``layer, <flow>, <flow>_ci``."""
        g = self.flows.groupby("layer")[list(FLOWS)]
        mean, sem = g.mean(), g.sem().fillna(0.0)
        out = mean.copy()
        for name in FLOWS:
            out[f"{name}_ci"] = 1.96 * sem[name]
        return out.reset_index()


def _loss_kind(prompts, loss: LossKind) -> str:
    has_labels = all(p.label_ids is not None for p in prompts)
    if loss not in LOSSES:
        raise ChoiceError(f"loss must be 'auto', 'vocab' or 'label', got {loss!r}")
    if loss == "auto":
        return "label" if has_labels else "vocab"
    if loss == "label" and not has_labels:
        raise TokenizationError("loss='label' needs prompts with label words (a categorization task)")
    return loss


def _batch_loss(logits: torch.Tensor, prompts, kind: str) -> torch.Tensor:
    """Sum over the batch of each prompt's CE at its last token (rows are independent, so per-row gradients
    are each prompt's own). ``logits``: ``[B, vocab]``."""
    targets = torch.tensor([p.target_id for p in prompts], device=logits.device)
    if kind == "vocab":
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    label_ids = torch.tensor([p.label_ids for p in prompts], device=logits.device)  # [B, C]
    if not (label_ids == targets[:, None]).any(1).all():
        raise TokenizationError("a prompt's target is not among its label tokens; cannot restrict the loss to labels")
    cls = (label_ids == targets[:, None]).float().argmax(1)
    restricted = logits.float().gather(1, label_ids)
    return torch.nn.functional.cross_entropy(restricted, cls, reduction="sum")


def saliency(
    lm,
    prompts: Sequence,
    loss: LossKind = "auto",
    batch_size: int = 4,
    keep_matrices: bool = False,
    progress: bool = False,
) -> SaliencyResult:
    """Attention x gradient saliency per layer and its four flows, for every prompt.

    Args:
        lm: an :class:`~taskvec.models.LM` (switched to eager attention for the run, then restored).
        prompts: :class:`~taskvec.prompts.Prompt` objects (ICL prompts with answer positions).
        loss: ``"vocab"``, ``"label"`` or ``"auto"`` (see module docstring).
        batch_size: prompts per forward/backward pass; peak memory grows with it (and with prompt length squared).
        keep_matrices: also return the ``[n_layers, T, T]`` matrices (memory!).
        progress: show a progress bar.

    Returns:
        a :class:`SaliencyResult`.
    """
    if len(prompts) == 0:
        raise EmptyInputError("no prompts for saliency")
    if batch_size < 1:
        raise RangeError(f"batch_size must be >= 1, got {batch_size}")
    kind = _loss_kind(prompts, loss)
    model, embed = lm.model, lm.model.get_input_embeddings()
    masks = [flow_masks(lm, p) for p in prompts]
    rows, kept = [], {}
    from tqdm.auto import tqdm

    with eager_attention(model), torch.enable_grad():
        for rng in tqdm(chunks(len(prompts), batch_size), disable=not progress, desc="saliency", leave=False):
            group = [prompts[i] for i in rng]
            batch = left_pad([p.ids for p in group], lm.tokenizer.pad_token_id).to(lm.device)
            embeds = embed(batch.input_ids).detach().requires_grad_(True)
            out = model(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                        use_cache=False, output_attentions=True, logits_to_keep=1)
            attentions = out.attentions
            if not attentions or any(a is None for a in attentions):
                raise EagerAttentionError(
                    f"{type(model).__name__} returned no attention probabilities even in eager mode")
            value = _batch_loss(out.logits[:, -1], group, kind)
            if not torch.isfinite(value):
                raise NonFiniteError("the saliency loss is NaN or inf")
            grads = torch.autograd.grad(value, attentions)
            with torch.no_grad():
                # [B, L, T, T]: |sum over heads of A * dL/dA|
                sal = torch.stack([(a * g).sum(1).abs() for a, g in zip(attentions, grads)], dim=1).float().cpu()
            del out, attentions, grads, value, embeds
            for b, index in enumerate(rng):
                off, n = int(batch.offsets[b]), int(batch.lengths[b])
                m = sal[b, :, off:off + n, off:off + n].clone()
                m.diagonal(dim1=-2, dim2=-1).zero_()
                if not torch.isfinite(m).all():
                    raise NonFiniteError(f"prompt {index}: saliency contains NaN or inf")
                for layer in range(m.shape[0]):
                    row = {"prompt": index, "layer": layer}
                    for name in FLOWS:
                        mask = masks[index][name]
                        row[name] = float(m[layer][mask].mean()) if mask.any() else 0.0
                    rows.append(row)
                if keep_matrices:
                    kept[index] = m
    return SaliencyResult(pd.DataFrame(rows), kind, kept)


# ----------------------------------------------------------------------------------------------- figure
def plot_flows(per_layer: pd.DataFrame, path: str | Path, title: str = "saliency flows",
               normalize: bool = False) -> list[Path]:
    """Plot the four flows per layer (``per_layer`` from :meth:`SaliencyResult.flows_per_layer`) to
    ``path.png`` and ``path.svg``. ``normalize`` divides each layer's flows by their sum (proportions, as in
    Wang et al.). Returns the written files."""
    from matplotlib.figure import Figure  # a bare Figure: the caller's matplotlib backend is left alone

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = per_layer.copy()
    if normalize:
        total = data[list(FLOWS)].sum(1).replace(0.0, np.nan)
        for name in FLOWS:
            data[name] = (data[name] / total).fillna(0.0)
            data[f"{name}_ci"] = 0.0
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    for name in FLOWS:
        y = data[name].to_numpy()
        ci = data.get(f"{name}_ci", pd.Series(np.zeros(len(y)))).to_numpy()
        ax.plot(data["layer"], y, marker="o", ms=3, label=name.replace("_", " "))
        ax.fill_between(data["layer"], y - ci, y + ci, alpha=0.2)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of flow" if normalize else "mean saliency")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from taskvec.figures import save_figure

    return save_figure(fig, path)
