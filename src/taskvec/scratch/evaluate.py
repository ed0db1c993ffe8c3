"""Evaluation of from-scratch models (SPEC B.4, B.6, B.7).

Per layer l, for N prompts of k demonstrations (drawn with a fixed seed):

* **ICL(i)** for i = 0..k: one pass over ``demos + query``; the prediction at example i's slot uses i demos.
* **θ_l** for all l: one pass over ``demos + [x', →]`` (x' a fresh draw, not the evaluation query), recording
  ``h_l`` at the last slot for every layer.
* **TVP(l)** and baselines: one batch of query-only sequences ``[x_q, →]`` with N·(4L + 1) rows — per layer the
  task vector, a random norm-matched vector, the mean over tasks and a wrong-task vector, plus one unpatched row
  (zero-shot). Rows are stacked, never looped over layers.

Error is squared error / E[y²] (``d`` for in-distribution linear regression; predicting 0 scores 1); for discrete
tasks the error is 1 − accuracy. Strength ``S(l) = (err_0shot − err_TVP(l)) / (err_0shot − err_ICL(k))``
(NaN when ICL does not beat zero-shot by at least 1%: the ratio is then noise).
"""
from __future__ import annotations

import time
import warnings
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from taskvec.errors import ConfigError, LayerError
from taskvec.intervene import Edits, _hidden_of, hooked, run_until_recorded
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import ScratchModel, trained_k_max
from taskvec.scratch.tasks import Task, TaskConfig, corrupt_labels, make_task

ANALYSES = ("layers", "context", "noisy", "ood", "pca", "compress")
VARIANTS = ("tvp", "random", "mean", "wrong")


class EvalConfig(BaseModel):
    """What to evaluate. ``layer`` is l* for the noisy/OOD/compression comparisons (default: the model's trained
    l*, else n_layer // 2)."""

    model_config = ConfigDict(extra="forbid")

    n_prompts: int = 500
    k: int = 10
    batch_size: int = 256
    seed: int = 12345
    layer: int | None = None
    analyses: list[Literal["layers", "context", "noisy", "ood", "pca", "compress"]] = Field(
        default_factory=lambda: list(ANALYSES))
    context_ks: list[int] | None = None  # default: 0..2·k_max in a few steps
    noisy_fracs: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    ood: list[str] = Field(default_factory=lambda: ["x×0.5", "x×2", "x×3", "w×2", "skewed", "half-subspace"])
    pca_tasks: int = 8
    pca_per_task: int = 40
    compress_tasks: int = 32
    compress_queries: int = 64


OOD_SHIFTS: dict[str, dict] = {
    "x×0.5": {"x_scale": 0.5}, "x×2": {"x_scale": 2.0}, "x×3": {"x_scale": 3.0}, "w×2": {"w_scale": 2.0},
    "skewed": {"skew": 1.0}, "half-subspace": {"half_subspace": True},
}


def ood_shifts(task_cfg: TaskConfig, names: list[str]) -> list[tuple[str, dict]]:
    """``(name, TaskConfig update)`` pairs that apply to this task family, in-distribution first.

    Linear regression: every shift in :data:`OOD_SHIFTS`; sinusoid: the x/w scalings; token_offset: the offsets
    not trained on (``held-out offsets``)."""
    out: list[tuple[str, dict]] = [("in-distribution", {})]
    if task_cfg.name == "token_offset":
        trained = set(task_cfg.offsets or range(1, 17))
        held = [c for c in range(1, task_cfg.vocab) if c not in trained][:16]
        return out + ([("held-out offsets", {"offsets": held})] if held else [])
    for name in names:
        update = OOD_SHIFTS.get(name)
        if update is None or (task_cfg.name == "sinusoid" and not set(update) <= {"x_scale", "w_scale"}):
            continue
        out.append((name, update))
    return out


