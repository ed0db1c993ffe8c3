"""Evaluation of from-scratch models (docs/spec.md B.4, B.6, B.7).

Per layer l, for N trials (prompts of k demonstrations and a query, drawn with a fixed seed):

* **ICL(i)** for i = 0..k: one pass over ``demos + query``; the prediction at example i's slot uses i demos.
* **θ_l** for all l: one pass over ``demos + [x', →]`` (x' a fresh draw, not the evaluation query), recording
  ``h_l`` at the last slot for every layer.
* **TVP(l)** and baselines: one batch of query-only sequences ``[x_q, →]`` with N·(4L + 1) rows — per layer the
  task vector, a random norm-matched vector, the mean over tasks and a wrong-task vector, plus one unpatched row
  (zero-shot). Rows are stacked, never looped over layers.

Error is squared error / E[y²] (``d`` for in-distribution linear regression; predicting 0 scores 1); for discrete
tasks the error is 1 − accuracy. Strength ``S(l) = (err_0shot − err_TVP(l)) / (err_0shot − err_ICL(k))``
(NaN when ICL does not beat zero-shot by at least 1%: the ratio is then noise).

The noisy-label and OOD analyses run on the clean evaluation's prompts (the ``layers`` analysis's draw; labels
corrupted, or the draw transformed by the shift: :func:`eval_prompts`) and record the clean ICL error on those
prompts in every row (``clean_icl``), so a model's degradation is its own shifted − clean error on common prompts.

:func:`run_evaluation` is the experiment (config → units ``LABEL/ANALYSIS`` → :class:`taskvec.runs.RunStore` →
``results.json`` + report; resumable); :func:`evaluate_model` runs the same analyses on one model in memory.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

import taskvec.artifacts as A
from taskvec.claims.from_scratch import MIN_ICL_GAIN
from taskvec.errors import ConfigError, LayerError
from taskvec.experiment import ExperimentConfig
from taskvec.runs import write_text_atomic
from taskvec.scratch.layouts import plan, query_plan
from taskvec.scratch.model import ScratchModel, trained_k_max
from taskvec.scratch.passes import blocked_query_predictions, errors, icl_predictions, query_with_vectors, task_vectors
from taskvec.scratch.tasks import Task, TaskConfig, corrupt_labels, make_task

ANALYSES = ("layers", "context", "noisy", "ood", "pca", "compress")
VARIANTS = ("tvp", "random", "mean", "wrong")
ONE_ROW = ("layers", "pca", "compress")
"""Analyses whose result is one dict (stored as one row); the others are a list of rows."""
ADDITIVE = ("analyses", "device")
"""Config keys a resumed evaluation may change: adding analyses only adds units, never changes finished ones."""

OOD_SHIFTS: dict[str, dict] = {
    "x×0.5": {"x_scale": 0.5}, "x×2": {"x_scale": 2.0}, "x×3": {"x_scale": 3.0}, "w×2": {"w_scale": 2.0},
    "skewed": {"skew": 1.0}, "half-subspace": {"half_subspace": True},
}


def _renamed(data: Any, old: str, new: str, owner: str) -> Any:
    """Map a key's old spelling to its new one (with a :class:`DeprecationWarning`)."""
    if isinstance(data, dict) and old in data:
        if new in data:
            raise ValueError(f"give {new} only ({old} is its old name)")
        warnings.warn(f"{owner}: {old!r} is now {new!r}", DeprecationWarning, stacklevel=4)
        data = {new if k == old else k: v for k, v in data.items()}
    return data


