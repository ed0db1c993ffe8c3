"""The claims of the local-vs-global paper as verdicts computed from a run (docs/spec.md A.8).

The rules are fixed here, in code, before any data is seen; their thresholds are a :class:`ClaimRules` saved with
every run's config. Every statistic uses the **evaluation split** only (layers were chosen on the selection split),
with a 95% interval: Wilson for a proportion, a seeded percentile bootstrap over prompts otherwise (paired when two
quantities are measured on the same prompts). Each verdict is one of

* ``supported`` — the interval lies on the claim's side of its threshold;
* ``not supported`` — the interval lies on the other side;
* ``inconclusive`` — the interval straddles the threshold, or ICL itself is not above chance and zero-shot on the
  task (then the task tests nothing), or the data a claim needs is missing.

Example::

    from taskvec.claims import verdicts
    table = RunStore(run_dir, config, resume=True).table()
    verdicts(table, n_layers=18)         # DataFrame: claim, task, statistic, estimate, low, high, verdict, detail
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from taskvec.stats import bootstrap_ci, mean_ci

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

CLAIMS = {
    "C1": "global ≈ ICL on knowledge tasks (middle layers)",
    "C2": "global at chance on categorization",
    "C3": "local > global on categorization",
    "C4": "Pos Avg < per-position local",
    "C5": "k-of-n: graded on categorization, few suffice on knowledge",
    "C6": "local converges into global on knowledge, not on categorization",
    "C7": "saliency answers → query peaks mid-depth",
    "C8": "dPCA: length fades, label stays",
}


class ClaimRules(BaseModel):
    """Thresholds of the verdict rules (docs/spec.md A.8 defaults); saved with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    global_icl_ratio: float = Field(0.8, description="C1: global >= ratio x ICL")
    chance_margin: float = Field(0.15, description="C2: global upper bound < chance + margin")
    kofn_few: list[int] = Field(default_factory=lambda: [1, 2], description="C5 knowledge: the 'few' k values")
    kofn_ratio: float = Field(0.8, description="C5 knowledge: acc(few) >= ratio x acc(n)")
    late_fraction: float = Field(1 / 3, gt=0, lt=1, description="C6: late layers = the last fraction of layers")
    convergence_threshold: float = Field(0.5, description="convergence layer: centred cosine stays >= this")
    saliency_depth: tuple[float, float] = Field((0.3, 0.8), description="C7: peak relative depth range")
    length_ratio: float = Field(0.5, description="C8: late/early length separability below this")
    label_ratio: float = Field(0.8, description="C8: late/early label separability above this")
    resamples: int = Field(2000, ge=100, description="bootstrap resamples")
    seed: int = 0


def greater(low: float, high: float, threshold: float) -> str:
    """Verdict for "statistic > threshold" from its interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if low > threshold:
        return SUPPORTED
    if high <= threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def less(low: float, high: float, threshold: float) -> str:
    """Verdict for "statistic < threshold" from its interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if high < threshold:
        return SUPPORTED
    if low >= threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(*parts: str) -> str:
    """All parts supported -> supported; any part not supported -> not supported; else inconclusive."""
    if parts and all(p == SUPPORTED for p in parts):
        return SUPPORTED
    if any(p == NOT_SUPPORTED for p in parts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def _fmt(est: float, low: float, high: float) -> str:
    return f"{est:.2f} [{low:.2f}, {high:.2f}]"


def _row(claim: str, task: str, kind: str, statistic: str, ci: tuple, threshold: str, verdict: str,
         detail: str = "") -> dict:
    est, low, high = ci
    return dict(claim=claim, claim_text=CLAIMS[claim], task=task, kind=kind, statistic=statistic, estimate=est,
                low=low, high=high, threshold=threshold, verdict=verdict, detail=detail)


def _missing(claim: str, task: str, kind: str, why: str) -> dict:
    nan = float("nan")
    return _row(claim, task, kind, "", (nan, nan, nan), "", INCONCLUSIVE, why)


def _per_prompt(t: pd.DataFrame, **where) -> pd.Series:
    """Mean score per evaluation prompt of the rows matching ``where`` (indexed by prompt)."""
    sel = t
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel.groupby("prompt").score.mean()


def _paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    common = a.index.intersection(b.index)
    return a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)


