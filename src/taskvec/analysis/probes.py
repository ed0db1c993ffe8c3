"""Per-layer readouts of answer-position states (docs/spec.md A.6): cross-validated linear probes of length and
class, and :func:`analyze_layer`, one layer's dPCA variance, Mahalanobis and crossnobis separabilities.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from taskvec.analysis.demix import MARGINALIZATIONS, _single_thread, demix
from taskvec.analysis.geometry import (crossnobis, factor_sums, length_pairs, mahalanobis_between, mean_mahalanobis,
                                       pair_index, span_coordinates, trial_folds)
from taskvec.analysis.subspaces import ablation_dims, orthonormal
from taskvec.errors import NonFiniteError

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
