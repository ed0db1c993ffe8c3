"""The local-vs-global study report: the claims as verdicts at the top, the evaluation-split accuracies with
intervals, then per task one idea per panel (global patching, local patching, k-of-n, convergence).

Curves are drawn from the **selection** split (where layers are chosen); the numbers in tables and verdicts come
from the disjoint **evaluation** split, at the selected layers (drawn as points with error bars).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from taskvec.claims import ClaimRules, convergence_summary, verdict_grid, verdicts
from taskvec.errors import ConfigError
from taskvec.report.html import Page
from taskvec.runs import RunStore
from taskvec.stats import mean_ci, summarize
from taskvec.study import slug

EVAL_VECTORS = [  # (experiment, vector, what it is)
    ("global", "global", "global vector → zero-shot"),
    ("global", "local_as_global", "local vectors averaged → zero-shot (convergence)"),
    ("global", "random", "control: norm-matched random → zero-shot"),
    ("global", "other_task", "control: other task's global vector → zero-shot"),
    ("local", "local", "local vectors → dummy prompt"),
    ("local", "pos_avg", "Pos Avg → dummy prompt"),
    ("local", "trial_avg", "Trial Avg (same label mapping) → dummy prompt"),
    ("local", "trial_avg_mixed", "null control: Trial Avg across mappings"),
    ("local", "random", "control: norm-matched random → dummy prompt"),
    ("local", "other_task", "control: other task's local vector → dummy prompt"),
    ("local", "dummy", "dummy prompt unpatched"),
]


def _baselines(t: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    out = {}
    icl = t[t.experiment == "icl"]
    if not icl.empty:
        out["ICL"] = mean_ci(icl[icl.n_demos == icl.n_demos.max()].score)
        if (icl.n_demos == 0).any():
            out["zero-shot"] = mean_ci(icl[icl.n_demos == 0].score)
    chance = t[t.experiment == "chance"]
    if not chance.empty:
        out["chance"] = (float(chance.score.iloc[0]),) * 3
    return out


def evaluation_table(table: pd.DataFrame) -> pd.DataFrame:
    """Evaluation-split accuracy with 95% Wilson intervals per task and vector (at the selected layer)."""
    rows = []
    for task, t in table.groupby("task", sort=False):
        kind = t.kind.iloc[0]
        icl = t[t.experiment == "icl"]
        counts = {"ICL": int((icl.n_demos == icl.n_demos.max()).sum()) if not icl.empty else 0,
                  "zero-shot": int((icl.n_demos == 0).sum()) if not icl.empty else 0}
        for name, (m, lo, hi) in _baselines(t).items():
            rows.append(dict(task=task, kind=kind, what=name, layer=None, accuracy=m, low=lo, high=hi,
                             n=counts.get(name)))
        ev = t[(t.get("split") == "eval") & (t.get("span").isin(["single", "none"]))]
        for exp, vec, what in EVAL_VECTORS:
            sel = ev[(ev.experiment == exp) & (ev.vector == vec)]
            if sel.empty:
                continue
            m, lo, hi = mean_ci(sel.score)
            layer = int(sel.layer.iloc[0])
            rows.append(dict(task=task, kind=kind, what=what, layer=None if layer < 0 else layer, accuracy=m,
                             low=lo, high=hi, n=len(sel)))
    return pd.DataFrame(rows)


def _curve(ax, t: pd.DataFrame, exp: str, vec: str, label: str, color: str, span: str = "single") -> None:
    sel = t[(t.experiment == exp) & (t.vector == vec) & (t.split == "select") & (t.span == span)]
    if not sel.empty:
        s = summarize(sel, ["layer"], "score")
        ax.plot(s.layer, s["mean"], color=color, lw=1.8, label=f"{label} (selection)")
        ax.fill_between(s.layer, s.low, s.high, color=color, alpha=0.15)
    ev = t[(t.experiment == exp) & (t.vector == vec) & (t.split == "eval") & (t.span == span)]
    if not ev.empty:
        m, lo, hi = mean_ci(ev.score)
        ax.errorbar([int(ev.layer.iloc[0])], [m], yerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt="o", color=color, capsize=4,
                    ms=7, markeredgecolor="k", label=f"{label} (evaluation, selected layer)")


def _lines(ax, t: pd.DataFrame, names: list[str]) -> None:
    styles = {"ICL": ("k", "-."), "zero-shot": ("grey", "--"), "chance": ("red", ":"), "dummy": ("purple", "--")}
    base = _baselines(t)
    dummy = t[(t.experiment == "local") & (t.vector == "dummy")]
    if not dummy.empty:
        base["dummy"] = mean_ci(dummy.score)
    for name in names:
        if name in base:
            color, ls = styles[name]
            ax.axhline(base[name][0], color=color, ls=ls, lw=1, label=name)


def _axes(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot()
    ax.set(title=title, ylim=(-0.02, 1.02))
    return fig, ax


def global_figure(task: str, t: pd.DataFrame, span: str = "single") -> Figure:
    fig, ax = _axes(f"{task}: global patching into zero-shot prompts" + (" (from l on)" if span == "from" else ""))
    _curve(ax, t, "global", "global", "global vector", "C0", span)
    _curve(ax, t, "global", "local_as_global", "local vectors averaged", "C2", span)
    _lines(ax, t, ["ICL", "zero-shot", "chance"])
    ax.set(xlabel="layer l (h_l replaced at the query)", ylabel="accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def local_figure(task: str, t: pd.DataFrame, span: str = "single") -> Figure:
    fig, ax = _axes(f"{task}: local patching into dummy prompts" + (" (from l on)" if span == "from" else ""))
    for vec, label, color in (("local", "local (own)", "C1"), ("pos_avg", "Pos Avg", "C4"),
                              ("trial_avg", "Trial Avg", "C3")):
        _curve(ax, t, "local", vec, label, color, span)
    _lines(ax, t, ["ICL", "dummy", "chance"])
    ax.set(xlabel="layer l (h_l replaced at every answer)", ylabel="accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def kofn_figure(task: str, t: pd.DataFrame) -> Figure:
    fig, ax = _axes(f"{task}: k of n answer positions patched")
    k = t[t.experiment == "kofn"]
    if not k.empty:
        s = summarize(k.groupby(["prompt", "k"]).score.mean().reset_index(), ["k"], "score")
        ax.plot(s.k, s["mean"], "o-", color="C1", label=f"k local vectors patched (layer {int(k.layer.iloc[0])})")
        ax.fill_between(s.k, s.low, s.high, color="C1", alpha=0.15)
    icl = t[t.experiment == "icl"]
    if not icl.empty:
        s = summarize(icl, ["n_demos"], "score")
        ax.plot(s.n_demos, s["mean"], "s-", color="k", label="ICL with k demonstrations")
    _lines(ax, t, ["chance"])
    ax.set(xlabel="k", ylabel="accuracy (evaluation split)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def convergence_figure(task: str, t: pd.DataFrame, rules: ClaimRules, n_layers: int) -> Figure:
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.add_subplot()
    c = t[t.experiment == "convergence"]
    for col, label, style in (("centred_local_global", "centred cos(local, global)", dict(color="C0", lw=2)),
                              ("centred_local_local", "centred cos(local, local)", dict(color="C1")),
                              ("raw_local_global", "raw cos(local, global) — anisotropy", dict(color="grey", ls=":"))):
        if col in c and c[col].notna().any():
            s = summarize(c, ["layer"], col)
            ax.plot(s.layer, s["mean"], label=label, **style)
            ax.fill_between(s.layer, s.low, s.high, color=style["color"], alpha=0.12)
    ax.axhline(rules.convergence_threshold, color="k", lw=0.6, ls="--", label="convergence threshold")
    summary = convergence_summary(t, rules, n_layers)
    if summary and summary["layer"] is not None:
        ax.axvline(summary["layer"], color="C0", lw=0.8, ls="--")
    ax.set(xlabel="layer", ylabel="cosine (source prompts)", ylim=(-1.02, 1.02), title=f"{task}: convergence")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def _verdict_html(grid: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in grid.columns)
    body = []
    for _, row in grid.iterrows():
        cells = []
        for col, val in row.items():
            val = str(val)
            cls = "left" if col in ("claim", "claim_text") else next(
                (c.replace(" ", "-") for c in ("not supported", "supported", "inconclusive") if val.startswith(c)), "")
            cells.append(f'<td class="{cls}">{html.escape(val)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (+ ``figures/``, ``summary.csv`` = the verdicts, ``evaluation.csv``,
    ``results.parquet``) for a study run directory."""
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    table = RunStore(run_dir, saved["config"], resume=True).table()
    if table.empty:
        raise ConfigError(f"{run_dir} has no results yet")
    table.to_parquet(run_dir / "results.parquet")
    cfg = saved["config"]
    rules = ClaimRules(**cfg.get("claims", {}))
    n_layers = int(saved.get("n_layers") or (table.layer.max() + 1))
    v = verdicts(table, n_layers, rules, run_dir)
    v.to_csv(run_dir / "summary.csv", index=False)
    evaluation = evaluation_table(table)
    evaluation.to_csv(run_dir / "evaluation.csv", index=False)

    page = Page(f"Local vs global task vectors — {cfg['model']}", run_dir / "figures")
    src = saved.get("model_source", {})
    page.text(f"Model {cfg['model']} ({n_layers} layers; weights sha256 {src.get('sha256') or src.get('gguf_sha256') or '?'}); "
              f"seed {cfg['seed']}; per task {cfg['n_trials']} source prompts (vectors), {cfg['n_select']} "
              f"selection trials ({cfg['n_local_select']} as dummy prompts), {cfg['n_eval']} evaluation trials "
              f"({cfg['n_local_eval']} as dummy prompts); quick={cfg['quick']}. Versions: {saved.get('versions')}.",
              cls="note")
    page.heading("Claims of the paper, as verdicts computed from this run")
    page.text("Each cell: verdict, then the statistic with its 95% interval (rules in SPEC A.8, thresholds "
              f"{rules.model_dump()}). Layers are chosen on the selection split; every statistic uses the disjoint "
              "evaluation split. 'inconclusive' also means the task tests nothing (ICL not above chance / "
              "zero-shot) or the claim's data was not run.", cls="note")
    page.raw(_verdict_html(verdict_grid(v)))
    page.heading("How each verdict was reached", level=3)
    page.table(v[["claim", "task", "statistic", "estimate", "low", "high", "threshold", "verdict", "detail"]])
    page.heading("Evaluation-split accuracy (selected layers, 95% Wilson intervals)")
    page.text("Scores: argmax next token == the answer's first token (knowledge), argmax over the two label words "
              "(categorization). Controls are evaluated at the layer of the vector they control.", cls="note")
    page.table(evaluation)
    for task, t in table.groupby("task", sort=False):
        kind = t.kind.iloc[0]
        name = slug(task)
        page.heading(f"{task} ({kind})")
        figs = [(f"{name}_global", global_figure(task, t)), (f"{name}_local", local_figure(task, t))]
        if (t.get("span") == "from").any():
            figs += [(f"{name}_global_from", global_figure(task, t, "from")),
                     (f"{name}_local_from", local_figure(task, t, "from"))]
        figs += [(f"{name}_kofn", kofn_figure(task, t)),
                 (f"{name}_convergence", convergence_figure(task, t, rules, n_layers))]
        page.figures(figs)
    analyses = run_dir / "analyses"
    if analyses.is_dir():
        page.heading("Where task information flows (saliency, dPCA, heads)")
        page.text("Attention x gradient saliency flows per layer (SPEC A.5), dPCA of answer-position states by "
                  "string length and label with subspace ablation (A.6), per-head effects at the query. Data in "
                  "analyses/*/.", cls="note")
        for sub in sorted(p for p in analyses.iterdir() if p.is_dir()):
            pngs = sorted((sub / "figures").glob("*.png"))
            if pngs:
                page.heading(sub.name, level=3)
                page.images(pngs)
    return page.write(run_dir / "report.html")


