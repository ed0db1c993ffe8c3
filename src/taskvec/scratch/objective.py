"""The training loss of a from-scratch model: ``L = L_ICL + λ L_TVP`` (docs/spec.md B.4), as one module.

* ``L_ICL``: next-y prediction at every prediction slot of a batch of ICL sequences;
* ``L_TVP``: θ = ``h_{l*}`` at the task-vector slots of those sequences, injected into query-only passes
  ``[x_q, →]`` (``x→y``) or ``[*, x_q]`` (``*xy``) of fresh queries of the same tasks, and their prediction loss.

:class:`Objective` computes both on the fast path by default (``ScratchModel.forward`` with ``keep``/``record``/
``inject`` and :meth:`~taskvec.scratch.model.ScratchModel.fast_query_pass`: no hooks, the last layer only where a
loss reads it); :func:`tvp_loss` and :func:`tvp_loss_shared` are the reference passes with hooks (``fast=False``).
The training loop that calls it is :mod:`taskvec.scratch.train`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taskvec.intervene import Edits, hooked
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import ScratchModel


def point_loss(model: ScratchModel, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (numeric) or cross-entropy (discrete, ``pred`` logits ``[..., V]``)."""
    if model.discrete:
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    return F.mse_loss(pred, target)


class Objective(nn.Module):
    """``L_ICL + λ L_TVP`` as one module, so DDP sees a single forward per backward.

    ``forward(batch, tvp_weight=None, need_tvp=True)`` returns ``(loss, icl_loss, tvp_loss)`` (scalars;
    ``tvp_loss`` is 0 for vanilla runs). ``tvp_weight`` is λ of this step (default ``cfg.tvp_weight``); at λ = 0
    the TVP pass runs only if ``need_tvp`` (for the log), without gradients, and the loss is ``L_ICL``.

    Args:
        fast: the training fast path (``ScratchModel.forward`` with ``keep``/``record``/``inject``,
            :meth:`ScratchModel.fast_query_pass`: the same maths without the work no loss reads; used only where
            ``model.fast_path_ok()``). ``False``: the full forward with hooks (:func:`tvp_loss`,
            :func:`tvp_loss_shared`), the reference.
        kernel: attention of the fast path, ``"sdpa"`` or ``"eager"``.
        compile: run the loss computation through ``torch.compile`` (one graph per sequence length and mode;
            λ stays outside, so a λ schedule costs no recompiles). Same maths; inductor may round differently.
    """

    def __init__(self, model: ScratchModel, cfg: "TrainConfig", fast: bool = True, kernel: str = "sdpa",
                 compile: bool = False):
        super().__init__()
        self.model, self.cfg, self.fast, self.kernel = model, cfg, fast, kernel
        self._plans: dict = {}
        self._losses = torch.compile(self._losses_eager, dynamic=False) if compile else self._losses_eager

    def forward(self, batch: dict[str, torch.Tensor], tvp_weight: float | None = None, need_tvp: bool = True):
        cfg = self.cfg
        lam = float(cfg.tvp_weight if tvp_weight is None else tvp_weight)
        if not cfg.uses_tvp:
            mode = "off"
        elif lam > 0:
            mode = "train"
        else:
            mode = "log" if need_tvp else "off"
        self._plan(batch["xs"].shape[1])  # outside the compiled part: torch.compile does not trace lru_cache
        icl, tvp = self._losses(batch, mode)
        if mode == "train":
            return icl + lam * tvp, icl.detach(), tvp.detach()
        return icl, icl.detach(), (tvp.detach() if mode == "log" else torch.zeros((), device=icl.device))

    def _losses_eager(self, batch: dict[str, torch.Tensor], mode: str):
        """``(L_ICL, L_TVP)``; ``mode``: ``"train"`` (both in the graph), ``"log"`` (L_TVP without gradients),
        ``"off"`` (no TVP pass; L_TVP is ``None``)."""
        fast = self.fast and self.model.fast_path_ok()
        want = mode != "off"
        icl, theta = self._icl_fast(batch, want) if fast else self._icl_reference(batch, want)
        if not want:
            return icl, None
        if mode == "log" or self.cfg.detach_theta:
            theta = theta.detach()
        with torch.set_grad_enabled(mode == "train" and torch.is_grad_enabled()):
            tvp = self._tvp_fast(batch, theta) if fast else self._tvp_reference(batch, theta)
        return icl, tvp

    def _slots(self, batch, pl) -> torch.Tensor:
        return pl.require_slot()[batch["slots"]].to(batch["xs"].device)

    def _plan(self, n: int):
        """``plan(layout, n, query=False)``, remembered here (a dict lookup inside the compiled loss)."""
        if n not in self._plans:
            self._plans[n] = plan(self.cfg.layout, n, query=False)
        return self._plans[n]

    def _icl_fast(self, batch, want_theta: bool):
        model, cfg = self.model, self.cfg
        xs, ys = batch["xs"], batch["ys"]
        pl = self._plan(xs.shape[1])
        record = (cfg.tvp_layer, self._slots(batch, pl)) if want_theta else None
        out = model(model.embed(pl, xs, ys), keep=pl.pred.to(xs.device), record=record, kernel=self.kernel)
        hidden, theta = out if record is not None else (out, None)
        return point_loss(model, model.readout(hidden), ys), theta

    def _icl_reference(self, batch, want_theta: bool):
        model, cfg = self.model, self.cfg
        xs, ys = batch["xs"], batch["ys"]
        pl = plan(cfg.layout, xs.shape[1], query=False)
        record = None
        if want_theta:
            record = {cfg.tvp_layer: self._slots(batch, pl)[None].expand(xs.shape[0], -1)}
        with hooked(model.layers, record=record) as rec:
            hidden = model(model.embed(pl, xs, ys))
        icl = point_loss(model, model.readout(hidden[:, pl.pred.to(xs.device)]), ys)
        return icl, (rec[cfg.tvp_layer] if want_theta else None)  # θ [B, s, D], part of the ICL graph

    def _tvp_reference(self, batch, theta: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.tvp_shared_query:
            return tvp_loss_shared(self.model, cfg.tvp_layer, theta, batch["xq"], batch["yq"])
        return tvp_loss(self.model, cfg.layout, cfg.tvp_layer, theta, batch["xq"], batch["yq"])

    def _tvp_fast(self, batch, theta: torch.Tensor) -> torch.Tensor:
        model, cfg = self.model, self.cfg
        xq, yq = batch["xq"], batch["yq"]
        batch_size, s, d = theta.shape
        if cfg.layout == "x→y":  # the query-only pass without the work θ makes moot
            if cfg.tvp_shared_query:
                x_emb, th, target = model.embed_x(xq[:, 0]), theta, yq.expand(batch_size, s)
            else:
                x_emb, th = model.embed_x(xq.reshape(-1, *xq.shape[2:])), theta.reshape(-1, 1, d)
                target = yq.reshape(-1, 1)
            return point_loss(model, model.readout(model.fast_query_pass(cfg.tvp_layer, x_emb, th)), target)
        qp = query_plan(cfg.layout)  # *xy: [*, x_q] with θ written at * (position 0)
        emb = model.embed(qp, xq.reshape(-1, 1, *xq.shape[2:]), None)
        hidden = model(emb, keep=qp.pred.to(emb.device),
                       inject=(cfg.tvp_layer, int(qp.require_slot()[0]), theta.reshape(-1, d)), kernel=self.kernel)
        return point_loss(model, model.readout(hidden[:, 0]), yq.reshape(-1))


def tvp_loss(model: ScratchModel, layout: str, layer: int, theta: torch.Tensor, xq: torch.Tensor,
             yq: torch.Tensor) -> torch.Tensor:
    """Loss of query-only passes with θ injected at ``layer``.

    Args:
        theta: ``[B, s, D]`` task vectors; xq: ``[B, s, ...]`` fresh queries of the same tasks; yq: ``[B, s]``.
    """
    qp = query_plan(layout)
    slot = int(qp.require_slot()[0])
    flat_x = xq.reshape(-1, 1, *xq.shape[2:])  # [B*s, 1, ...]
    vectors = theta.reshape(-1, theta.shape[-1])
    rows = torch.arange(vectors.shape[0], device=vectors.device)
    edits = Edits(rows, torch.full_like(rows, layer), torch.full_like(rows, slot), vectors)
    with hooked(model.layers, edits=edits):
        hq = model(model.embed(qp, flat_x, None))
    pred = model.readout(hq[:, int(qp.pred[0])])
    return point_loss(model, pred, yq.reshape(-1))


def tvp_loss_shared(model: ScratchModel, layer: int, theta: torch.Tensor, xq: torch.Tensor,
                    yq: torch.Tensor) -> torch.Tensor:
    """``x→y`` only: one fresh query per sequence shared by its s slots, packed as ``[x_q, →_1 … →_s]``.

    Each ``→_i`` sits at position 1 and attends only to ``x_q`` and itself (4-D mask), so it computes exactly
    what the separate pass ``[x_q, →]`` would with θ_i injected — with ``1 + s`` tokens instead of ``2s``.

    Args:
        theta: ``[B, s, D]``; xq: ``[B, 1, ...]``; yq: ``[B, 1]``.
    """
    batch, s, d = theta.shape
    e = model.embed(query_plan("x→y"), xq, None)  # [B, 2, D]: x_q, →
    emb = torch.cat([e[:, :1], e[:, 1:2].expand(batch, s, d)], dim=1)  # [B, 1 + s, D]
    t = s + 1
    allowed = torch.eye(t, dtype=torch.bool, device=emb.device)
    allowed[:, 0] = True
    mask = torch.zeros(t, t, dtype=emb.dtype, device=emb.device).masked_fill(~allowed, float("-inf"))
    positions = torch.ones(batch, t, dtype=torch.long, device=emb.device)
    positions[:, 0] = 0
    rows = torch.arange(batch, device=emb.device).repeat_interleave(s)
    cols = torch.arange(1, t, device=emb.device).repeat(batch)
    edits = Edits(rows, torch.full_like(rows, layer), cols, theta.reshape(-1, d))
    with hooked(model.layers, edits=edits):
        hidden = model(emb, attention_mask=mask[None, None].expand(batch, 1, t, t), position_ids=positions)
    pred = model.readout(hidden[:, 1:])  # [B, s] or [B, s, V]
    return point_loss(model, pred, yq.expand(batch, s))
