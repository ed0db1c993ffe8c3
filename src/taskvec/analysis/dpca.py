"""Demixed PCA of answer-position states by string length and class (docs/spec.md A.6, claim C8; Kobak et al. 2016).

For categorization prompts (``simple_string``) the local vector of demonstration ``i`` at layer ``l`` is ``h_l`` at
its answer position. Each such state is one *sample* with three factors: the **length** of the demonstration's
string (``trial.meta["length"][i]``), its **class** (``trial.meta["class"][i]``: short / long for
``simple_string``) and its label **word** (``demo.output``). The class -> word mapping is random per trial, so the
word is a token identity crossed with the class across trials; it is *not* demixed, only its separability is
reported (``maha_word*``, C8's ``word_ratio``). In code, tables and ablation names the class factor keeps the name
``label`` (``var_label``, ``maha_label``, ablation ``label``): it always means the **class**.

Design. When every length has one class (``simple_string``: class = short / long is a function of the length),
length is **nested** in class (:func:`is_nested`): the cell means (one cell per length, weighted equally) are split
into ``label`` = the class means and ``length`` = the deviations of each length from its class mean (length
*within* class); there is no interaction. Otherwise (length crossed with class) the cells are length x class and
the split is the usual ``length``, ``label``, ``interaction``. Per layer we report:

* **marginal variance**: the variance of the cell means split into the ``length``, ``label`` (class) and
  ``interaction`` marginalizations (fractions summing to 1), and ``between_fraction`` = variance of the cell means
  / total sample variance;
* **dPCA explained variance** of the ablation subspace of each marginalization (reference implementation, PyPI
  ``dPCA`` 1.0.5, fixed ridge ``regularizer`` = lambda, applied by dPCA as ``lambda * ||X||^2``; crossed design:
  ``labels="sd"``; nested design: the same closed-form solver given the nested marginalizations). Each
  marginalization is fitted with as many components as it has dimensions (:func:`marginal_ranks`);
* **Mahalanobis distances** between group means (plug-in, ``maha_*``): for lengths (mean over pairs of lengths of
  the same class when nested, all pairs when crossed), for classes and for words, using the pooled within-group
  covariance regularized by shrinkage towards ``trace/d * I`` (Ledoit-Wolf weight by default) plus a tiny ridge
  ``1e-6 * trace/d`` so that a singular covariance (e.g. layer 0, where every answer state of one word is the same
  embedding) stays invertible. They are computed exactly in the span of the centred samples (at most ``n``
  dimensions instead of ``d``; see :func:`span_coordinates`). ``maha_*_cv``: the cross-validated distance of
  :func:`crossnobis` (2 folds of trials, one noise covariance for all factors);
* **subspace ablation** (:data:`ABLATIONS`): a subspace is projected out of every local vector of one layer around
  the layer's grand mean, ``v' = v - Q Q^T (v - mean)`` (``Q`` orthonormal), and local patching (ICL local vectors
  into dummy prompts with random answers, at the answer positions, one layer at a time) is re-measured, with 95%
  Wilson intervals. By default the **whole** marginal subspace is removed: ``length`` = all length axes,
  ``label`` = all class axes; ``length_1`` = the top length axis only; ``random_length`` / ``random_label`` =
  seeded random subspaces of the same dimension. ``k`` (a sweep) takes the top ``min(k, rank)`` axes of both;
* **linear probes** (:func:`probe_accuracy`): cross-validated (stratified, grouped by trial, seeded) logistic
  regression accuracy of length and of class from the (ablated) answer-position states at each ablated layer;
* **C8** (:func:`c8_statistics`): with the early window fixed by depth before the data (layers ``[1, ceil(L/3))``)
  and the late window the last third, late/early separability ratios of length, class and word, where the length
  separability peaks (with a bootstrap region), and the late-vs-early length-ablation cost.

Example::

    task = get_task("simple_string")
    trials = task.sample_trials(40, 16, seed=0)
    result = dpca_analysis(lm, trials, task=task, ablate_layers=[3, 9, 15])
    result.per_layer            # layer, var_length, var_label (class), ..., maha_length, maha_label, maha_word, ...
    result.ablation_summary()   # layer, ablate, dim, accuracy, low, high, cost, cost_low, cost_high
    result.probes               # layer, ablate, dim, factor (length | label = class), accuracy, chance, ...
    result.c8                   # length_ratio, class_ratio, word_ratio, length_peak, ablation_cost, ...
"""
from __future__ import annotations

import itertools
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from taskvec.errors import ConfigError, EmptyInputError, NonFiniteError, TooFewTrialsError

MARGINALIZATIONS = ("length", "label", "interaction")
_DPCA_KEYS = {"length": "s", "label": "d", "interaction": "sd"}
#: the ablation variants, in table order (``length_1`` is left out when the length subspace has one axis anyway)
ABLATIONS = ("none", "length", "length_1", "label", "random_length", "random_label")
FACTORS = ("length", "label")  # the demixed factors; "label" is the class
#: the factors whose separability C8 reports, in the column order of its curves
C8_FACTORS = ("length", "class", "word")


@contextmanager
def _single_thread():
    """Run small linear algebra single-threaded: on a busy 2-core machine multi-threaded BLAS on 400 x 400
    problems is an order of magnitude slower than one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - sklearn depends on threadpoolctl
        yield
        return
    with threadpool_limits(1):
        yield


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
        raise TooFewTrialsError(f"no sample for condition(s) {empty[:4]} (length, class): use more trials")
    return means, la, lb


def marginal_variance(means: np.ndarray) -> dict[str, float]:
    """Split the variance of cell means ``[d, n_a, n_b]`` (crossed design) into the ``length`` (a), ``label``
    (b, the class) and ``interaction`` marginalizations; fractions sum to 1 (all 0 if the means do not vary)."""
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


def marginal_ranks(n_length: int, n_label: int, nested: bool = False) -> dict[str, int]:
    """Dimension of each marginal subspace. Crossed (``n_length x n_label`` cells): ``levels - 1`` for the two
    factors, ``(n_length - 1)(n_label - 1)`` for their interaction. Nested (``n_length`` cells, each length in one
    of ``n_label`` classes): ``n_label - 1`` for the class, ``n_length - n_label`` for length within class, 0 for
    the interaction."""
    if nested:
        return {"length": n_length - n_label, "label": n_label - 1, "interaction": 0}
    return {"length": n_length - 1, "label": n_label - 1, "interaction": (n_length - 1) * (n_label - 1)}


def is_nested(length: np.ndarray, cls: np.ndarray) -> bool:
    """Whether length is nested in class: every length occurs with one class only (``simple_string``, where the
    class short / long is a function of the length). Then the two factors cannot be crossed; they are demixed as
    class and length within class."""
    pairs = set(zip(np.asarray(length).tolist(), np.asarray(cls).tolist()))
    return len(pairs) == len({a for a, _ in pairs})


def nested_means(X: np.ndarray, length: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """Cell means when length is nested in class: ``(means [d, n_lengths], lengths, class_of [n_lengths])``, one
    cell per length (sorted), ``class_of`` its class."""
    levels = sorted(set(np.asarray(length).tolist()))
    means = np.stack([X[length == v].mean(0) for v in levels], 1)
    class_of = np.array([np.asarray(cls)[length == v][0] for v in levels])
    return means, levels, class_of


def nested_parts(means: np.ndarray, class_of: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Nested marginalizations of cell means ``[d, n_cells]`` (cells weighted equally): ``(Xc, parts)`` with
    ``Xc`` the centred means and ``parts["label"]`` = each cell's class mean, ``parts["length"]`` = the cell's
    deviation from it, ``parts["interaction"]`` = 0; each ``[d, n_cells]``, summing to ``Xc``."""
    Xc = means - means.mean(1, keepdims=True)
    class_mean = np.stack([Xc[:, class_of == c].mean(1) for c in class_of], 1)
    return Xc, {"length": Xc - class_mean, "label": class_mean, "interaction": np.zeros_like(Xc)}


def nested_variance(means: np.ndarray, class_of: np.ndarray) -> dict[str, float]:
    """:func:`marginal_variance` of the nested design: fractions of the cell-mean variance ``[d, n_cells]`` in
    ``label`` (between classes), ``length`` (within class) and ``interaction`` (0)."""
    _, parts = nested_parts(means, class_of)
    ss = {k: float((v ** 2).sum()) for k, v in parts.items()}
    total = sum(ss.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in ss.items()}


def fit_dpca(means: np.ndarray, n_components: int | None = None, regularizer: float = 1e-4,
             seed: int = 0) -> tuple[dict, dict]:
    """Fit the reference dPCA on cell means ``[d, n_length, n_label]``.

    Args:
        n_components: components per marginalization; default (``None``) each marginalization's full dimension
            (:func:`marginal_ranks`), an int caps it.
        seed: seeds dPCA's randomized SVD (through numpy's global generator, which is restored afterwards).

    Returns:
        ``(encoders, explained)``: ``encoders[m]`` is ``[d, k_m]`` (dPCA's ``P``, the axes in state space) and
        ``explained[m]`` the list of explained-variance ratios of the ``k_m`` components, for ``m`` in
        :data:`MARGINALIZATIONS`.
    """
    d, n_a, n_b = means.shape
    ranks = marginal_ranks(n_a, n_b)
    comps = {m: int(max(1, min(r if n_components is None else min(r, n_components), d))) for m, r in ranks.items()}
    model = _dpca_class()(labels="sd", regularizer=float(regularizer) if regularizer else None,
                          n_components={_DPCA_KEYS[m]: c for m, c in comps.items()})
    model.protect = None
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        model.fit_transform(means.astype(np.float64))  # also sets explained_variance_ratio_
    finally:
        np.random.set_state(state)
    encoders, explained = {}, {}
    for name, key in _DPCA_KEYS.items():
        encoders[name] = np.nan_to_num(np.asarray(model.P[key], dtype=np.float64))
        ev = [float(x) for x in model.explained_variance_ratio_[key]]
        explained[name] = [x if np.isfinite(x) else 0.0 for x in ev]
    return encoders, explained


