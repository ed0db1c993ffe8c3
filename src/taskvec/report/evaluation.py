"""The HTML report of a from-scratch evaluation (e.g. vanilla vs TVP-loss models side by side).

Input: ``{label: evaluate_model(...)}`` (what ``results.json`` holds). Written with the shared
:class:`taskvec.report.html.Page` (the one HTML writer): figures are bare :class:`matplotlib.figure.Figure`
objects (no pyplot, the caller's backend is left alone), one idea per panel, small multiples instead of overlays.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from taskvec.report.html import Page

VARIANT_TITLES = {"tvp": "task vector θ_l (TVP)", "random": "control: random, norm-matched",
                  "mean": "control: mean θ over tasks", "wrong": "control: another task's θ"}


def _legend_below(fig: Figure, ax, ncol: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)


def _finish_panel(fig: Figure, ax, xlabel: str, ylabel: str, title: str) -> Figure:
    """The one-panel figures' common finish: integer x ticks, labels, title, grid, legend below."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.title.set_fontsize(10.5)
    ax.grid(alpha=0.25)
    _legend_below(fig, ax, ncol=3)
    return fig


def _finite(values) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _layers_fig(label: str, r: dict) -> Figure:
    """One model: one panel per patched vector (TVP and the three controls), ICL and zero-shot as lines."""
    lay = r["layers"]
    names = [n for n in VARIANT_TITLES if n in lay]
    fig = Figure(figsize=(2.55 * len(names) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names):
        ys = _finite(lay[name])
        ax.plot(range(len(ys)), ys, "o-", ms=3, color="C0", label="error with the vector patched at l")
        ax.axhline(lay["icl"], color="k", lw=1, ls="-.", label=f"ICL (k={lay['k']})")
        ax.axhline(lay["zero_shot"], color="grey", lw=1, ls="--", label="zero-shot")
        ax.axvline(r["layer"], color="r", lw=0.6, label="l* (the layer used)")
        ax.set_title(VARIANT_TITLES[name], fontsize=9.5)
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("error (sq. error / E[y²])")
    fig.suptitle(f"{label}: patching one vector at layer l of a zero-shot query", fontsize=11)
    _legend_below(fig, axes[0], ncol=4)
    return fig


def _strength_fig(results: dict) -> Figure:
    fig = Figure(figsize=(4.4, 3.1), layout="constrained")
    ax = fig.add_subplot()
    defined = False
    for label, r in results.items():
        ys = _finite(r["layers"]["strength"])
        defined |= any(not math.isnan(y) for y in ys)
        ax.plot(range(len(ys)), ys, "o-", ms=4, label=label)
    ax.axhline(1, color="k", lw=0.6, ls="--", label="= ICL")
    if not defined:
        ax.text(0.5, 0.5, "S(l) undefined: ICL does not beat\nzero-shot by 1% (nothing to carry)",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#555")
    return _finish_panel(fig, ax, "layer l", "strength S(l)", "How much of ICL's gain θ_l carries")


def _icl_curve_fig(results: dict) -> Figure:
    fig = Figure(figsize=(4.4, 3.1), layout="constrained")
    ax = fig.add_subplot()
    for label, r in results.items():
        ys = _finite(r["layers"]["icl_curve"])
        ax.plot(range(len(ys)), ys, "o-", ms=4, label=label)
    return _finish_panel(fig, ax, "in-context examples i", "ICL error", "ICL error by examples seen")


def _context_fig(results: dict) -> Figure:
    """One panel per model: ICL and TVP(l*) error by the number of demonstrations."""
    rows = [(label, r["context"]) for label, r in results.items() if r.get("context")]
    fig = Figure(figsize=(3.3 * len(rows) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(rows), sharey=True, squeeze=False)[0]
    for ax, (label, ctx) in zip(axes, rows):
        ks = [c["k"] for c in ctx]
        ax.plot(ks, [c["icl"] for c in ctx], "s-", color="k", label="ICL")
        ax.plot(ks, [c["tvp_layer"] for c in ctx], "o--", color="C0", label="TVP at l*")
        ax.plot(ks, [c["zero_shot"] for c in ctx], ":", color="grey", label="zero-shot")
        ax.set(title=label, xlabel="k demonstrations")
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("error")
    _legend_below(fig, axes[0], ncol=3)
    return fig


def _pca_fig(label: str, p: dict, per_row: int = 6) -> Figure:
    """One model: the 2-D PCA of θ_l per layer (small multiples, wrapped ``per_row`` to a row)."""
    layers = p["layers"]
    cols = min(per_row, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(1.9 * cols, 2.0 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(layers):]:
        ax.set_axis_off()
    for l, (ax, layer) in enumerate(zip(axes, layers)):
        xy = list(zip(*layer["xy"]))
        ax.scatter(xy[0], xy[1], c=p["ids"], cmap="tab10", s=5)
        ax.set_xticks([])
        ax.set_yticks([])
        bw, acc = layer["between_within"], layer["probe_acc"]
        ax.set_title(f"l={l}  B/W={bw:.2f}\nprobe={acc:.2f}" if bw is not None and not math.isnan(bw)
                     else f"l={l}", fontsize=8)
    fig.suptitle(f"{label}: θ_l by task (colour), PCA per layer", fontsize=10.5)
    return fig


def layer_table(results: dict) -> list[dict]:
    """Rows ``model, layer, TVP, random, mean, wrong, S`` plus ICL / zero-shot columns."""
    rows = []
    for label, r in results.items():
        lay = r["layers"]
        for l in range(len(lay["tvp"])):
            rows.append({"model": label, "layer": l, "ICL(k)": lay["icl"], "zero-shot": lay["zero_shot"],
                         "TVP(l)": lay["tvp"][l], "random": lay["random"][l], "mean": lay["mean"][l],
                         "wrong": lay["wrong"][l], "S(l)": lay["strength"][l]})
    return rows


def _rows(results: dict, key: str) -> list[dict]:
    return [{"model": label, **row} for label, r in results.items() for row in r.get(key, [])]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name)) or "model"


def evaluation_page(results: dict[str, dict], path: str | Path, title: str = "taskvec: from-scratch models",
                    config: dict | None = None) -> Path:
    """Write the HTML report for ``{label: results}`` to ``path`` (figures under ``path.parent/figures``);
    returns its path. ``config``: the run's saved config, shown as a note."""
    path = Path(path)
    page = Page(title, path.parent / "figures")
    page.text(f"Models: {', '.join(results)}. Error = squared error / E[y²] (predicting 0 scores 1; lower is "
              "better); for discrete tasks 1 − accuracy.", cls="note")
    if config:
        cfg = config.get("config", config)
        shown = {k: v for k, v in cfg.items() if k != "models"}
        page.text("Config: " + ", ".join(f"{k}={v}" for k, v in shown.items()), cls="note")
    if all("layers" in r for r in results.values()):
        page.heading("Per-layer task-vector patching (TVP) and its controls")
        page.text("Each panel patches one kind of vector into a zero-shot query at layer l; the task vector should "
                  "approach the ICL line and the controls stay near zero-shot.", cls="note")
        page.figures([(f"layers_{_safe(label)}", _layers_fig(label, r)) for label, r in results.items()])
        page.figures([("strength", _strength_fig(results)), ("icl_curve", _icl_curve_fig(results))])
        with page.collapsed("Per-layer numbers (table)"):
            page.table(pd.DataFrame(layer_table(results)), floatfmt="{:.4f}", tall=True)
    if any(r.get("context") for r in results.values()):
        page.heading("Context length")
        page.figures([("context", _context_fig(results))])
        page.table(pd.DataFrame(_rows(results, "context")), floatfmt="{:.4f}")
    for key, heading in (("noisy", "Noisy labels (fraction p of demonstration labels replaced)"),
                         ("ood", "Out-of-distribution shifts")):
        if any(key in r for r in results.values()):
            page.heading(heading)
            page.table(pd.DataFrame(_rows(results, key)), floatfmt="{:.4f}")
    if any("pca" in r for r in results.values()):
        page.heading("PCA of θ_l by task (finite pool)")
        page.figures([(f"pca_{_safe(label)}", _pca_fig(label, r["pca"])) for label, r in results.items()
                      if "pca" in r])
        sep = [{"model": label, "layer": l, "between/within": x["between_within"], "probe acc": x["probe_acc"]}
               for label, r in results.items() if "pca" in r for l, x in enumerate(r["pca"]["layers"])]
        page.table(pd.DataFrame(sep), floatfmt="{:.3f}", tall=True)
    if any("compress" in r for r in results.values()):
        page.heading("Compressed inference (θ at l*, 2-token query passes)")
        page.table(pd.DataFrame([{"model": label, **r["compress"]} for label, r in results.items()
                                 if "compress" in r]), floatfmt="{:.4f}")
    small = {k: {kk: vv for kk, vv in v.items() if kk != "pca"} for k, v in results.items()}
    with page.collapsed("Raw results (JSON)"):
        page.raw("<pre>" + html.escape(json.dumps(small, indent=1)) + "</pre>")
    return page.write(path)


def markdown_summary(results: dict[str, dict]) -> str:
    """Markdown tables (per-layer errors, noisy labels, OOD, separability, compression) for the docs."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731

    def table(rows: list[dict]) -> str:
        if not rows:
            return ""
        head = list(rows[0])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(fmt(r[h]) for h in head) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    out = []
    if all("layers" in r for r in results.values()):
        out.append("Per layer (k demonstrations; error = squared error / E[y²]):\n\n" + table(layer_table(results)))
    for key in ("context", "noisy", "ood"):
        rows = _rows(results, key)
        if rows:
            out.append(f"{key}:\n\n" + table(rows))
    sep = [{"model": label, "layer": l, "between/within": x["between_within"], "probe acc": x["probe_acc"]}
           for label, r in results.items() if "pca" in r for l, x in enumerate(r["pca"]["layers"])]
    if sep:
        out.append("separability of θ_l (8-task pool):\n\n" + table(sep))
    comp = [{"model": label, **r["compress"]} for label, r in results.items() if "compress" in r]
    if comp:
        out.append("compressed inference:\n\n" + table(comp))
    return "\n".join(out)