class _Task:
    """The evaluation-split quantities of one task that the rules read."""

    def __init__(self, t: pd.DataFrame, rules: ClaimRules):
        self.t, self.rules = t, rules
        self.name, self.kind = str(t.task.iloc[0]), str(t.kind.iloc[0])
        chance = t[t.experiment == "chance"]
        self.chance = float(chance.score.iloc[0]) if not chance.empty else float("nan")
        icl = t[t.experiment == "icl"]
        self.icl = _per_prompt(icl, n_demos=icl.n_demos.max()) if not icl.empty else pd.Series(dtype=float)
        self.zero = _per_prompt(icl, n_demos=0) if (icl.n_demos == 0).any() else pd.Series(dtype=float)
        ev = t[t.get("split", pd.Series(index=t.index, dtype=object)) == "eval"]
        self.ev = ev[(ev.get("span", "single") == "single") | (ev.experiment == "kofn")] if not ev.empty else ev

    def boot(self, fn, *samples, paired=True) -> tuple[float, float, float]:
        return bootstrap_ci(fn, samples, paired=paired, resamples=self.rules.resamples, seed=self.rules.seed)

    def vector(self, experiment: str, vector: str) -> pd.Series:
        return _per_prompt(self.ev, experiment=experiment, vector=vector)

    def layer(self, experiment: str, vector: str) -> int | None:
        sel = self.ev[(self.ev.experiment == experiment) & (self.ev.vector == vector)]
        return int(sel.layer.iloc[0]) if not sel.empty else None

    def icl_gate(self) -> str | None:
        """``None`` when ICL is above chance and above zero-shot on this task; else why the task tests nothing."""
        if self.icl.empty:
            return "no ICL results"
        m, low, high = mean_ci(self.icl.to_numpy())
        if not low > self.chance:
            return f"ICL {m:.2f} [{low:.2f}, {high:.2f}] is not above chance {self.chance:.2f}: the task tests nothing"
        if not self.zero.empty:
            a, b = _paired(self.icl, self.zero)
            d = self.boot(lambda x, y: x.mean() - y.mean(), a, b)
            if not d[1] > 0:
                return f"ICL − zero-shot {_fmt(*d)} is not above 0: the task tests nothing"
        return None


def _c1(tk: _Task, n_layers: int) -> dict:
    r = tk.rules
    glob = tk.vector("global", "global")
    if glob.empty or tk.zero.empty:
        return _missing("C1", tk.name, tk.kind, "no global evaluation or zero-shot rows")
    g, icl = _paired(glob, tk.icl)
    d1 = tk.boot(lambda a, b: a.mean() - r.global_icl_ratio * b.mean(), g, icl)
    g2, z = _paired(glob, tk.zero)
    d2 = tk.boot(lambda a, b: a.mean() - b.mean(), g2, z)
    layer = tk.layer("global", "global")
    detail = (f"global {_fmt(*mean_ci(g))} at layer {layer} (depth {layer / n_layers:.2f}); ICL {icl.mean():.2f}; "
              f"global − zero-shot {_fmt(*d2)}")
    return _row("C1", tk.name, tk.kind, f"global − {r.global_icl_ratio}·ICL", d1, "> 0",
                combine(greater(d1[1], d1[2], 0.0), greater(d2[1], d2[2], 0.0)), detail)


def _c2(tk: _Task) -> dict:
    glob = tk.vector("global", "global")
    if glob.empty:
        return _missing("C2", tk.name, tk.kind, "no global evaluation rows")
    ci = mean_ci(glob.to_numpy())
    thr = tk.chance + tk.rules.chance_margin
    return _row("C2", tk.name, tk.kind, "global accuracy", ci, f"< {thr:.2f}", less(ci[1], ci[2], thr),
                f"at layer {tk.layer('global', 'global')}; chance {tk.chance:.2f}")


def _diff(tk: _Task, claim: str, a_name: tuple, b_name: tuple, label: str) -> dict:
    a_s, b_s = tk.vector(*a_name), tk.vector(*b_name)
    if a_s.empty or b_s.empty:
        return _missing(claim, tk.name, tk.kind, f"no evaluation rows for {label}")
    a, b = _paired(a_s, b_s)
    d = tk.boot(lambda x, y: x.mean() - y.mean(), a, b)
    detail = (f"{a_name[1]} {a.mean():.2f} (layer {tk.layer(*a_name)}), {b_name[1]} {b.mean():.2f} "
              f"(layer {tk.layer(*b_name)}), {len(a)} paired prompts")
    return _row(claim, tk.name, tk.kind, label, d, "> 0", greater(d[1], d[2], 0.0), detail)


