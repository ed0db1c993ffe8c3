"""Part A: the claims of the local-vs-global paper (C1–C8) as verdicts computed from a study (docs/spec.md A.8).

The rules are fixed here, in code, before any data is seen; their thresholds are a :class:`ClaimRules` saved with
every run's config. Every statistic uses the **evaluation split** only (layers were chosen on the selection split),
with a 95% interval: Wilson for a proportion, a seeded percentile bootstrap over prompts otherwise (paired when two
quantities are measured on the same prompts). Each verdict is one of

* ``supported`` — the interval lies on the claim's side of its threshold;
* ``not supported`` — the interval lies on the other side;
* ``inconclusive`` — the interval straddles the threshold, or ICL itself is not above chance and zero-shot on the
  task (then the task tests nothing), or the claim's **positive control** did not pass (the effect the claim is
  about must exist: e.g. local patching beats the unpatched dummy, acc(n) > acc(0)), or the data is missing.

Every row also names its **null controls** (what an artefact would give: the answer token alone, shuffled slots,
slot means, another task's vector, the unpatched dummy's query state), the unit of analysis and n. The verdicts
of one model are a family: ``verdict_adjusted`` is the verdict after Holm's (or Benjamini–Hochberg's) adjustment of
one-sided p-values approximated from the intervals; both are shown.

Example::

    from taskvec.claims import verdicts
    table = RunStore(run_dir, config, resume=True).table()
    verdicts(table, n_layers=18)   # DataFrame: claim, task, statistic, estimate, low, high, verdict, detail, ...
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from taskvec.claims.rules import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Control, Part, combine, greater
from taskvec.claims.rules import fmt_ci as _fmt
from taskvec.stats import adjusted_p, bootstrap_ci, mean_ci

CLAIMS = {
    "C1": "global ≈ ICL on knowledge tasks (middle layers)",
    "C2": "global at chance on categorization",
    "C3": "local > global on categorization",
    "C4": "Pos Avg < per-position local",
    "C5": "k-of-n: graded on categorization, few suffice on knowledge",
    "C6": "local builds the global vector on knowledge, not on categorization",
    "C7": "saliency answers → query peaks mid-depth",
    "C8": "dPCA: length fades, class stays",
}


class ClaimRules(BaseModel):
    """Thresholds of the verdict rules (docs/spec.md A.8 defaults); saved with the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    global_icl_ratio: float = Field(0.8, description="C1: global >= ratio x ICL")
    chance_margin: float = Field(0.15, description="C2: global upper bound < chance + margin")
    kofn_few: list[int] = Field(default_factory=lambda: [1, 2], description="C5 knowledge: the 'few' k values")
    kofn_ratio: float = Field(0.8, description="C5 knowledge: acc(few) >= ratio x acc(n)")
    late_fraction: float = Field(1 / 3, gt=0, lt=1, description="C6 geometry: late layers = the last fraction")
    convergence_threshold: float = Field(0.5, description="unused since the role-matched C6 (old configs load)")
    mediation_margin: float = Field(0.1, gt=0, description="C6 categorization: mediated − dummy query < margin")
    saliency_depth: tuple[float, float] = Field((0.3, 0.8), description="C7: peak relative depth range")
    length_ratio: float = Field(0.5, description="C8: late/early length separability below this")
    label_ratio: float = Field(0.8, description="C8: late/early class separability above this")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error rate of the adjusted verdicts")
    multiplicity: Literal["holm", "bh"] = Field("holm", description="adjustment across a model's verdicts")
    resamples: int = Field(2000, ge=100, description="bootstrap resamples")
    seed: int = 0


COLUMNS = ["claim", "claim_text", "task", "kind", "statistic", "estimate", "low", "high", "threshold", "verdict",
           "detail", "positive_control", "null_control", "unit", "n", "p", "p_against"]


