"""The local-vs-global study report: per task the layer curves, the k-of-n curve and the convergence plot, and a
summary table of best layer and accuracy per vector type (knowledge and categorization side by side)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from taskvec.errors import ConfigError  # noqa: E402
from taskvec.report.html import Page  # noqa: E402
from taskvec.runs import RunStore  # noqa: E402
from taskvec.stats import mean_ci, summarize  # noqa: E402

CURVES = [  # (experiment, vector, label, style)
    ("global", "global", "global → zero-shot", dict(color="C0", lw=2)),
    ("local", "local", "local → dummy", dict(color="C1", lw=2)),
    ("local", "pos_avg", "Pos Avg → dummy", dict(color="C2")),
    ("local", "trial_avg", "Trial Avg → dummy", dict(color="C3")),
    ("global", "random", "random (global)", dict(color="C0", ls=":")),
    ("local", "random", "random (local)", dict(color="C1", ls=":")),
    ("global", "other_task", "other task (global)", dict(color="C0", ls="--", alpha=0.6)),
    ("local", "other_task", "other task (local)", dict(color="C1", ls="--", alpha=0.6)),
]


def _baselines(t: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    icl = t[t.experiment == "icl"]
    out = {}
    if not icl.empty:
        full = icl.n_demos.max()
        out["few-shot ICL"] = mean_ci(icl[icl.n_demos == full].score)
        out["zero-shot"] = mean_ci(icl[icl.n_demos == 0].score) if (icl.n_demos == 0).any() else None
    dummy = t[(t.experiment == "local") & (t.vector == "dummy")]
    if not dummy.empty:
        out["dummy (unpatched)"] = mean_ci(dummy.score)
    chance = t[t.experiment == "chance"]
    if not chance.empty:
        out["chance"] = (float(chance.score.iloc[0]),) * 3
    return {k: v for k, v in out.items() if v is not None}


def layer_figure(task: str, t: pd.DataFrame, span: str = "single") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for exp, vec, label, style in CURVES:
        sel = t[(t.experiment == exp) & (t.vector == vec) & (t.span == span)]
        if sel.empty:
            continue
        s = summarize(sel, ["layer"], "score")
        ax.plot(s.layer, s["mean"], label=label, **style)
        if vec in ("global", "local"):
            ax.fill_between(s.layer, s.low, s.high, color=style["color"], alpha=0.15)
    for (name, (m, _, _)), color in zip(_baselines(t).items(), ["k", "grey", "purple", "red"]):
        ax.axhline(m, color=color, ls="-." if name != "chance" else ":", lw=1, label=name)
    ax.set(xlabel="layer l (patched h_l)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title=f"{task}: patching per layer ({span})")
    ax.legend(fontsize=7, ncol=2)
    return fig


def kofn_figure(task: str, t: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    k = t[t.experiment == "kofn"]
    if not k.empty:
        s = summarize(k, ["k"], "score")
        ax.plot(s.k, s["mean"], "o-", color="C1", label=f"k of n patched (layer {int(k.layer.iloc[0])})")
        ax.fill_between(s.k, s.low, s.high, color="C1", alpha=0.15)
    icl = t[t.experiment == "icl"]
    if not icl.empty:
        s = summarize(icl, ["n_demos"], "score")
        ax.plot(s.n_demos, s["mean"], "s-", color="k", label="ICL with k demos")
    ax.set(xlabel="k (patched answer positions / demonstrations)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title=f"{task}: k-of-n ablation")
    ax.legend(fontsize=8)
    return fig


def convergence_figure(task: str, t: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    c = t[t.experiment == "convergence"].sort_values("layer")
    ax.plot(c.layer, c.local_global, label="cos(local slot mean, global)")
    ax.plot(c.layer, c.local_local, label="cos(local, local) between slots")
    ax.plot(c.layer, c.local_global_per_trial, ls="--", label="cos(local, global) within a prompt")
    ax.set(xlabel="layer", ylabel="cosine similarity", ylim=(-0.05, 1.05), title=f"{task}: convergence")
    ax.legend(fontsize=8)
    return fig


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (task, kind), t in table.groupby(["task", "kind"], sort=False):
        row = {"task": task, "kind": kind}
        for name, (m, _, _) in _baselines(t).items():
            row[name] = m
        for exp, vec in [("global", "global"), ("local", "local"), ("local", "pos_avg"), ("local", "trial_avg")]:
            sel = t[(t.experiment == exp) & (t.vector == vec) & (t.span == "single")]
            if sel.empty:
                continue
            s = sel.groupby("layer").score.mean()
            row[f"{vec} best"] = float(s.max())
            row[f"{vec} layer"] = int(s.idxmax())
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values("kind", kind="stable", key=lambda k: k.map({"knowledge": 0, "categorization": 1}))


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (and ``figures/``, ``summary.csv``, ``results.parquet``) for a study run directory."""
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    table = RunStore(run_dir, saved["config"], resume=True).table()
    if table.empty:
        raise ConfigError(f"{run_dir} has no results yet")
    table.to_parquet(run_dir / "results.parquet")
    cfg = saved["config"]
    page = Page(f"Local vs global task vectors — {cfg['model']}", run_dir / "figures")
    page.text(f"Model {cfg['model']}; seed {cfg['seed']}; {cfg['n_trials']} ICL prompts per task "
              f"({cfg['n_patch_trials']} dummy prompts for local patching); quick={cfg['quick']}. "
              f"Versions: {saved.get('versions')}. Scores: accuracy of the argmax next token against the target's "
              "first token (knowledge), or restricted to the two label words (categorization). Bands: 95% intervals "
              "over trials.", cls="note")
    summary = summary_table(table)
    summary.to_csv(run_dir / "summary.csv", index=False)
    page.heading("Summary: best layer and accuracy per vector type")
    page.table(summary)
    for task, t in table.groupby("task", sort=False):
        kind = t.kind.iloc[0]
        page.heading(f"{task} ({kind})")
        figs = [(f"{task}_layers", layer_figure(task, t))]
        if (t.get("span") == "from").any():
            figs.append((f"{task}_layers_from", layer_figure(task, t, "from")))
        figs += [(f"{task}_kofn", kofn_figure(task, t)), (f"{task}_convergence", convergence_figure(task, t))]
        page.figures(figs)
    analyses = run_dir / "analyses"
    if analyses.is_dir():
        page.heading("Where task information flows (saliency, dPCA, heads)")
        page.text("From `--with-analyses`: attention x gradient saliency flows per layer (SPEC A.5), dPCA of "
                  "answer-position states by string length and label with subspace ablation (A.6), per-head effects "
                  "at the query (B.7). Data in analyses/*/.", cls="note")
        for sub in sorted(p for p in analyses.iterdir() if p.is_dir()):
            pngs = sorted((sub / "figures").glob("*.png"))
            if pngs:
                page.heading(sub.name, level=3)
                page.images(pngs)
    return page.write(run_dir / "report.html")