def fit_dpca_nested(means: np.ndarray, class_of: np.ndarray, n_components: int | None = None,
                    regularizer: float = 1e-4, seed: int = 0) -> tuple[dict, dict]:
    """:func:`fit_dpca` for the nested design: cell means ``[d, n_lengths]``, ``class_of`` ``[n_lengths]``.

    The reference dPCA cannot marginalize a nested design itself (a length x class grid has empty cells), so its
    closed-form solver (``dPCA._fit`` with precomputed marginalizations ``mXs``, the same ridge ``lambda *
    ||X||^2``) is given :func:`nested_parts`. Explained variance of component ``k`` of ``m``:
    ``||D_m[:, k]^T Xc||^2 / ||Xc||^2``, as dPCA's ``transform`` computes it. The interaction is empty
    (``[d, 0]``)."""
    d, n = means.shape
    Xc, parts = nested_parts(means, class_of)
    ranks = marginal_ranks(n, len(set(class_of.tolist())), nested=True)
    comps = {m: int(max(1, min(r if n_components is None else min(r, n_components), d)))
             for m, r in ranks.items() if r > 0}
    model = _dpca_class()(labels="s", regularizer=float(regularizer) if regularizer else None, n_components=comps)
    model.protect = None
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        model._fit(Xc.astype(np.float64), mXs={m: parts[m] for m in comps}, optimize=False)
    finally:
        np.random.set_state(state)
    total = float((Xc ** 2).sum())
    encoders, explained = {}, {}
    for m in MARGINALIZATIONS:
        if m not in comps:
            encoders[m], explained[m] = np.zeros((d, 0)), []
            continue
        encoders[m] = np.nan_to_num(np.asarray(model.P[m], dtype=np.float64))
        proj = np.asarray(model.D[m], dtype=np.float64).T @ Xc  # [k, n]
        explained[m] = [float((row ** 2).sum() / total) if total > 0 else 0.0 for row in proj]
    return encoders, explained


@dataclass
class Demixed:
    """One layer demixed by :func:`demix`: ``design`` (``"nested"`` or ``"crossed"``), ``n_length`` and
    ``n_label`` (levels of length and class), ``variance`` (fractions per marginalization), ``ranks``,
    ``encoders`` (``{m: [d, k_m]}``), ``explained`` (``{m: [k_m]}``) and ``between`` (mean squared norm of the
    centred cell means)."""

    design: str
    n_length: int
    n_label: int
    variance: dict
    ranks: dict
    encoders: dict
    explained: dict
    between: float


def demix(X: np.ndarray, length: np.ndarray, cls: np.ndarray, n_components: int | None = None,
          regularizer: float = 1e-4, seed: int = 0) -> Demixed:
    """Cell means of ``X`` ``[n, d]`` by length and class (nested or crossed, :func:`is_nested`), their variance
    split and dPCA. Raises :class:`TooFewTrialsError` with fewer than two classes, fewer than two lengths (within a
    class, when nested) or an empty cell (crossed)."""
    length, cls = np.asarray(length), np.asarray(cls)
    if is_nested(length, cls):
        means, lengths, class_of = nested_means(X, length, cls)
        n_a, n_b = len(lengths), len(set(class_of.tolist()))
        if n_b < 2 or n_a <= n_b:
            raise TooFewTrialsError(f"need two classes and two lengths within a class, got {n_b} classes and "
                                    f"{n_a} lengths")
        variance = nested_variance(means, class_of)
        encoders, explained = fit_dpca_nested(means, class_of, n_components, regularizer, seed)
        design, flat = "nested", means
    else:
        means, la, lb = condition_means(X, length, cls)
        n_a, n_b = len(la), len(lb)
        if n_a < 2 or n_b < 2:
            raise TooFewTrialsError(f"need at least two lengths and two classes, got {n_a} and {n_b}")
        variance = marginal_variance(means)
        encoders, explained = fit_dpca(means, n_components, regularizer, seed)
        design, flat = "crossed", means.reshape(means.shape[0], -1)
    between = float(((flat - flat.mean(1, keepdims=True)) ** 2).sum(0).mean())
    return Demixed(design, n_a, n_b, variance, marginal_ranks(n_a, n_b, design == "nested"), encoders, explained,
                   between)


def span_coordinates(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Centred samples in an orthonormal basis of their own span: ``(Z [n, r], d)`` with ``r <= min(n - 1, d)``.

    Rotation-invariant statistics of the samples (Mahalanobis distances with the shrunk pooled covariance when
    ``n_features=d`` is passed on, L2-regularized linear probes) are the same on ``Z`` as on ``X``, at a fraction of
    the cost when ``n < d``."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    n, d = Xc.shape
    if n >= d:
        return Xc, d
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros(len(s), bool)
    if not keep.any():
        return np.zeros((n, 1)), d
    return U[:, keep] * s[keep], d


def _ledoit_wolf(R: np.ndarray, G: np.ndarray, n_features: int) -> float:
    """Ledoit-Wolf shrinkage weight of centred rows ``R`` ``[n, r]`` (``G = R^T R``), for ``n_features`` ambient
    dimensions (``R`` may be in span coordinates): the formula of ``sklearn.covariance.ledoit_wolf_shrinkage``
    written with rotation-invariant quantities only."""
    n = R.shape[0]
    if n_features == 1:
        return 0.0
    trace = float(np.trace(G)) / n  # trace of the empirical covariance
    mu = trace / n_features
    beta_ = float(((R ** 2).sum(1) ** 2).sum())  # sum_i ||r_i||^4
    delta_ = float((G ** 2).sum()) / n ** 2
    beta = (beta_ / n - delta_) / (n_features * n)
    delta = (delta_ - 2.0 * mu * trace + n_features * mu ** 2) / n_features
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def pooled_covariance(X: np.ndarray, groups: np.ndarray, shrinkage: float | str = "auto",
                      n_features: int | None = None) -> np.ndarray:
    """Pooled within-group covariance ``[r, r]`` of samples ``X`` ``[n, r]``, shrunk towards ``trace/p * I``
    (weight ``shrinkage`` in [0, 1], or Ledoit-Wolf's when ``"auto"``) plus a ridge ``1e-6 * trace/p`` (and an
    absolute floor) so that it is always invertible. ``p = n_features`` (default ``r``) is the ambient dimension
    when ``X`` is given in span coordinates (:func:`span_coordinates`)."""
    X = np.asarray(X, dtype=np.float64)
    R = X.copy()
    for g in np.unique(groups):
        sel = groups == g
        R[sel] -= R[sel].mean(0)
    r = X.shape[1]
    p = int(n_features or r)
    G = R.T @ R
    dof = max(1, len(X) - len(np.unique(groups)))
    S = G / dof
    nu = float(np.trace(S)) / p
    if shrinkage == "auto":
        alpha = _ledoit_wolf(R, G, p) if nu > 0 else 1.0
    else:
        alpha = float(shrinkage)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1] or 'auto', got {shrinkage!r}")
    scale = nu if nu > 0 else float(((X - X.mean(0)) ** 2).sum() / (len(X) * p)) or 1.0
    return (1 - alpha) * S + (alpha * nu + 1e-6 * scale + 1e-12) * np.eye(r)


def mahalanobis_between(X: np.ndarray, groups: np.ndarray, shrinkage: float | str = "auto",
                        pairs: Sequence[tuple] | None = None, n_features: int | None = None) -> dict[tuple, float]:
    """Mahalanobis distances ``sqrt(dm^T S^-1 dm)`` between the means of groups, ``S`` the regularized pooled
    within-group covariance (:func:`pooled_covariance`).

    Args:
        X: ``[n, d]`` samples (or their span coordinates, with ``n_features=d``); groups: ``[n]`` group labels.
        pairs: which pairs of group labels (default: every pair of distinct groups).

    Returns:
        ``{(g1, g2): distance}``, all finite.
    """
    groups = np.asarray(groups)
    levels = sorted(set(groups.tolist()))
    if len(levels) < 2:
        raise TooFewTrialsError(f"need at least two groups for a distance, got {levels}")
    X = np.asarray(X, dtype=np.float64)
    S = pooled_covariance(X, groups, shrinkage, n_features)
    L = np.linalg.cholesky(S)
    mean = {g: X[groups == g].mean(0) for g in levels}
    out = {}
    for g1, g2 in pairs or itertools.combinations(levels, 2):
        z = np.linalg.solve(L, mean[g1] - mean[g2])
        out[(g1, g2)] = float(np.sqrt(z @ z))
    if not all(np.isfinite(v) for v in out.values()):
        raise NonFiniteError("a Mahalanobis distance is not finite")
    return out


def mean_mahalanobis(X: np.ndarray, groups: np.ndarray, shrinkage: float | str = "auto",
                     n_features: int | None = None) -> float:
    """Mean of :func:`mahalanobis_between` over all pairs of distinct groups (``nan`` with fewer than two groups)."""
    if len(np.unique(groups)) < 2:
        return float("nan")
    return float(np.mean(list(mahalanobis_between(X, groups, shrinkage, n_features=n_features).values())))