def _row(claim: str, task: str, kind: str, parts: list[Part], detail: str = "", positive: list[Control] = (),
         null: list[Control] = (), unit: str = "", n: int = 0, verdict: str | None = None, rule: str = "") -> dict:
    """A verdict row: ``parts[0]`` is the statistic shown; the verdict combines every part, and is inconclusive
    when a positive control failed (or did not run). ``rule`` names a structural rule that decided ``verdict``
    instead of the test (e.g. the local layer is not below the global one): such a row has no p value and stays
    out of the family that :func:`adjust` controls."""
    main = parts[0]
    verdict = verdict or combine(*(p.verdict for p in parts))
    if rule:
        detail = f"{detail}; decided by rule, not by the test (outside the adjusted family): {rule}"
    failed = [c.text for c in positive if not c.passed]
    if failed:
        verdict = INCONCLUSIVE
        detail = f"positive control not passed: {'; '.join(failed)}. {detail}"
    ps = [p.p() for p in parts]
    est, low, high = main.ci
    return dict(claim=claim, claim_text=CLAIMS[claim], task=task, kind=kind, statistic=main.label, estimate=est,
                low=low, high=high, threshold=f"{main.direction} {main.threshold:g}", verdict=verdict,
                detail=detail + ("; " + "; ".join(p.text() for p in parts[1:]) if len(parts) > 1 else ""),
                positive_control="; ".join(f"{c.text}: {'passed' if c.passed else 'NOT passed'}" for c in positive),
                null_control="; ".join(c.text for c in null), unit=unit, n=int(n),
                p=float("nan") if failed or rule else max(ps), p_against=float("nan") if failed or rule else
                min(p.p(against=True) for p in parts))


def _missing(claim: str, task: str, kind: str, why: str) -> dict:
    nan = float("nan")
    row = {c: "" for c in COLUMNS}
    row.update(claim=claim, claim_text=CLAIMS[claim], task=task, kind=kind, estimate=nan, low=nan, high=nan,
               verdict=INCONCLUSIVE, detail=why, n=0, p=nan, p_against=nan)
    return row


def _per_prompt(t: pd.DataFrame, **where) -> pd.Series:
    """Mean score per evaluation prompt of the rows matching ``where`` (indexed by prompt)."""
    sel = t
    for k, v in where.items():
        if k not in sel:
            return pd.Series(dtype=float)
        sel = sel[sel[k] == v]
    return sel.groupby("prompt").score.mean()


def _paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    common = a.index.intersection(b.index)
    return a.loc[common].to_numpy(float), b.loc[common].to_numpy(float)


class TaskResults:
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
        span = ev.get("span", pd.Series("single", index=ev.index))
        self.ev = ev[span.isin(["single", "none"]) | (ev.experiment == "kofn")] if not ev.empty else ev

    def boot(self, fn, *samples, paired=True) -> tuple[float, float, float]:
        return bootstrap_ci(fn, samples, paired=paired, resamples=self.rules.resamples, seed=self.rules.seed)

    def vector(self, experiment: str, vector: str) -> pd.Series:
        return _per_prompt(self.ev, experiment=experiment, vector=vector)

    def layer(self, experiment: str, vector: str) -> int | None:
        sel = self.ev[(self.ev.experiment == experiment) & (self.ev.vector == vector)]
        return int(sel.layer.iloc[0]) if not sel.empty else None

    def diff(self, a: tuple[str, str] | pd.Series, b: tuple[str, str] | pd.Series) -> tuple[tuple, int]:
        """Paired difference of mean scores (a − b) over the prompts both have: ``(ci, n)``."""
        a_s = self.vector(*a) if isinstance(a, tuple) else a
        b_s = self.vector(*b) if isinstance(b, tuple) else b
        x, y = _paired(a_s, b_s)
        if not len(x):
            nan = float("nan")
            return (nan, nan, nan), 0
        return self.boot(lambda u, v: u.mean() - v.mean(), x, y), len(x)

    def mean(self, experiment: str, vector: str) -> str:
        s = self.vector(experiment, vector)
        return "–" if s.empty else _fmt(*mean_ci(s.to_numpy()))

    def layer_rule(self) -> str:
        """How the local layer was chosen (:func:`taskvec.study.select_local_layer`)."""
        sel = self.ev[(self.ev.experiment == "local") & (self.ev.vector == "local")]
        if "beats_token" not in sel or sel.beats_token.isna().all():
            return ""
        return ("; layer chosen where local beats its token-identity control" if bool(sel.beats_token.iloc[0]) else
                "; no layer where local beats its token-identity control on the selection split: best own layer")

    def local_works(self) -> Control:
        """Positive control of every local claim: local patching beats the unpatched dummy prompt."""
        ci, _ = self.diff(("local", "local"), ("local", "dummy"))
        return Control(f"local − dummy {_fmt(*ci)} > 0", greater(ci[1], ci[2], 0.0) == SUPPORTED)

    def local_nulls(self) -> list[Control]:
        """The null controls of local patching, each at the local vector's layer."""
        names = {"token_control": "token identity (same word, other prompt)", "shuffled_slots": "shuffled slots",
                 "slot_mean": "slot means", "other_task": "other task's local vectors", "dummy": "unpatched dummy"}
        return [Control(f"{label} {self.mean('local', v)}") for v, label in names.items()
                if not self.vector("local", v).empty]

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

    def global_works(self) -> tuple[tuple, int]:
        return self.diff(("global", "global"), self.zero)