# ----------------------------------------------------------------------------------------------- passes


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
    return torch.cat([model.predict(pl, x_all[s], ys[s]) for s in _chunks(xs.shape[0], batch_size)])


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
    for s in _chunks(xs.shape[0], batch_size):
        emb = model.embed(pl, x_all[s], ys[s])
        cols = torch.full((emb.shape[0], 1), slot, dtype=torch.long)
        with hooked(model.layers, record={l: cols for l in layers}, stop_after_record=True) as rec:
            run_until_recorded(model, emb)
        out.append(torch.stack([rec[l][:, 0] for l in layers], dim=1))
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
    out = []
    for s in _chunks(xq.shape[0], batch_size):
        emb = model.embed(qp, xq[s], None)
        edits = None
        if vectors is not None:
            sel = (layers[s] >= 0).nonzero().squeeze(-1)
            edits = Edits(sel, layers[s][sel], torch.full_like(sel, slot), vectors[s][sel])
        with hooked(model.layers, edits=edits):
            hidden = model(emb)
        out.append(model.readout(hidden[:, pred_pos]))
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

    def cut(module, args, kwargs):  # GPT2Block(hidden, past, attention_mask, ...) or attention_mask=
        hidden = _hidden_of(args, kwargs)
        mask = masks["blocked"].to(hidden.dtype).expand(hidden.shape[0], 1, t, t)
        if len(args) > 2:
            return (*args[:2], mask, *args[3:]), kwargs
        return args, {**kwargs, "attention_mask": mask}

    x_all = torch.cat([xs, xq], dim=1)
    handles = [layer.register_forward_pre_hook(cut, with_kwargs=True)
               for layer in model.layers[after_layer + 1:]]
    try:
        out = []
        for s in _chunks(xs.shape[0], batch_size):
            emb = model.embed(pl, x_all[s], ys[s])
            hidden = model(emb, attention_mask=masks["causal"].expand(emb.shape[0], 1, t, t))
            out.append(model.readout(hidden[:, int(pl.pred[-1])]))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out)


def errors(model: ScratchModel, task: Task, pred: torch.Tensor, target: torch.Tensor,
           y_var: float | None = None) -> torch.Tensor:
    """Per-item error: squared error / E[y²] (numeric) or 1 − correct (discrete). Same shape as ``target``."""
    if model.discrete:
        return (pred.argmax(-1) != target).float()
    return (pred - target) ** 2 / (y_var or task.y_var)


# ----------------------------------------------------------------------------------------------- data


def draw_eval_set(task: Task, n: int, k: int, gen: torch.Generator, noisy_frac: float = 0.0,
                  params: dict | None = None) -> dict[str, torch.Tensor]:
    """N prompts: demos ``xs [N,k,..]``, labels ``ys`` (possibly corrupted) and clean ``ys_clean``,
    θ-query ``xp [N,1,..]``, evaluation query ``xq, yq``, task ids."""
    params = task.draw_tasks(n, gen) if params is None else params
    xs, ys_clean = task.draw_points(params, k, gen)
    xp, _ = task.draw_points(params, 1, gen)
    xq, yq = task.draw_points(params, 1, gen)
    ys = corrupt_labels(task, params, xs, ys_clean, noisy_frac, gen)
    return {"xs": xs, "ys": ys, "ys_clean": ys_clean, "xp": xp, "xq": xq, "yq": yq[:, 0], "id": params["id"]}


