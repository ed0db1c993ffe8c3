"""Separability of groups of states (docs/spec.md A.6): Mahalanobis distances between group means with a pooled,
shrunk within-group covariance, computed exactly in the span of the centred samples, and the cross-validated
(crossnobis) distance over folds of trials. Used by dPCA and by C8.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from taskvec.analysis.demix import is_nested
from taskvec.errors import ConfigError, NonFiniteError, TooFewTrialsError

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
