"""dPCA numerics (docs/spec.md A.6; Kobak et al. 2016): condition means by length x class, their marginal variance,
the nested design (length within class) and the fits of the reference implementation (PyPI ``dPCA`` 1.0.5).

:func:`demix` is the entry point: ``[samples, d]`` states with their length and class -> a :class:`Demixed` (cell
means, variance per marginalization, encoder axes per marginalization). See :mod:`taskvec.analysis.dpca` for the
experiment that uses it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from taskvec.errors import ConfigError, TooFewTrialsError

MARGINALIZATIONS = ("length", "label", "interaction")
_DPCA_KEYS = {"length": "s", "label": "d", "interaction": "sd"}


FACTORS = ("length", "label")  # the demixed factors; "label" is the class


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
