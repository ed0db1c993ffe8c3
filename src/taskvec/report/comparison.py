"""The HTML report of a vanilla-vs-TVP comparison over seeds (:mod:`taskvec.scratch.comparison`).

Built from the run directory alone (``config.json``, ``results.jsonl``): the verdicts first, then one idea per
figure — strength S(l) per arm with its interval over seeds, the errors at the layer each arm is read at, ICL under
noisy labels — then the OOD table, the per-layer table and the training-curve links. Mid-run it shows what has
finished.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import taskvec.artifacts as A
from taskvec.report.html import Page


def _band(ax, agg: pd.DataFrame, metric: str, arm: str, color: str, label: str, x: str = "layer") -> None:
    g = agg[(agg.metric == metric) & (agg.arm == arm)].sort_values(x)
    if g.empty:
        return
    ax.plot(g[x], g["mean"], "o-", ms=3, color=color, label=label)
    if g["low"].notna().any():
        ax.fill_between(g[x], g["low"], g["high"], color=color, alpha=0.18, lw=0)


def strength_figure(agg: pd.DataFrame, layouts: list[str], arms: list[dict], strong: float) -> Figure:
    """One panel per layout: S(l) of every arm, mean over seeds with its 95% interval."""
    fig = Figure(figsize=(3.6 * len(layouts) + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, len(layouts), sharey=True, squeeze=False)[0]
    seeds = int(agg.loc[agg.metric == "icl", "n"].max()) if (agg.metric == "icl").any() else 0
    for ax, layout in zip(axes, layouts):
        a = agg[agg.layout == layout]
        short = []
        for i, arm in enumerate(arms):
            _band(ax, a, "strength", arm["name"], f"C{i}", arm["name"])
            if arm.get("tvp_layer") is not None:
                ax.axvline(arm["tvp_layer"], color=f"C{i}", lw=0.8, ls=":")
            # a seed whose ICL did not form has no S: say how many seeds a line stands on when not all
            n = a.loc[(a.metric == "strength") & (a.arm == arm["name"]), "n"]
            if len(n) and int(n.max()) < seeds:
                short.append(f"{arm['name']}: {int(n.max())}")
        if short:
            ax.text(0.02, 0.03, f"seeds with S (of {seeds}): " + ", ".join(short), transform=ax.transAxes,
                    fontsize=7, va="bottom", bbox={"fc": "white", "ec": "none", "alpha": 0.8})
        ax.axhline(strong, color="grey", lw=0.8, ls="--", label=f"'strong' (S = {strong})")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=f"{layout}", xlabel="layer l (dotted: l* of a TVP-loss arm)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("S(l) (1 = ICL, 0 = zero-shot)")
    lo = np.nanmin(agg.loc[agg.metric == "strength", "low"].to_numpy(dtype=float), initial=0.0)
    axes[0].set_ylim(max(-1.5, min(-0.1, lo)), 1.3)
    fig.suptitle("Task-vector strength by layer (mean over seeds, 95% interval)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(arms) + 1, fontsize=9, frameon=False)
    return fig


def error_figure(agg: pd.DataFrame, layouts: list[str], arms: list[dict]) -> Figure:
    """One panel per layout: ICL, zero-shot and the task vector at the layer each arm is read at (bars = mean over
    seeds, whiskers = 95% interval)."""
    metrics = [("icl", "ICL"), ("zero_shot", "zero-shot"), ("tvp_lstar", "TVP at l*"),
               ("tvp_selected", "TVP at the selected layer")]
    fig = Figure(figsize=(3.8 * len(layouts) + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, len(layouts), sharey=True, squeeze=False)[0]
    width = 0.8 / len(metrics)
    for ax, layout in zip(axes, layouts):
        for j, (metric, label) in enumerate(metrics):
            xs, ms, errs = [], [], [[], []]
            for i, arm in enumerate(arms):
                g = agg[(agg.layout == layout) & (agg.arm == arm["name"]) & (agg.metric == metric)]
                if g.empty:
                    continue
                r = g.iloc[0]
                xs.append(i + (j - (len(metrics) - 1) / 2) * width)
                ms.append(r["mean"])
                errs[0].append(r["mean"] - r["low"] if math.isfinite(r["low"]) else 0)
                errs[1].append(r["high"] - r["mean"] if math.isfinite(r["high"]) else 0)
            if xs:
                ax.bar(xs, ms, width, yerr=errs, capsize=2, color=f"C{j}", label=label)
        ax.set_xticks(range(len(arms)), [a["name"] for a in arms])
        ax.set_title(layout)
        ax.grid(alpha=0.25, axis="y")
    axes[0].set_ylabel("error (1 = predicting nothing)")
    fig.suptitle("Errors at the layer each arm is read at (mean over seeds, 95% interval)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    return fig


def noisy_figure(agg: pd.DataFrame, layouts: list[str], arms: list[dict]) -> Figure:
    """One panel per layout: each model's degradation (ICL error − its own clean ICL error on the same prompts,
    what B4 compares) against the fraction of noisy demonstration labels; the plain ICL error for a run evaluated
    before the degradation was recorded."""
    fig = Figure(figsize=(3.6 * len(layouts) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(layouts), sharey=True, squeeze=False)[0]
    metric = "noisy_degradation" if (agg.metric == "noisy_degradation").any() else "noisy_icl"
    for ax, layout in zip(axes, layouts):
        for i, arm in enumerate(arms):
            _band(ax, agg[agg.layout == layout], metric, arm["name"], f"C{i}", arm["name"], x="p")
        ax.set(title=layout, xlabel="fraction of noisy labels p")
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("ICL error − clean ICL error" if metric == "noisy_degradation" else "ICL error")
    fig.suptitle("ICL under noisy labels (mean over seeds, 95% interval)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(arms), fontsize=9, frameon=False)
    return fig


def _cell(r) -> str:
    if not math.isfinite(r["mean"]):
        return "–"
    return f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" if math.isfinite(r["low"]) else f"{r['mean']:.3f}"


def write_comparison_report(run_dir: str | Path) -> Path:
    """``run_dir/report.html`` of a comparison run (also mid-run: what has finished)."""
    from taskvec.scratch.comparison import comparison_tables, config_of, task_label

    run_dir = Path(run_dir)
    cfg = config_of(run_dir)
    tables = comparison_tables(run_dir)
    table = tables["seeds"]
    arms = [a.model_dump() for a in cfg.arms]
    page = Page("taskvec: vanilla vs TVP-loss over seeds", run_dir / A.FIGURES)
    task = task_label(cfg)
    n_done = table[table.metric == "icl"][["layout", "arm", "seed"]].drop_duplicates().shape[0]
    page.text(f"Task {task}; arms {', '.join(a['name'] for a in arms)}; layouts {', '.join(cfg.layouts)}; seeds "
              f"{', '.join(map(str, cfg.seeds))}; {n_done} of {len(cfg.runs())} models evaluated. Intervals are "
              "95% Student-t over seeds (Welch for differences). Layers are selected on a separate prompt draw "
              f"(seed {cfg.select_seed}); every number here is from the evaluation draw (seed {cfg.eval_seed}).",
              cls="note")
    page.text("Shared training config: " + ", ".join(f"{k}={v}" for k, v in cfg.train.items()), cls="note")
    if table.empty:
        page.text("No model has been evaluated yet.")
        return page.write(run_dir / A.REPORT)
    agg = tables["summary"]
    v = tables["verdicts"]
    page.heading("Verdicts")
    shown = v.assign(estimate=[_cell({"mean": r.estimate, "low": r.low, "high": r.high}) for r in v.itertuples()])
    page.table(shown[["claim", "text", "layout", "arm", "condition", "statistic", "estimate", "verdict", "detail"]])
    page.heading("Strength, errors, noise")
    figs = [("strength", strength_figure(agg, cfg.layouts, arms, cfg.rules.strong)),
            ("errors", error_figure(agg, cfg.layouts, arms))]
    if (agg.metric == "noisy_icl").any():
        figs.append(("noisy", noisy_figure(agg, cfg.layouts, arms)))
    page.figures(figs)
    ood = agg[agg.metric.isin(["ood_icl", "ood_degradation", "ood_tvp"])]
    if not ood.empty:
        page.heading("Out of distribution")
        page.text("ICL − clean: each model's ICL error under the shift minus its own clean ICL error on the same "
                  "prompts (the shift applied to the clean evaluation draw); B5 compares it between arms, per shift.",
                  cls="note")
        names = {"ood_icl": "ICL", "ood_degradation": "ICL − clean", "ood_tvp": "TVP at l*"}
        wide = ood.assign(cell=[_cell(r) for _, r in ood.iterrows()]) \
            .pivot_table(index=["layout", "shift"], columns=["arm", "metric"], values="cell", aggfunc="first")
        wide.columns = [f"{arm}: {names[m]}" for arm, m in wide.columns]
        page.table(wide.reset_index())
    per_layer = agg[agg.metric.isin(["tvp", "random", "strength", "pca_probe"])]
    with page.collapsed("Per layer: TVP error, random-vector control, S(l), probe accuracy (mean [95% interval])"):
        wide = per_layer.assign(cell=[_cell(r) for _, r in per_layer.iterrows()]) \
            .pivot_table(index=["layout", "arm", "layer"], columns="metric", values="cell", aggfunc="first")
        page.table(wide.reset_index(), tall=True)
    train = agg[agg.metric.isin(["train_icl_err", "train_tvp_loss"])]
    if not train.empty:
        with page.collapsed("Training: the last tenth of the logged curve (mean [95% interval])"):
            wide = train.assign(cell=[_cell(r) for _, r in train.iterrows()]) \
                .pivot_table(index=["layout", "arm"], columns="metric", values="cell", aggfunc="first")
            page.table(wide.reset_index())
    links = (sorted(p for p in (run_dir / A.MODELS).glob(f"*/{A.REPORT}")) if (run_dir / A.MODELS).exists()
             else [])
    if links:
        page.raw("<p class='note'>Training runs: " + " ".join(
            f"<a href='{html.escape(p.relative_to(run_dir).as_posix())}'>{html.escape(p.parent.name)}</a>"
            for p in links) + "</p>")
    return page.write(run_dir / A.REPORT)