def _c5(tk: _Task) -> dict:
    r = tk.rules
    k = tk.ev[tk.ev.experiment == "kofn"]
    if k.empty:
        return _missing("C5", tk.name, tk.kind, "no k-of-n rows")
    table = k.groupby(["prompt", "k"]).score.mean().unstack("k")  # [prompt, k]
    n = int(k.n.max()) if "n" in k else int(k.k.max())
    if tk.kind == "categorization":
        half = n // 2
        m = table[[0, half, n]].to_numpy(float)
        lo_d = tk.boot(lambda x: (x[:, 1] - x[:, 0]).mean(), m)
        hi_d = tk.boot(lambda x: (x[:, 2] - x[:, 1]).mean(), m)
        both = tk.boot(lambda x: min((x[:, 1] - x[:, 0]).mean(), (x[:, 2] - x[:, 1]).mean()), m)
        detail = (f"acc k=0 {m[:, 0].mean():.2f}, k={half} {m[:, 1].mean():.2f}, k={n} {m[:, 2].mean():.2f}; "
                  f"k={half} − k=0 {_fmt(*lo_d)}, k={n} − k={half} {_fmt(*hi_d)}")
        return _row("C5", tk.name, tk.kind, f"min(acc(n/2) − acc(0), acc(n) − acc(n/2))", both, "> 0",
                    combine(greater(lo_d[1], lo_d[2], 0.0), greater(hi_d[1], hi_d[2], 0.0)), detail)
    few = [c for c in r.kofn_few if c in table.columns and c < n]
    if not few:
        return _missing("C5", tk.name, tk.kind, f"no k in {r.kofn_few} below n = {n}")
    m = np.column_stack([table[few].mean(1).to_numpy(float), table[n].to_numpy(float)])
    d = tk.boot(lambda x: x[:, 0].mean() - r.kofn_ratio * x[:, 1].mean(), m)
    detail = f"acc k∈{few} {m[:, 0].mean():.2f}, k={n} {m[:, 1].mean():.2f}, k=0 {table[0].mean():.2f}"
    return _row("C5", tk.name, tk.kind, f"acc(k∈{few}) − {r.kofn_ratio}·acc(n)", d, "> 0",
                greater(d[1], d[2], 0.0), detail)


def convergence_summary(t: pd.DataFrame, rules: ClaimRules, n_layers: int) -> dict:
    """Per task: per-prompt late-layer mean of the centred local–global cosine, the per-layer mean curve, and
    the convergence layer (first layer from which the mean centred cosine stays >= the threshold; ``None``)."""
    c = t[t.experiment == "convergence"]
    if c.empty:
        return {}
    late_from = int(round((1 - rules.late_fraction) * n_layers))
    curve = c.groupby("layer").centred_local_global.mean()
    above = curve >= rules.convergence_threshold
    layer = None
    for l in sorted(curve.index):
        if above.loc[l:].all():
            layer = int(l)
            break
    late = c[c.layer >= late_from].groupby("prompt").centred_local_global.mean().to_numpy(float)
    return {"late": late, "curve": curve, "layer": layer, "late_from": late_from}


def _c6(tasks: list[_Task], gates: dict, rules: ClaimRules, n_layers: int) -> list[dict]:
    conv = {tk.name: convergence_summary(tk.t, rules, n_layers) for tk in tasks}
    usable = [tk for tk in tasks if conv.get(tk.name) and gates[tk.name] is None]
    know = [conv[tk.name]["late"] for tk in usable if tk.kind == "knowledge"]
    cat = [conv[tk.name]["late"] for tk in usable if tk.kind == "categorization"]
    rows = []
    for tk in tasks:
        s = conv.get(tk.name)
        if not s:
            rows.append(_missing("C6", tk.name, tk.kind, "no convergence rows"))
            continue
        where = (f"late layers ≥ {s['late_from']}: own mean {s['late'].mean():.2f}; convergence layer "
                 f"(centred cos ≥ {rules.convergence_threshold} from there on): {s['layer']}")
        if gates[tk.name] is not None:
            rows.append(_missing("C6", tk.name, tk.kind, gates[tk.name]))
            continue
        if tk.kind == "knowledge":
            other, mine, label = cat, s["late"], "late centred cos: this task − categorization tasks"
            fn = lambda a, b: a.mean() - b.mean()  # noqa: E731
        else:
            other, mine, label = know, s["late"], "late centred cos: knowledge tasks − this task"
            fn = lambda a, b: b.mean() - a.mean()  # noqa: E731
        if not other:
            rows.append(_missing("C6", tk.name, tk.kind,
                                 f"needs tasks of the other kind (that ICL learns) in the same run; {where}"))
            continue
        pooled = np.concatenate(other)
        d = bootstrap_ci(fn, [mine, pooled], paired=False, resamples=rules.resamples, seed=rules.seed)
        rows.append(_row("C6", tk.name, tk.kind, label, d, "> 0", greater(d[1], d[2], 0.0), where))
    return rows


