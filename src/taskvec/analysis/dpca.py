"""Demixed PCA of answer-position states by string length and label (docs/spec.md A.6, claim C8; Kobak et al. 2016).

For categorization prompts (``simple_string``) the local vector of demonstration ``i`` at layer ``l`` is ``h_l`` at
its answer position. Each such state is one *sample* with two factors: the **length** of the demonstration's string
(``trial.meta["length"][i]``) and its **label** word (``demo.output``; the class -> word mapping is random per
trial, so the two factors are not confounded across trials). Per layer we report:

* **marginal variance**: the variance of the condition means (length x label cells, each cell weighted equally) split
  into the ``length``, ``label`` and ``interaction`` marginalizations (fractions summing to 1), and
  ``between_fraction`` = variance of the cell means / total sample variance;
* **dPCA explained variance** of the ablation subspace of each marginalization (reference implementation, PyPI
  ``dPCA`` 1.0.5, ``labels="sd"``, fixed ridge ``regularizer`` = lambda, applied by dPCA as ``lambda * ||X||^2``).
  Each marginalization is fitted with as many components as it has dimensions: ``levels - 1`` for length and for
  label, their product for the interaction;
* **Mahalanobis distances** between group means, for length groups (mean over pairs of distinct lengths, and
  short vs long class) and for labels, using the pooled within-group covariance of the samples, regularized by
  shrinkage towards ``trace/d * I`` (Ledoit-Wolf weight by default) plus a tiny ridge ``1e-6 * trace/d`` so that a
  singular covariance (e.g. layer 0, where every answer state of one label word is the same embedding) stays
  invertible: distances are always finite. They are computed exactly in the span of the centred samples (at most
  ``n`` dimensions instead of ``d``; see :func:`span_coordinates`);
* **subspace ablation** (:data:`ABLATIONS`): a subspace is projected out of every local vector of one layer around
  the layer's grand mean, ``v' = v - Q Q^T (v - mean)`` (``Q`` orthonormal), and local patching (ICL local vectors
  into dummy prompts with random answers, at the answer positions, one layer at a time) is re-measured, with 95%
  Wilson intervals. By default the **whole** marginal subspace is removed: ``length`` = the ``n_lengths - 1``
  length axes, ``label`` = the ``n_labels - 1`` label axes; ``length_1`` = the top length axis only (to compare with
  a one-axis label subspace at equal dimension); ``random_length`` / ``random_label`` = seeded random subspaces of
  the same dimension as ``length`` / ``label``. ``k`` (a sweep) takes the top ``min(k, levels - 1)`` axes of both;
* **linear probes** (:func:`probe_accuracy`): cross-validated (stratified, grouped by trial, seeded) logistic
  regression accuracy of length and of label from the (ablated) answer-position states at each ablated layer, with
  chance levels, which shows whether an ablation removed the information;
* **C8** (:func:`c8_statistics`): late/early separability ratios and the late-vs-early length-ablation cost, with
  selection (of the early peak layer) on one half of the trials and evaluation on the other, bootstrap intervals.

Example::

    task = get_task("simple_string")
    trials = task.sample_trials(40, 16, seed=0)
    result = dpca_analysis(lm, trials, task=task, ablate_layers=[3, 9, 15])
    result.per_layer            # layer, var_length, var_label, ..., maha_length, maha_label, dim_length, dim_label
    result.ablation_summary()   # layer, ablate, dim, accuracy, low, high, cost, cost_low, cost_high
    result.probes               # layer, ablate, dim, factor, accuracy, chance, majority, ...
    result.c8                   # length_ratio, label_ratio, ablation_cost (see c8_statistics)
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
FACTORS = ("length", "label")


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


def marginal_ranks(n_length: int, n_label: int) -> dict[str, int]:
    """Dimension of each marginal subspace of ``n_length x n_label`` cell means: ``levels - 1`` for the two
    factors, ``(n_length - 1)(n_label - 1)`` for their interaction."""
    return {"length": n_length - 1, "label": n_label - 1, "interaction": (n_length - 1) * (n_label - 1)}


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


def separability(X: np.ndarray, groups: np.ndarray, folds: np.ndarray | None = None,
                 shrinkage: float | str = "auto", n_features: int | None = None) -> tuple[float, float]:
    """Plug-in and cross-validated Mahalanobis separability of groups, as root mean squares over the pairs of
    distinct groups.

    Both use ``S``, the shrunk pooled within-cell covariance of all samples (:func:`pooled_covariance`; cells =
    group x fold when ``folds`` are given, so that ``S`` is independent of the fold means). The
    plug-in squared distance of a pair is ``dm^T S^-1 dm`` with the group means of all samples: it is biased upwards
    by the noise in the means (a noise floor of roughly ``sqrt(tr(S^-1 Sigma) (1/n_1 + 1/n_2))`` even when the
    groups do not differ). The **cross-validated** ("crossnobis", Walther et al. 2016) squared distance is the mean
    over pairs of folds ``i != j`` of ``dm_i^T S^-1 dm_j`` with group means taken within each fold: the noise of
    independent folds cancels in expectation, so it is unbiased for the squared distance (it can be negative; the
    root is taken of ``max(0, mean over pairs)``).

    Args:
        X: ``[n, r]`` samples (or span coordinates, with ``n_features=d``); groups: ``[n]``;
        folds: ``[n]`` fold ids (e.g. :func:`trial_folds`); ``None`` skips the cross-validated value (``nan``).

    Returns:
        ``(plug_in, cross_validated)``; ``nan`` where fewer than two groups (in at least two folds) exist.
    """
    groups = np.asarray(groups)
    levels = np.unique(groups)
    if len(levels) < 2:
        return float("nan"), float("nan")
    X = np.asarray(X, dtype=np.float64)
    # with folds, S comes from residuals around the fold x group cell means: residuals around the all-fold means
    # would contain (fold mean A - fold mean B) / 2, and with n < d the directions S leaves to the shrinkage target
    # would then correlate the two folds' mean noise (a positive bias of the cross-validated distance)
    cells = groups if folds is None else np.array([f"{g}|{f}" for g, f in zip(groups.tolist(), np.asarray(folds).tolist())])
    L = np.linalg.cholesky(pooled_covariance(X, cells, shrinkage, n_features))
    from scipy.linalg import solve_triangular

    white = lambda M: solve_triangular(L, M.T, lower=True).T  # noqa: E731  rows whitened: u^T u = m^T S^-1 m
    pairs = list(itertools.combinations(range(len(levels)), 2))
    W = white(np.stack([X[groups == g].mean(0) for g in levels]))
    plug = float(np.mean([((W[a] - W[b]) ** 2).sum() for a, b in pairs]))
    cv = float("nan")
    if folds is not None:
        folds = np.asarray(folds)
        fold_ids = np.unique(folds)
        Wf, present = [], []
        for f in fold_ids:
            sel = folds == f
            have = np.array([bool((groups[sel] == g).any()) for g in levels])
            M = np.stack([X[sel & (groups == g)].mean(0) if h else np.zeros(X.shape[1])
                          for g, h in zip(levels, have)])
            Wf.append(white(M))
            present.append(have)
        terms = []
        for a, b in pairs:
            diffs = [Wf[i][a] - Wf[i][b] for i in range(len(fold_ids)) if present[i][a] and present[i][b]]
            cross = [float(u @ v) for u, v in itertools.combinations(diffs, 2)]
            if cross:
                terms.append(np.mean(cross))
        if terms:
            cv = math.sqrt(max(0.0, float(np.mean(terms))))
    return math.sqrt(plug), cv


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
def ablation_dims(n_length: int, n_label: int, k: int | None = None) -> dict[str, int]:
    """Dimension of each ablation subspace (:data:`ABLATIONS`; ``none`` is 0).

    ``length`` / ``label``: the whole marginal subspace (``levels - 1``), or the top ``min(k, levels - 1)`` axes
    when ``k`` is given (the same ``k`` for both); ``length_1``: one length axis (left out when ``length`` has one
    axis); the random controls have the dimension of the subspace they control for."""
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1 (or None for the whole marginal subspace), got {k}")
    ranks = marginal_ranks(n_length, n_label)
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
    """``fit(train) -> (encoders, center)``: dPCA on ``X[train]``'s cell means (all marginalizations), cached per
    training set; ``fallback`` encoders when a training fold has an empty cell."""
    cache: dict = {}

    def fit(train: np.ndarray):
        key = np.asarray(train).tobytes()
        if key not in cache:
            try:
                means, _, _ = condition_means(X[train], length[train], label[train])
                enc = fit_dpca(means, None, regularizer, seed)[0]
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
    ``marginalization`` fitted on ``X[train]``'s cell means, centred at ``X[train]``'s mean. A training fold with
    an empty (length, label) cell uses the ``fallback`` encoders (e.g. the full-sample ones) if given. Fits are
    cached per training set."""
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
                  length_class: np.ndarray | None = None, seed: int = 0,
                  trial: np.ndarray | None = None) -> tuple[dict, dict]:
    """All statistics of one layer's samples.

    Args:
        X: ``[n, d]`` states; length, label: ``[n]`` factor values; length_class: ``[n]`` short/long class.
        k: axes per marginalization in the ablation subspaces (default: the whole marginal subspace).
        n_components: cap on the dPCA components fitted per marginalization (default: none).
        trial: ``[n]`` trial ids; when given, adds ``maha_length_cv`` / ``maha_label_cv``, the cross-validated
            separability of :func:`separability` (2 folds of trials, RMS over pairs; no noise floor).

    Returns:
        ``(row, encoders)``: a dict of scalar statistics (``dpca_<m>`` = explained variance of the ablation
        subspace of ``m``, ``dim_length`` / ``dim_label`` its dimension) and ``{marginalization: [d, k_m]}`` axes.
    """
    with _single_thread():
        return _analyze_layer(np.asarray(X, dtype=np.float64), length, label, k, n_components, regularizer,
                              shrinkage, length_class, seed, trial)


