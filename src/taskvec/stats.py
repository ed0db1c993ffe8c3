"""Means with 95% intervals over trials."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% interval ``(mean, low, high)`` of per-trial scores.

    For 0/1 scores the Wilson score interval is used (well-behaved at 0 and 1); otherwise mean +- 1.96 SE.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if np.isin(x, (0.0, 1.0)).all():
        z = 1.959964
        denom = 1 + z * z / n
        centre = (m + z * z / (2 * n)) / denom
        half = z * math.sqrt(m * (1 - m) / n + z * z / (4 * n * n)) / denom
        return m, centre - half, centre + half
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return m, m - 1.959964 * se, m + 1.959964 * se


def summarize(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Group ``df`` by ``by`` and return ``mean, low, high, n`` of ``value`` per group."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g[value])
        rows.append(dict(zip(by, key), mean=m, low=lo, high=hi, n=int(g[value].notna().sum())))
    return pd.DataFrame(rows)