def trial_folds(trial: np.ndarray, n_folds: int = 2, seed=0) -> np.ndarray:
    """Fold id ``[n_samples]`` per sample: trials dealt at random (``seed``) into ``n_folds`` folds of near-equal
    size, so that the demonstrations of one prompt always share a fold."""
    trial = np.asarray(trial)
    units = np.unique(trial)
    perm = np.random.default_rng(seed).permutation(len(units))
    fold_of = dict(zip(units[perm].tolist(), (np.arange(len(units)) % n_folds).tolist()))
    return np.array([fold_of[t] for t in trial.tolist()])


def cell_ids(*factors: np.ndarray) -> np.ndarray:
    """One integer id ``[n]`` per distinct combination of the factors (each ``[n]``, any hashable values)."""
    codes = np.stack([np.unique(np.asarray(f), return_inverse=True)[1].ravel() for f in factors], 1)
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel()


def whiten(X: np.ndarray, cells: np.ndarray, shrinkage: float | str = "auto",
           n_features: int | None = None) -> np.ndarray:
    """Samples ``X`` ``[n, r]`` whitened by ``S``, the regularized pooled within-cell covariance of ``cells``
    ``[n]`` (:func:`pooled_covariance`): rows ``w = L^-1 x`` (``S = L L^T``), so ``w_a^T w_b = x_a^T S^-1 x_b``.
    Returns ``[n, r]``."""
    from scipy.linalg import solve_triangular

    X = np.asarray(X, dtype=np.float64)
    L = np.linalg.cholesky(pooled_covariance(X, cells, shrinkage, n_features))
    return solve_triangular(L, X.T, lower=True).T