def _c1(tk: TaskResults, n_layers: int) -> dict:
    r = tk.rules
    glob = tk.vector("global", "global")
    if glob.empty or tk.zero.empty:
        return _missing("C1", tk.name, tk.kind, "no global evaluation or zero-shot rows")
    g, icl = _paired(glob, tk.icl)
    d1 = tk.boot(lambda a, b: a.mean() - r.global_icl_ratio * b.mean(), g, icl)
    d2, n = tk.global_works()
    d3, _ = tk.diff(("global", "global"), ("global", "other_task"))
    layer = tk.layer("global", "global")
    detail = f"global {_fmt(*mean_ci(g))} at layer {layer} (depth {layer / n_layers:.2f}); ICL {icl.mean():.2f}"
    parts = [Part(f"global − {r.global_icl_ratio}·ICL", d1, 0.0), Part("global − zero-shot", d2, 0.0),
             Part("global − other task's vector", d3, 0.0)]
    return _row("C1", tk.name, tk.kind, parts, detail,
                positive=[Control("ICL above chance and zero-shot", True)],
                null=[Control(f"other task's global vector {tk.mean('global', 'other_task')}"),
                      Control(f"norm-matched random {tk.mean('global', 'random')}")],
                unit="evaluation prompts, paired", n=n)


def _c2(tk: TaskResults, knowledge_effect: Control) -> dict:
    glob = tk.vector("global", "global")
    if glob.empty:
        return _missing("C2", tk.name, tk.kind, "no global evaluation rows")
    ci = mean_ci(glob.to_numpy())
    thr = tk.chance + tk.rules.chance_margin
    return _row("C2", tk.name, tk.kind, [Part("global accuracy", ci, thr, "<")],
                f"at layer {tk.layer('global', 'global')}; chance {tk.chance:.2f}", positive=[knowledge_effect],
                null=[Control(f"norm-matched random {tk.mean('global', 'random')}"),
                      Control(f"zero-shot {_fmt(*mean_ci(tk.zero.to_numpy()))}" if not tk.zero.empty else
                              "zero-shot –")],
                unit="evaluation prompts", n=len(glob))


def _c3(tk: TaskResults) -> dict:
    d_glob, n = tk.diff(("local", "local"), ("global", "global"))
    d_tok, _ = tk.diff(("local", "local"), ("local", "token_control"))
    if not n:
        return _missing("C3", tk.name, tk.kind, "no evaluation rows for local − global")
    detail = (f"local {tk.mean('local', 'local')} (layer {tk.layer('local', 'local')}), global "
              f"{tk.mean('global', 'global')} (layer {tk.layer('global', 'global')}){tk.layer_rule()}")
    return _row("C3", tk.name, tk.kind, [Part("local − global", d_glob, 0.0),
                                         Part("local − token-identity control", d_tok, 0.0)],
                detail, positive=[tk.local_works()], null=tk.local_nulls(), unit="evaluation prompts, paired", n=n)


def _c4(tk: TaskResults) -> dict:
    d, n = tk.diff(("local", "local"), ("local", "pos_avg"))
    if not n:
        return _missing("C4", tk.name, tk.kind, "no evaluation rows for local − Pos Avg")
    d_tok, _ = tk.diff(("local", "token_control"), ("local", "pos_avg"))
    tokens = greater(d_tok[1], d_tok[2], 0.0) == SUPPORTED
    detail = (f"local {tk.mean('local', 'local')} (layer {tk.layer('local', 'local')}), Pos Avg "
              f"{tk.mean('local', 'pos_avg')} (layer {tk.layer('local', 'pos_avg')}); the token-identity control "
              f"− Pos Avg {_fmt(*d_tok)}" + (": the answer tokens alone beat Pos Avg, so the gap is theirs"
                                             if tokens else "") + tk.layer_rule())
    part = Part("local − Pos Avg", d, 0.0)
    return _row("C4", tk.name, tk.kind, [part], detail, positive=[tk.local_works()],
                null=tk.local_nulls(), unit="evaluation prompts, paired", n=n,
                **({"verdict": INCONCLUSIVE, "rule": "the token-identity control beats Pos Avg as well"}
                   if tokens and part.verdict == SUPPORTED else {}))


