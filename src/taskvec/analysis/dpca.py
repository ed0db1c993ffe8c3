"""Demixed PCA of answer-position states by string length and label (SPEC A.6; Kobak et al. 2016).

For categorization prompts (``simple_string``) the local vector of demonstration ``i`` at layer ``l`` is ``h_l`` at
its answer position. Each such state is one *sample* with two factors: the **length** of the demonstration's string
(``trial.meta["length"][i]``) and its **label** word (``demo.output``; the class -> word mapping is random per
trial, so the two factors are not confounded across trials). Per layer we report:

* **marginal variance**: the variance of the condition means (length x label cells, each cell weighted equally) split
  into the ``length``, ``label`` and ``interaction`` marginalizations (fractions summing to 1), and
  ``between_fraction`` = variance of the cell means / total sample variance;
* **dPCA explained variance** of the top ``k`` components of each marginalization (reference implementation,
  PyPI ``dPCA`` 1.0.5, ``labels="sd"``, fixed ridge ``regularizer`` = lambda, applied by dPCA as
  ``lambda * ||X||^2``);
* **Mahalanobis distances** between group means, for length groups (mean over pairs of distinct lengths, and
  short vs long class) and for labels, using the pooled within-group covariance of the samples, regularized by
  shrinkage towards ``trace/d * I`` (Ledoit-Wolf weight by default) plus a tiny ridge ``1e-6 * trace/d`` so that a
  singular covariance (e.g. layer 0, where every answer state of one label word is the same embedding) stays
  invertible: distances are always finite;
* **subspace ablation**: the top-``k`` dPCA encoder axes of a marginalization (orthonormalized) are projected out
  of every local vector around the layer's grand mean, ``v' = v - Q Q^T (v - mean)``, and local patching (ICL local
  vectors into dummy prompts with random answers, at the answer positions, one layer at a time) is re-measured.
  A random ``k``-dim subspace is the control.

Example::

    task = get_task("simple_string")
    trials = task.sample_trials(40, 16, seed=0)
    result = dpca_analysis(lm, trials, task=task, k=1, ablate_layers=[2, 6, 10])
    result.per_layer            # layer, var_length, var_label, var_interaction, maha_length, maha_label, ...
    result.ablation             # layer, ablate, accuracy, label_accuracy
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from taskvec.errors import ConfigError, EmptyInputError, NonFiniteError, TaskvecError

MARGINALIZATIONS = ("length", "label", "interaction")
_DPCA_KEYS = {"length": "s", "label": "d", "interaction": "sd"}


class TooFewTrialsError(TaskvecError):
    """Fewer trials (or samples) than conditions, or a condition with no sample."""


# ----------------------------------------------------------------------------------------------- numerics
def condition_means(X: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Cell means of samples by two factors.

    Args:
        X: ``[n_samples, d]``; a, b: ``[n_samples]`` factor values (any hashable, sortable).

    Returns:
        ``(means [d, n_a, n_b], levels_a, levels_b)``. Raises :class:`TooFewTrialsError` if a cell is empty.
    """
    la, lb = sorted(set(a.tolist())), sorted(set(b.tolist()))
    if len(X) < len(la) * len(lb):
        raise TooFewTrialsError(
            f"{len(X)} samples for {len(la)} x {len(lb)} = {len(la) * len(lb)} conditions: need at least one per "
            "condition; use more trials")
    means = np.zeros((X.shape[1], len(la), len(lb)))
    empty = []
    for i, va in enumerate(la):
        for j, vb in enumerate(lb):
            sel = (a == va) & (b == vb)
            if not sel.any():
                empty.append((va, vb))
            else:
                means[:, i, j] = X[sel].mean(0)
    if empty:
        raise TooFewTrialsError(f"no sample for condition(s) {empty[:4]} (length, label): use more trials")
    return means, la, lb


def marginal_variance(means: np.ndarray) -> dict[str, float]:
    """Split the variance of cell means ``[d, n_a, n_b]`` into the ``length`` (a), ``label`` (b) and
    ``interaction`` marginalizations; fractions sum to 1 (all 0 if the means do not vary)."""
    Xc = means - means.mean(axis=(1, 2), keepdims=True)
    ma = Xc.mean(2, keepdims=True)
    mb = Xc.mean(1, keepdims=True)
    inter = Xc - ma - mb
    parts = {
        "length": float((np.broadcast_to(ma, Xc.shape) ** 2).sum()),
        "label": float((np.broadcast_to(mb, Xc.shape) ** 2).sum()),
        "interaction": float((inter ** 2).sum()),
    }
    total = sum(parts.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in parts.items()}