def unit_sums(W: np.ndarray, groups: np.ndarray, unit: np.ndarray,
              n_units: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums of the rows of ``W`` ``[n, r]`` per (unit, group): ``(sums [n_units, n_levels, r], counts [n_units,
    n_levels], levels)``; ``unit`` ``[n]`` in ``0..n_units-1`` (e.g. the trial of each sample)."""
    levels, gi = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.zeros((n_units, len(levels), W.shape[1]))
    counts = np.zeros((n_units, len(levels)))
    np.add.at(sums, (unit, gi.ravel()), W)
    np.add.at(counts, (unit, gi.ravel()), 1.0)
    return sums, counts, levels


def crossnobis(sums: np.ndarray, counts: np.ndarray, fold: np.ndarray, weights: np.ndarray | None = None,
               pairs: Sequence[tuple[int, int]] | None = None) -> tuple[float, float]:
    """Plug-in and cross-validated separability of groups from per-unit sums of whitened samples
    (:func:`unit_sums`), as root mean squares over pairs of groups.

    Args:
        sums: ``[n_units, n_levels, r]``; counts: ``[n_units, n_levels]``; fold: ``[n_units]`` fold of each unit.
        weights: ``[n_units]`` multiplicity of each unit (a bootstrap resample; default 1 each).
        pairs: pairs of level indices (default all pairs).

    Returns:
        ``(plug_in, cross_validated)``: plug-in = RMS over pairs of ``||m_a - m_b||`` (means of all samples);
        cross-validated = ``sqrt(max(0, mean over pairs of the mean over pairs of folds i != j of (m_a - m_b)_i .
        (m_a - m_b)_j))`` with fold means. ``nan`` where no pair (in two folds) is defined.
    """
    w = np.ones(len(fold)) if weights is None else np.asarray(weights, dtype=np.float64)
    pairs = list(itertools.combinations(range(counts.shape[1]), 2)) if pairs is None else list(pairs)

    def means(wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = wt @ counts
        return np.tensordot(wt, sums, 1) / np.maximum(n, 1e-300)[:, None], n > 0

    m, ok = means(w)
    plug = [float(((m[a] - m[b]) ** 2).sum()) for a, b in pairs if ok[a] and ok[b]]
    per_fold = [means(w * (fold == f)) for f in np.unique(fold)]
    terms = []
    for a, b in pairs:
        diffs = [mf[a] - mf[b] for mf, okf in per_fold if okf[a] and okf[b]]
        cross = [float(u @ v) for u, v in itertools.combinations(diffs, 2)]
        if cross:
            terms.append(np.mean(cross))
    return (math.sqrt(np.mean(plug)) if plug else float("nan"),
            math.sqrt(max(0.0, float(np.mean(terms)))) if terms else float("nan"))


def pair_index(levels: Sequence, pairs: Sequence[tuple] | None) -> list[tuple[int, int]] | None:
    """Pairs of level values -> pairs of indices into ``levels`` (pairs with an absent level dropped)."""
    if pairs is None:
        return None
    at = {v: i for i, v in enumerate(np.asarray(levels).tolist())}
    return [(at[a], at[b]) for a, b in pairs if a in at and b in at]


def length_pairs(length: np.ndarray, cls: np.ndarray) -> list[tuple] | None:
    """The pairs of lengths whose distances measure length: pairs of distinct lengths of the same class when
    length is nested in class (pairs across classes would measure the class), ``None`` (all pairs) when crossed."""
    if not is_nested(length, cls):
        return None
    class_of = dict(zip(np.asarray(length).tolist(), np.asarray(cls).tolist()))
    return [(a, b) for a, b in itertools.combinations(sorted(class_of), 2) if class_of[a] == class_of[b]]


def separability(X: np.ndarray, groups: np.ndarray, folds: np.ndarray | None = None,
                 shrinkage: float | str = "auto", n_features: int | None = None,
                 pairs: Sequence[tuple] | None = None, cells: np.ndarray | None = None) -> tuple[float, float]:
    """Plug-in and cross-validated Mahalanobis separability of groups, as root mean squares over the pairs of
    distinct groups (:func:`crossnobis` on :func:`whiten`-ed samples).

    Both use ``S``, the shrunk pooled within-cell covariance of all samples (:func:`pooled_covariance`); cells =
    ``cells`` if given (e.g. all factors x fold, one noise covariance for several factors), else group x fold
    (group without ``folds``) — with folds, cells must include the fold so that ``S`` is independent of the fold
    means: residuals around all-fold means contain (fold mean A - fold mean B) / 2, and with n < d the directions
    ``S`` leaves to the shrinkage target would then correlate the two folds' mean noise (a positive bias). The
    plug-in squared distance of a pair is ``dm^T S^-1 dm`` with the group means of all samples: it is biased upwards
    by the noise in the means (a noise floor of roughly ``sqrt(tr(S^-1 Sigma) (1/n_1 + 1/n_2))`` even when the
    groups do not differ). The **cross-validated** ("crossnobis", Walther et al. 2016) squared distance is the mean
    over pairs of folds ``i != j`` of ``dm_i^T S^-1 dm_j`` with group means taken within each fold: the noise of
    independent folds cancels in expectation, so it is unbiased for the squared distance (it can be negative; the
    root is taken of ``max(0, mean over pairs)``).

    Args:
        X: ``[n, r]`` samples (or span coordinates, with ``n_features=d``); groups: ``[n]``;
        folds: ``[n]`` fold ids (e.g. :func:`trial_folds`); ``None`` skips the cross-validated value (``nan``).
        pairs: pairs of group values to average over (default all pairs; e.g. :func:`length_pairs`).

    Returns:
        ``(plug_in, cross_validated)``; ``nan`` where fewer than two groups (in at least two folds) exist.
    """
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        return float("nan"), float("nan")
    fold = np.zeros(len(groups), dtype=int) if folds is None else np.asarray(folds)
    if cells is None:
        cells = groups if folds is None else cell_ids(groups, fold)
    W = whiten(X, cells, shrinkage, n_features)
    fold_ids, unit = np.unique(fold, return_inverse=True)
    sums, counts, levels = unit_sums(W, groups, unit.ravel(), len(fold_ids))
    plug, cv = crossnobis(sums, counts, np.arange(len(fold_ids)), pairs=pair_index(levels, pairs))
    return plug, (cv if folds is not None else float("nan"))


def orthonormal(basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``[d, r]`` of the column span of ``basis`` ``[d, k]`` (near-null directions dropped)."""
    if basis.size == 0:
        return basis
    U, s, _ = np.linalg.svd(basis, full_matrices=False)
    keep = s > (s.max() * 1e-8 if s.size and s.max() > 0 else np.inf)
    return U[:, keep]


def random_subspace(d: int, dim: int, seed) -> np.ndarray:
    """A uniformly random ``dim``-dimensional subspace of ``R^d`` (orthonormal ``[d, dim]``), seeded."""
    if dim <= 0:
        return np.zeros((d, 0))
    return orthonormal(np.random.default_rng(seed).standard_normal((d, dim)))


def project_out(vectors: torch.Tensor, basis: np.ndarray, center: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Remove the span of ``basis`` ``[d, k]`` from ``vectors`` ``[..., d]``: ``v - Q Q^T (v - center)``
    (``center`` ``[d]``, default 0), with ``Q`` an orthonormal basis of the span."""
    Q = torch.as_tensor(orthonormal(np.asarray(basis, dtype=np.float64)), dtype=vectors.dtype)
    if Q.numel() == 0:
        return vectors.clone()
    c = torch.zeros(vectors.shape[-1], dtype=vectors.dtype) if center is None else torch.as_tensor(center, dtype=vectors.dtype)
    return vectors - ((vectors - c) @ Q) @ Q.T


# ----------------------------------------------------------------------------------------------- ablation subspaces
def ablation_dims(n_length: int, n_label: int, k: int | None = None, nested: bool = False) -> dict[str, int]:
    """Dimension of each ablation subspace (:data:`ABLATIONS`; ``none`` is 0).

    ``length`` / ``label`` (class): the whole marginal subspace (:func:`marginal_ranks`: ``levels - 1``, or
    ``n_length - n_label`` for length within class when ``nested``), or its top ``min(k, rank)`` axes when ``k`` is
    given (the same ``k`` for both); ``length_1``: one length axis (left out when ``length`` has one axis); the
    random controls have the dimension of the subspace they control for."""
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1 (or None for the whole marginal subspace), got {k}")
    ranks = marginal_ranks(n_length, n_label, nested)
    cap = (lambda r: r) if k is None else (lambda r: min(k, r))
    dims = {"none": 0, "length": cap(ranks["length"])}
    if dims["length"] > 1:
        dims["length_1"] = 1
    dims["label"] = cap(ranks["label"])
    dims["random_length"], dims["random_label"] = dims["length"], dims["label"]
    return dims


def ablation_subspaces(encoders: dict, dims: dict[str, int], d: int, seed=0) -> dict[str, np.ndarray]:
    """Orthonormal bases ``[d, r]`` of the ablation subspaces: dPCA axes (``encoders[m][:, :dims[m]]``) for
    ``length``, ``length_1`` and ``label``; seeded random subspaces for ``random_length`` / ``random_label`` with
    the (actual) dimension of ``length`` / ``label``. ``seed`` may be a sequence (e.g. ``[seed, layer]``)."""
    seed = list(np.atleast_1d(seed))
    out = {"none": np.zeros((d, 0))}
    for name, source in (("length", "length"), ("length_1", "length"), ("label", "label")):
        if name in dims:
            out[name] = orthonormal(np.asarray(encoders[source])[:, :dims[name]])
    for i, (name, ref) in enumerate((("random_length", "length"), ("random_label", "label"))):
        if name in dims:
            out[name] = random_subspace(d, out[ref].shape[1], seed + [i])
    return out


# ----------------------------------------------------------------------------------------------- probes
def _fold_fitter(X: np.ndarray, length: np.ndarray, label: np.ndarray, regularizer: float, seed: int,
                 fallback: dict | None):
    """``fit(train) -> (encoders, center)``: dPCA (:func:`demix`) on ``X[train]``'s cell means by length and
    class (``label``), cached per training set; ``fallback`` encoders when a training fold has an empty cell or
    misses a length or class."""
    cache: dict = {}
    n_levels = (len(np.unique(length)), len(np.unique(label)))

    def fit(train: np.ndarray):
        key = np.asarray(train).tobytes()
        if key not in cache:
            try:
                if (len(np.unique(length[train])), len(np.unique(label[train]))) != n_levels:
                    raise TooFewTrialsError("a training fold misses a length or a class")
                enc = demix(X[train], length[train], label[train], None, regularizer, seed).encoders
            except TooFewTrialsError:
                if fallback is None:
                    raise
                enc = fallback
            cache[key] = (enc, X[train].mean(0))
        return cache[key]

    return fit


def refit_ablation(X: np.ndarray, length: np.ndarray, label: np.ndarray, marginalization: str, dim: int,
                   regularizer: float = 1e-4, seed: int = 0, fallback: dict | None = None, _fit=None):
    """An ``ablate`` callable for :func:`probe_accuracy` that re-fits a dPCA ablation subspace on the training
    samples only: ``ablate(train) -> (axes [d, dim], center [d])``, the top ``dim`` dPCA axes of
    ``marginalization`` fitted on ``X[train]``'s cell means (``label`` = the class), centred at ``X[train]``'s
    mean. A training fold with an empty (length, class) cell uses the ``fallback`` encoders (e.g. the full-sample
    ones) if given. Fits are cached per training set."""
    fit = _fit or _fold_fitter(np.asarray(X, dtype=np.float64), np.asarray(length), np.asarray(label), regularizer,
                               seed, fallback)

    def ablate(train: np.ndarray):
        enc, center = fit(train)
        return enc[marginalization][:, :dim], center

    return ablate


def probe_accuracy(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, n_splits: int = 5,
                   seed: int = 0, C: float = 1.0, ablate=None) -> dict:
    """Cross-validated linear decodability of ``y`` from ``X``.

    Multinomial logistic regression (L2, ``C``) on the centred samples divided by one global scale (the root mean
    per-coordinate variance of ``X``, so ``C`` means the same at every layer); no per-feature standardization, so
    the probe is rotation-invariant and runs exactly in span coordinates. Folds: ``StratifiedGroupKFold`` by
    ``groups`` (trials: the demonstrations of one prompt never straddle train and test) or ``StratifiedKFold``,
    shuffled with ``seed``; ``min(n_splits, smallest class, n_groups)`` folds.

    Args:
        ablate: ``None``, or ``ablate(train_indices) -> (axes [d, r], center [d])`` (e.g. :func:`refit_ablation`):
            in each fold, the span of ``axes`` fitted on the training samples is projected out of all samples
            (``v - QQ^T (v - center)``) before the probe is trained and tested. A subspace fitted on the *whole*
            sample would remove the sample's own class means exactly, which pushes held-out class means to the
            other side and gives accuracies far *below* chance (an artifact, not information).

    Returns:
        ``{accuracy, accuracy_sd, n_folds, n_samples, n_levels, chance, majority}``: pooled held-out accuracy, its
        SD over folds, ``chance = 1/n_levels`` and ``majority`` = the share of the most frequent level (``nan``
        accuracy when fewer than two folds are possible).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    X = np.asarray(X, dtype=np.float64)
    levels, counts = np.unique(y, return_counts=True)
    n = len(y)
    out = {"accuracy": float("nan"), "accuracy_sd": float("nan"), "n_folds": 0, "n_samples": n,
           "n_levels": len(levels), "chance": 1.0 / max(1, len(levels)), "majority": float(counts.max() / n)}
    n_groups = len(np.unique(groups)) if groups is not None else n
    folds = int(min(n_splits, counts.min(), n_groups))
    if len(levels) < 2 or folds < 2:
        return out
    cv = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if groups is not None
          else StratifiedKFold(folds, shuffle=True, random_state=seed))
    correct, accs = 0, []
    with warnings.catch_warnings(), _single_thread():
        scale = math.sqrt(float(((X - X.mean(0)) ** 2).sum()) / X.size) or 1.0
        base = None if ablate is not None else span_coordinates(X)[0] / scale
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        for train, test in cv.split(X, y, groups):
            if ablate is None:
                Z = base
            else:
                axes, center = ablate(train)
                Q = orthonormal(np.asarray(axes, dtype=np.float64))
                Xa = X - ((X - center) @ Q) @ Q.T if Q.size else X
                Z = span_coordinates(Xa)[0] / scale
            if len(np.unique(y[train])) < 2:
                pred = np.full(len(test), y[train][0])
            else:
                pred = LogisticRegression(C=C, max_iter=1000).fit(Z[train], y[train]).predict(Z[test])
            correct += int((pred == y[test]).sum())
            accs.append(float((pred == y[test]).mean()))
    out.update(accuracy=correct / n, accuracy_sd=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
               n_folds=len(accs))
    return out


# ----------------------------------------------------------------------------------------------- per layer
def analyze_layer(X: np.ndarray, length: np.ndarray, label: np.ndarray, k: int | None = None,
                  n_components: int | None = None, regularizer: float = 1e-4, shrinkage: float | str = "auto",
                  length_class: np.ndarray | None = None, seed: int = 0, trial: np.ndarray | None = None,
                  word: np.ndarray | None = None) -> tuple[dict, dict]:
    """All statistics of one layer's samples.

    Args:
        X: ``[n, d]`` states; length: ``[n]``; label: ``[n]`` the **class** of each sample (the demixed factor);
            length_class: ``[n]`` an optional short/long grouping of lengths (``maha_length_class``; redundant
            when length is nested in class).
        k: axes per marginalization in the ablation subspaces (default: the whole marginal subspace).
        n_components: cap on the dPCA components fitted per marginalization (default: none).
        trial: ``[n]`` trial ids; when given, adds ``maha_length_cv`` / ``maha_label_cv`` (and ``maha_word_cv``),
            the cross-validated separability of :func:`crossnobis` (2 folds of trials, one noise covariance from
            the residuals around the length x class x word x fold cells, RMS over pairs; no noise floor).
        word: ``[n]`` the label word of each sample (token identity): only its separability is reported
            (``maha_word``, ``maha_word_cv``), it is not demixed.

    Returns:
        ``(row, encoders)``: a dict of scalar statistics (``dpca_<m>`` = explained variance of the ablation
        subspace of ``m``, ``dim_length`` / ``dim_label`` its dimension; ``maha_length*`` over the pairs of
        :func:`length_pairs`) and ``{marginalization: [d, k_m]}`` axes.
    """
    with _single_thread():
        return _analyze_layer(np.asarray(X, dtype=np.float64), np.asarray(length), np.asarray(label), k,
                              n_components, regularizer, shrinkage, length_class, seed, trial, word)


def _analyze_layer(X, length, label, k, n_components, regularizer, shrinkage, length_class, seed, trial, word):
    if not np.isfinite(X).all():
        raise NonFiniteError("hidden states contain NaN or inf")
    dm = demix(X, length, label, n_components, regularizer, seed)
    row: dict = {f"var_{m}": v for m, v in dm.variance.items()}
    total = float(((X - X.mean(0)) ** 2).sum(1).mean())
    row["between_fraction"] = dm.between / total if total > 0 else 0.0
    dims = ablation_dims(dm.n_length, dm.n_label, k, dm.design == "nested")
    for m in MARGINALIZATIONS:
        row[f"dpca_{m}"] = float(sum(dm.explained[m][:dims.get(m, len(dm.explained[m]))]))
    row["dim_length"], row["dim_label"] = dims["length"], dims["label"]
    Z, p = span_coordinates(X)
    pairs = length_pairs(length, label)
    row["maha_length"] = float(np.mean(list(mahalanobis_between(Z, length, shrinkage, pairs, p).values())))
    row["maha_label"] = mean_mahalanobis(Z, label, shrinkage, p)
    if word is not None:
        row["maha_word"] = mean_mahalanobis(Z, np.asarray(word), shrinkage, p)
    if length_class is not None and len(set(length_class.tolist())) == 2:
        row["maha_length_class"] = mean_mahalanobis(Z, length_class, shrinkage, p)
    if trial is not None and len(np.unique(trial)) >= 2:
        factors = {"length": length, "label": label, **({} if word is None else {"word": np.asarray(word)})}
        units, unit = np.unique(trial, return_inverse=True)
        sums, fold = factor_sums(Z, p, factors, unit.ravel(), trial_folds(units, 2, seed), shrinkage)
        for name, (s, c, levels) in sums.items():
            prs = pair_index(levels, pairs) if name == "length" else None
            row[f"maha_{name}_cv"] = crossnobis(s, c, fold, pairs=prs)[1]
    return row, dm.encoders


def factor_sums(Z: np.ndarray, n_features: int, factors: dict[str, np.ndarray], unit: np.ndarray,
                fold_of_unit: np.ndarray, shrinkage: float | str = "auto") -> tuple[dict, np.ndarray]:
    """Whitened per-unit group sums of one layer's samples for several factors, with **one** noise covariance.

    Args:
        Z: ``[n, r]`` samples (span coordinates of ``n_features`` dimensions); factors: ``{name: [n] values}``;
        unit: ``[n]`` unit (trial) index ``0..n_units-1``; fold_of_unit: ``[n_units]`` fold of each unit.

    Returns:
        ``({name: (sums [n_units, n_levels, r], counts [n_units, n_levels], levels)}, fold_of_unit)`` for
        :func:`crossnobis`; ``S`` = the pooled covariance of the residuals around the cells of all factors x
        fold (:func:`whiten`).
    """
    cells = cell_ids(*factors.values(), fold_of_unit[unit])
    W = whiten(Z, cells, shrinkage, n_features)
    n_units = len(fold_of_unit)
    return {name: unit_sums(W, g, unit, n_units) for name, g in factors.items()}, np.asarray(fold_of_unit)


# ----------------------------------------------------------------------------------------------- summaries
def _percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))