def _analyze_layer(X, length, label, k, n_components, regularizer, shrinkage, length_class, seed, trial):
    if not np.isfinite(X).all():
        raise NonFiniteError("hidden states contain NaN or inf")
    means, la, lb = condition_means(X, length, label)
    if len(la) < 2 or len(lb) < 2:
        raise TooFewTrialsError(f"need at least two lengths and two labels, got {len(la)} and {len(lb)}")
    row: dict = {f"var_{m}": v for m, v in marginal_variance(means).items()}
    total = float(((X - X.mean(0)) ** 2).sum(1).mean())
    cell = float(((means - means.mean(axis=(1, 2), keepdims=True)) ** 2).sum(0).mean())
    row["between_fraction"] = cell / total if total > 0 else 0.0
    encoders, explained = fit_dpca(means, n_components, regularizer, seed)
    dims = ablation_dims(len(la), len(lb), k)
    for m in MARGINALIZATIONS:
        row[f"dpca_{m}"] = float(sum(explained[m][:dims.get(m, len(explained[m]))]))
    row["dim_length"], row["dim_label"] = dims["length"], dims["label"]
    Z, p = span_coordinates(X)
    row["maha_length"] = mean_mahalanobis(Z, length, shrinkage, p)
    row["maha_label"] = mean_mahalanobis(Z, label, shrinkage, p)
    if length_class is not None and len(set(length_class.tolist())) == 2:
        row["maha_length_class"] = mean_mahalanobis(Z, length_class, shrinkage, p)
    if trial is not None and len(np.unique(trial)) >= 2:
        folds = trial_folds(trial, 2, seed)
        row["maha_length_cv"] = separability(Z, length, folds, shrinkage, p)[1]
        row["maha_label_cv"] = separability(Z, label, folds, shrinkage, p)[1]
    return row, encoders


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
    from taskvec.stats import mean_ci

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
            acc, lo, hi = mean_ci(gg[metric])
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