def _dpca_class():
    try:
        from dPCA.dPCA import dPCA  # the reference implementation (machenslab)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("dPCA analysis needs the reference implementation: pip install dPCA==1.0.5 numexpr numba") \
            from err
    return dPCA


def fit_dpca(means: np.ndarray, n_components: int = 3, regularizer: float = 1e-4) -> tuple[dict, dict]:
    """Fit the reference dPCA on cell means ``[d, n_length, n_label]``.

    Returns:
        ``(encoders, explained)``: ``encoders[m]`` is ``[d, k]`` (dPCA's ``P``, the axes in state space) and
        ``explained[m]`` the list of explained-variance ratios of the ``k`` components, for ``m`` in
        :data:`MARGINALIZATIONS`.
    """
    d, n_a, n_b = means.shape
    k = int(max(1, min(n_components, d)))
    model = _dpca_class()(labels="sd", regularizer=float(regularizer) if regularizer else None, n_components=k)
    model.protect = None
    model.fit_transform(means.astype(np.float64))  # also sets explained_variance_ratio_
    encoders, explained = {}, {}
    for name, key in _DPCA_KEYS.items():
        P = np.asarray(model.P[key], dtype=np.float64)
        encoders[name] = np.nan_to_num(P)
        ev = [float(x) for x in model.explained_variance_ratio_[key]]
        explained[name] = [x if np.isfinite(x) else 0.0 for x in ev]
    return encoders, explained


def pooled_covariance(X: np.ndarray, groups: np.ndarray, shrinkage: float | str = "auto") -> np.ndarray:
    """Pooled within-group covariance ``[d, d]`` of samples ``X`` ``[n, d]``, shrunk towards ``trace/d * I``
    (weight ``shrinkage`` in [0, 1], or Ledoit-Wolf's when ``"auto"``) plus a ridge ``1e-6 * trace/d`` (and an
    absolute floor) so that it is always invertible."""
    R = X.astype(np.float64).copy()
    for g in np.unique(groups):
        sel = groups == g
        R[sel] -= R[sel].mean(0)
    dof = max(1, len(X) - len(np.unique(groups)))
    S = R.T @ R / dof
    d = S.shape[0]
    nu = float(np.trace(S)) / d
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage

        alpha = float(ledoit_wolf_shrinkage(R, assume_centered=True)) if nu > 0 else 1.0
    else:
        alpha = float(shrinkage)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1] or 'auto', got {shrinkage!r}")
    scale = nu if nu > 0 else float((X.astype(np.float64) ** 2).mean()) or 1.0
    return (1 - alpha) * S + alpha * nu * np.eye(d) + (1e-6 * scale + 1e-12) * np.eye(d)


def mahalanobis_between(X: np.ndarray, groups: np.ndarray, shrinkage: float | str = "auto",
                        pairs: Sequence[tuple] | None = None) -> dict[tuple, float]:
    """Mahalanobis distances ``sqrt(dm^T S^-1 dm)`` between the means of groups, ``S`` the regularized pooled
    within-group covariance (:func:`pooled_covariance`).

    Args:
        X: ``[n, d]`` samples; groups: ``[n]`` group labels.
        pairs: which pairs of group labels (default: every pair of distinct groups).

    Returns:
        ``{(g1, g2): distance}``, all finite.
    """
    levels = sorted(set(groups.tolist()))
    if len(levels) < 2:
        raise TooFewTrialsError(f"need at least two groups for a distance, got {levels}")
    S = pooled_covariance(X, groups, shrinkage)
    L = np.linalg.cholesky(S)
    mean = {g: X[groups == g].astype(np.float64).mean(0) for g in levels}
    out = {}
    for g1, g2 in pairs or itertools.combinations(levels, 2):
        z = np.linalg.solve(L, mean[g1] - mean[g2])
        out[(g1, g2)] = float(np.sqrt(z @ z))
    if not all(np.isfinite(v) for v in out.values()):
        raise NonFiniteError("a Mahalanobis distance is not finite")
    return out