class EvalConfig(ExperimentConfig):
    """What to evaluate, with every default (the CLI only overrides the options given).

    ``models`` maps a label to a from-scratch model directory (for :func:`run_evaluation`; saved as absolute
    paths; :func:`evaluate_model` ignores it). ``layer`` is l* for the noisy/OOD/compression comparisons (default:
    the model's trained l*, else n_layer // 2). ``n_trials`` was called ``n_prompts`` (still accepted, with a
    :class:`DeprecationWarning`).
    """

    kind: ClassVar[str] = "evaluate"

    models: dict[str, str] = Field(default_factory=dict, description="label -> from-scratch model directory")

    n_trials: int = Field(500, ge=1, description="prompts per evaluation set (k demonstrations + a query each)")
    k: int = Field(10, ge=1, description="demonstrations per prompt")
    batch_size: int = Field(256, ge=1)
    seed: int = Field(12345, ge=0, description="every draw; each analysis has its own generator from (seed, "
                      "analysis)")
    layer: int | None = Field(None, ge=0, description="l* for noisy/OOD/compression (default: trained l* or L/2)")
    analyses: list[Literal["layers", "context", "noisy", "ood", "pca", "compress"]] = Field(
        default_factory=lambda: list(ANALYSES))
    context_ks: list[int] | None = None  # default: 0..2·k_max in a few steps
    noisy_fracs: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    ood: list[str] = Field(default_factory=lambda: ["x×0.5", "x×2", "x×3", "w×2", "skewed", "half-subspace"])
    pca_tasks: int = Field(8, ge=2)
    pca_per_task: int = Field(40, ge=2)
    compress_tasks: int = Field(32, ge=1)
    compress_queries: int = Field(64, ge=1)
    device: str = Field("cpu", description="where the models run: cpu | cuda | cuda:N | auto (prompts are drawn on "
                                           "the CPU, so every device sees the same draws)")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return _renamed(data, "n_prompts", "n_trials", "EvalConfig")

    @field_validator("models", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:  # str or Path in, absolute path strings out
        if isinstance(v, dict):
            return {str(label): str(Path(p).expanduser().resolve()) if isinstance(p, (str, Path)) else p
                    for label, p in v.items()}
        return v

    @field_validator("analyses")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"give at least one of {', '.join(ANALYSES)}")
        return list(dict.fromkeys(v))

    @field_validator("context_ks")
    @classmethod
    def _ks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("context_ks must be demonstration counts >= 1")
        return v

    @field_validator("noisy_fracs")
    @classmethod
    def _fracs(cls, v: list[float]) -> list[float]:
        if any(not 0 <= p <= 1 for p in v):
            raise ValueError("noisy_fracs must lie in [0, 1]")
        return v

    @field_validator("ood")
    @classmethod
    def _shifts(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in OOD_SHIFTS]
        if unknown:
            raise ValueError(f"unknown shift {unknown[0]!r}; known: {', '.join(OOD_SHIFTS)}")
        return v


class CompressConfig(ExperimentConfig):
    """Compressed inference (``taskvec compress``) with every default. With the defaults it answers what the
    ``compress`` analysis of ``evaluate`` does (same seed, same draws). Print-only: no run directory."""

    kind: ClassVar[str] = "compress"

    k: int = Field(10, ge=1, description="demonstrations per encoded set")
    layer: int | None = Field(None, ge=0, description="l* (default: the model's trained l*, else L/2)")
    n_tasks: int = Field(32, ge=1, description="demonstration sets encoded once each")
    n_queries: int = Field(64, ge=1, description="queries answered per encoded demonstration set")
    seed: int = Field(12345, ge=0)
    device: str = Field("cpu", description="where the model runs: cpu | cuda | cuda:N | auto")

    def eval_config(self) -> EvalConfig:
        return EvalConfig(k=self.k, layer=self.layer, seed=self.seed, analyses=["compress"],
                          compress_tasks=self.n_tasks, compress_queries=self.n_queries, device=self.device)


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
def icl_errors(model: ScratchModel, task: Task, layout: str, data: dict, batch_size: int = 256) -> torch.Tensor:
    """Mean ICL error at every slot of ``data``'s prompts, ``[k+1]`` (each demonstration scored against its clean
    label; the last entry is the query's error with k demonstrations)."""
    icl = icl_predictions(model, layout, data["xs"], data["ys"], data["xq"], batch_size)
    targets = torch.cat([data["ys_clean"], data["yq"][:, None]], dim=1)
    return errors(model, task, icl, targets).mean(0)