def _wrong_index(ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each prompt, another prompt of a different task (rolled by one; pools resample within other ids)."""
    n = ids.shape[0]
    idx = torch.roll(torch.arange(n), 1)
    if (ids >= 0).any():
        for i in range(n):
            others = (ids != ids[i]).nonzero().squeeze(-1)
            if len(others):
                idx[i] = others[torch.randint(len(others), (1,), generator=gen)]
    return idx


# ----------------------------------------------------------------------------------------------- analyses


@torch.no_grad()
def layer_sweep(model: ScratchModel, task: Task, layout: str, k: int, n: int, gen: torch.Generator,
                noisy_frac: float = 0.0, batch_size: int = 256) -> dict:
    """ICL curve, zero-shot, TVP(l) and the three baselines at every layer, strength S(l).

    Returns a dict of floats / per-layer lists (see module docstring).
    """
    L = model.n_layers
    data = draw_eval_set(task, n, k, gen, noisy_frac)
    icl = icl_predictions(model, layout, data["xs"], data["ys"], data["xq"], batch_size)
    targets = torch.cat([data["ys_clean"], data["yq"][:, None]], dim=1)
    icl_curve = errors(model, task, icl, targets).mean(0)  # [k+1]

    theta = task_vectors(model, layout, data["xs"], data["ys"], data["xp"], batch_size=batch_size)  # [N, L, D]
    norms = theta.norm(dim=-1, keepdim=True)
    rand = torch.randn(theta.shape, generator=gen)
    rand = rand / rand.norm(dim=-1, keepdim=True) * norms
    mean = theta.mean(0, keepdim=True).expand_as(theta)
    wrong = theta[_wrong_index(data["id"], gen)]
    variants = torch.stack([theta, rand, mean, wrong], dim=1)  # [N, 4, L, D]
    D = theta.shape[-1]
    vecs = torch.cat([variants.reshape(n, 4 * L, D), torch.zeros(n, 1, D)], dim=1).reshape(-1, D)
    layer_ids = torch.cat([torch.arange(L).repeat(4), torch.tensor([-1])]).repeat(n)
    xq = data["xq"].repeat_interleave(4 * L + 1, dim=0)
    pred = query_with_vectors(model, layout, xq, layer_ids, vecs, batch_size=batch_size * 16)
    err = errors(model, task, pred, data["yq"].repeat_interleave(4 * L + 1)).reshape(n, 4 * L + 1)
    per = err[:, :-1].mean(0).reshape(4, L)
    zero = float(err[:, -1].mean())
    icl_k = float(icl_curve[-1])
    out = {"k": k, "n": n, "noisy_frac": noisy_frac, "icl_curve": icl_curve.tolist(), "icl": icl_k,
           "zero_shot": zero, "theta_norm": norms[..., 0].mean(0).tolist()}
    for name, row in zip(VARIANTS, per):
        out[name] = row.tolist()
    gap = zero - icl_k
    # S(l) is undefined when ICL does not beat zero-shot (a model that ignores its context): NaN then
    defined = gap > 0.01 * max(zero, 1e-12)
    out["strength"] = [(zero - e) / gap if defined else float("nan") for e in out["tvp"]]
    out["best_layer"] = int(np.argmin(out["tvp"]))
    return out


def separability(theta: np.ndarray, ids: np.ndarray, seed: int = 0) -> dict:
    """Between/within-class variance ratio and held-out linear-probe accuracy of θ ``[N, D]`` by task id."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if float(theta.var(0).sum()) < 1e-10 * max(1.0, float((theta**2).mean())):  # all θ equal (e.g. layer 0)
        return {"between_within": float("nan"), "probe_acc": float("nan")}
    mu = theta.mean(0)
    between = within = 0.0
    for c in np.unique(ids):
        part = theta[ids == c]
        between += len(part) * float(((part.mean(0) - mu) ** 2).sum())
        within += float(((part - part.mean(0)) ** 2).sum())
    tr_x, te_x, tr_y, te_y = train_test_split(theta, ids, test_size=0.5, random_state=seed, stratify=ids)
    probe = LogisticRegression(max_iter=2000).fit(tr_x, tr_y)
    return {"between_within": between / max(within, 1e-12), "probe_acc": float(probe.score(te_x, te_y))}


@torch.no_grad()
def pca_analysis(model: ScratchModel, task_cfg: TaskConfig, layout: str, k: int, n_tasks: int, per_task: int,
                 gen: torch.Generator) -> dict:
    """θ_l for a finite pool of tasks: 2-D PCA coordinates per layer and separability scores."""
    from sklearn.decomposition import PCA

    task = make_task(task_cfg.model_copy(update={"pool_size": n_tasks}))
    ids = torch.arange(n_tasks).repeat_interleave(per_task)
    data = draw_eval_set(task, len(ids), k, gen, params=task.pool_tasks(ids))
    theta = task_vectors(model, layout, data["xs"], data["ys"], data["xp"]).numpy()
    out = {"ids": ids.tolist(), "layers": []}
    for l in range(theta.shape[1]):
        coords = PCA(n_components=2, random_state=0).fit_transform(theta[:, l])
        out["layers"].append({"xy": coords.round(4).tolist(), **separability(theta[:, l], ids.numpy())})
    return out


@torch.no_grad()
def compressed_inference(model: ScratchModel, task: Task, layout: str, k: int, layer: int, n_tasks: int,
                         n_queries: int, gen: torch.Generator) -> dict:
    """B.7: encode the demonstrations once to θ_{l*}, answer many queries with 2-token passes.

    Compares with full ICL (every query re-reads its demonstrations) and with the attention-mask variant
    (full prompt, but after l* the query may not attend to the demonstrations: ``err_masked_after_layer``).
    Reports errors, wall time and tokens.
    """
    params = task.draw_tasks(n_tasks, gen)
    xs, ys = task.draw_points(params, k, gen)
    xp, _ = task.draw_points(params, 1, gen)
    xq, yq = task.draw_points(params, n_queries, gen)  # [T, Q, ...]
    rep = lambda t: t.repeat_interleave(n_queries, dim=0)  # noqa: E731
    xs_rep, ys_rep, queries = rep(xs), rep(ys), xq.reshape(-1, 1, *xq.shape[2:])  # one row per query
    t0 = time.perf_counter()
    full = icl_predictions(model, layout, xs_rep, ys_rep, queries)[:, -1]
    t_full = time.perf_counter() - t0
    masked = blocked_query_predictions(model, layout, xs_rep, ys_rep, queries, layer)
    t0 = time.perf_counter()
    theta = task_vectors(model, layout, xs, ys, xp, layers=[layer])[:, 0]  # [T, D]
    comp = query_with_vectors(model, layout, queries, torch.full((n_tasks * n_queries,), layer), rep(theta))
    t_comp = time.perf_counter() - t0
    target = yq.reshape(-1)
    seq = plan(layout, k + 1, query=True).length
    return {
        "layer": layer, "k": k, "tasks": n_tasks, "queries_per_task": n_queries,
        "err_full_icl": float(errors(model, task, full, target).mean()),
        "err_compressed": float(errors(model, task, comp, target).mean()),
        "err_masked_after_layer": float(errors(model, task, masked, target).mean()),
        "seconds_full_icl": t_full, "seconds_compressed": t_comp,
        "tokens_full_icl": n_tasks * n_queries * seq,
        "tokens_compressed": n_tasks * seq + n_tasks * n_queries * query_plan(layout).length,
    }


# ----------------------------------------------------------------------------------------------- driver


def evaluate_model(model: ScratchModel, cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the selected analyses on one model; returns a JSON-able dict."""
    model.eval()
    task_cfg = TaskConfig(**model.config.task) if model.config.task else TaskConfig(d=model.config.d_in)
    task = make_task(task_cfg)
    layout = model.config.layout
    L = model.n_layers
    layer = cfg.layer if cfg.layer is not None else (model.config.tvp_layer if model.config.tvp_layer is not None
                                                     else L // 2)
    if not 0 <= layer < L:
        raise LayerError(f"layer {layer} is out of range: this model has layers 0..{L - 1}")
    k_max = (model.config.n_positions // plan(layout, 1, query=False).length) - 1
    if cfg.k > k_max:
        raise ConfigError(f"k={cfg.k} does not fit the model's {model.config.n_positions} positions (max k {k_max})")
    trained_k = trained_k_max(model.config.n_positions)
    if cfg.k >= trained_k:
        warnings.warn(f"k={cfg.k} demonstrations put the query beyond the {trained_k} examples per sequence the model "
                      f"was trained on (untrained positions): use k < {trained_k} for in-distribution numbers",
                      stacklevel=2)
    gen = lambda salt: torch.Generator().manual_seed(cfg.seed + salt)  # noqa: E731
    res: dict = {"layer": layer, "n_layers": L, "layout": layout, "task": task_cfg.model_dump()}
    steps = [a for a in ANALYSES if a in cfg.analyses]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="evaluate")
    for a in steps:
        if a == "layers":
            res["layers"] = layer_sweep(model, task, layout, cfg.k, cfg.n_prompts, gen(0),
                                        batch_size=cfg.batch_size)
        elif a == "context":
            ks = cfg.context_ks or sorted({1, 2, 5, 10, max(1, k_max // 2), k_max} - {0})
            res["context"] = []
            for k in ks:
                r = layer_sweep(model, task, layout, k, cfg.n_prompts, gen(1), batch_size=cfg.batch_size)
                res["context"].append({"k": k, "icl": r["icl"], "zero_shot": r["zero_shot"],
                                       "tvp_layer": r["tvp"][layer], "tvp_best": min(r["tvp"])})
        elif a == "noisy":
            res["noisy"] = []
            for p in cfg.noisy_fracs:
                r = layer_sweep(model, task, layout, cfg.k, cfg.n_prompts, gen(2), noisy_frac=p,
                                batch_size=cfg.batch_size)
                res["noisy"].append({"p": p, "icl": r["icl"], "zero_shot": r["zero_shot"],
                                     "tvp_layer": r["tvp"][layer], "tvp_best": min(r["tvp"]),
                                     "best_layer": r["best_layer"]})
        elif a == "ood":
            res["ood"] = []
            for name, update in ood_shifts(task_cfg, cfg.ood):
                shifted = make_task(task_cfg.model_copy(update=update))
                r = layer_sweep(model, shifted, layout, cfg.k, cfg.n_prompts, gen(3), batch_size=cfg.batch_size)
                res["ood"].append({"shift": name, "icl": r["icl"], "zero_shot": r["zero_shot"],
                                   "tvp_layer": r["tvp"][layer], "tvp_best": min(r["tvp"]),
                                   "best_layer": r["best_layer"]})
        elif a == "pca":
            res["pca"] = pca_analysis(model, task_cfg, layout, cfg.k, cfg.pca_tasks, cfg.pca_per_task, gen(4))
        elif a == "compress":
            res["compress"] = compressed_inference(model, task, layout, cfg.k, layer, cfg.compress_tasks,
                                                   cfg.compress_queries, gen(5))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return res