def _metric(ablation: pd.DataFrame) -> str:
    return "label_correct" if "label_correct" in ablation and ablation["label_correct"].notna().any() else "correct"


def ablation_summary(ablation: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Local-patching accuracy per (layer, ablate) with 95% Wilson intervals, and the cost of each ablation.

    Args:
        ablation: per-prompt rows ``prompt, layer, ablate[, dim], correct[, label_correct]``.

    Returns:
        one row per (layer, ablate): ``layer, ablate, dim, n, metric, accuracy, low, high`` (Wilson, via
        :func:`taskvec.stats.mean_ci`), ``full_accuracy`` (full-vocabulary argmax) and ``cost, cost_low,
        cost_high``: accuracy without ablation minus with it, paired percentile bootstrap over prompts.
    """
    from taskvec.stats import mean_ci, or_nan

    if ablation.empty:
        return pd.DataFrame()
    metric = _metric(ablation)
    rng = np.random.default_rng(seed)
    rows = []
    for layer, g in ablation.groupby("layer", sort=True):
        wide = g.pivot_table(index="prompt", columns="ablate", values=metric, aggfunc="mean")
        idx = rng.integers(0, len(wide), size=(n_boot, len(wide)))
        order = [a for a in ABLATIONS if a in wide.columns] + [a for a in wide.columns if a not in ABLATIONS]
        for name in order:
            gg = g[g.ablate == name]
            acc, lo, hi = or_nan(mean_ci, gg[metric])
            row = {"layer": int(layer), "ablate": name,
                   "dim": int(gg["dim"].iloc[0]) if "dim" in gg and gg["dim"].notna().any() else None,
                   "n": int(gg[metric].notna().sum()), "metric": metric, "accuracy": acc, "low": lo, "high": hi,
                   "full_accuracy": float(gg["correct"].mean()) if "correct" in gg else float("nan")}
            if "none" in wide.columns:
                diff = (wide["none"] - wide[name]).to_numpy()
                ok = np.isfinite(diff)
                boot = diff[idx].mean(1) if ok.all() else np.array([np.nanmean(diff[i]) for i in idx])
                row["cost"] = float(np.nanmean(diff))
                row["cost_low"], row["cost_high"] = _percentile_ci(boot)
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- C8
def late_layers_of(n_layers: int, late_fraction: float = 1 / 3) -> int:
    """First layer of the late part: the last ``late_fraction`` of ``n_layers`` layers start at
    ``ceil(n_layers * (1 - late_fraction))`` (18 layers: 12..17; 30 layers: 20..29)."""
    return int(math.ceil(n_layers * (1 - late_fraction) - 1e-9))


def early_window_of(n_layers: int, early_fraction: float = 1 / 3, min_layer: int = 1) -> tuple[int, int]:
    """The early window ``[min_layer, ceil(n_layers * early_fraction))``, fixed by depth before any data (layer 0,
    the token embedding, left out): 18 layers: ``[1, 6)``; 9 layers: ``[1, 3)``; 10 layers: ``[1, 4)``."""
    return int(min_layer), int(math.ceil(n_layers * early_fraction - 1e-9))


def c8_statistics(
    states: np.ndarray,
    length: np.ndarray,
    label: np.ndarray,
    trial: np.ndarray,
    layers: Sequence[int],
    n_layers: int,
    ablation: pd.DataFrame | None = None,
    shrinkage: float | str = "auto",
    *,
    word: np.ndarray | None = None,
    early_window: Sequence[int] | None = None,
    late_fraction: float = 1 / 3,
    n_folds: int = 2,
    n_boot: int = 200,
    seed: int = 0,
    task: str | None = None,
) -> dict:
    """Statistics for claim C8 (docs/spec.md A.8), with every layer set fixed by depth before the data.

    Procedure:

    1. Windows: **early** = ``early_window`` ``[lo, hi)``, default ``[1, ceil(L/3))`` (:func:`early_window_of`);
       **late** = layers ``>= ceil(2L/3)`` (:func:`late_layers_of`). Each uses the analysed layers inside it.
    2. Separability of a factor at a layer = the **cross-validated** Mahalanobis distance of :func:`crossnobis`
       (trials dealt into ``n_folds`` folds; one noise covariance per layer from the residuals around the length x
       class x word x fold cells), RMS over pairs of groups: for **length** over pairs of lengths of the same class
       when length is nested in class (:func:`length_pairs`), for the **class** (``label``, the demixed factor)
       and for the label **word** (token identity, reported only). Cross-validation removes the noise floor
       that would pull every late/early ratio towards 1.
    3. ``length_ratio`` = mean over late layers of the length separability / its mean over the early window;
       ``class_ratio`` and ``word_ratio`` the same for class and word.
    4. ``length_peak``: ``layer`` = argmax of the length separability over all analysed layers; ``region`` =
       ``[min, max]`` of the layers whose separability is not significantly below the peak's (paired bootstrap of
       ``sep(l) - sep(peak)``, upper bound ``>= 0``, or undefined); ``in_early`` = true if the region lies inside
       the early window, false if wholly outside, else ``None``.
    5. Intervals: 95% percentile bootstrap over trials (:func:`taskvec.stats.bootstrap_ci`, ``n_boot``
       resamples, the same resamples for every statistic; a trial keeps its fold and its demonstrations stay
       together). The noise covariance is estimated once per layer on all trials.
    6. ``ablation_cost`` (:func:`_ablation_cost`): per prompt, ``none - length`` ablation accuracy averaged over
       the ablated layers in the early window (``early``) and in the late window (``late``), and their paired
       difference ``late_minus_early``; bootstrap over prompts.

    Args:
        states: ``[n_samples, len(layers), d]`` answer-position states; length, label (class), trial, word:
            ``[n_samples]``. layers: the model layers of ``states``' second axis; n_layers: the model's layers.

    Returns:
        a JSON-ready dict: ``task``, ``n_layers``, ``layers``, ``design``, ``early_window`` ``[lo, hi)``,
        ``early_layers``, ``late_layers``, ``curves`` (``{layers, sep_length, sep_class, sep_word}``),
        ``length_ratio``, ``class_ratio``, ``word_ratio`` (each ``{estimate, low, high}`` or ``None``),
        ``length_peak`` (``{layer, region, region_layers, in_early}``), ``ablation_cost``, ``n_trials``,
        ``reason`` (why a statistic is ``None``) and ``params``.
    """
    states = np.asarray(states, dtype=np.float64)
    length, label, trial = np.asarray(length), np.asarray(label), np.asarray(trial)
    layers = [int(l) for l in layers]
    if states.ndim != 3 or states.shape[1] != len(layers) or states.shape[0] != len(length):
        raise ConfigError(f"states must be [n_samples={len(length)}, n_layers={len(layers)}, d], got {states.shape}")
    lo, hi = early_window_of(n_layers) if early_window is None else (int(early_window[0]), int(early_window[1]))
    late_start = late_layers_of(n_layers, late_fraction)
    if not 0 <= lo < hi <= late_start:
        raise ConfigError(f"early window [{lo}, {hi}) must be non-empty and end before the late layers "
                          f"({late_start})")
    units, unit = np.unique(trial, return_inverse=True)
    if len(units) < 2 * n_folds:
        raise TooFewTrialsError(f"{len(units)} trials: C8 needs at least {2 * n_folds} ({n_folds} folds of two)")
    early, late = [l for l in layers if lo <= l < hi], [l for l in layers if l >= late_start]
    factors = {"length": length, "class": label, **({} if word is None else {"word": np.asarray(word)})}
    out: dict = {
        "task": task, "n_layers": int(n_layers), "layers": layers,
        "design": "nested" if is_nested(length, label) else "crossed", "early_window": [lo, hi],
        "early_layers": early, "late_layers": late, "n_trials": int(len(units)), "curves": None,
        "length_ratio": None, "class_ratio": None, "word_ratio": None, "length_peak": None, "ablation_cost": None,
        "reason": None,
        "params": {"late_fraction": late_fraction, "n_folds": n_folds, "n_boot": n_boot, "seed": seed,
                   "shrinkage": shrinkage, "separability": "cross-validated Mahalanobis, RMS over pairs of groups",
                   "length_pairs": "within class" if is_nested(length, label) else "all"},
    }
    with _single_thread():
        matrix, ci = _c8_bootstrap(states, factors, length_pairs(length, label), unit.ravel(),
                                   trial_folds(units, n_folds, seed), shrinkage, n_boot, seed)
        M = matrix(np.arange(len(units)))  # [n_layers, n_factors] on all trials
        out["curves"] = {"layers": layers, **{f"sep_{f}": M[:, j].tolist() for j, f in enumerate(factors)}}
        out["length_peak"] = _length_peak(M[:, 0], layers, ci, (lo, hi))
        if early and late:
            rows_e, rows_l = [layers.index(l) for l in early], [layers.index(l) for l in late]
            for j, f in enumerate(factors):
                out[f"{f}_ratio"] = ci(lambda m, j=j: _ratio(m[rows_l, j], m[rows_e, j]))
                if out[f"{f}_ratio"]["estimate"] is None or not np.isfinite(out[f"{f}_ratio"]["estimate"]):
                    out["reason"] = out["reason"] or f"{f}: no separability in the early window"
        else:
            out["reason"] = f"need analysed layers both in [{lo}, {hi}) and in [{late_start}, {n_layers}); got {layers}"
    if ablation is not None and not ablation.empty and {"none", "length"} <= set(ablation["ablate"]):
        out["ablation_cost"] = _ablation_cost(ablation, (lo, hi), late_start, n_boot, seed)
    return _jsonable(out)


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``mean(num) / mean(den)``; ``nan`` when the denominator is not positive (or either is undefined)."""
    d = float(np.mean(den))
    return float(np.mean(num)) / d if d > 0 else float("nan")