@torch.no_grad()
def layer_sweep(model: ScratchModel, task: Task, layout: str, k: int, n: int, gen: torch.Generator,
                noisy_frac: float = 0.0, batch_size: int = 256, data: dict | None = None) -> dict:
    """ICL curve, zero-shot, TVP(l) and the three baselines at every layer, strength S(l).

    ``data``: prompts already drawn (:func:`eval_prompts`, perhaps with :func:`with_noisy_labels`); else ``n``
    prompts are drawn from ``gen``. ``gen`` then draws the random and wrong-task controls.
    Returns a dict of floats / per-layer lists (see module docstring).
    """
    L = model.n_layers
    data = draw_eval_set(task, n, k, gen, noisy_frac) if data is None else data
    n = data["xs"].shape[0]
    icl_curve = icl_errors(model, task, layout, data, batch_size)  # [k+1]

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
    out["strength"] = strengths(zero, icl_k, out["tvp"])
    out["best_layer"] = int(np.argmin(out["tvp"]))
    return out


def strengths(zero: float, icl: float, errs: list[float]) -> list[float]:
    """S = (zero − err) / (zero − icl) for each error in ``errs``; NaN for all when ICL does not beat zero-shot by
    :data:`MIN_ICL_GAIN` of the zero-shot error (a model that ignores its context has no gap to close)."""
    gap = zero - icl
    if not gap > MIN_ICL_GAIN * max(zero, 1e-12):
        return [float("nan")] * len(errs)
    return [(zero - e) / gap for e in errs]


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


def analysis_generator(seed: int, analysis: str) -> torch.Generator:
    """The generator of one analysis: a function of (seed, analysis) only, so a subset of the analyses, another
    order or a resumed run draws exactly what an uninterrupted full run draws, and every model of a comparison
    is evaluated on the same prompts. The noisy and OOD analyses start from the ``layers`` prompts
    (:func:`eval_prompts`); ``noisy``'s own generator draws only the label corruption."""
    return torch.Generator().manual_seed(seed + ANALYSES.index(analysis))


def eval_prompts(task: Task, cfg: EvalConfig) -> tuple[dict[str, torch.Tensor], torch.Generator]:
    """The evaluation's prompts, drawn with ``task`` from the ``layers`` analysis's generator, and that generator
    after the draw (it then draws the random and wrong-task controls).

    With the model's own task these are exactly the prompts of the ``layers`` analysis (the clean evaluation). With
    an OOD-shifted task they are the same draws transformed: every family draws standard variates and scales them
    (x = z·σ_x, w = z'·w_scale, amplitudes, token ids by index), and a shift changes only the scales or the table
    indexed, so x×2 gives the clean prompts' z twice as large, w×2 the same x with w doubled, held-out offsets
    the same tokens (tested). Noisy labels are corrupted on top of them (:func:`with_noisy_labels`). So each
    model's degradation (shifted error − clean error) is measured on common prompts, the same for every model
    evaluated with this seed."""
    gen = analysis_generator(cfg.seed, "layers")
    return draw_eval_set(task, cfg.n_trials, cfg.k, gen), gen