def _c7(run_dir: Path, tasks: dict[str, str], rules: ClaimRules, n_layers: int) -> list[dict]:
    path = run_dir / "analyses" / "saliency" / "saliency.parquet"
    if not path.exists():
        return []
    s = pd.read_parquet(path)
    lo, hi = rules.saliency_depth
    rows = []
    for task, g in s.groupby("task"):
        m = g.pivot_table(index="prompt", columns="layer", values="answers_to_query").to_numpy(float)
        ci = bootstrap_ci(lambda x: float(np.argmax(x.mean(0))) / n_layers, [m], resamples=rules.resamples,
                          seed=rules.seed)
        verdict = SUPPORTED if ci[1] >= lo and ci[2] <= hi else (
            NOT_SUPPORTED if ci[2] < lo or ci[1] > hi else INCONCLUSIVE)
        rows.append(_row("C7", str(task), tasks.get(str(task), ""), "peak layer / L", ci, f"in [{lo}, {hi}]",
                         verdict, f"peak at layer {int(np.argmax(m.mean(0)))} of {n_layers}; {len(m)} prompts"))
    return rows


def _c8(run_dir: Path, tasks: dict[str, str], rules: ClaimRules) -> list[dict]:
    path = run_dir / "analyses" / "dpca" / "dpca_c8.json"
    if not path.exists():
        return []
    c8 = json.loads(path.read_text())
    task = c8.get("task", "simple_string")

    def ci(v) -> tuple[float, float, float]:
        v = v or {}
        num = lambda x: float("nan") if x is None else float(x)  # noqa: E731
        return num(v.get("estimate")), num(v.get("low")), num(v.get("high"))

    length, label = ci(c8.get("length_ratio")), ci(c8.get("label_ratio"))
    cost = ci((c8.get("ablation_cost") or {}).get("late_minus_early"))
    verdict = combine(less(length[1], length[2], rules.length_ratio), greater(label[1], label[2], rules.label_ratio),
                      less(cost[1], cost[2], 0.0))
    detail = (f"label ratio {_fmt(*label)} (> {rules.label_ratio}); length-ablation cost late − early {_fmt(*cost)} "
              f"(< 0); early layer {c8.get('early_layer')} chosen on the selection half")
    return [_row("C8", task, tasks.get(task, "categorization"), "length separability late/early", length,
                 f"< {rules.length_ratio}", verdict, detail)]


def verdicts(table: pd.DataFrame, n_layers: int, rules: ClaimRules | None = None,
             run_dir: str | Path | None = None) -> pd.DataFrame:
    """Every claim for every task of a study's result table (and the analyses in ``run_dir/analyses``, if any).

    Returns one row per (claim, task): ``claim, claim_text, task, kind, statistic, estimate, low, high, threshold,
    verdict, detail``.
    """
    rules = rules or ClaimRules()
    tasks = [_Task(t, rules) for _, t in table.groupby("task", sort=False)]
    gates = {tk.name: tk.icl_gate() for tk in tasks}
    rows = []
    for tk in tasks:
        gate = gates[tk.name]
        wanted = (["C1"] if tk.kind == "knowledge" else ["C2", "C3"]) + ["C4", "C5"]
        for claim in wanted:
            if gate is not None:
                rows.append(_missing(claim, tk.name, tk.kind, gate))
            elif claim == "C1":
                rows.append(_c1(tk, n_layers))
            elif claim == "C2":
                rows.append(_c2(tk))
            elif claim == "C3":
                rows.append(_diff(tk, "C3", ("local", "local"), ("global", "global"), "local − global"))
            elif claim == "C4":
                rows.append(_diff(tk, "C4", ("local", "local"), ("local", "pos_avg"), "local − Pos Avg"))
            else:
                rows.append(_c5(tk))
    rows += _c6(tasks, gates, rules, n_layers)
    if run_dir is not None:
        kinds = {tk.name: tk.kind for tk in tasks}
        for row in _c7(Path(run_dir), kinds, rules, n_layers) + _c8(Path(run_dir), kinds, rules):
            gate = gates.get(row["task"])
            rows.append(row if gate is None else _missing(row["claim"], row["task"], row["kind"], gate))
    out = pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(CLAIMS)}
    return out.sort_values("claim", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def verdict_grid(v: pd.DataFrame) -> pd.DataFrame:
    """Claims x tasks grid of ``verdict (estimate [low, high])`` cells ("" where a claim does not apply)."""
    cells = v.assign(cell=[f"{r.verdict}" + (f" {_fmt(r.estimate, r.low, r.high)}" if math.isfinite(r.estimate)
                                              else "") for r in v.itertuples()])
    grid = cells.pivot_table(index=["claim", "claim_text"], columns="task", values="cell", aggfunc="first",
                             sort=False).fillna("")
    return grid.reset_index()