def _kofn_table(tk: TaskResults, fill: str) -> pd.DataFrame:
    k = tk.ev[tk.ev.experiment == "kofn"]
    if "fill" in k:
        k = k[k.fill.fillna("wrong") == fill]
    return k.groupby(["prompt", "k"]).score.mean().unstack("k") if not k.empty else pd.DataFrame()


def _kofn_parts(tk: TaskResults, table: pd.DataFrame, n: int) -> list[Part]:
    """Categorization: acc(n/2) strictly between acc(0) and acc(n). Knowledge: the few k recover most of the
    effect, acc(few) − acc(0) ≥ ratio × (acc(n) − acc(0)) (the bare ratio acc(few) ≥ ratio × acc(n) passes at k = 0
    whenever the filled dummy already does the task)."""
    r = tk.rules
    if tk.kind == "categorization":
        m = table[[0, n // 2, n]].to_numpy(float)
        return [Part("acc(n/2) − acc(0)", tk.boot(lambda x: (x[:, 1] - x[:, 0]).mean(), m), 0.0),
                Part("acc(n) − acc(n/2)", tk.boot(lambda x: (x[:, 2] - x[:, 1]).mean(), m), 0.0)]
    few = [c for c in r.kofn_few if c in table.columns and c < n]
    m = np.column_stack([table[few].mean(1), table[n], table[0]]).astype(float)
    stat = lambda x: x[:, 0].mean() - x[:, 2].mean() - r.kofn_ratio * (x[:, 1].mean() - x[:, 2].mean())  # noqa
    return [Part(f"acc(k∈{few}) − acc(0) − {r.kofn_ratio}·(acc(n) − acc(0))", tk.boot(stat, m), 0.0)]


def _icl_curve(tk: TaskResults) -> str:
    icl = tk.t[tk.t.experiment == "icl"]
    curve = icl.groupby("n_demos").score.mean()
    return ", ".join(f"{int(k)}: {v:.2f}" for k, v in curve.items())


FILLS = {"wrong": "the dummy's wrong answers", "mean": "mean-ablated (slot means)"}


def _c5(tk: TaskResults) -> dict:
    """k-of-n, judged under each fill of the unpatched slots whose own positive control passes (acc(n) − acc(0)
    > 0); the first such fill's statistic is shown; fills that disagree make the verdict inconclusive."""
    r = tk.rules
    tables = {f: t for f in FILLS if not (t := _kofn_table(tk, f)).empty}
    if not tables:
        return _missing("C5", tk.name, tk.kind, "no k-of-n rows")
    k = tk.ev[tk.ev.experiment == "kofn"]
    n = int(k.n.max()) if "n" in k else int(k.k.max())
    if tk.kind != "categorization" and not [c for c in r.kofn_few if c < n]:
        return _missing("C5", tk.name, tk.kind, f"no k in {r.kofn_few} below n = {n}")
    effects, parts, notes = {}, {}, []
    for fill, table in tables.items():
        effects[fill] = tk.boot(lambda x: (x[:, 1] - x[:, 0]).mean(), table[[0, n]].to_numpy(float))
        curve = ", ".join(f"k={int(c)} {table[c].mean():.2f}" for c in table.columns)
        if greater(effects[fill][1], effects[fill][2], 0.0) == SUPPORTED:
            parts[fill] = _kofn_parts(tk, table, n)
            verdict = combine(*(p.verdict for p in parts[fill]))
            notes.append(f"slots {FILLS[fill]}: {verdict} ({curve})")
        else:
            notes.append(f"slots {FILLS[fill]}: no effect to split, acc(n) − acc(0) {_fmt(*effects[fill])} ({curve})")
    first = next(iter(tables))
    positive = [Control(f"acc(n) − acc(0) {_fmt(*effects[f])} > 0 ({FILLS[f]})", f in parts) for f in tables]
    detail = "; ".join(notes) + f"; ICL with k demonstrations: {_icl_curve(tk)}"
    if not parts:
        return _row("C5", tk.name, tk.kind, _kofn_parts(tk, tables[first], n), detail, positive=positive,
                    unit="evaluation dummy prompts, paired over k", n=len(tables[first]))
    verdicts_ = {combine(*(p.verdict for p in ps)) for ps in parts.values()}
    shown = next(iter(parts.values()))
    disagree = len(verdicts_) > 1
    verdict = INCONCLUSIVE if disagree else verdicts_.pop()
    return _row("C5", tk.name, tk.kind, shown, detail, positive=[c for c in positive if c.passed],
                rule="the two fills of the unpatched slots disagree" if disagree else "",
                null=[Control("acc(0), no slot patched: " + ", ".join(f"{tables[f][0].mean():.2f} ({FILLS[f]})"
                                                                         for f in tables))],
                unit="evaluation dummy prompts, paired over k", n=len(tables[first]), verdict=verdict)


def geometry_summary(t: pd.DataFrame, rules: ClaimRules, n_layers: int) -> dict:
    """Per task, the role-matched convergence geometry over the late layers (the last ``late_fraction``): mean
    centred cosine of the demonstrations' separator states and of the held-out query states to the global
    vector, and of local vectors across slots; and each per-layer curve."""
    c = t[t.experiment == "convergence"]
    cols = [x for x in ("centred_separator_global", "centred_query_global", "centred_local_local") if x in c]
    if c.empty or not cols:
        return {}
    late_from = int(round((1 - rules.late_fraction) * n_layers))
    late = c[c.layer >= late_from]
    return {"late_from": late_from, "late": {x: float(late[x].mean()) for x in cols},
            "curve": c.groupby("layer")[cols].mean()}


def _c6(tk: TaskResults, n_layers: int) -> dict:
    r = tk.rules
    d, n = tk.diff(("mediation", "mediated"), ("mediation", "dummy_query"))
    if not n:
        return _missing("C6", tk.name, tk.kind, "no mediation rows (a run of an older protocol: rerun the study)")
    med = tk.ev[tk.ev.experiment == "mediation"]
    l_loc, l_glob = int(med.local_layer.iloc[0]), int(med.layer.iloc[0])
    geo = geometry_summary(tk.t, r, n_layers)
    shape = ", ".join(f"{k.replace('centred_', '')} {v:.2f}" for k, v in geo.get("late", {}).items())
    detail = (f"mediated {tk.mean('mediation', 'mediated')} vs unpatched dummy's query state "
              f"{tk.mean('mediation', 'dummy_query')}; local layer {l_loc} {'<' if l_loc < l_glob else '≥'} global "
              f"layer {l_glob}" + (f"; late-layer centred cosines (layers ≥ {geo['late_from']}): {shape}" if geo else ""))
    positive = [tk.local_works()]
    if tk.kind == "knowledge":
        g, _ = tk.global_works()
        positive.append(Control(f"global − zero-shot {_fmt(*g)} > 0", greater(g[1], g[2], 0) == SUPPORTED))
        part = Part("mediated − dummy query state", d, 0.0)
        verdict = NOT_SUPPORTED if l_loc >= l_glob else part.verdict
    else:  # where the local layer is not below the global one the test cannot find convergence: no evidence
        part = Part("mediated − dummy query state", d, r.mediation_margin, "<")
        verdict = INCONCLUSIVE if l_loc >= l_glob else part.verdict
    return _row("C6", tk.name, tk.kind, [part], detail, positive=positive,
                null=[Control(f"unpatched dummy's query state {tk.mean('mediation', 'dummy_query')}")],
                unit="zero-shot evaluation prompts, paired", n=n, verdict=verdict,
                rule=f"local layer {l_loc} is not below global layer {l_glob}" if l_loc >= l_glob else "")


def _peak_region(m: np.ndarray, rules: ClaimRules) -> tuple[int, list[int]]:
    """The peak layer of the mean curve of ``m`` (``[prompts, layers]``) and the layers not significantly below it
    (paired bootstrap over prompts of curve(l) − curve(peak): upper 97.5% bound ≥ 0)."""
    peak = int(np.argmax(m.mean(0)))
    rng = np.random.default_rng(rules.seed)
    idx = rng.integers(0, len(m), (rules.resamples, len(m)))
    boot = m[idx].mean(1)  # [B, layers]
    upper = np.percentile(boot - boot[:, [peak]], 97.5, axis=0)
    return peak, [int(l) for l in np.nonzero(upper >= 0)[0]]


def _c7(s: pd.DataFrame | None, tasks: dict[str, str], rules: ClaimRules, n_layers: int) -> list[dict]:
    """C7 per task of the saliency rows ``s`` (``task, prompt, layer, answers_to_query, ...``; ``None``: no
    saliency analysis, no rows)."""
    if s is None:
        return []
    lo, hi = rules.saliency_depth
    rows = []
    for task, g in s.groupby("task"):
        m = g.pivot_table(index="prompt", columns="layer", values="answers_to_query").to_numpy(float)
        peak, region = _peak_region(m, rules)
        depth = (region[0] / n_layers, region[-1] / n_layers)
        verdict = SUPPORTED if depth[0] >= lo and depth[1] <= hi else (
            NOT_SUPPORTED if depth[1] < lo or depth[0] > hi else INCONCLUSIVE)
        others = {f: float(g[g.layer == peak][f].mean()) for f in ("inputs_to_answers", "inputs_to_query", "rest")
                  if f in g}
        ci = (peak / n_layers, *depth)
        row = _row("C7", str(task), tasks.get(str(task), ""), [Part("peak layer / L (region)", ci, lo)],
                   f"peak at layer {peak} of {n_layers}; layers not significantly below the peak: {region[0]}–"
                   f"{region[-1]} ({len(region)} layers); per-layer intervals in the saliency figure",
                   null=[Control("other flows at the peak: " + ", ".join(f"{k} {v:.3g}" for k, v in others.items())
                                 + f" (answers → query {m.mean(0)[peak]:.3g})")],
                   unit="prompts", n=len(m), verdict=verdict)
        row.update(threshold=f"in [{lo}, {hi}]", p=float("nan"), p_against=float("nan"))
        rows.append(row)
    return rows


def _c8(c8: dict | None, tasks: dict[str, str], rules: ClaimRules) -> list[dict]:
    """C8 of the dPCA's statistics ``c8`` (:func:`taskvec.analysis.dpca_c8.c8_statistics`; ``None``: no dPCA
    analysis, no row)."""
    if c8 is None:
        return []
    task = c8.get("task", "simple_string")
    kind = tasks.get(task, "categorization")
    if "class_ratio" not in c8:
        return [_missing("C8", task, kind, "dPCA of an older protocol (label word, early layer by argmax): rerun")]

    def ci(v) -> tuple[float, float, float]:
        v = v or {}
        num = lambda x: float("nan") if x is None else float(x)  # noqa: E731
        return num(v.get("estimate")), num(v.get("low")), num(v.get("high"))

    peak = c8.get("length_peak") or {}
    in_early = peak.get("in_early")
    early = c8.get("early_window")
    parts = [Part("length separability late / early window", ci(c8.get("length_ratio")), rules.length_ratio, "<"),
             Part("class separability late / early window", ci(c8.get("class_ratio")), rules.label_ratio),
             Part("length-ablation cost late − early", ci((c8.get("ablation_cost") or {}).get("late_minus_early")),
                  0.0, "<")]
    peak_verdict = {True: SUPPORTED, False: NOT_SUPPORTED}.get(in_early, INCONCLUSIVE)
    detail = (f"early window fixed before the data: layers {early}; length peak at layer {peak.get('layer')}, "
              f"region {peak.get('region')} ({'in' if in_early else 'not wholly in'} the early window); "
              f"label-word identity late / early {_fmt(*ci(c8.get('word_ratio')))} (reported only)")
    return [_row("C8", task, kind, parts, detail, null=[Control("random subspace of equal dimension (ablation)")],
                 unit="trials", n=int(c8.get("n_trials") or c8.get("n_evaluation_trials") or 0),
                 verdict=combine(peak_verdict, *(p.verdict for p in parts)))]


def _knowledge_effect(tasks: list[TaskResults], gates: dict) -> Control:
    """C2's positive control: global patching works on a knowledge task of the same run (global − zero-shot > 0),
    so a categorization task at chance is not a broken patch."""
    for tk in tasks:
        if tk.kind == "knowledge" and gates[tk.name] is None and not tk.vector("global", "global").empty:
            d, _ = tk.global_works()
            if greater(d[1], d[2], 0.0) == SUPPORTED:
                return Control(f"global patching works on {tk.name} (global − zero-shot {_fmt(*d)})", True)
    return Control("global patching works on a knowledge task of this run", False)


def adjust(v: pd.DataFrame, rules: ClaimRules) -> pd.DataFrame:
    """The family of a model's verdicts, controlled: ``p_adjusted`` / ``p_against_adjusted`` by Holm (or
    Benjamini–Hochberg) over every row with a test (gated and region-based rows are not in the family), and
    ``verdict_adjusted``: a raw verdict whose adjusted p is not below ``alpha`` becomes inconclusive."""
    out = v.copy()
    for col in ("p", "p_against"):
        out[f"{col}_adjusted"] = adjusted_p(out[col].to_numpy(float), rules.multiplicity)
    adj = []
    for r in out.itertuples():
        if r.verdict == SUPPORTED and not (r.p_adjusted < rules.alpha):
            adj.append(INCONCLUSIVE if math.isfinite(r.p) else r.verdict)
        elif r.verdict == NOT_SUPPORTED and not (r.p_against_adjusted < rules.alpha):
            adj.append(INCONCLUSIVE if math.isfinite(r.p_against) else r.verdict)
        else:
            adj.append(r.verdict)
    out["verdict_adjusted"] = adj
    out["family"] = int(np.isfinite(out.p.to_numpy(float)).sum())
    return out


def verdicts(table: pd.DataFrame, n_layers: int, rules: ClaimRules | None = None, *,
             saliency: pd.DataFrame | None = None, c8: dict | None = None) -> pd.DataFrame:
    """Every claim for every task of a study's result table, and C7 / C8 of the analyses' tables when given:
    ``saliency``, the saliency rows (``task, prompt, layer, answers_to_query, ...``: the saliency kind's
    ``tables(run_dir)["saliency"]``), and ``c8``, the dPCA's C8 statistics (its ``tables(run_dir)["c8"]`` row as a
    dict). A study's are read by :func:`taskvec.study_tables.study_tables`.

    Returns one row per (claim, task): :data:`COLUMNS` (the statistic with its interval, the verdict, how it was
    reached, the positive control that had to pass, the null controls, the unit of analysis and n, one-sided p
    values) plus the multiplicity-adjusted columns of :func:`adjust`.
    """
    rules = rules or ClaimRules()
    tasks = [TaskResults(t, rules) for _, t in table.groupby("task", sort=False)]
    gates = {tk.name: tk.icl_gate() for tk in tasks}
    knowledge_effect = _knowledge_effect(tasks, gates)
    rows = []
    for tk in tasks:
        gate = gates[tk.name]
        wanted = (["C1"] if tk.kind == "knowledge" else ["C2", "C3"]) + ["C4", "C5", "C6"]
        for claim in wanted:
            if gate is not None:
                rows.append(_missing(claim, tk.name, tk.kind, gate))
                continue
            rows.append({"C1": lambda: _c1(tk, n_layers), "C2": lambda: _c2(tk, knowledge_effect),
                         "C3": lambda: _c3(tk), "C4": lambda: _c4(tk), "C5": lambda: _c5(tk),
                         "C6": lambda: _c6(tk, n_layers)}[claim]())
    if saliency is not None or c8 is not None:
        kinds = {tk.name: tk.kind for tk in tasks}
        for row in _c7(saliency, kinds, rules, n_layers) + _c8(c8, kinds, rules):
            gate = gates.get(row["task"])
            rows.append(row if gate is None else _missing(row["claim"], row["task"], row["kind"], gate))
    out = pd.DataFrame(rows, columns=COLUMNS)
    order = {c: i for i, c in enumerate(CLAIMS)}
    out = out.sort_values("claim", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return adjust(out, rules)


def verdict_grid(v: pd.DataFrame) -> pd.DataFrame:
    """Claims x tasks grid of ``verdict (estimate [low, high])`` cells ("" where a claim does not apply)."""
    cells = v.assign(cell=[f"{r.verdict}" + (f" {_fmt(r.estimate, r.low, r.high)}" if math.isfinite(r.estimate)
                                              else "") for r in v.itertuples()])
    grid = cells.pivot_table(index=["claim", "claim_text"], columns="task", values="cell", aggfunc="first",
                             sort=False).fillna("")
    return grid.reset_index()