def markdown_summary(run_dir: str | Path) -> str:
    """Markdown tables of a finished study run (for docs): the verdict grid and the evaluation-split accuracies
    per task (value [95% interval] @ selected layer), read from ``summary.csv`` and ``evaluation.csv``."""
    run_dir = Path(run_dir)
    v = pd.read_csv(run_dir / "summary.csv")
    ev = pd.read_csv(run_dir / "evaluation.csv")
    grid = v.pivot_table(index="claim", columns="task", values="verdict", aggfunc="first", sort=False).fillna("")
    tasks = list(dict.fromkeys(ev.task))
    lines = ["| claim | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    short = {"supported": "**yes**", "not supported": "no", "inconclusive": "?", "": ""}
    for claim, row in grid.iterrows():
        lines.append(f"| {claim} | " + " | ".join(short[str(row.get(t, ''))] for t in tasks) + " |")
    cols = [("ICL", "ICL"), ("zero-shot", "zero-shot"), ("dummy prompt unpatched", "dummy"),
            ("global vector → zero-shot", "global"), ("local vectors → dummy prompt", "local"),
            ("Pos Avg → dummy prompt", "Pos Avg"), ("Trial Avg (same label mapping) → dummy prompt", "Trial Avg"),
            ("local vectors averaged → zero-shot (convergence)", "local→global"),
            ("control: norm-matched random → dummy prompt", "random (local)"),
            ("null control: Trial Avg across mappings", "Trial Avg mixed")]
    table = ["| task | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for task in tasks:
        t = ev[ev.task == task].set_index("what")
        cells = []
        for what, _ in cols:
            if what not in t.index:
                cells.append("–")
                continue
            r = t.loc[what]
            at = "" if pd.isna(r.layer) else f" @{int(r.layer)}"
            cells.append(f"{r.accuracy:.2f} [{r.low:.2f}, {r.high:.2f}]{at}")
        table.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(table) + "\n"