def orthonormal(basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``[d, r]`` of the column span of ``basis`` ``[d, k]`` (near-null directions dropped)."""
    if basis.size == 0:
        return basis
    U, s, _ = np.linalg.svd(basis, full_matrices=False)
    keep = s > (s.max() * 1e-8 if s.size and s.max() > 0 else np.inf)
    return U[:, keep]


def project_out(vectors: torch.Tensor, basis: np.ndarray, center: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Remove the span of ``basis`` ``[d, k]`` from ``vectors`` ``[..., d]``: ``v - Q Q^T (v - center)``
    (``center`` ``[d]``, default 0), with ``Q`` an orthonormal basis of the span."""
    Q = torch.as_tensor(orthonormal(np.asarray(basis, dtype=np.float64)), dtype=vectors.dtype)
    if Q.numel() == 0:
        return vectors.clone()
    c = torch.zeros(vectors.shape[-1], dtype=vectors.dtype) if center is None else torch.as_tensor(center, dtype=vectors.dtype)
    return vectors - ((vectors - c) @ Q) @ Q.T


# ----------------------------------------------------------------------------------------------- per layer
def analyze_layer(X: np.ndarray, length: np.ndarray, label: np.ndarray, k: int = 1, n_components: int = 3,
                  regularizer: float = 1e-4, shrinkage: float | str = "auto",
                  length_class: np.ndarray | None = None) -> tuple[dict, dict]:
    """All statistics of one layer's samples.

    Args:
        X: ``[n, d]`` states; length, label: ``[n]`` factor values; length_class: ``[n]`` short/long class.
        k: axes per marginalization used for the ablation subspaces.

    Returns:
        ``(row, encoders)``: a dict of scalar statistics and ``{marginalization: [d, n_components]}`` axes.
    """
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        raise NonFiniteError("hidden states contain NaN or inf")
    means, _, _ = condition_means(X, length, label)
    row: dict = {f"var_{m}": v for m, v in marginal_variance(means).items()}
    total = float(((X - X.mean(0)) ** 2).sum(1).mean())
    cell = float(((means - means.mean(axis=(1, 2), keepdims=True)) ** 2).sum(0).mean())
    row["between_fraction"] = cell / total if total > 0 else 0.0
    encoders, explained = fit_dpca(means, max(n_components, k), regularizer)
    for m in MARGINALIZATIONS:
        row[f"dpca_{m}"] = float(sum(explained[m][:k]))
    d_len = mahalanobis_between(X, length, shrinkage)
    row["maha_length"] = float(np.mean(list(d_len.values())))
    row["maha_label"] = float(np.mean(list(mahalanobis_between(X, label, shrinkage).values())))
    if length_class is not None and len(set(length_class.tolist())) == 2:
        row["maha_length_class"] = float(np.mean(list(mahalanobis_between(X, length_class, shrinkage).values())))
    return row, encoders


# ----------------------------------------------------------------------------------------------- experiment
@dataclass
class DPCAResult:
    """Results of :func:`dpca_analysis`.

    Attributes:
        per_layer: one row per layer: ``layer, var_length, var_label, var_interaction, between_fraction,
            dpca_length, dpca_label, dpca_interaction, maha_length, maha_label[, maha_length_class]``.
        ablation: one row per (prompt, layer, ablate) with ``ablate`` in ``none, length, label, random``:
            ``correct, label_correct, target_logprob`` (empty when no ablation was run).
        baselines: ``{"icl": acc, "dummy": acc, "chance": 1/n_labels}`` label-restricted accuracies.
        encoders: ``{layer: {marginalization: [d, n_components]}}`` dPCA axes.
        config: the parameters used.
    """

    per_layer: pd.DataFrame
    ablation: pd.DataFrame
    baselines: dict
    encoders: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def ablation_per_layer(self) -> pd.DataFrame:
        """Mean label-restricted (and full-vocabulary) accuracy per (layer, ablate)."""
        if self.ablation.empty:
            return self.ablation
        cols = [c for c in ("label_correct", "correct") if c in self.ablation]
        return self.ablation.groupby(["layer", "ablate"])[cols].mean().reset_index()


def answer_factors(trials: Sequence, n_answers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (trial, demo) factors, flattened trial-major: ``length`` (``meta["length"]``), ``label`` (the demo's
    output word) and ``class`` (``meta["class"]``). Each ``[n_trials * n_answers]``."""
    lengths, labels, classes = [], [], []
    for t, trial in enumerate(trials):
        if "length" not in trial.meta:
            raise ConfigError(f"trial {t} has no meta['length']: dPCA needs a simple_string-style task")
        lengths += list(trial.meta["length"][:n_answers])
        labels += [d.output for d in trial.demos[:n_answers]]
        classes += list(trial.meta.get("class", [0] * n_answers)[:n_answers])
    return np.asarray(lengths), np.asarray(labels), np.asarray(classes)


def dpca_analysis(
    lm,
    trials: Sequence,
    task=None,
    template=None,
    layers: Sequence[int] | None = None,
    k: int = 1,
    n_components: int = 3,
    regularizer: float = 1e-4,
    shrinkage: float | str = "auto",
    ablate_layers: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> DPCAResult:
    """dPCA, Mahalanobis distances and subspace ablation on the answer-position states of categorization prompts.

    Args:
        lm: the model.
        trials: categorization trials with ``meta["length"]`` (``simple_string``); at least as many trials as
            (length x label) conditions.
        task: the task (its ``answer_pool`` draws the dummy prompts' random answers; default: each trial's labels).
        template: a :class:`~taskvec.prompts.Template` (default ``"{x} is {y}"``).
        layers: layers to analyze (default all).
        k: number of top axes per marginalization projected out in the ablation (and summed in ``dpca_*``).
        n_components: dPCA components fitted per marginalization.
        regularizer: dPCA's ridge lambda (fixed; see module docstring).
        shrinkage: covariance shrinkage for Mahalanobis (``"auto"`` = Ledoit-Wolf, or a weight in [0, 1]).
        ablate_layers: layers at which to run the subspace ablation (default: ``layers``; ``[]`` skips it).
        seed: seed of the dummy answers and of the random control subspace.
        batch_size: prompts per forward pass when reading states.

    Returns:
        a :class:`DPCAResult`.
    """
    from taskvec.intervene import read_states
    from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials
    from taskvec.sweep import patch_layers

    if len(trials) == 0:
        raise EmptyInputError("no trials for dPCA")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    template = template or Template()
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    ablate_layers = layers if ablate_layers is None else [lm.profile.check_layer(int(l)) for l in ablate_layers]
    prompts = build_prompts(lm, trials, template)
    n_answers = {len(p.answer_positions) for p in prompts}
    if len(n_answers) != 1:
        raise ConfigError(f"all trials need the same number of demonstrations, got {sorted(n_answers)}")
    K = n_answers.pop()
    length, label, cls = answer_factors(trials, K)
    n_conditions = len(set(length.tolist())) * len(set(label.tolist()))
    if len(trials) < n_conditions:
        raise TooFewTrialsError(
            f"{len(trials)} trials for {n_conditions} (length x label) conditions: dPCA needs at least as many "
            "trials as conditions")
    positions = torch.tensor([p.answer_positions for p in prompts])
    states = read_states(lm, [p.ids for p in prompts], positions, batch_size=batch_size)  # [P, L, K, d]
    rows, encoders = [], {}
    rng = np.random.default_rng(seed)
    from tqdm.auto import tqdm

    for layer in tqdm(layers, disable=not progress, desc="dpca", leave=False):
        X = states[:, layer].reshape(-1, lm.d_model).numpy()
        row, enc = analyze_layer(X, length, label, k, n_components, regularizer, shrinkage, cls)
        rows.append({"layer": layer, **row})
        encoders[layer] = enc
    per_layer = pd.DataFrame(rows)

    ablation = pd.DataFrame()
    baselines: dict = {"chance": 1.0 / max(1, len(prompts[0].label_ids or [0, 0]))}
    if ablate_layers:
        pools = [task.answer_pool(t) if task is not None else list(t.label_words or []) for t in trials]
        dummies = build_prompts(lm, dummy_trials(trials, pools, seed, lm.tokenizer), template)
        check_aligned(prompts, dummies)
        variants = {"none": states.clone()}
        for name in ("length", "label", "random"):
            variants[name] = states.clone()
        for layer in ablate_layers:
            if layer not in encoders:
                X = states[:, layer].reshape(-1, lm.d_model).numpy()
                encoders[layer] = analyze_layer(X, length, label, k, n_components, regularizer, shrinkage, cls)[1]
            center = states[:, layer].reshape(-1, lm.d_model).mean(0)
            for name in ("length", "label"):
                variants[name][:, layer] = project_out(states[:, layer], encoders[layer][name][:, :k], center)
            random_basis = rng.standard_normal((lm.d_model, k))
            variants["random"][:, layer] = project_out(states[:, layer], random_basis, center)
        parts = []
        for name, vecs in variants.items():
            df = patch_layers(lm, dummies, vecs, positions="answers", layers=ablate_layers,
                              progress=f"ablate {name}" if progress else False)
            df.insert(2, "ablate", name)
            parts.append(df)
        ablation = pd.concat(parts, ignore_index=True)
        baselines.update(_baseline_accuracy(lm, prompts, dummies))
    config = {"k": k, "n_components": n_components, "regularizer": regularizer, "shrinkage": shrinkage,
              "layers": layers, "ablate_layers": list(ablate_layers), "seed": seed, "n_trials": len(trials),
              "n_demos": K, "n_conditions": n_conditions, "separator": template.separator}
    return DPCAResult(per_layer, ablation, baselines, encoders, config)


def _baseline_accuracy(lm, prompts, dummies) -> dict:
    """Label-restricted accuracy of the ICL prompts and of the unpatched dummy prompts."""
    from taskvec.sweep import Variant, read_ids_for, run_variants, score

    out = {}
    for name, ps in (("icl", prompts), ("dummy", dummies)):
        variants = [Variant.clean(i, lm.d_model) for i in range(len(ps))]
        targets = torch.tensor([p.target_id for p in ps])
        label_ids = torch.tensor([p.label_ids for p in ps]) if ps[0].label_ids is not None else None
        res = score(run_variants(lm, [p.ids for p in ps], variants, read_ids=read_ids_for(targets, label_ids)),
                    targets, label_ids)
        out[name] = float(res["label_correct" if label_ids is not None else "correct"].mean())
    return out


# ----------------------------------------------------------------------------------------------- figures
def plot_dpca(result: DPCAResult, path: str | Path, title: str = "dPCA") -> list[Path]:
    """Three panels: marginal variance per layer, Mahalanobis distances per layer, ablation accuracy per layer.
    Writes ``path.png`` and ``path.svg``; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = result.per_layer
    n_panels = 3 if not result.ablation.empty else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.6))
    for m in MARGINALIZATIONS:
        axes[0].plot(df["layer"], df[f"var_{m}"], marker="o", ms=3, label=m)
    axes[0].set(xlabel="layer", ylabel="fraction of cell-mean variance", title="variance per marginalization")
    axes[0].legend(fontsize=8)
    for col, lab in (("maha_length", "length groups"), ("maha_label", "labels"), ("maha_length_class", "short vs long")):
        if col in df:
            axes[1].plot(df["layer"], df[col], marker="o", ms=3, label=lab)
    axes[1].set(xlabel="layer", ylabel="Mahalanobis distance", title="class-mean distances")
    axes[1].legend(fontsize=8)
    if n_panels == 3:
        acc = result.ablation_per_layer()
        col = "label_correct" if "label_correct" in acc else "correct"
        for name, g in acc.groupby("ablate"):
            axes[2].plot(g["layer"], g[col], marker="o", ms=3, label=f"ablate {name}")
        for key, style in (("icl", "--"), ("dummy", ":"), ("chance", "-.")):
            if key in result.baselines:
                axes[2].axhline(result.baselines[key], ls=style, color="grey", lw=1)
                axes[2].text(df["layer"].min(), result.baselines[key], key, fontsize=7, va="bottom")
        axes[2].set(xlabel="layer", ylabel="accuracy", title="local patching, subspace ablated")
        axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    from taskvec.report.html import save_figure

    return save_figure(fig, path)
