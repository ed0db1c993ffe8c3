"""Part B: the claims of the from-scratch paper (B0–B5) as verdicts computed from a vanilla-vs-TVP-loss
comparison's seed table (docs/spec.md B.6).

Intervals are over seeds (Student t for one group, Welch for a difference). A claim is judged only where its gate
passed: the vanilla model learned ICL (B0–B3), both compared arms did (B4/B5: :func:`icl_gate`), and S is defined
for every seed it rests on (:data:`MIN_ICL_GAIN`). B4/B5 compare each model's degradation from its own clean error
on the same prompts, so a model that is worse everywhere is not read as less robust. The experiment that makes the
table is :mod:`taskvec.scratch.comparison`; its ``verdicts(table, cfg)`` calls :func:`verdicts` here.

Example::

    from taskvec.claims.from_scratch import verdicts
    verdicts(table, layouts=["x→y"], vanilla="vanilla", tvp_arms=["tvp-l2"])
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from taskvec.claims.rules import INCONCLUSIVE, SUPPORTED, combine, greater, less
from taskvec.stats import or_nan, t_ci, welch_ci

MIN_ICL_GAIN = 0.1
"""S(l) is defined only for a model whose ICL removes at least this fraction of its zero-shot error: below that,
the denominator of S is within the noise of the two errors (a model 3 % better than zero-shot gave S = 22.7)."""


def seed_ci(values) -> tuple[float, float, float]:
    """:func:`taskvec.stats.t_ci`, NaN where it has no interval: a seed table's missing cell (one seed, none)."""
    return or_nan(t_ci, values)


CLAIMS = {
    "B0": "controls: a random, norm-matched vector at the layer used does not act as a task vector",
    "B1": "task vectors emerge in vanilla models in x→y but not in *xy",
    "B2": "the TVP-loss forms a strong task vector at the prescribed l* (no layer search)",
    "B3": "the TVP-loss does not hurt ICL",
    "B4": "the TVP-loss makes ICL more robust to noisy labels",
    "B5": "the TVP-loss makes ICL better out of distribution",
}


