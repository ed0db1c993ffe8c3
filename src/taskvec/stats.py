"""Means with 95% intervals, and bootstrap intervals for the statistics verdicts are computed from.

* :func:`mean_ci` — a mean and its interval (Wilson for 0/1 scores, normal otherwise);
* :func:`wilson` — the Wilson score interval of ``k`` successes in ``n`` trials;
* :func:`bootstrap_ci` — a percentile bootstrap interval of any statistic of one or more samples, resampled
  together (paired: the same resampled indices for every sample) or each on its own (independent samples);
* :func:`t_ci` / :func:`welch_ci` — Student-t intervals for a mean over a few independent runs (seeds) and for
  the difference of two such means (Welch), where a normal interval or a bootstrap of 3 values would be too narrow;
* :func:`or_nan` — an interval, or NaN where there is nothing to estimate (a table's missing cell).

:func:`wilson`, :func:`mean_ci` and :func:`t_ci` refuse what has no interval (no trials, one seed) with a
:class:`~taskvec.errors.TaskvecError` instead of returning NaN; callers that mean "missing" use :func:`or_nan`.

Every bootstrap is seeded, so an interval printed by a run is reproducible from its saved config.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from taskvec.errors import EmptyInputError, RangeError, TooFewTrialsError

Z95 = 1.959964
DEFAULT_RESAMPLES = 2000


def wilson(k: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval ``(low, high)`` for ``k`` successes out of ``n``.

    Raises:
        EmptyInputError: ``n`` < 1 (no trials: nothing to estimate).
        RangeError: ``k`` outside ``0 .. n``.
    """
    if not n >= 1:
        raise EmptyInputError(f"wilson: n = {n} trials: an interval needs at least one trial")
    if not 0 <= k <= n:
        raise RangeError(f"wilson: k = {k} successes is outside 0 .. n = {n}")
    m = k / n
    denom = 1 + Z95 * Z95 / n
    centre = (m + Z95 * Z95 / (2 * n)) / denom
    half = Z95 * math.sqrt(m * (1 - m) / n + Z95 * Z95 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% interval ``(mean, low, high)`` of per-trial scores.

    For 0/1 scores the Wilson score interval is used (well-behaved at 0 and 1); otherwise mean +- 1.96 SE.
    Non-finite values are dropped; none left is an :class:`~taskvec.errors.EmptyInputError`.
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        raise EmptyInputError("mean_ci: no finite values: an interval needs at least one score")
    m = float(x.mean())
    if np.isin(x, (0.0, 1.0)).all():
        return (m, *wilson(float(x.sum()), n))
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return m, m - Z95 * se, m + Z95 * se


def bootstrap_ci(
    statistic: Callable[..., float],
    samples: Sequence[np.ndarray],
    paired: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the statistic on the data and its 95% percentile bootstrap interval.

    Args:
        statistic: ``f(*samples) -> float``; each sample is an array whose first axis indexes units (prompts).
        samples: the samples. ``paired=True``: all have the same first-axis length and are resampled with the
            same indices (differences on the same prompts); ``paired=False``: each is resampled on its own.
        resamples: bootstrap resamples.
        seed: seed of the resampling.

    A non-finite statistic in a resample is dropped; if more than half are, the interval is NaN.
    """
    arrays = [np.asarray(s) for s in samples]
    if not arrays or any(len(a) == 0 for a in arrays):
        return float("nan"), float("nan"), float("nan")
    if paired and len({len(a) for a in arrays}) != 1:
        raise ValueError("paired bootstrap needs samples of equal length")
    estimate = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for b in range(resamples):
        if paired:
            idx = rng.integers(0, len(arrays[0]), len(arrays[0]))
            values[b] = statistic(*(a[idx] for a in arrays))
        else:
            values[b] = statistic(*(a[rng.integers(0, len(a), len(a))] for a in arrays))
    values = values[np.isfinite(values)]
    if len(values) < resamples / 2:
        return estimate, float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return estimate, float(low), float(high)


def percentile_ci(samples) -> tuple[float, float]:
    """``(low, high)``: the 95% percentile interval of bootstrap ``samples`` (non-finite ones dropped; NaN when
    none is left). For resamples drawn by the caller, e.g. shared by several statistics of the same prompts."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))


def adjusted_p(p, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values of one family: Holm's step-down (family-wise error) or Benjamini–Hochberg
    (false discovery rate). NaN entries are not in the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.nonzero(np.isfinite(p))[0]
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    elif method == "bh":
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown adjustment {method!r}: use 'holm' or 'bh'")
    out[order] = np.minimum(adj, 1.0)
    return out


def t_ci(values) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval ``(mean, low, high)`` of a few independent values (one per seed).

    Non-finite values are dropped; none left is an :class:`~taskvec.errors.EmptyInputError`, one a
    :class:`~taskvec.errors.TooFewTrialsError` (no spread to estimate; :func:`or_nan` gives ``(x, nan, nan)``).
    """
    from scipy.stats import t

    x = _finite(values)
    if len(x) == 0:
        raise EmptyInputError("t_ci: no finite values: an interval needs at least two (one per seed)")
    m = float(x.mean())
    if len(x) == 1:
        raise TooFewTrialsError("t_ci: one finite value: a Student-t interval needs at least two (one per seed)")
    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - half, m + half


def welch_ci(a, b) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its 95% Welch interval ``(diff, low, high)``: two independent groups of a few
    values each (seeds), unequal variances. Non-finite values are dropped; fewer than 2 in a group gives NaNs for
    the interval."""
    from scipy.stats import t

    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return diff, float("nan"), float("nan")
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(t.ppf(0.975, df) * se)
    return diff, diff - half, diff + half


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def or_nan(ci: Callable[..., tuple[float, float, float]], values) -> tuple[float, float, float]:
    """``ci(values)`` (:func:`mean_ci`, :func:`t_ci`), or, where it has nothing to estimate, the mean of the finite
    values (NaN if none) with a NaN interval: for tables in which a missing cell is NaN, not an error."""
    try:
        return ci(values)
    except (EmptyInputError, TooFewTrialsError):
        x = _finite(values)
        return (float(x.mean()) if len(x) else float("nan")), float("nan"), float("nan")


def summarize(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Group ``df`` by ``by`` and return ``mean, low, high, n`` of ``value`` per group."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = or_nan(mean_ci, g[value])
        rows.append(dict(zip(by, key), mean=m, low=lo, high=hi, n=int(g[value].notna().sum())))
    return pd.DataFrame(rows)