def _c8_bootstrap(states: np.ndarray, factors: dict, pairs: list | None, unit: np.ndarray, fold_of_unit: np.ndarray,
                  shrinkage, n_boot: int, seed: int):
    """``(matrix, ci)``: ``matrix(idx)`` = the cross-validated separabilities ``[n_layers, n_factors]`` of the
    trials ``idx`` (resampled unit indices; cached), ``ci(stat)`` = ``{estimate, low, high}`` of ``stat(matrix)``
    by :func:`taskvec.stats.bootstrap_ci` over trials (the same resamples for every ``stat``)."""
    from taskvec.stats import bootstrap_ci

    per_layer = []
    for i in range(states.shape[1]):
        Z, p = span_coordinates(states[:, i])
        per_layer.append(factor_sums(Z, p, factors, unit, fold_of_unit, shrinkage)[0])
    n_units, cache = len(fold_of_unit), {}

    def matrix(idx: np.ndarray) -> np.ndarray:
        key = np.asarray(idx).tobytes()
        if key not in cache:
            w = np.bincount(idx, minlength=n_units).astype(np.float64)
            cache[key] = np.array([[crossnobis(s, c, fold_of_unit, w, pair_index(lv, pairs) if f == "length"
                                               else None)[1] for f, (s, c, lv) in sums.items()]
                                   for sums in per_layer])
        return cache[key]

    def ci(stat) -> dict:
        est, lo, hi = bootstrap_ci(lambda idx: stat(matrix(idx)), [np.arange(n_units)], resamples=n_boot, seed=seed)
        return {"estimate": est, "low": lo, "high": hi}

    return matrix, ci


def _length_peak(curve: np.ndarray, layers: list[int], ci, window: tuple[int, int]) -> dict | None:
    """Peak layer of the length-separability ``curve`` ``[n_layers]`` and the region of layers not significantly
    below it (upper bound of the paired bootstrap of ``sep(l) - sep(peak)`` ``>= 0`` or undefined), with
    ``in_early`` = region inside ``window`` (true), wholly outside (false) or neither (``None``)."""
    if not np.isfinite(curve).any():
        return None
    p = int(np.nanargmax(curve))
    region = [l for i, l in enumerate(layers)
              if i == p or not ci(lambda m, i=i: m[i, 0] - m[p, 0])["high"] < 0]
    r_lo, r_hi = min(region), max(region)
    inside, outside = window[0] <= r_lo and r_hi < window[1], r_hi < window[0] or r_lo >= window[1]
    return {"layer": layers[p], "region": [r_lo, r_hi], "region_layers": region,
            "in_early": True if inside else (False if outside else None)}


def _jsonable(obj):
    """Plain Python types for ``json.dumps``: numpy scalars to int/float, non-finite floats to ``None``."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _ablation_cost(ablation: pd.DataFrame, window: tuple[int, int], late_start: int, n_boot: int,
                   seed: int) -> dict:
    """Length-ablation cost per prompt (``accuracy(none) - accuracy(length)``), averaged over the ablated layers in
    the early ``window`` and over those ``>= late_start``; ``late_minus_early`` paired per prompt. Each
    ``{estimate, low, high}`` (:func:`taskvec.stats.bootstrap_ci` over prompts) or ``None``."""
    from taskvec.stats import bootstrap_ci

    metric = _metric(ablation)
    a = ablation[ablation.ablate.isin(["none", "length"])]
    wide = a.pivot_table(index="prompt", columns=["ablate", "layer"], values=metric, aggfunc="mean")
    abl_layers = sorted({int(l) for l in a.layer})
    late_l = [l for l in abl_layers if l >= late_start]
    early_l = [l for l in abl_layers if window[0] <= l < window[1]]
    res = {"metric": metric, "early_layers": early_l, "late_layers": late_l, "n_prompts": int(len(wide)),
           "early": None, "late": None, "late_minus_early": None}
    cost = {l: (wide[("none", l)] - wide[("length", l)]).to_numpy() for l in abl_layers}
    per = {}
    if early_l:
        per["early"] = np.mean([cost[l] for l in early_l], axis=0)
    if late_l:
        per["late"] = np.mean([cost[l] for l in late_l], axis=0)
    if early_l and late_l:
        per["late_minus_early"] = per["late"] - per["early"]
    for key, v in per.items():
        est, lo, hi = bootstrap_ci(lambda x: float(np.nanmean(x)), [v], resamples=n_boot, seed=seed)
        res[key] = {"estimate": est, "low": lo, "high": hi}
    return res


# ----------------------------------------------------------------------------------------------- experiment
@dataclass
class DPCAResult:
    """Results of :func:`dpca_analysis`.

    Attributes:
        per_layer: one row per layer: ``layer, var_length, var_label, var_interaction, between_fraction,
            dpca_length, dpca_label, dpca_interaction, dim_length, dim_label, maha_length, maha_label, maha_word,
            maha_length_cv, maha_label_cv, maha_word_cv`` (``label`` = the class; ``word`` = the label word).
        ablation: one row per (prompt, layer, ablate) with ``ablate`` in :data:`ABLATIONS`: ``dim, correct,
            label_correct, target_logprob`` (empty when no ablation was run).
        baselines: ``{"icl": acc, "dummy": acc, "chance": 1/n_labels}`` label-restricted accuracies.
        probes: one row per (ablated layer, ablate, factor), ``factor`` in ``length`` / ``label`` (the class):
            ``layer, ablate, dim, factor, accuracy, accuracy_sd,
            n_folds, n_samples, n_levels, chance, majority`` (:func:`probe_accuracy`).
        c8: :func:`c8_statistics` (empty when not computed).
        encoders: ``{layer: {marginalization: [d, k_m]}}`` dPCA axes.
        config: the parameters used.
    """

    per_layer: pd.DataFrame
    ablation: pd.DataFrame
    baselines: dict
    encoders: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)
    c8: dict = field(default_factory=dict)

    def ablation_per_layer(self) -> pd.DataFrame:
        """Mean label-restricted (and full-vocabulary) accuracy per (layer, ablate)."""
        if self.ablation.empty:
            return self.ablation
        cols = [c for c in ("label_correct", "correct") if c in self.ablation]
        return self.ablation.groupby(["layer", "ablate"])[cols].mean().reset_index()

    def ablation_summary(self, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """:func:`ablation_summary` of :attr:`ablation` (Wilson intervals, paired bootstrap costs)."""
        return ablation_summary(self.ablation, n_boot, seed)


def answer_factors(trials: Sequence, n_answers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (trial, demo) factors, flattened trial-major: ``length`` (``meta["length"]``), ``class``
    (``meta["class"]``, else the demo's ``label``: the class the trial's random class -> word mapping maps to a
    word) and ``word`` (the demo's output word). Each ``[n_trials * n_answers]``."""
    lengths, classes, words = [], [], []
    for t, trial in enumerate(trials):
        if "length" not in trial.meta:
            raise ConfigError(f"trial {t} has no meta['length']: dPCA needs a simple_string-style task")
        demos = trial.demos[:n_answers]
        cls = list(trial.meta["class"][:n_answers]) if "class" in trial.meta else [d.label for d in demos]
        if any(c is None for c in cls):
            raise ConfigError(f"trial {t} has no class per demonstration: dPCA needs a categorization task")
        lengths += list(trial.meta["length"][:n_answers])
        classes += cls
        words += [d.output for d in demos]
    return np.asarray(lengths), np.asarray(classes), np.asarray(words)