def c8_statistics(
    states: np.ndarray,
    length: np.ndarray,
    label: np.ndarray,
    trial: np.ndarray,
    layers: Sequence[int],
    n_layers: int,
    ablation: pd.DataFrame | None = None,
    shrinkage: float | str = "auto",
    late_fraction: float = 1 / 3,
    min_layer: int = 1,
    selection_fraction: float = 0.5,
    n_folds: int = 2,
    n_boot: int = 200,
    seed: int = 0,
    early_layers: Sequence[int] | None = None,
) -> dict:
    """Statistics for claim C8 (docs/spec.md A.8), with the early-peak layer selected on one half of the trials and every
    reported number evaluated on the other half (or on prompts, for layer sets fixed by depth alone).

    Procedure:

    1. Trials are split at random (``seed``) into a **selection** part (``selection_fraction``) and an
       **evaluation** part. Late layers = analyzed layers ``>= late_layers_of(n_layers, late_fraction)`` (the
       last third); early candidates = analyzed layers in ``[min_layer, late start)`` (layer 0, the token
       embedding, carries only the label word at an answer position and is left out by default), or the
       analyzed layers among ``early_layers`` when given (e.g. only the first third).
    2. Separability of a factor at a layer = the **cross-validated** Mahalanobis distance of :func:`separability`
       (RMS over pairs of groups; folds = trials dealt into ``n_folds`` folds), which has no noise floor: the
       plug-in distance of a factor that is absent is not 0 but about ``sqrt(2 d_eff / n_per_group)``, which
       would pull every late/early ratio towards 1. (The per-layer table's ``maha_*`` columns are plug-in;
       ``maha_*_cv`` are this statistic on all trials.)
    3. On the selection part, the length separability of each early candidate; the **early layer** is its argmax.
    4. On the evaluation part: ``length_ratio = mean_{late l} sep_length(l) / sep_length(early)`` and
       ``label_ratio`` the same for labels (at the same early layer). Distances are exact, computed in the span of
       the evaluation samples of each layer.
    5. 95% intervals: percentile bootstrap, ``n_boot`` resamples of evaluation trials (a trial's demonstrations
       together; the copies of a trial share a fold), recomputing both separabilities at every needed layer (the
       early layer stays fixed). A resample whose early-layer separability is 0 gives no ratio; ``n_boot`` counts
       the valid ones, and with fewer than half valid the interval is ``None`` (as in
       :func:`taskvec.stats.bootstrap_ci`): the data cannot bound the ratio. ``plug_in`` reports the same ratio with plug-in distances, for comparison only: on
       data with the noise floor it is pulled towards 1 (on a planted 0.2 it reads about 0.6).
    6. If ``ablation`` (per-prompt rows ``prompt, layer, ablate, label_correct|correct``) has ``none`` and
       ``length`` rows: per prompt, the cost of ablating the length subspace ``none - length`` averaged over the
       ablated layers of the late part (``late``) and over the ablated early candidates (``early``);
       ``late_minus_early`` is their paired difference; percentile intervals by a paired bootstrap over prompts.
       All prompts are used: these layer sets depend on depth only, not on any data.

    Args:
        states: ``[n_samples, len(layers), d]`` answer-position states; length, label, trial: ``[n_samples]``.
        layers: the model layers of ``states``' second axis; n_layers: the model's number of layers.

    Returns:
        a JSON-ready dict: ``length_ratio`` and ``label_ratio`` (``{estimate, low, high, plug_in, n_boot}``;
        ``None`` with a ``reason`` when there are no late layers, no early candidates or no length separability at
        the early layer), ``early_layer``, ``late_layers``, ``early_candidates``, ``selection`` (``{layers,
        sep_length}``: the curve the early layer was chosen on), ``evaluation`` (``{layers, sep_length, sep_label,
        plug_in_length, plug_in_label}``), ``ablation_cost`` (``{metric, early_layers, late_layers, n_prompts,
        early, late, late_minus_early}``, each ``{estimate, low, high}``, or ``None``), ``n_selection_trials``,
        ``n_evaluation_trials``, ``selection_trials`` (their ids; the split depends on ``seed`` and the trial ids
        only, never on the data), ``reason`` and ``params``.
    """
    states = np.asarray(states, dtype=np.float64)
    length, label, trial = np.asarray(length), np.asarray(label), np.asarray(trial)
    layers = [int(l) for l in layers]
    if states.ndim != 3 or states.shape[1] != len(layers) or states.shape[0] != len(length):
        raise ConfigError(f"states must be [n_samples={len(length)}, n_layers={len(layers)}, d], got {states.shape}")
    if not 0 < selection_fraction < 1:
        raise ConfigError(f"selection_fraction must be in (0, 1), got {selection_fraction}")
    rng = np.random.default_rng(seed)
    units = np.unique(trial)
    n_sel = int(round(selection_fraction * len(units)))
    if n_sel < n_folds or len(units) - n_sel < n_folds:
        raise TooFewTrialsError(f"{len(units)} trials: C8 needs at least {n_folds} for selection and {n_folds} for "
                                "evaluation")
    perm = rng.permutation(units)
    sel_units, eval_units = np.sort(perm[:n_sel]), np.sort(perm[n_sel:])
    sel = np.isin(trial, sel_units)
    late_start = late_layers_of(n_layers, late_fraction)
    late = [l for l in layers if l >= late_start]
    in_early = ((lambda l: min_layer <= l < late_start) if early_layers is None
                else (lambda l, e=set(int(x) for x in early_layers): l in e and l < late_start))
    candidates = [l for l in layers if in_early(l)]
    col = {l: i for i, l in enumerate(layers)}
    out: dict = {
        "n_layers": int(n_layers), "layers": layers, "late_layers": late, "early_candidates": candidates,
        "early_layer": None, "n_selection_trials": int(n_sel), "n_evaluation_trials": int(len(eval_units)),
        "selection_trials": sel_units.tolist(),
        "selection": None, "evaluation": None, "length_ratio": None, "label_ratio": None, "ablation_cost": None,
        "reason": None,
        "params": {"late_fraction": late_fraction, "min_layer": min_layer, "selection_fraction": selection_fraction,
                   "n_folds": n_folds, "n_boot": n_boot, "seed": seed, "shrinkage": shrinkage,
                   "early_layers": None if early_layers is None else [int(x) for x in early_layers],
                   "separability": "cross-validated Mahalanobis, RMS over pairs of groups"},
    }
    with _single_thread():
        if not late or not candidates:
            out["reason"] = (f"need analyzed layers both in [{min_layer}, {late_start}) and in [{late_start}, "
                             f"{n_layers}); got {layers}")
        else:
            sel_folds = trial_folds(trial[sel], n_folds, rng.integers(2 ** 32))
            curve = []
            for l in candidates:
                Z, p = span_coordinates(states[sel, col[l]])
                curve.append(separability(Z, length[sel], sel_folds, shrinkage, p)[1])
            early = candidates[int(np.nanargmax(curve))] if np.isfinite(curve).any() else None
            out["early_layer"] = early
            out["selection"] = {"layers": candidates, "sep_length": curve}
            if early is None:
                out["reason"] = "no finite length separability on the selection trials"
        if out["early_layer"] is not None:
            early = out["early_layer"]
            ev = ~sel
            ev_trial, ev_len, ev_lab = trial[ev], length[ev], label[ev]
            need = late + ([early] if early not in late else [])
            Zs = {l: span_coordinates(states[ev, col[l]]) for l in need}

            def ratios(rows, folds) -> tuple[dict, dict]:
                sep = {l: (separability(Zs[l][0][rows], ev_len[rows], folds, shrinkage, Zs[l][1]),
                           separability(Zs[l][0][rows], ev_lab[rows], folds, shrinkage, Zs[l][1])) for l in need}
                r = {}
                for j, key in enumerate(("length_ratio", "label_ratio")):
                    for which, name in ((1, "cv"), (0, "plug_in")):
                        den = sep[early][j][which]
                        num = float(np.mean([sep[l][j][which] for l in late]))
                        r[(key, name)] = num / den if den > 0 else float("nan")
                return r, sep

            all_rows = np.arange(int(ev.sum()))
            point, sep = ratios(all_rows, trial_folds(ev_trial, n_folds, rng.integers(2 ** 32)))
            out["evaluation"] = {"layers": need, "sep_length": [sep[l][0][1] for l in need],
                                 "sep_label": [sep[l][1][1] for l in need],
                                 "plug_in_length": [sep[l][0][0] for l in need],
                                 "plug_in_label": [sep[l][1][0] for l in need]}
            rows_of = [np.flatnonzero(ev_trial == u) for u in eval_units]
            boot = np.full((n_boot, 2), np.nan)
            for b in range(n_boot):
                pick = rng.integers(0, len(rows_of), len(rows_of))
                rows = np.concatenate([rows_of[i] for i in pick])
                copy_of = np.concatenate([np.full(len(rows_of[i]), i) for i in pick])  # copies share a fold
                if len(np.unique(pick)) < n_folds:
                    continue
                try:
                    r, _ = ratios(rows, trial_folds(copy_of, n_folds, rng.integers(2 ** 32)))
                except np.linalg.LinAlgError:
                    continue
                boot[b] = r[("length_ratio", "cv")], r[("label_ratio", "cv")]
            for j, key in enumerate(("length_ratio", "label_ratio")):
                est, plug = point[(key, "cv")], point[(key, "plug_in")]
                if not np.isfinite(est):
                    out["reason"] = out["reason"] or f"{key}: no separability at the early layer on the evaluation trials"
                    continue
                valid = int(np.isfinite(boot[:, j]).sum())
                lo, hi = _percentile_ci(boot[:, j]) if valid >= n_boot / 2 else (float("nan"), float("nan"))
                out[key] = {"estimate": float(est), "low": lo, "high": hi, "plug_in": float(plug),
                            "n_boot": valid}
    if ablation is not None and not ablation.empty and {"none", "length"} <= set(ablation["ablate"]):
        out["ablation_cost"] = _ablation_cost(ablation, late_start, in_early, n_boot, rng)
    return _jsonable(out)


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


