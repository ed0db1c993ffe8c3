"""The passes of a from-scratch model that its evaluation is made of (docs/spec.md B.5–B.7): ICL predictions, task
vectors θ_l read at the task-vector slot, query-only passes with θ written at a layer (TVP), ICL with the query cut
off from its demonstrations above a layer (attention-mask compression), and the normalised error. Inputs are drawn
on the CPU; each chunk of ``batch_size`` runs on the model's device and the results come back to the CPU.
:mod:`taskvec.scratch.evaluate` runs them as an experiment.
"""
from __future__ import annotations

import torch

from taskvec.errors import LayerError
from taskvec.hooks import Hooks
from taskvec.intervene import Edits, hooked, run_until_recorded
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import ScratchModel
from taskvec.scratch.tasks import Task


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def icl_predictions(model: ScratchModel, layout: str, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor,
                    batch_size: int = 256) -> torch.Tensor:
    """Predictions at every slot of ``demos + query``: ``[N, k+1]`` (numeric) or ``[N, k+1, V]``.

    Args: xs ``[N, k, ...]`` demos, ys ``[N, k]``, xq ``[N, 1, ...]`` queries.
    """
    pl = plan(layout, xs.shape[1] + 1, query=True)
    x_all = torch.cat([xs, xq], dim=1)
    dev = model.device  # inputs are drawn on the CPU; each chunk runs on the model's device, results come back
    return torch.cat([model.predict(pl, x_all[s].to(dev), ys[s].to(dev)).cpu()
                      for s in _chunks(xs.shape[0], batch_size)])


@torch.no_grad()
def task_vectors(model: ScratchModel, layout: str, xs: torch.Tensor, ys: torch.Tensor, xp: torch.Tensor,
                 layers: list[int] | None = None, batch_size: int = 256) -> torch.Tensor:
    """θ_l = ``h_l`` at the last example's task-vector slot of ``demos + [x', →]``, all layers in one pass.

    Returns ``[N, n_layers_selected, D]``.
    """
    layers = list(range(model.n_layers)) if layers is None else layers
    pl = plan(layout, xs.shape[1] + 1, query=True)
    slot = int(pl.require_slot()[-1])
    x_all = torch.cat([xs, xp], dim=1)
    out = []
    dev = model.device
    for s in _chunks(xs.shape[0], batch_size):
        emb = model.embed(pl, x_all[s].to(dev), ys[s].to(dev))
        cols = torch.full((emb.shape[0], 1), slot, dtype=torch.long, device=dev)
        with hooked(model.layers, record={l: cols for l in layers}, stop_after_record=True) as rec:
            run_until_recorded(model, emb)
        out.append(torch.stack([rec[l][:, 0] for l in layers], dim=1).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def query_with_vectors(model: ScratchModel, layout: str, xq: torch.Tensor, layers: torch.Tensor,
                       vectors: torch.Tensor | None, batch_size: int = 4096) -> torch.Tensor:
    """Query-only passes ``[x_q, →]`` with ``vectors[r]`` replacing ``h_{layers[r]}`` at the slot of row r.

    Args:
        xq: ``[R, 1, ...]``; layers: ``[R]`` long (−1: no patch, the zero-shot row); vectors: ``[R, D]``.

    Returns predictions ``[R]`` or logits ``[R, V]``.
    """
    qp = query_plan(layout)
    slot = int(qp.require_slot()[0])
    pred_pos = int(qp.pred[0])
    if vectors is not None and torch.any(layers >= model.n_layers):
        raise LayerError(f"layer {int(layers.max())} is out of range: this model has layers 0..{model.n_layers - 1}")
    out, dev = [], model.device
    for s in _chunks(xq.shape[0], batch_size):
        emb = model.embed(qp, xq[s].to(dev), None)
        edits = None
        if vectors is not None:
            sel = (layers[s] >= 0).nonzero().squeeze(-1)
            edits = Edits(sel.to(dev), layers[s][sel].to(dev), torch.full_like(sel, slot).to(dev),
                          vectors[s][sel].to(device=dev, dtype=emb.dtype))
        with hooked(model.layers, edits=edits):
            hidden = model(emb)
        out.append(model.readout(hidden[:, pred_pos]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def blocked_query_predictions(model: ScratchModel, layout: str, xs: torch.Tensor, ys: torch.Tensor,
                              xq: torch.Tensor, after_layer: int, batch_size: int = 256) -> torch.Tensor:
    """Query predictions of ``demos + query`` where, in every layer after ``after_layer``, the query's tokens
    may not attend to the demonstrations (B.7, attention-mask compression).

    Everything the query learns from its context must then have reached its own positions by
    ``h_{after_layer + 1}``. ``after_layer = n_layers - 1`` is plain ICL; ``-1`` cuts the context everywhere.

    Args: xs ``[N, k, ...]``, ys ``[N, k]``, xq ``[N, 1, ...]``. Returns ``[N]`` (numeric) or ``[N, V]``.
    """
    if not -1 <= after_layer < model.n_layers:
        raise LayerError(f"after_layer {after_layer} is out of range: use -1..{model.n_layers - 1}")
    k = xs.shape[1]
    pl = plan(layout, k + 1, query=True)
    first_query_pos = plan(layout, k, query=False).length  # the query's own tokens follow the k demonstrations
    t = pl.length
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    blocked = causal.clone()
    blocked[first_query_pos:, :first_query_pos] = False
    to_mask = lambda allowed: torch.zeros(t, t).masked_fill(~allowed, torch.finfo(torch.float32).min)  # noqa: E731
    masks = {"causal": to_mask(causal), "blocked": to_mask(blocked)}

    def blocked_mask(mask):  # [1, 1, t, t] broadcasts over the batch and the heads
        return masks["blocked"].to(mask.dtype if isinstance(mask, torch.Tensor) else torch.float32)[None, None]

    hooks = Hooks(model)
    for layer in range(after_layer + 1, model.n_layers):
        hooks.add(f"attn_mask.{layer}", blocked_mask)
    x_all = torch.cat([xs, xq], dim=1)
    out, dev = [], model.device
    masks = {name: m.to(dev) for name, m in masks.items()}
    with hooks:
        for s in _chunks(xs.shape[0], batch_size):
            emb = model.embed(pl, x_all[s].to(dev), ys[s].to(dev))
            hidden = model(emb, attention_mask=masks["causal"].expand(emb.shape[0], 1, t, t))
            out.append(model.readout(hidden[:, int(pl.pred[-1])]).float().cpu())
    return torch.cat(out)


def errors(model: ScratchModel, task: Task, pred: torch.Tensor, target: torch.Tensor,
           y_var: float | None = None) -> torch.Tensor:
    """Per-item error: squared error / E[y²] (numeric) or 1 − correct (discrete). Same shape as ``target``."""
    if model.discrete:
        return (pred.argmax(-1) != target).float()
    return (pred - target) ** 2 / (y_var or task.y_var)