def dpca_analysis(
    lm,
    trials: Sequence,
    task=None,
    template=None,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    n_components: int | None = None,
    regularizer: float = 1e-4,
    shrinkage: float | str = "auto",
    ablate_layers: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    probe_folds: int = 5,
    probe_C: float = 1.0,
    c8: bool = True,
    n_boot: int = 200,
    c8_options: dict | None = None,
) -> DPCAResult:
    """dPCA, Mahalanobis distances, subspace ablation with controls and probes, and the C8 statistics on the
    answer-position states of categorization prompts.

    Args:
        lm: the model.
        trials: categorization trials with ``meta["length"]`` (``simple_string``); at least as many trials as
            conditions (lengths when length is nested in class, as in ``simple_string``; length x class cells
            otherwise).
        task: the task (its ``answer_pool`` draws the dummy prompts' random answers; default: each trial's labels).
        template: a :class:`~taskvec.prompts.Template` (default ``"{x} is {y}"``).
        layers: layers to analyze (default all).
        k: axes per marginalization in the ablation subspaces; ``None`` (default) = the whole marginal subspace
            (:func:`marginal_ranks`); an int takes ``min(k, rank)`` for length and for class alike.
        n_components: cap on the dPCA components fitted per marginalization (default: their full dimension).
        regularizer: dPCA's ridge lambda (fixed; see module docstring).
        shrinkage: covariance shrinkage for Mahalanobis (``"auto"`` = Ledoit-Wolf, or a weight in [0, 1]).
        ablate_layers: layers at which to run the subspace ablation and the probes (default: ``layers``; ``[]``
            skips both).
        seed: seed of the dummy answers, the random control subspaces, the probe folds and the C8 split/bootstrap.
        batch_size: prompts per forward pass when reading states.
        probe_folds, probe_C: folds and inverse L2 strength of :func:`probe_accuracy`.
        c8: compute :func:`c8_statistics` (``n_boot`` resamples; ``c8_options`` are further keyword arguments,
            e.g. ``{"early_window": [1, 4]}``).

    Returns:
        a :class:`DPCAResult`.
    """
    from taskvec.intervene import read_states
    from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials
    if len(trials) == 0:
        raise EmptyInputError("no trials for dPCA")
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1 (or None for the whole marginal subspace), got {k}")
    template = template or Template()
    layers = list(range(lm.n_layers)) if layers is None else [lm.profile.check_layer(int(l)) for l in layers]
    ablate_layers = layers if ablate_layers is None else [lm.profile.check_layer(int(l)) for l in ablate_layers]
    prompts = build_prompts(lm, trials, template)
    n_answers = {len(p.answer_positions) for p in prompts}
    if len(n_answers) != 1:
        raise ConfigError(f"all trials need the same number of demonstrations, got {sorted(n_answers)}")
    K = n_answers.pop()
    length, label, word = answer_factors(trials, K)  # label = the class of each demonstration
    trial_id = np.repeat(np.arange(len(trials)), K)
    nested = is_nested(length, label)
    n_len, n_lab = len(set(length.tolist())), len(set(label.tolist()))
    n_conditions = n_len if nested else n_len * n_lab
    if len(trials) < n_conditions:
        raise TooFewTrialsError(
            f"{len(trials)} trials for {n_conditions} ({'length' if nested else 'length x class'}) conditions: "
            "dPCA needs at least as many trials as conditions")
    dims = ablation_dims(n_len, n_lab, k, nested)
    positions = torch.tensor([p.answer_positions for p in prompts])
    states = read_states(lm, [p.ids for p in prompts], positions, batch_size=batch_size)  # [P, L, K, d]
    flat = lambda t, layer: t[:, layer].reshape(-1, lm.d_model)  # noqa: E731  [P * K, d], trial-major
    rows, encoders = [], {}
    from tqdm.auto import tqdm

    for layer in tqdm(layers, disable=not progress, desc="dpca", leave=False):
        row, enc = analyze_layer(flat(states, layer).numpy(), length, label, k, n_components, regularizer,
                                 shrinkage, None, seed, trial_id, word)
        rows.append({"layer": layer, **row})
        encoders[layer] = enc
    per_layer = pd.DataFrame(rows)

    ablation, probes = pd.DataFrame(), pd.DataFrame()
    baselines: dict = {"chance": 1.0 / max(1, len(prompts[0].label_ids or [0, 0]))}
    if ablate_layers:
        pools = [task.answer_pool(t) if task is not None else list(t.label_words or []) for t in trials]
        dummies = build_prompts(lm, dummy_trials(trials, pools, seed, lm.tokenizer), template)
        check_aligned(prompts, dummies)
        ablated: dict[str, dict[int, torch.Tensor]] = {name: {} for name in ABLATIONS if name in dims}
        dim_of, probe_rows = {}, []
        for layer in tqdm(ablate_layers, disable=not progress, desc="ablate/probe", leave=False):
            if layer not in encoders:
                encoders[layer] = analyze_layer(flat(states, layer).numpy(), length, label, k, n_components,
                                                regularizer, shrinkage, None, seed)[1]
            center = flat(states, layer).mean(0)
            with _single_thread():
                bases = ablation_subspaces(encoders[layer], dims, lm.d_model, seed=[seed, layer])
            X_layer = flat(states, layer).numpy().astype(np.float64)
            fold_fit = _fold_fitter(X_layer, length, label, regularizer, seed, encoders[layer])
            for name, basis in bases.items():
                ablated[name][layer] = project_out(states[:, layer], basis, center)  # [P, K, d], for patching
                dim_of[(layer, name)] = int(basis.shape[1])
                # probes: dPCA subspaces are re-fitted within each training fold (see probe_accuracy);
                # random subspaces do not depend on the data
                if name in ("length", "length_1", "label"):
                    m = "label" if name == "label" else "length"
                    X, abl = X_layer, refit_ablation(X_layer, length, label, m, int(basis.shape[1]), _fit=fold_fit)
                else:
                    X, abl = ablated[name][layer].reshape(-1, lm.d_model).numpy(), None
                for factor, y in (("length", length), ("label", label)):
                    probe_rows.append({"layer": layer, "ablate": name, "dim": int(basis.shape[1]), "factor": factor,
                                       **probe_accuracy(X, y, trial_id, probe_folds, seed, probe_C, abl)})
        probes = pd.DataFrame(probe_rows)
        ablation, baselines["dummy"] = _patch_ablated(lm, dummies, ablated, dim_of, progress)
        baselines.update(_baseline_accuracy(lm, prompts))
    c8_stats: dict = {}
    if c8:
        X_all = states[:, layers].permute(0, 2, 1, 3).reshape(len(prompts) * K, len(layers), lm.d_model).numpy()
        try:
            c8_stats = c8_statistics(X_all, length, label, trial_id, layers, lm.n_layers,
                                     ablation if not ablation.empty else None, shrinkage, word=word, n_boot=n_boot,
                                     seed=seed, task=getattr(task, "name", None), **(c8_options or {}))
        except TooFewTrialsError as err:
            c8_stats = {"task": getattr(task, "name", None), "reason": str(err), "length_ratio": None,
                        "class_ratio": None, "word_ratio": None, "length_peak": None, "ablation_cost": None}
    config = {"k": k, "ablation_dims": dims, "n_components": n_components, "regularizer": regularizer,
              "shrinkage": shrinkage, "layers": layers, "ablate_layers": list(ablate_layers), "seed": seed,
              "n_trials": len(trials), "n_demos": K, "n_conditions": n_conditions, "n_lengths": n_len,
              "n_labels": n_lab, "label_factor": "class", "design": "nested" if nested else "crossed", "probe_folds": probe_folds, "probe_C": probe_C, "n_boot": n_boot,
              "separator": template.separator}
    return DPCAResult(per_layer, ablation, baselines, encoders, config, probes, c8_stats)