def _ablation_cost(ablation: pd.DataFrame, late_start: int, in_early, n_boot: int, rng) -> dict | None:
    metric = _metric(ablation)
    a = ablation[ablation.ablate.isin(["none", "length"])]
    wide = a.pivot_table(index="prompt", columns=["ablate", "layer"], values=metric, aggfunc="mean")
    abl_layers = sorted({int(l) for l in a.layer})
    late_l = [l for l in abl_layers if l >= late_start]
    early_l = [l for l in abl_layers if in_early(l)]
    res = {"metric": metric, "early_layers": early_l, "late_layers": late_l, "n_prompts": int(len(wide)),
           "early": None, "late": None, "late_minus_early": None}
    if not late_l and not early_l:
        return res
    cost = {l: (wide[("none", l)] - wide[("length", l)]).to_numpy() for l in abl_layers}
    per = {}
    if early_l:
        per["early"] = np.mean([cost[l] for l in early_l], axis=0)
    if late_l:
        per["late"] = np.mean([cost[l] for l in late_l], axis=0)
    if early_l and late_l:
        per["late_minus_early"] = per["late"] - per["early"]
    idx = rng.integers(0, len(wide), size=(n_boot, len(wide)))
    for key, v in per.items():
        lo, hi = _percentile_ci(np.nanmean(v[idx], axis=1))
        res[key] = {"estimate": float(np.nanmean(v)), "low": lo, "high": hi}
    return res


