"""Subspaces to ablate (docs/spec.md A.6): orthonormal bases, seeded random subspaces of equal dimension, the
projection ``v' = v - Q Q^T (v - mean)``, the dimensions and bases of each ablation variant, and the refit of a
marginalization's axes on held-out folds.
"""
from __future__ import annotations

import numpy as np
import torch

from taskvec.analysis.demix import demix, marginal_ranks
from taskvec.errors import ConfigError, TooFewTrialsError

#: the ablation variants, in table order (``length_1`` is left out when the length subspace has one axis anyway)
ABLATIONS = ("none", "length", "length_1", "label", "random_length", "random_label")


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
