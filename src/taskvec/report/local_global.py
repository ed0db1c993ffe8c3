"""The local-vs-global study report: the claims as verdicts at the top, the evaluation-split accuracies with
intervals, then per task one idea per panel (global patching, local patching, k-of-n, convergence).

Curves are drawn from the **selection** split (where layers are chosen); the numbers in tables and verdicts come
from the disjoint **evaluation** split, at the selected layers (drawn as points with error bars).
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import taskvec.artifacts as A
from taskvec.claims import ClaimRules, geometry_summary
from taskvec.errors import ConfigError
from taskvec.report.html import Page, anchor
from taskvec.report.runs import ANALYSES, write_analysis_report
from taskvec.runs import atomic_path, read_saved, remove_stale_temps, slug
from taskvec.study_tables import baselines, n_layers_of, rules_of, study_tables
from taskvec.stats import mean_ci, summarize, welch_ci

def _eval_point(t: pd.DataFrame, exp: str, vec: str, span: str):
    ev = t[(t.experiment == exp) & (t.vector == vec) & (t.split == "eval") & (t.span == span)]
    if ev.empty:
        return None
    m, lo, hi = mean_ci(ev.score)
    return int(ev.layer.iloc[0]), m, lo, hi


def _has(t: pd.DataFrame, exp: str, vec: str, span: str) -> bool:
    return bool(((t.experiment == exp) & (t.vector == vec) & (t.span == span)).any())


def _curve(ax, t: pd.DataFrame, exp: str, vec: str, color: str = "C0", span: str = "single",
           label: str = "patched") -> None:
    """One vector's patching curve: the selection split per layer (mean, 95% band; dotted with markers where only
    some layers were swept, as Pos Avg and Trial Avg at the layers where local vectors beat their token), and the
    evaluation split at the selected layer (a point with its interval)."""
    sel = t[(t.experiment == exp) & (t.vector == vec) & (t.split == "select") & (t.span == span)]
    if not sel.empty:
        s = summarize(sel, ["layer"], "score")
        gaps = len(s) < s.layer.max() - s.layer.min() + 1 or len(s) == 1
        ax.plot(s.layer, s["mean"], color=color, lw=1.8, label=f"{label}: selection split, 95% band",
                **({"ls": ":", "marker": "s", "ms": 4} if gaps else {}))
        ax.fill_between(s.layer, s.low, s.high, color=color, alpha=0.18, lw=0)
    point = _eval_point(t, exp, vec, span)
    if point is not None:
        layer, m, lo, hi = point
        ax.errorbar([layer], [m], yerr=[[max(m - lo, 0.0)], [max(hi - m, 0.0)]], fmt="o", color=color, capsize=4,
                    ms=7, markeredgecolor="k", label=f"{label}: evaluation split, selected layer")


BASELINE_STYLE = {"ICL": ("k", "-."), "zero-shot": ("grey", "--"), "chance": ("red", ":"),
                  "dummy": ("purple", "--")}


def _lines(ax, t: pd.DataFrame, names: list[str]) -> None:
    base = baselines(t)
    dummy = t[(t.experiment == "local") & (t.vector == "dummy")]
    if not dummy.empty:
        base["dummy"] = mean_ci(dummy.score)
    labels = {"dummy": "dummy prompt, unpatched", "ICL": "ICL (all demonstrations)", "zero-shot": "zero-shot",
              "chance": "chance"}
    for name in names:
        if name in base:
            color, ls = BASELINE_STYLE[name]
            ax.axhline(base[name][0], color=color, ls=ls, lw=1.1, label=labels[name])


def _legend_below(fig: Figure, ax, ncol: int = 3) -> None:
    """One legend for the whole figure, under the panels (readable size, never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def _small_multiples(task: str, t: pd.DataFrame, exp: str, panels: list[tuple[str, str]], baselines: list[str],
                     title: str, xlabel: str, span: str, panel_width: float = 3.0,
                     control: tuple[str, str] | None = None) -> Figure:
    """One panel per vector (one curve each, the same baselines in every panel), y shared; ``control`` =
    ``(vector, label)`` is drawn beside the first panel's curve (the control that vector must beat)."""
    present = [(v, label) for v, label in panels if _has(t, exp, v, span)] or panels[:1]
    n = len(present)
    fig = Figure(figsize=(panel_width * n + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]  # one layer axis: curves over fewer layers line up
    for i, (ax, (vec, label)) in enumerate(zip(axes, present)):
        _curve(ax, t, exp, vec, "C0", span)
        if i == 0 and control and _has(t, exp, control[0], span):
            _curve(ax, t, exp, control[0], "C3", span, label=control[1])
        _lines(ax, t, baselines)
        ax.set_title(label, fontsize=10)
        ax.set(ylim=(-0.02, 1.02), xlabel=xlabel)
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title + (" — vector patched from layer l on" if span == "from" else ""), fontsize=11)
    _legend_below(fig, axes[0], ncol=3)
    return fig


def global_figure(task: str, t: pd.DataFrame, span: str = "single") -> Figure:
    """Global patching into zero-shot prompts: one panel per vector (the global vector; the demonstrations' own
    separator states averaged alike, the role-matched positive control of convergence)."""
    return _small_multiples(task, t, "global", [("global", "global vector"),
                                                ("demo_separators", "demonstrations' separator states")],
                            ["ICL", "zero-shot", "chance"], f"{task}: global patching into zero-shot prompts",
                            "layer l (replaced at the query)", span)


def function_vector_figure(task: str, t: pd.DataFrame) -> Figure:
    """The function vector added at the query of zero-shot prompts, every layer (selection split)."""
    return _small_multiples(task, t, "function_vector", [("function_vector", "function vector (top-k heads)")],
                            ["ICL", "zero-shot", "chance"], f"{task}: function vector into zero-shot prompts",
                            "layer l (added at the query)", "single", panel_width=4.0)


def local_figure(task: str, t: pd.DataFrame, span: str = "single") -> Figure:
    """Local patching into dummy prompts: one panel per vector (own local vectors with their token-identity
    control, Pos Avg, Trial Avg). A local vector carries more than its answer token only where its curve lies
    above the control's."""
    return _small_multiples(task, t, "local", [("local", "local vectors (own)"), ("pos_avg", "Pos Avg"),
                                               ("trial_avg", "Trial Avg")],
                            ["ICL", "dummy", "chance"], f"{task}: local patching into dummy prompts",
                            "layer l (replaced at every answer)", span, panel_width=3.5,
                            control=("token_control", "token identity"))


def _axes(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(4.2, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.25)
    return fig, ax


def kofn_figure(task: str, t: pd.DataFrame) -> Figure:
    """k of n answer positions patched with local vectors, next to ICL with k demonstrations."""
    fig, ax = _axes(f"{task}: k of n answers patched")
    k = t[t.experiment == "kofn"]
    fills = k.fill.fillna("wrong") if "fill" in k else pd.Series("wrong", index=k.index)
    for fill, color, what in (("mean", "C1", "others mean-ablated"), ("wrong", "C4", "others: wrong answers")):
        kf = k[fills == fill]
        if kf.empty:
            continue
        s = summarize(kf.groupby(["prompt", "k"]).score.mean().reset_index(), ["k"], "score")
        ax.plot(s.k, s["mean"], "o-", color=color, label=f"k local vectors (layer {int(kf.layer.iloc[0])}), {what}")
        ax.fill_between(s.k, s.low, s.high, color=color, alpha=0.15, lw=0)
    icl = t[t.experiment == "icl"]
    if not icl.empty:
        s = summarize(icl, ["n_demos"], "score")
        ax.plot(s.n_demos, s["mean"], "s-", color="k", label="ICL with k demonstrations")
    _lines(ax, t, ["chance"])
    ax.set(xlabel="k", ylabel="accuracy (evaluation split)", ylim=(-0.02, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(fig, ax, ncol=2)
    return fig


def convergence_figure(task: str, t: pd.DataFrame, rules: ClaimRules, n_layers: int) -> Figure:
    """Role-matched geometry per layer (centred cosines): the demonstrations' separator states and held-out query
    states against the global vector, local vectors against each other; the late layers shaded."""
    fig, ax = _axes(f"{task}: states of the same role")
    c = t[t.experiment == "convergence"]
    for col, label, style in (("centred_separator_global", "demo separator ↔ global", dict(color="C0", lw=2)),
                              ("centred_query_global", "held-out query ↔ global", dict(color="k", ls="--")),
                              ("centred_local_local", "local ↔ local (slots)", dict(color="C1"))):
        if col in c and c[col].notna().any():
            s = summarize(c, ["layer"], col)
            ax.plot(s.layer, s["mean"], label=label, **style)
            ax.fill_between(s.layer, s.low, s.high, color=style["color"], alpha=0.12, lw=0)
    summary = geometry_summary(t, rules, n_layers)
    if summary:
        ax.axvspan(summary["late_from"] - 0.5, n_layers - 0.5, color="grey", alpha=0.08, lw=0)
    ax.set(xlabel="layer", ylabel="centred cosine (held-out prompts)", ylim=(-1.02, 1.02))
    _legend_below(fig, ax, ncol=2)
    return fig


def geometry_table(table: pd.DataFrame, rules: ClaimRules, n_layers: int) -> tuple[pd.DataFrame, str]:
    """Per task, the late-layer role-matched centred cosines (:func:`~taskvec.claims.geometry_summary`), and the
    knowledge − categorization contrast of the separator ↔ global cosine **with tasks as the unit** (Welch
    interval over the task means; prompts of different tasks are not independent draws of one population)."""
    rows = []
    for task, t in table.groupby("task", sort=False):
        g = geometry_summary(t, rules, n_layers)
        if g:
            rows.append(dict(task=task, kind=t.kind.iloc[0], late_from=g["late_from"], **g["late"]))
    geo = pd.DataFrame(rows)
    if geo.empty or "centred_separator_global" not in geo:
        return geo, ""
    col = geo.centred_separator_global
    know, cat = col[geo.kind == "knowledge"], col[geo.kind == "categorization"]
    if len(know) < 2 or len(cat) < 2:
        return geo, "needs two tasks of each kind for a contrast with tasks as the unit"
    d, lo, hi = welch_ci(know, cat)
    return geo, (f"separator ↔ global, knowledge − categorization: {_fmt_ci(d, lo, hi)} (Welch over "
                 f"{len(know)} + {len(cat)} tasks)")


def _fmt_ci(m: float, lo: float, hi: float) -> str:
    return f"{m:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def _verdict_html(v: pd.DataFrame) -> str:
    """Tasks x claims: each cell the verdict, then the statistic with its 95% interval (the detail on hover).
    Claims are columns (a handful), tasks rows, so the grid fits a laptop-width page."""
    claims = list(dict.fromkeys(v.claim))
    texts = dict(zip(v.claim, v.claim_text))
    tasks = list(dict.fromkeys(v.task))
    kinds = dict(zip(v.task, v.kind))
    head = '<th class="left">task</th>' + "".join(
        f'<th class="left" title="{html.escape(texts[c])}">{html.escape(c)}<span class="stat">'
        f"{html.escape(texts[c])}</span></th>" for c in claims)
    cells = {(r.claim, r.task): r for r in v.itertuples()}
    body = []
    for task in tasks:
        row = [f'<td class="left"><a href="#{anchor(task)}">{html.escape(task)}</a>'
               f'<span class="stat">{html.escape(str(kinds[task]))}</span></td>']
        for claim in claims:
            r = cells.get((claim, task))
            if r is None:
                row.append('<td class="left na" title="does not apply to this task">–</td>')
                continue
            cls = str(r.verdict).replace(" ", "-")
            stat = _fmt_ci(r.estimate, r.low, r.high) if math.isfinite(r.estimate) else ""
            adjusted = getattr(r, "verdict_adjusted", r.verdict)
            if adjusted != r.verdict:
                stat += f" · {adjusted} after {getattr(r, 'multiplicity', 'Holm')}"
            tip = (f"{r.statistic} (threshold {r.threshold}): {r.detail} | positive control: "
                   f"{getattr(r, 'positive_control', '')} | null: {getattr(r, 'null_control', '')}")
            row.append(f'<td class="left {html.escape(cls)}" title="{html.escape(tip)}">'
                       f'<b>{html.escape(str(r.verdict))}</b><span class="stat">{html.escape(stat)}</span></td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    return f'<div class="scroll"><table class="claims"><tr>{head}</tr>{"".join(body)}</table></div>'


OVERVIEW = [("ICL", "ICL"), ("zero-shot", "zero-shot"), ("global vector → zero-shot", "global"),
            ("dummy prompt unpatched", "dummy"), ("local vectors → dummy prompt", "local"),
            ("token-identity control: same answer word, other prompt", "token control"),
            ("Pos Avg → dummy prompt", "Pos Avg"), ("Trial Avg (same label mapping) → dummy prompt", "Trial Avg"),
            ("mediation: query state of the locally patched dummy → zero-shot", "mediated"),
            ("mediation null: query state of the unpatched dummy → zero-shot", "dummy query"), ("chance", "chance")]


def _overview_html(evaluation: pd.DataFrame) -> str:
    """Tasks x the main conditions: evaluation-split accuracy, its 95% interval and the selected layer."""
    cols = [(what, short) for what, short in OVERVIEW if (evaluation.what == what).any()]
    head = '<th class="left">task</th>' + "".join(f"<th>{html.escape(short)}</th>" for _, short in cols)
    body = []
    for task, e in evaluation.groupby("task", sort=False):
        e = e.set_index("what")
        row = [f'<td class="left"><a href="#{anchor(task)}">{html.escape(task)}</a></td>']
        for what, _ in cols:
            if what not in e.index:
                row.append("<td>–</td>")
                continue
            r = e.loc[what]
            ci = f"[{r.low:.2f}, {r.high:.2f}]" if what != "chance" else ""
            at = "" if pd.isna(r.layer) else f" @{int(r.layer)}"
            row.append(f'<td>{r.accuracy:.2f}<span class="ci"><br>{ci}{at}</span></td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _figure_captions() -> dict[str, str]:
    return {
        "local": "Local patching: each dummy-prompt answer's state at layer l is replaced by the ICL prompt's local "
                 "vectors (blue) or, as the token-identity control, by the same answer word's state from another "
                 "prompt (red). Curve: selection split per layer; point: evaluation split at the selected layer.",
        "global": "Global patching: the zero-shot query's state at layer l is replaced by the global vector (left) "
                  "or by the demonstrations' own separator states averaged alike (right: the state with the query's "
                  "job, the role-matched positive control).",
        "kofn": "How many answer positions must carry a local vector: k of n patched (the others mean-ablated, or "
                "left with the dummy's wrong answers), next to ICL with k demonstrations.",
        "function_vector": "The function vector (the top-k heads by causal indirect effect, their mean outputs "
                           "summed) added at the query of zero-shot prompts at layer l; the dot is the evaluation "
                           "split at the layer chosen on the selection split.",
        "convergence": "Role-matched geometry: centred cosines of the demonstrations' separator states and of held-out "
                       "query states to the global vector, and of local vectors across slots (late layers shaded).",
    }


def study_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (+ ``figures/``, ``summary.csv`` = the verdicts, ``evaluation.csv``,
    ``results.parquet``) for a study run directory. Every file is written atomically (a kill mid-write leaves the
    old file or the new one, never a torn one; the temp files a killed writer left are removed here)."""
    run_dir = Path(run_dir)
    saved = read_saved(run_dir)
    tables = study_tables(run_dir)
    table = tables["results"]
    if table.empty:
        raise ConfigError(f"{run_dir} has no results yet")
    for directory in (run_dir, run_dir / A.FIGURES):
        remove_stale_temps(directory)
    with atomic_path(run_dir / A.RESULTS_PARQUET) as tmp:
        table.to_parquet(tmp)
    cfg = saved["config"]
    rules = rules_of(saved)
    n_layers = n_layers_of(saved, table)
    v = tables["verdicts"]
    with atomic_path(run_dir / A.SUMMARY) as tmp:
        v.to_csv(tmp, index=False)
    evaluation = tables["evaluation"]
    with atomic_path(run_dir / A.EVALUATION) as tmp:
        evaluation.to_csv(tmp, index=False)
    methods = tables["methods"]
    with atomic_path(run_dir / A.METHODS) as tmp:
        methods.to_csv(tmp, index=False)

    page = Page(f"Local vs global task vectors — {cfg['model']}", run_dir / A.FIGURES)
    src = saved.get("model_source", {})
    sha = src.get("sha256") or src.get("gguf_sha256") or "?"
    versions = ", ".join(f"{k} {val}" for k, val in (saved.get("versions") or {}).items())
    page.text(f"Model {cfg['model']} ({n_layers} layers; weights sha256 {sha[:16]}…); seed {cfg['seed']}; per task "
              f"{cfg['n_trials']} source prompts (vectors), {cfg['n_select']} selection trials "
              f"({cfg['n_local_select']} as dummy prompts), {cfg['n_eval']} evaluation trials "
              f"({cfg['n_local_eval']} as dummy prompts); quick={cfg['quick']}. Versions: {versions}.", cls="note")
    files = saved.get("task_files") or {}
    if files:
        page.text("Task files (each named by its file's stem): " + "; ".join(
            f"{name} = {info.get('path')}" + _file_counts(info) for name, info in files.items()) + ".", cls="note")
    page.heading("Claims of the paper, as verdicts computed from this run", id="claims")
    page.raw(_verdict_html(v))
    thresholds = ", ".join(f"{k}={val:g}" if isinstance(val, float) else f"{k}={val}"
                           for k, val in rules.model_dump().items())
    page.text("Each cell: the verdict, then the statistic with its 95% interval (hover for how it was reached; "
              "rules in docs/spec.md, A.8). Layers are chosen on the selection split; every statistic uses the "
              "disjoint evaluation split. 'inconclusive' also means the task tests nothing (ICL not above chance / "
              "zero-shot), the claim's positive control did not pass, or its data was not run. The verdicts form one "
              f"family of {int(v.family.iloc[0]) if len(v) else 0} tests; a cell notes where the "
              f"{rules.multiplicity.upper() if rules.multiplicity == 'bh' else 'Holm'}-adjusted verdict differs. "
              f"Thresholds: {thresholds}.", cls="note")
    with page.collapsed("How each verdict was reached: statistic, positive control, null controls, unit and n"):
        page.table(v[["claim", "task", "statistic", "estimate", "low", "high", "threshold", "verdict",
                      "verdict_adjusted", "p", "p_adjusted", "positive_control", "null_control", "unit", "n",
                      "detail"]], tall=True)
    page.heading("Evaluation-split accuracy (selected layers, 95% Wilson intervals)", id="accuracy")
    page.raw(_overview_html(evaluation))
    page.text("Accuracy on the evaluation split, [95% interval] and @ the layer selected on the selection split. "
              "Scores: argmax next token == the answer's first token (knowledge), argmax over the two label words "
              "(categorization). Controls are evaluated at the layer of the vector they control.", cls="note")
    with page.collapsed("Every condition, including the controls (table)"):
        page.table(evaluation, tall=True)
    _methods_section(page, methods, table)
    geo, contrast = geometry_table(table, rules, n_layers)
    if not geo.empty:
        with page.collapsed("Convergence geometry between states of the same role (late layers, per task)"):
            page.table(geo, floatfmt="{:.2f}")
            page.text("Centred cosines on held-out ICL prompts: each demonstration's separator state and the query "
                      "state against the global vector (both predict an answer), local vectors across slots. "
                      f"Answer states are never compared with query states. {contrast}", cls="note")
    tasks = list(dict.fromkeys(table.task))
    page.toc([(t, anchor(t)) for t in tasks], label="Figures per task")
    captions = _figure_captions()
    for task, t in table.groupby("task", sort=False):
        kind = t.kind.iloc[0]
        name = slug(task)
        page.heading(f"{task} ({kind})", id=anchor(task))
        figs = [(f"{name}_local", local_figure(task, t), captions["local"]),
                (f"{name}_global", global_figure(task, t), captions["global"])]
        if (t.get("span") == "from").any():
            figs += [(f"{name}_local_from", local_figure(task, t, "from")),
                     (f"{name}_global_from", global_figure(task, t, "from"))]
        if _has(t, "function_vector", "function_vector", "single"):
            figs.append((f"{name}_function_vector", function_vector_figure(task, t), captions["function_vector"]))
        figs += [(f"{name}_convergence", convergence_figure(task, t, rules, n_layers), captions["convergence"]),
                 (f"{name}_kofn", kofn_figure(task, t), captions["kofn"])]
        page.figures(figs)
    analyses = run_dir / A.ANALYSES
    if analyses.is_dir():
        page.heading("Where task information flows (saliency, dPCA, heads)", id="analyses")
        page.text("Attention x gradient saliency flows per layer (docs/spec.md, A.5), dPCA of answer-position states "
                  "by string length and label with subspace ablation (A.6), per-head effects at the query. Data in "
                  "analyses/*/.", cls="note")
        for sub in sorted(p for p in analyses.iterdir() if p.is_dir()):
            if sub.name in ANALYSES and (sub / A.CONFIG).exists():
                try:  # its own page, and the figures its report draws (dPCA)
                    write_analysis_report(sub, sub.name)
                except ConfigError:  # not finished yet: nothing to show
                    continue
            pngs = sorted((sub / A.FIGURES).glob("*.png"))
            if pngs:
                page.heading(sub.name, level=3)
                page.images(pngs)
    return page.write(run_dir / A.REPORT)


def methods_of(run_dir: str | Path) -> pd.DataFrame:
    """The method table (:func:`taskvec.method_table.method_table`) of a study run directory; a one-line
    :class:`ConfigError` for a directory that is not a study or holds no results yet."""
    run_dir = Path(run_dir)
    if not (run_dir / A.CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a study run directory (no config.json): give the --out directory of "
                          "taskvec study local-global")
    kind = str(read_saved(run_dir).get("kind") or "study")
    if kind != "study":
        raise ConfigError(f"{run_dir} is a {kind} run: the method table needs a study run directory "
                          "(taskvec study local-global --out DIR)")
    tables = study_tables(run_dir)
    if tables["results"].empty:
        raise ConfigError(f"{run_dir} has no results yet")
    return tables["methods"]


def _methods_section(page: Page, methods: pd.DataFrame, table: pd.DataFrame) -> None:
    """Every vector method side by side (:func:`taskvec.method_table.method_table`) and the function vector's
    heads."""
    if methods.empty or not (methods.method == "function_vector").any():
        return
    page.heading("Every vector method side by side", id="methods")
    page.table(methods.drop(columns=["kind", "note"]), floatfmt="{:.2f}")
    page.text("Each method at the layer chosen for it on the selection split, scored on the evaluation split; gain "
              "over its baseline and margin over its strongest null are paired over the same prompts (95% "
              "bootstrap intervals). works: both above 0; not above null: it beats the baseline but an artefact "
              "(another task's vector, random heads, the answer token alone) does as well. vs_global: the function "
              "vector minus the global vector on the same zero-shot prompts. Data: methods.csv.", cls="note")
    heads = table[(table.experiment == "fv_heads") & (table.get("chosen") == True)]  # noqa: E712
    if not heads.empty:
        with page.collapsed("The function vector's heads (top-k by average indirect effect, per task)"):
            page.table(heads[["task", "rank", "layer", "head", "aie", "aie_low", "aie_high", "n"]]
                       .astype({"rank": int, "layer": int, "head": int, "n": int}), floatfmt="{:.4f}")


def _file_counts(info: dict) -> str:
    """`` (N rows, ...)``: what a task file held and what was merged or dropped, for the report's note."""
    parts = [f"{info['rows']} rows"] if "rows" in info else []
    if info.get("duplicates_merged"):
        parts.append(f"{info['duplicates_merged']} exact duplicates merged")
    if info.get("conflicts"):
        parts.append(f"{info['conflicts']} conflicting inputs, {info.get('conflict_rows_dropped', 0)} rows dropped "
                     f"(on_conflict={info.get('on_conflict')})")
    return f" ({', '.join(parts)})" if parts else ""


def markdown_summary(run_dir: str | Path) -> str:
    """Markdown tables of a finished study run (for docs): the verdict grid and the evaluation-split accuracies
    per task (value [95% interval] @ selected layer): the study's ``verdicts`` and ``evaluation`` tables (those
    ``summary.csv`` and ``evaluation.csv`` export), computed from the run store."""
    tables = study_tables(Path(run_dir))
    v, ev = tables["verdicts"], tables["evaluation"]
    short = {"supported": "**yes**", "not supported": "no", "inconclusive": "?", "": ""}
    adjusted = v.verdict_adjusted if "verdict_adjusted" in v else v.verdict
    v = v.assign(cell=[short[a] + ("" if a == b else f" ({short[b].strip('*')} adj.)")
                       for a, b in zip(v.verdict.fillna(""), adjusted.fillna(""))])
    grid = v.pivot_table(index="claim", columns="task", values="cell", aggfunc="first", sort=False).fillna("")
    tasks = list(dict.fromkeys(ev.task))
    lines = ["| claim | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for claim, row in grid.iterrows():
        lines.append(f"| {claim} | " + " | ".join(str(row.get(t, "")) for t in tasks) + " |")
    cols = [("ICL", "ICL"), ("zero-shot", "zero-shot"), ("dummy prompt unpatched", "dummy"),
            ("global vector → zero-shot", "global"),
            ("demonstrations' separator states → zero-shot (role-matched)", "demo sep."),
            ("local vectors → dummy prompt", "local"),
            ("token-identity control: same answer word, other prompt", "token ctrl"),
            ("Pos Avg → dummy prompt", "Pos Avg"), ("Trial Avg (same label mapping) → dummy prompt", "Trial Avg"),
            ("null control: own local vectors in shuffled slots", "shuffled"),
            ("mediation: query state of the locally patched dummy → zero-shot", "mediated"),
            ("mediation null: query state of the unpatched dummy → zero-shot", "dummy query")]
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