def with_noisy_labels(task: Task, data: dict[str, torch.Tensor], frac: float,
                      gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``data`` with a fraction ``frac`` of its demonstration labels replaced by labels of independent tasks
    (:func:`~taskvec.scratch.tasks.corrupt_labels`); inputs, queries and clean labels unchanged. A fresh ``gen``
    of the same seed per fraction makes the corrupted sets nested (every label replaced at p = 0.1 is replaced,
    by the same label, at p = 0.25)."""
    return {**data, "ys": corrupt_labels(task, {"id": data["id"]}, data["xs"], data["ys_clean"], frac, gen)}


def clean_icl(s: Setup, cfg: EvalConfig) -> float:
    """The model's ICL error with k demonstrations on the clean evaluation prompts: the ``layers`` analysis's
    ``icl``, recorded as ``clean_icl`` in every noisy and OOD row (the reference of its degradation)."""
    data, _ = eval_prompts(s.task, cfg)
    return float(icl_errors(s.model, s.task, s.layout, data, cfg.batch_size)[-1])


@dataclass
class Setup:
    """A model ready for the analyses: its task, layout, the resolved l* (``layer``) and the largest k that fits
    its positions (``k_max``)."""

    model: ScratchModel
    task_cfg: TaskConfig
    task: Task
    layout: str
    layer: int
    k_max: int

    def header(self) -> dict:
        return {"layer": self.layer, "n_layers": self.model.n_layers, "layout": self.layout,
                "task": self.task_cfg.model_dump()}


def prepare(model: ScratchModel, cfg: EvalConfig) -> Setup:
    """Check ``cfg`` against the model (l*, k and the context sweep fit it; warns when k reaches untrained
    positions) and resolve its task. Cheap: call it for every model before the first analysis runs. Moves the
    model to ``cfg.device`` (a device that does not exist: one-line :class:`~taskvec.errors.DeviceError`)."""
    from taskvec.models.devices import resolve_device

    model.to(resolve_device(cfg.device)).eval()
    task_cfg = TaskConfig(**model.config.task) if model.config.task else TaskConfig(d=model.config.d_in)
    layout = model.config.layout
    L = model.n_layers
    layer = cfg.layer if cfg.layer is not None else (model.config.tvp_layer if model.config.tvp_layer is not None
                                                     else L // 2)
    if not 0 <= layer < L:
        raise LayerError(f"layer {layer} is out of range: this model has layers 0..{L - 1}")
    k_max = (model.config.n_positions // plan(layout, 1, query=False).length) - 1
    if cfg.k > k_max:
        raise ConfigError(f"k={cfg.k} does not fit the model's {model.config.n_positions} positions (max k {k_max})")
    if "context" in cfg.analyses and cfg.context_ks and max(cfg.context_ks) > k_max:
        raise ConfigError(f"context_ks {max(cfg.context_ks)} does not fit the model's {model.config.n_positions} "
                          f"positions (max k {k_max})")
    trained_k = trained_k_max(model.config.n_positions)
    if cfg.k >= trained_k:
        warnings.warn(f"k={cfg.k} demonstrations put the query beyond the {trained_k} examples per sequence the model "
                      f"was trained on (untrained positions): use k < {trained_k} for in-distribution numbers",
                      stacklevel=3)
    return Setup(model, task_cfg, make_task(task_cfg), layout, layer, k_max)


def _summary(r: dict, layer: int) -> dict:
    return {"icl": r["icl"], "zero_shot": r["zero_shot"], "tvp_layer": r["tvp"][layer], "tvp_best": min(r["tvp"])}


def noisy_rows(s: Setup, cfg: EvalConfig) -> list[dict]:
    """The noisy-label analysis: per fraction p, the clean evaluation prompts with that fraction of demonstration
    labels corrupted; each row also holds ``clean_icl`` (:func:`clean_icl`, the same prompts uncorrupted)."""
    clean, out = clean_icl(s, cfg), []
    for p in cfg.noisy_fracs:
        data, gen = eval_prompts(s.task, cfg)
        noisy = with_noisy_labels(s.task, data, p, analysis_generator(cfg.seed, "noisy"))
        r = layer_sweep(s.model, s.task, s.layout, cfg.k, cfg.n_trials, gen, noisy_frac=p,
                        batch_size=cfg.batch_size, data=noisy)
        out.append({"p": p, **_summary(r, s.layer), "clean_icl": clean, "best_layer": r["best_layer"]})
    return out


def ood_rows(s: Setup, cfg: EvalConfig) -> list[dict]:
    """The OOD analysis: per shift (:func:`ood_shifts`, in-distribution first), the clean evaluation prompts
    transformed by the shift (:func:`eval_prompts`); each row also holds ``clean_icl`` (:func:`clean_icl`)."""
    clean, out = clean_icl(s, cfg), []
    for name, update in ood_shifts(s.task_cfg, cfg.ood):
        shifted = make_task(s.task_cfg.model_copy(update=update))
        data, gen = eval_prompts(shifted, cfg)
        r = layer_sweep(s.model, shifted, s.layout, cfg.k, cfg.n_trials, gen, batch_size=cfg.batch_size, data=data)
        out.append({"shift": name, **_summary(r, s.layer), "clean_icl": clean, "best_layer": r["best_layer"]})
    return out


def run_analysis(s: Setup, cfg: EvalConfig, analysis: str) -> dict | list[dict]:
    """One analysis of one model (a unit of :func:`run_evaluation`): a dict for :data:`ONE_ROW` analyses, else a
    list of rows. Draws from :func:`analysis_generator` only."""
    gen = analysis_generator(cfg.seed, analysis)
    m, layout, n, bs = s.model, s.layout, cfg.n_trials, cfg.batch_size
    if analysis == "layers":
        return layer_sweep(m, s.task, layout, cfg.k, n, gen, batch_size=bs)
    if analysis == "context":
        ks = cfg.context_ks or sorted({1, 2, 5, 10, max(1, s.k_max // 2), s.k_max} - {0})
        return [{"k": k, **_summary(layer_sweep(m, s.task, layout, k, n, gen, batch_size=bs), s.layer)}
                for k in ks]
    if analysis == "noisy":
        return noisy_rows(s, cfg)
    if analysis == "ood":
        return ood_rows(s, cfg)
    if analysis == "pca":
        return pca_analysis(m, s.task_cfg, layout, cfg.k, cfg.pca_tasks, cfg.pca_per_task, gen)
    if analysis == "compress":
        return compressed_inference(m, s.task, layout, cfg.k, s.layer, cfg.compress_tasks, cfg.compress_queries, gen)
    raise ConfigError(f"unknown analysis {analysis!r}; choose from {', '.join(ANALYSES)}")


def evaluate_model(model: ScratchModel, cfg: EvalConfig, progress: bool = True) -> dict:
    """Run the selected analyses on one model, in memory (no run directory); returns a JSON-able dict:
    ``{layer, n_layers, layout, task, <analysis>: ...}``. :func:`run_evaluation` gives the same numbers."""
    s = prepare(model, cfg)
    res = s.header()
    steps = [a for a in ANALYSES if a in cfg.analyses]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="evaluate")
    for a in steps:
        res[a] = run_analysis(s, cfg, a)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return res


def compress_model(model: ScratchModel, cfg: CompressConfig) -> dict:
    """Compressed inference on one model (what ``taskvec compress`` prints; nothing is saved)."""
    ecfg = cfg.eval_config()
    return run_analysis(prepare(model, ecfg), ecfg, "compress")


def default_labels(paths: list[str | Path], labels: list[str] | None = None) -> dict[str, str]:
    """``{label: path}``: the given labels, else each directory's name (its run's name for ``.../model``).
    Raises :class:`ConfigError` when the counts differ or two models would share a label."""
    paths = [Path(p) for p in paths]
    labels = list(labels or [])
    if labels and len(labels) != len(paths):
        raise ConfigError(f"got {len(labels)} --label for {len(paths)} --model")
    labels = labels or [p.resolve().parent.name if p.name == "model" else p.name for p in paths]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ConfigError(f"two models are labelled {dup[0]!r}: give each --model its own --label")
    return {label: str(p) for label, p in zip(labels, paths)}


def _read_records(store) -> dict[str, list[dict]]:
    """``{unit: rows}`` of a run store's finished units."""
    return {rec["unit"]: rec["rows"] for rec in store._records()}  # a line cut by a kill is skipped: redone


