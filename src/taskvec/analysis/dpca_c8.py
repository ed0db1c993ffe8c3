"""The numbers claim C8 reads (docs/spec.md A.8): the ablation summary with bootstrap intervals, the early window
fixed by depth before the data, late/early separability ratios of length, class and word, the length peak with its
region, and the late-vs-early cost of ablating length. Written to ``dpca_c8.json`` by the dPCA run.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from taskvec.analysis.demix import _single_thread, is_nested
from taskvec.analysis.geometry import crossnobis, factor_sums, length_pairs, pair_index, span_coordinates, trial_folds
from taskvec.analysis.subspaces import ABLATIONS
from taskvec.errors import ConfigError, TooFewTrialsError

#: the factors whose separability C8 reports, in the column order of its curves
C8_FACTORS = ("length", "class", "word")


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
    from taskvec.stats import mean_ci, or_nan, percentile_ci

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
                row["cost_low"], row["cost_high"] = percentile_ci(boot)
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