# ----------------------------------------------------------------------------------------------- experiment
@dataclass
class DPCAResult:
    """Results of :func:`dpca_analysis`.

    Attributes:
        per_layer: one row per layer: ``layer, var_length, var_label, var_interaction, between_fraction,
            dpca_length, dpca_label, dpca_interaction, dim_length, dim_label, maha_length, maha_label[,
            maha_length_class]``.
        ablation: one row per (prompt, layer, ablate) with ``ablate`` in :data:`ABLATIONS`: ``dim, correct,
            label_correct, target_logprob`` (empty when no ablation was run).
        baselines: ``{"icl": acc, "dummy": acc, "chance": 1/n_labels}`` label-restricted accuracies.
        probes: one row per (ablated layer, ablate, factor): ``layer, ablate, dim, factor, accuracy, accuracy_sd,
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
            (length x label) conditions.
        task: the task (its ``answer_pool`` draws the dummy prompts' random answers; default: each trial's labels).
        template: a :class:`~taskvec.prompts.Template` (default ``"{x} is {y}"``).
        layers: layers to analyze (default all).
        k: axes per marginalization in the ablation subspaces; ``None`` (default) = the whole marginal subspace
            (``levels - 1``); an int takes ``min(k, levels - 1)`` for length and for label alike.
        n_components: cap on the dPCA components fitted per marginalization (default: their full dimension).
        regularizer: dPCA's ridge lambda (fixed; see module docstring).
        shrinkage: covariance shrinkage for Mahalanobis (``"auto"`` = Ledoit-Wolf, or a weight in [0, 1]).
        ablate_layers: layers at which to run the subspace ablation and the probes (default: ``layers``; ``[]``
            skips both).
        seed: seed of the dummy answers, the random control subspaces, the probe folds and the C8 split/bootstrap.
        batch_size: prompts per forward pass when reading states.
        probe_folds, probe_C: folds and inverse L2 strength of :func:`probe_accuracy`.
        c8: compute :func:`c8_statistics` (``n_boot`` resamples; ``c8_options`` are further keyword arguments,
            e.g. ``{"early_layers": [1, 2, 3, 4, 5]}``).

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
    length, label, cls = answer_factors(trials, K)
    trial_id = np.repeat(np.arange(len(trials)), K)
    n_len, n_lab = len(set(length.tolist())), len(set(label.tolist()))
    n_conditions = n_len * n_lab
    if len(trials) < n_conditions:
        raise TooFewTrialsError(
            f"{len(trials)} trials for {n_conditions} (length x label) conditions: dPCA needs at least as many "
            "trials as conditions")
    dims = ablation_dims(n_len, n_lab, k)
    positions = torch.tensor([p.answer_positions for p in prompts])
    states = read_states(lm, [p.ids for p in prompts], positions, batch_size=batch_size)  # [P, L, K, d]
    flat = lambda t, layer: t[:, layer].reshape(-1, lm.d_model)  # noqa: E731  [P * K, d], trial-major
    rows, encoders = [], {}
    from tqdm.auto import tqdm

    for layer in tqdm(layers, disable=not progress, desc="dpca", leave=False):
        row, enc = analyze_layer(flat(states, layer).numpy(), length, label, k, n_components, regularizer,
                                 shrinkage, cls, seed, trial_id)
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
                                                regularizer, shrinkage, cls, seed)[1]
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
                                     ablation if not ablation.empty else None, shrinkage, n_boot=n_boot, seed=seed,
                                     **(c8_options or {}))
        except TooFewTrialsError as err:
            c8_stats = {"reason": str(err), "length_ratio": None, "label_ratio": None, "ablation_cost": None}
    config = {"k": k, "ablation_dims": dims, "n_components": n_components, "regularizer": regularizer,
              "shrinkage": shrinkage, "layers": layers, "ablate_layers": list(ablate_layers), "seed": seed,
              "n_trials": len(trials), "n_demos": K, "n_conditions": n_conditions, "n_lengths": n_len,
              "n_labels": n_lab, "probe_folds": probe_folds, "probe_C": probe_C, "n_boot": n_boot,
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


def plot_dpca(result: DPCAResult, path: str | Path, title: str = "dPCA") -> list[Path]:
    """Eight panels, one idea each: variance per marginalization; length Mahalanobis; label Mahalanobis; C8
    separability ratios late/early; local-patching accuracy per ablation (95% Wilson); length probe; label probe;
    C8 length-ablation cost (early, late, late - early). Writes ``path.png`` and ``path.svg``; returns them.
    Uses a bare :class:`matplotlib.figure.Figure` (no pyplot): the matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = result.per_layer
    fig = Figure(figsize=(18, 7.5))
    axes = fig.subplots(2, 4)
    (a_var, a_len, a_lab, a_ratio), (a_acc, a_plen, a_plab, a_cost) = axes
    for m in MARGINALIZATIONS:
        a_var.plot(df["layer"], df[f"var_{m}"], marker="o", ms=3, label=m)
    a_var.set(xlabel="layer", ylabel="fraction of cell-mean variance", ylim=(0, 1.02))
    a_var.set_title("variance per marginalization", fontsize=10)
    a_var.legend(fontsize=8)
    for col, lab, style in (("maha_length", "pairs of lengths (plug-in)", "-"),
                            ("maha_length_cv", "pairs of lengths (cross-validated)", "--"),
                            ("maha_length_class", "short vs long (plug-in)", ":")):
        if col in df:
            a_len.plot(df["layer"], df[col], marker="o", ms=3, ls=style, label=lab)
    a_len.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_len.set_title("length separability", fontsize=10)
    a_len.legend(fontsize=8)
    a_lab.plot(df["layer"], df["maha_label"], marker="o", ms=3, color="tab:red", label="plug-in")
    if "maha_label_cv" in df:
        a_lab.plot(df["layer"], df["maha_label_cv"], marker="o", ms=3, ls="--", color="darkred",
                   label="cross-validated")
    a_lab.legend(fontsize=8)
    vals = df[[c for c in ("maha_label", "maha_label_cv") if c in df]].to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size and vals.max() / vals.min() > 30:
        a_lab.set_yscale("log")
    a_lab.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_lab.set_title("label separability", fontsize=10)

    c8 = result.c8 or {}
    if c8.get("length_ratio"):
        _interval_bars(a_ratio, [("length", c8["length_ratio"]), ("label", c8["label_ratio"])], "tab:purple")
        a_ratio.axhline(0.5, ls="--", color="tab:blue", lw=1)
        a_ratio.text(-0.45, 0.5, "length < 0.5", color="tab:blue", fontsize=7, va="bottom")
        a_ratio.axhline(0.8, ls=":", color="tab:red", lw=1)
        a_ratio.text(1.45, 0.8, "label > 0.8", color="tab:red", fontsize=7, va="bottom", ha="right")
        a_ratio.axhline(1.0, color="grey", lw=0.5)
        a_ratio.set_ylabel("late mean / early layer (eval. half)")
        a_ratio.set_title(f"C8 separability late/early (early = L{c8['early_layer']}, "
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