def _patch_ablated(lm, dummies, ablated: dict, dim_of: dict, progress) -> tuple[pd.DataFrame, float]:
    """Local patching of every (ablation, layer, prompt) and the unpatched dummy prompts in one
    :func:`~taskvec.sweep.run_variants` call (each prompt's prefix and clean states are computed once for all).

    Returns:
        ``(rows, dummy_accuracy)``: rows ``prompt, layer, ablate, dim, correct, target_logprob[, label_correct]``
        (ablations in :data:`ABLATIONS` order, then prompt, then layer) and the unpatched dummy accuracy."""
    from taskvec.scoring import main_column
    from taskvec.sweep import Variant, score_variants

    variants, meta = [], []
    for name, per_layer in ablated.items():
        for layer, vecs in per_layer.items():
            for p, prompt in enumerate(dummies):
                pos = torch.tensor(prompt.answer_positions, dtype=torch.long)
                variants.append(Variant(p, torch.full((len(pos),), layer, dtype=torch.long), pos, vecs[p]))
                meta.append((p, layer, name, dim_of[(layer, name)]))
    variants += [Variant.clean(p, lm.d_model) for p in range(len(dummies))]
    df = score_variants(lm, dummies, variants, progress="ablation patching" if progress else False)
    clean = df.iloc[len(meta):]
    dummy_acc = float(clean[main_column(dummies[0].label_ids is not None)].mean())
    df = df.iloc[:len(meta)].reset_index(drop=True)
    head = pd.DataFrame(meta, columns=["prompt", "layer", "ablate", "dim"])
    df = pd.concat([head, df], axis=1)
    df["_order"] = df["ablate"].map({a: i for i, a in enumerate(ABLATIONS)})
    df = df.sort_values(["_order", "prompt", "layer"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return df, dummy_acc


def _baseline_accuracy(lm, prompts) -> dict:
    """Label-restricted accuracy of the (unpatched) ICL prompts."""
    from taskvec.scoring import main_column
    from taskvec.sweep import Variant, score_variants

    res = score_variants(lm, prompts, [Variant.clean(i, lm.d_model) for i in range(len(prompts))])
    return {"icl": float(res[main_column(prompts[0].label_ids is not None)].mean())}


# ----------------------------------------------------------------------------------------------- figures
_STYLE = {"none": ("black", "o"), "length": ("tab:blue", "s"), "length_1": ("lightskyblue", "D"),
          "label": ("tab:red", "^"), "random_length": ("dimgrey", "v"), "random_label": ("darkgrey", "x")}


def _dodged(ax, df: pd.DataFrame, value: str, low: str | None = None, high: str | None = None,
            sd: str | None = None) -> None:
    """Points (with error bars) per ablation at each layer, side by side: x = ablated layer."""
    layers = sorted(df["layer"].unique())
    names = [a for a in ABLATIONS if a in set(df["ablate"])]
    width = 0.8 / max(1, len(names))
    pos = {l: i for i, l in enumerate(layers)}
    for j, name in enumerate(names):
        g = df[df["ablate"] == name].sort_values("layer")
        x = np.array([pos[l] for l in g["layer"]]) - 0.4 + width * (j + 0.5)
        y = g[value].to_numpy(dtype=float)
        if low and high:
            yerr = np.vstack([y - g[low].to_numpy(dtype=float), g[high].to_numpy(dtype=float) - y])
        elif sd:
            yerr = g[sd].to_numpy(dtype=float)
        else:
            yerr = None
        color, marker = _STYLE.get(name, ("C7", "o"))
        dim = g["dim"].iloc[0] if "dim" in g and len(g) else None
        lab = name if dim is None or pd.isna(dim) or name == "none" else f"{name} ({int(dim)}d)"
        ax.errorbar(x, y, yerr=yerr, fmt=marker, color=color, ms=4, capsize=2, lw=1, label=lab)
    ax.set_xticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("ablated layer")


def _blank(ax, title: str, text: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _interval_bars(ax, items: list[tuple[str, dict | None]], color: str) -> None:
    xs, ys, lo, hi, names = [], [], [], [], []
    for i, (name, v) in enumerate(items):
        if v is None or v.get("estimate") is None:
            continue
        xs.append(i)
        ys.append(v["estimate"])
        ok = v.get("low") is not None and v.get("high") is not None and np.isfinite([v["low"], v["high"]]).all()
        lo.append(max(0.0, v["estimate"] - v["low"]) if ok else 0.0)
        hi.append(max(0.0, v["high"] - v["estimate"]) if ok else 0.0)
    ax.bar(xs, ys, color=color, alpha=0.7, yerr=[lo, hi], capsize=4)
    ax.set_xticks(range(len(items)), [n for n, _ in items])
    for x, y in zip(xs, ys):
        ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=8)


def _separability_panels(a_len, a_lab, df: pd.DataFrame, c8: dict) -> None:
    """Length separability per layer (plug-in and cross-validated; C8's early window and length-peak region
    shaded) and class separability, with the word's (token identity) for comparison."""
    for col, lab, style in (("maha_length", "pairs of lengths (plug-in)", "-"),
                            ("maha_length_cv", "pairs of lengths (cross-validated)", "--"),
                            ("maha_length_class", "short vs long (plug-in)", ":")):
        if col in df:
            a_len.plot(df["layer"], df[col], marker="o", ms=3, ls=style, label=lab)
    if c8.get("early_window"):
        a_len.axvspan(c8["early_window"][0] - 0.5, c8["early_window"][1] - 0.5, color="tab:green", alpha=0.1,
                      label="early window")
    peak = c8.get("length_peak") or {}
    if peak.get("region"):
        a_len.axvspan(peak["region"][0] - 0.3, peak["region"][1] + 0.3, color="tab:orange", alpha=0.15,
                      label=f"peak L{peak['layer']}, region (in early: {peak.get('in_early')})")
    a_len.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_len.set_title("length separability (within class when nested)", fontsize=10)
    a_len.legend(fontsize=7)
    for col, lab, style, color in (("maha_label", "class (plug-in)", "-", "tab:red"),
                                   ("maha_label_cv", "class (cross-validated)", "--", "darkred"),
                                   ("maha_word_cv", "word (cross-validated)", ":", "grey")):
        if col in df:
            a_lab.plot(df["layer"], df[col], marker="o", ms=3, ls=style, color=color, label=lab)
    a_lab.legend(fontsize=8)
    vals = df[[c for c in ("maha_label", "maha_label_cv", "maha_word_cv") if c in df]].to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size and vals.max() / vals.min() > 30:
        a_lab.set_yscale("log")
    a_lab.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_lab.set_title("class separability (word: token identity)", fontsize=10)


def plot_dpca(result: DPCAResult, path: str | Path, title: str = "dPCA") -> list[Path]:
    """Eight panels, one idea each: variance per marginalization; length Mahalanobis (with C8's early window and
    length-peak region); class (and word) Mahalanobis; C8 separability ratios late/early; local-patching accuracy
    per ablation (95% Wilson); length probe; class probe; C8 length-ablation cost (early, late, late - early). Writes ``path.png`` and ``path.svg``; returns them.
    Uses a bare :class:`matplotlib.figure.Figure` (no pyplot): the matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = result.per_layer
    fig = Figure(figsize=(18, 7.5))
    axes = fig.subplots(2, 4)
    (a_var, a_len, a_lab, a_ratio), (a_acc, a_plen, a_plab, a_cost) = axes
    for m in MARGINALIZATIONS:
        a_var.plot(df["layer"], df[f"var_{m}"], marker="o", ms=3, label="class" if m == "label" else m)
    a_var.set(xlabel="layer", ylabel="fraction of cell-mean variance", ylim=(0, 1.02))
    a_var.set_title("variance per marginalization", fontsize=10)
    a_var.legend(fontsize=8)
    c8 = result.c8 or {}
    _separability_panels(a_len, a_lab, df, c8)
    if c8.get("length_ratio") and c8.get("early_window"):  # (a C8 of the old format has no early window)
        _interval_bars(a_ratio, [("length", c8["length_ratio"]), ("class", c8.get("class_ratio")),
                                 ("word", c8.get("word_ratio"))], "tab:purple")
        a_ratio.axhline(0.5, ls="--", color="tab:blue", lw=1)
        a_ratio.text(-0.45, 0.5, "length < 0.5", color="tab:blue", fontsize=7, va="bottom")
        a_ratio.axhline(0.8, ls=":", color="tab:red", lw=1)
        a_ratio.text(1.45, 0.8, "class > 0.8", color="tab:red", fontsize=7, va="bottom", ha="right")
        a_ratio.axhline(1.0, color="grey", lw=0.5)
        a_ratio.set_ylabel("late mean / early-window mean (cross-validated)")
        lo, hi = c8["early_window"]
        a_ratio.set_title(f"C8 separability late/early (early = L{lo}-{hi - 1}, "
                          f"late = L{c8['late_layers'][0]}-{c8['late_layers'][-1]})", fontsize=10)
    else:
        _blank(a_ratio, "C8 separability late/early", c8.get("reason") or "not computed")

    summary = result.ablation_summary() if not result.ablation.empty else pd.DataFrame()
    if not summary.empty:
        _dodged(a_acc, summary, "accuracy", "low", "high")
        for key, style in (("icl", "--"), ("dummy", ":"), ("chance", "-.")):
            if key in result.baselines and np.isfinite(result.baselines[key]):
                a_acc.axhline(result.baselines[key], ls=style, color="grey", lw=1)
                a_acc.text(-0.45, result.baselines[key], key, fontsize=7, va="bottom", color="grey")
        a_acc.set(ylabel="accuracy (95% Wilson)", ylim=(-0.02, 1.02))
        a_acc.set_title("local patching, subspace ablated", fontsize=10)
        a_acc.legend(fontsize=7, ncol=2)
    else:
        _blank(a_acc, "local patching, subspace ablated", "no ablation run")
    probes = result.probes
    for ax, factor in ((a_plen, "length"), (a_plab, "label")):
        p = probes[probes["factor"] == factor] if not probes.empty else pd.DataFrame()
        factor = "class" if factor == "label" else factor
        if p.empty:
            _blank(ax, f"{factor} decodability (probe)", "no probes run")
            continue
        _dodged(ax, p, "accuracy", sd="accuracy_sd")
        ax.axhline(p["chance"].iloc[0], ls="-.", color="grey", lw=1)
        ax.axhline(p["majority"].iloc[0], ls=":", color="grey", lw=1)
        ax.text(-0.45, p["chance"].iloc[0], "chance", fontsize=7, va="bottom", color="grey")
        ax.set(ylabel="CV accuracy (± SD over folds)", ylim=(-0.02, 1.02))
        ax.set_title(f"{factor} decodability after ablation (linear probe)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    cost = c8.get("ablation_cost")
    if cost and any(cost.get(k) for k in ("early", "late", "late_minus_early")):
        _interval_bars(a_cost, [("early", cost["early"]), ("late", cost["late"]),
                                ("late - early", cost["late_minus_early"])], "tab:blue")
        a_cost.axhline(0, color="grey", lw=0.5)
        a_cost.set_ylabel("accuracy(none) - accuracy(length ablated)")
        a_cost.set_title(f"C8 length-ablation cost (early L{cost['early_layers']}, late L{cost['late_layers']})",
                         fontsize=10)
    else:
        _blank(a_cost, "C8 length-ablation cost", "needs ablated layers early and late")
    fig.suptitle(title)
    fig.tight_layout()
    from taskvec.report.html import save_figure

    return save_figure(fig, path)