def run_evaluation(cfg: EvalConfig, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Evaluate the models of ``cfg.models`` into the run directory ``out``; returns it.

    The one experiment pattern (:mod:`taskvec.experiment`): ``config.json`` holds the :class:`EvalConfig` (with
    the models' labels and absolute paths), package versions and each model's weights sha256 (``weights``);
    ``results.jsonl`` one unit ``LABEL/ANALYSIS`` per model and analysis, appended and fsynced as it finishes
    (rows tagged with ``model`` and ``analysis``); then ``results.json`` (``{label: evaluate_model(...)}``).
    :func:`taskvec.run` (:mod:`taskvec.kinds`) adds ``report.html``.

    Args:
        cfg: the config; ``cfg.models`` must name at least one model (see :func:`default_labels`).
        resume: continue a killed evaluation in ``out``: finished units are read back, not recomputed; the
            config must be the same (``analyses`` may grow) and the models' weights unchanged, else a one-line
            :class:`ConfigError`. Without it, an ``out`` that holds a run is refused.

    Each analysis draws from its own generator (:func:`analysis_generator`), so a resumed run writes the same
    numbers as an uninterrupted one (the wall times of ``compress`` aside).
    """
    from taskvec.models.registry import weights_hash
    from taskvec.runs import RunStore
    from taskvec.scratch.model import check_model_dir

    out = Path(out)
    if not cfg.models:
        raise ConfigError("give at least one model to evaluate (--model)")
    paths = {label: Path(p) for label, p in cfg.models.items()}
    for p in paths.values():
        check_model_dir(p)
    from taskvec.models.devices import resolve_device

    resolve_device(cfg.device)  # --device cuda without a GPU: one line, before any model is loaded
    RunStore.check(out, cfg.saved(), resume, (*ADDITIVE, *cfg.newer_fields(out)))  # a refused resume costs no model load
    hashes = {label: weights_hash(p) for label, p in paths.items()}
    if (out / A.CONFIG).exists():
        from taskvec.runs import read_saved

        saved = read_saved(out).get("weights", {})
        for label, h in hashes.items():
            if saved.get(label, h) != h:
                raise ConfigError(f"{out} holds an evaluation of other weights for {label!r} ({paths[label]} "
                                  f"changed since: sha256 {saved[label][:12]}… there, {h[:12]}… now); use another "
                                  "--out")
    setups = {label: prepare(ScratchModel.from_pretrained(p), cfg) for label, p in paths.items()}  # before out exists
    store = RunStore(out, cfg.saved(), resume=resume, extra={"kind": cfg.kind, "weights": hashes},
                     additive=(*ADDITIVE, *cfg.newer_fields(out)), writer=True)
    steps = [a for a in ANALYSES if a in cfg.analyses]
    units = [(label, a) for label in setups for a in steps]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc="evaluate")
    for label, a in units:
        if bar is not None:
            bar.set_postfix_str(f"{label}/{a}")

        def unit(label=label, a=a) -> list[dict]:
            r = run_analysis(setups[label], cfg, a)
            return [dict(row, model=label, analysis=a) for row in ([r] if a in ONE_ROW else r)]

        store.run_unit(f"{label}/{a}", unit)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    records = _read_records(store)
    results: dict[str, dict] = {}
    for label, s in setups.items():
        res = s.header()
        for a in steps:
            rows = [{k: v for k, v in row.items() if k not in ("model", "analysis")}
                    for row in records[f"{label}/{a}"]]
            res[a] = rows[0] if a in ONE_ROW else rows
        results[label] = res
    write_text_atomic(out / A.EVAL_RESULTS, json.dumps(results, indent=1))
    return store.path


def evaluation_tables(run_dir: str | Path) -> A.Tables:
    """The tables of an evaluation run directory, from its run store (lazy, :class:`~taskvec.artifacts.Tables`):
    ``results``, every row of every finished unit ``LABEL/ANALYSIS``, tagged with ``model``, ``analysis`` and
    ``unit``. (The report draws ``results.json``, ``{label: evaluate_model(...)}``: its per-model header comes from
    the models, which the store does not hold.)"""
    from taskvec.runs import store_table

    run_dir = Path(run_dir)
    return A.Tables({"results": lambda: store_table(run_dir)})