class ScratchClaimRules(BaseModel):
    """Thresholds of the from-scratch verdict rules; saved with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strong: float = Field(0.5, description="B1/B2: a task vector is 'strong' when S(l) > this (S = 1: as good as "
                                           "ICL, 0: no better than zero-shot); B0/B1: 'no vector' when S < this")
    icl_margin: float = Field(0.05, description="B3: TVP-loss ICL error at most this above vanilla's "
                                                "(non-inferiority margin, in normalised error)")
    noisy_p: float = Field(0.25, description="B4: the noisy-label fraction the claim is tested at")


def fmt_seeds(m: float, lo: float, hi: float) -> str:
    """``m [lo, hi]`` to three decimals; ``m`` alone without an interval; ``–`` when undefined."""
    if not math.isfinite(m):
        return "–"
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else f"{m:.3f}"


VERDICT_COLUMNS = ["claim", "text", "layout", "arm", "condition", "statistic", "estimate", "low", "high", "verdict",
                   "detail", "seeds_with_s", "seeds"]


PREDATES = "rerun the evaluation: this run predates the degradation rule"
"""Why B4/B5 are inconclusive for a run evaluated before the noisy/OOD rows recorded ``clean_icl``."""


PAPER_SCALE = (12, 100_000)
"""B1's scale rule, (layers, training steps): models with fewer layers or fewer steps are far below the paper's
(Yang et al.: 12 layers, 300k+ steps), and a B1 not supported there is :data:`NOT_REPRODUCED`, not evidence
against the paper."""


NOT_REPRODUCED = "not reproduced at this scale"


def _values(table: pd.DataFrame, layout: str, arm: str, metric: str, **where) -> np.ndarray:
    """One value per seed (seeds ordered), averaged over the rows that match (e.g. every OOD shift)."""
    t = table[(table.layout == layout) & (table.arm == arm) & (table.metric == metric)]
    for k, v in where.items():
        t = t[np.isclose(t[k], v)] if isinstance(v, float) else t[t[k] == v]
    return t.groupby("seed")["value"].mean().to_numpy()


def _row(claim: str, layout: str, arm: str, statistic: str, est: tuple, verdict: str, detail: str = "",
         cover: tuple = (None, None), condition: str = "") -> dict:
    m, lo, hi = est
    return {"claim": claim, "text": CLAIMS[claim], "layout": layout, "arm": arm, "condition": condition,
            "statistic": statistic, "estimate": m, "low": lo, "high": hi, "verdict": verdict, "detail": detail,
            "seeds_with_s": cover[0], "seeds": cover[1]}


def _learned(table: pd.DataFrame, layout: str, arm: str) -> tuple[bool, tuple[float, float, float]]:
    """ICL learned by ``arm``: its error below zero-shot over seeds (the interval of the per-seed difference)."""
    icl, zero = _values(table, layout, arm, "icl"), _values(table, layout, arm, "zero_shot")
    if len(icl) == 0 or len(icl) != len(zero):
        return False, (math.nan, math.nan, math.nan)
    est = seed_ci(icl - zero)
    return less(est[1], est[2], 0.0) == SUPPORTED, est


def icl_gate(table: pd.DataFrame, layout: str, arm: str) -> str:
    """``""`` when ``arm`` learned ICL in ``layout``, else why not: the gate B0–B3 apply to the vanilla arm (ICL
    error below zero-shot over seeds) and, in every seed, what S needs (ICL removes at least
    :data:`MIN_ICL_GAIN` of the zero-shot error; B0/B2 are inconclusive when a seed has no
    S). B4/B5 apply it to each arm they compare: the degradation of a model that never learned ICL means nothing."""
    ok, est = _learned(table, layout, arm)
    icl, zero = _values(table, layout, arm, "icl"), _values(table, layout, arm, "zero_shot")
    n_ok = int(np.sum(zero - icl > MIN_ICL_GAIN * np.maximum(zero, 1e-12))) if len(icl) == len(zero) else 0
    if ok and n_ok == len(icl):
        return ""
    return (f"ICL not learned by {arm} (ICL − zero-shot {fmt_seeds(*est)}; ICL removes ≥ {MIN_ICL_GAIN:.0%} of the "
            f"zero-shot error in {n_ok} of {len(icl)} seeds)")


def _coverage(table: pd.DataFrame, layout: str, arm: str, metric: str) -> tuple[int, int]:
    """(seeds with S defined, seeds) of an arm: a seed has no S when its own ICL did not beat zero-shot by
    MIN_ICL_GAIN."""
    vals, n = _values(table, layout, arm, metric), len(_values(table, layout, arm, "icl"))
    return int(np.isfinite(vals).sum()), n


def _undefined(cover: tuple[int, int]) -> str:
    """Why S cannot be judged: some seeds have no S. Dropping them would judge the claim on the models where it is
    likeliest to hold."""
    return s_defined_for(*cover) if cover[0] < cover[1] else ""


def _judged(verdict: str, *why: str) -> tuple[str, str]:
    reasons = [w for w in why if w]
    return (INCONCLUSIVE if reasons else verdict), "; ".join(reasons)


def _b1_row(table: pd.DataFrame, rules: ScratchClaimRules, scale: str, vanilla: str, learned: dict) -> dict:
    """B1: vanilla models, the layer chosen on the selection set, S on the evaluation set; qualified by scale."""
    strong = rules.strong
    parts, details, covers = [], [], []
    for layout, test in (("x→y", greater), ("*xy", less)):
        e = seed_ci(_values(table, layout, vanilla, "strength_selected"))
        covers.append(_coverage(table, layout, vanilla, "strength_selected"))
        v, why = _judged(test(e[1], e[2], strong), "" if learned[layout] else "vanilla ICL not learned",
                         _undefined(covers[-1]))
        parts.append(v)
        details.append(f"{layout}: S = {fmt_seeds(*e)}" + (f" ({why})" if why else ""))
    details.append(f"S > {strong} in x→y and < {strong} in *xy")
    if scale:
        details.append(f"{scale}: a 'not supported' is {NOT_REPRODUCED}, not evidence against the paper")
    d = welch_ci(_values(table, "x→y", vanilla, "strength_selected"),
                 _values(table, "*xy", vanilla, "strength_selected"))
    return _row("B1", "x→y vs *xy", vanilla, "S(x→y) − S(*xy) at each model's selected layer", d, combine(*parts),
                "; ".join(details), tuple(a + b for a, b in zip(*covers)))


def _degradation_row(table: pd.DataFrame, layout: str, arm: str, vanilla: str, claim: str, analysis: str,
                     statistic: str, condition: str, gates: str, **where) -> dict:
    """B4/B5 at one noise level or shift: difference-in-differences, each seed's degradation (its error − its own
    clean error on the same prompts), TVP-loss arm − vanilla, Welch over seeds; supported when the interval is
    below 0 (the TVP-loss model degrades less)."""
    metric = f"{analysis}_degradation"
    a, b = _values(table, layout, arm, metric, **where), _values(table, layout, vanilla, metric, **where)
    raw = [len(_values(table, layout, x, f"{analysis}_icl", **where)) for x in (arm, vanilla)]
    missing = (f"no {analysis} analysis at {condition}" if min(raw) == 0 else
               PREDATES if (len(a), len(b)) != tuple(raw) else "")
    d = welch_ci(a, b)
    v, why = _judged(less(d[1], d[2], 0.0), missing, gates)
    detail = why or f"degradation (error − clean error, same prompts): TVP-loss {fmt_seeds(*seed_ci(a))}, " \
                    f"vanilla {fmt_seeds(*seed_ci(b))}"
    return _row(claim, layout, arm, statistic, d, v, detail, condition=condition)


def robustness_rows(table: pd.DataFrame, rules: ScratchClaimRules, layout: str, arm: str,
                    vanilla: str) -> list[dict]:
    """B4 at ``rules.noisy_p`` and B5 one row per OOD shift (shifts of different scale are not averaged), each a
    :func:`_degradation_row`; inconclusive, with the reason, unless both arms learned ICL (:func:`icl_gate`)."""
    gates = "; ".join(g for g in (icl_gate(table, layout, vanilla), icl_gate(table, layout, arm)) if g)
    p = rules.noisy_p
    out = [_degradation_row(table, layout, arm, vanilla, "B4", "noisy",
                            f"ICL degradation with {p:.0%} noisy labels (noisy − clean, same prompts): "
                            "TVP-loss − vanilla", f"p = {p:g}", gates, p=p)]
    ood = table[(table.metric == "ood_icl") & (table.layout == layout)]
    shifts = [s for s in dict.fromkeys(ood["shift"]) if s != "in-distribution"]
    for shift in shifts or ["any shift"]:
        out.append(_degradation_row(table, layout, arm, vanilla, "B5", "ood",
                                    f"ICL degradation under {shift} (shifted − clean, same prompts): "
                                    "TVP-loss − vanilla", shift, gates, shift=shift))
    return out


def _b2_row(table: pd.DataFrame, rules, layout: str, arm: str, vanilla: str, not_learned: str) -> dict:
    """B2: S(l*) of the TVP-loss model > ``strong``, **and** task-specific: S(l*) − S(l*) of another task's vector
    (``wrong``, same seeds) > 0, so that a vector that only switches on "do ICL" is not read as a task vector. Runs
    evaluated without the wrong-task control judge the first part alone and say so."""
    e = seed_ci(_values(table, layout, arm, "strength_lstar"))
    ref = seed_ci(_values(table, layout, vanilla, "strength_lstar"))
    cover = _coverage(table, layout, arm, "strength_lstar")
    own, wrong = _values(table, layout, arm, "strength_lstar"), _values(table, layout, arm, "wrong_strength_lstar")
    parts = [greater(e[1], e[2], rules.strong)]
    specific = "no wrong-task control in this run: task specificity not tested"
    if len(wrong) and len(wrong) == len(own):
        d = seed_ci(np.asarray(own) - np.asarray(wrong))
        parts.append(greater(d[1], d[2], 0.0))
        specific = f"task-specific: S(l*) − S of another task's vector {fmt_seeds(*d)} > 0"
    v, because = _judged(combine(*parts), not_learned, _undefined(cover))
    return _row("B2", layout, arm, "S(l*) of the TVP-loss model", e, v,
                because or f"vanilla at the same layer: S = {fmt_seeds(*ref)}; threshold {rules.strong}; {specific}",
                cover)


def verdicts(table: pd.DataFrame, *, layouts: list[str], vanilla: str, tvp_arms: list[str],
             rules: ScratchClaimRules | None = None, scale: str = "") -> pd.DataFrame:
    """The claims of :data:`CLAIMS` as verdicts, one row per (claim, layout, arm, condition): the columns of
    :data:`VERDICT_COLUMNS` (``condition``: B4's noise level, B5's shift; ``seeds_with_s`` / ``seeds`` for the
    claims judged on S only, B0–B2: how many of the seeds it rests on have S defined; B1 counts both layouts).
    Intervals are over seeds (Student t for one group, Welch for a difference); a verdict is ``supported`` when the
    interval lies on the claim's side of its threshold, ``not supported`` when it lies on the other side,
    ``inconclusive`` otherwise — and whenever ICL was not learned (B0–B3: the vanilla model's ICL error not below
    zero-shot; B4/B5: either compared arm's, :func:`icl_gate`), since then no claim is tested. B4/B5 compare each
    model's degradation from its own clean error (:func:`robustness_rows`).

    Args:
        table: one row per (layout, arm, seed, metric, ...) with ``value`` (the comparison's seed table).
        layouts: the layouts compared. vanilla: the vanilla arm's name. tvp_arms: the TVP-loss arms' names.
        rules: the thresholds. scale: why the models are far below the paper's scale (``""`` if they are not): a
            B1 not supported is then :data:`NOT_REPRODUCED`, not evidence against the paper.
    """
    rules = rules or ScratchClaimRules()
    gate = {layout: _learned(table, layout, vanilla) for layout in layouts}
    why = {layout: "" if ok else f"ICL not learned (vanilla ICL − zero-shot {fmt_seeds(*est)})"
           for layout, (ok, est) in gate.items()}
    out: list[dict] = []
    for layout in layouts:
        for arm in [vanilla, *tvp_arms]:
            where = "selected" if arm == vanilla else "lstar"
            e = seed_ci(_values(table, layout, arm, f"random_strength_{where}"))
            cover = _coverage(table, layout, arm, f"random_strength_{where}")
            v, because = _judged(less(e[1], e[2], rules.strong), why[layout], _undefined(cover))
            out.append(_row("B0", layout, arm, "S of a random vector at the "
                            f"{'selected layer' if where == 'selected' else 'l*'}", e, v, because, cover))
    if {"x→y", "*xy"} <= set(layouts):
        out.append(_b1_row(table, rules, scale, vanilla, {layout: ok for layout, (ok, _) in gate.items()}))
    for layout in layouts:
        for arm in tvp_arms:
            out.append(_b2_row(table, rules, layout, arm, vanilla, why[layout]))
            d = welch_ci(_values(table, layout, arm, "icl"), _values(table, layout, vanilla, "icl"))
            out.append(_row("B3", layout, arm, "ICL error: TVP-loss − vanilla", d,
                            less(d[1], d[2], rules.icl_margin) if gate[layout][0] else INCONCLUSIVE,
                            why[layout] or f"non-inferior within {rules.icl_margin}"))
            out += robustness_rows(table, rules, layout, arm, vanilla)
    return pd.DataFrame(out, columns=VERDICT_COLUMNS).astype({"seeds_with_s": "Int64", "seeds": "Int64"})


def s_defined_for(k: int, n: int) -> str:
    """How many of a verdict's seeds have S, as its detail and the Markdown summary both say it."""
    return f"S defined for {k} of {n} seeds"


def claim_overall(cells: list[str]) -> tuple[str, str]:
    """One verdict for a claim from all its cells (every run, layout, arm and condition), and why: inconclusive
    unless most cells are decided (a claim most of whose cells are inconclusive is inconclusive, never 'not
    supported': 1 supported, 2 not supported, 15 inconclusive → inconclusive); then the decided cells' verdict when
    they all agree, else inconclusive (mixed)."""
    decided = [c for c in cells if c != INCONCLUSIVE]
    if 2 * len(decided) <= len(cells):
        return INCONCLUSIVE, "most cells inconclusive"
    if len(set(decided)) > 1:
        return INCONCLUSIVE, "decided cells disagree"
    return decided[0], ""
