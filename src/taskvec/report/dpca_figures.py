"""Figures of a dPCA run (:class:`~taskvec.analysis.dpca.DPCAResult`): variance per marginalization, separability
per layer with the early window, the length peak and the subspace ablation per layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from taskvec.analysis.demix import MARGINALIZATIONS
from taskvec.analysis.dpca import DPCAResult
from taskvec.analysis.subspaces import ABLATIONS

_STYLE = {"none": ("black", "o"), "length": ("tab:blue", "s"), "length_1": ("lightskyblue", "D"),
          "label": ("tab:red", "^"), "random_length": ("dimgrey", "v"), "random_label": ("darkgrey", "x")}


def _dodged(ax, df: pd.DataFrame, value: str, low: str | None = None, high: str | None = None,
            sd: str | None = None) -> None:
    """Points (with error bars) per ablation at each layer, side by side: x = ablated layer."""
    layers = sorted(df["layer"].unique())
    names = [a for a in ABLATIONS if a in set(df["ablate"])]
    width = 0.8 / max(1, len(names))
    pos = {l: i for i, l in enumerate(layers)}
    for j, name in enumerate(names):
        g = df[df["ablate"] == name].sort_values("layer")
        x = np.array([pos[l] for l in g["layer"]]) - 0.4 + width * (j + 0.5)
        y = g[value].to_numpy(dtype=float)
        if low and high:
            yerr = np.vstack([y - g[low].to_numpy(dtype=float), g[high].to_numpy(dtype=float) - y])
        elif sd:
            yerr = g[sd].to_numpy(dtype=float)
        else:
            yerr = None
        color, marker = _STYLE.get(name, ("C7", "o"))
        dim = g["dim"].iloc[0] if "dim" in g and len(g) else None
        lab = name if dim is None or pd.isna(dim) or name == "none" else f"{name} ({int(dim)}d)"
        ax.errorbar(x, y, yerr=yerr, fmt=marker, color=color, ms=4, capsize=2, lw=1, label=lab)
    ax.set_xticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("ablated layer")


def _blank(ax, title: str, text: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _interval_bars(ax, items: list[tuple[str, dict | None]], color: str) -> None:
    xs, ys, lo, hi = [], [], [], []
    for i, (name, v) in enumerate(items):
        if v is None or v.get("estimate") is None:
            continue
        xs.append(i)
        ys.append(v["estimate"])
        ok = v.get("low") is not None and v.get("high") is not None and np.isfinite([v["low"], v["high"]]).all()
        lo.append(max(0.0, v["estimate"] - v["low"]) if ok else 0.0)
        hi.append(max(0.0, v["high"] - v["estimate"]) if ok else 0.0)
    ax.bar(xs, ys, color=color, alpha=0.7, yerr=[lo, hi], capsize=4)
    ax.set_xticks(range(len(items)), [n for n, _ in items])
    for x, y in zip(xs, ys):
        ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=8)


def _separability_panels(a_len, a_lab, df: pd.DataFrame, c8: dict) -> None:
    """Length separability per layer (plug-in and cross-validated; C8's early window and length-peak region
    shaded) and class separability, with the word's (token identity) for comparison."""
    for col, lab, style in (("maha_length", "pairs of lengths (plug-in)", "-"),
                            ("maha_length_cv", "pairs of lengths (cross-validated)", "--"),
                            ("maha_length_class", "short vs long (plug-in)", ":")):
        if col in df:
            a_len.plot(df["layer"], df[col], marker="o", ms=3, ls=style, label=lab)
    if c8.get("early_window"):
        a_len.axvspan(c8["early_window"][0] - 0.5, c8["early_window"][1] - 0.5, color="tab:green", alpha=0.1,
                      label="early window")
    peak = c8.get("length_peak") or {}
    if peak.get("region"):
        a_len.axvspan(peak["region"][0] - 0.3, peak["region"][1] + 0.3, color="tab:orange", alpha=0.15,
                      label=f"peak L{peak['layer']}, region (in early: {peak.get('in_early')})")
    a_len.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_len.set_title("length separability (within class when nested)", fontsize=10)
    a_len.legend(fontsize=7)
    for col, lab, style, color in (("maha_label", "class (plug-in)", "-", "tab:red"),
                                   ("maha_label_cv", "class (cross-validated)", "--", "darkred"),
                                   ("maha_word_cv", "word (cross-validated)", ":", "grey")):
        if col in df:
            a_lab.plot(df["layer"], df[col], marker="o", ms=3, ls=style, color=color, label=lab)
    a_lab.legend(fontsize=8)
    vals = df[[c for c in ("maha_label", "maha_label_cv", "maha_word_cv") if c in df]].to_numpy(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size and vals.max() / vals.min() > 30:
        a_lab.set_yscale("log")
    a_lab.set(xlabel="layer", ylabel="Mahalanobis distance")
    a_lab.set_title("class separability (word: token identity)", fontsize=10)


def plot_dpca(result: DPCAResult, path: str | Path, title: str = "dPCA") -> list[Path]:
    """Eight panels, one idea each: variance per marginalization; length Mahalanobis (with C8's early window and
    length-peak region); class (and word) Mahalanobis; C8 separability ratios late/early; local-patching accuracy
    per ablation (95% Wilson); length probe; class probe; C8 length-ablation cost (early, late, late - early). Writes ``path.png`` and ``path.svg``; returns them.
    Uses a bare :class:`matplotlib.figure.Figure` (no pyplot): the matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = result.per_layer
    fig = Figure(figsize=(18, 7.5))
    axes = fig.subplots(2, 4)
    (a_var, a_len, a_lab, a_ratio), (a_acc, a_plen, a_plab, a_cost) = axes
    for m in MARGINALIZATIONS:
        a_var.plot(df["layer"], df[f"var_{m}"], marker="o", ms=3, label="class" if m == "label" else m)
    a_var.set(xlabel="layer", ylabel="fraction of cell-mean variance", ylim=(0, 1.02))
    a_var.set_title("variance per marginalization", fontsize=10)
    a_var.legend(fontsize=8)
    c8 = result.c8 or {}
    _separability_panels(a_len, a_lab, df, c8)
    if c8.get("length_ratio") and c8.get("early_window"):  # (a C8 of the old format has no early window)
        _interval_bars(a_ratio, [("length", c8["length_ratio"]), ("class", c8.get("class_ratio")),
                                 ("word", c8.get("word_ratio"))], "tab:purple")
        a_ratio.axhline(0.5, ls="--", color="tab:blue", lw=1)
        a_ratio.text(-0.45, 0.5, "length < 0.5", color="tab:blue", fontsize=7, va="bottom")
        a_ratio.axhline(0.8, ls=":", color="tab:red", lw=1)
        a_ratio.text(1.45, 0.8, "class > 0.8", color="tab:red", fontsize=7, va="bottom", ha="right")
        a_ratio.axhline(1.0, color="grey", lw=0.5)
        a_ratio.set_ylabel("late mean / early-window mean (cross-validated)")
        lo, hi = c8["early_window"]
        a_ratio.set_title(f"C8 separability late/early (early = L{lo}-{hi - 1}, "
                          f"late = L{c8['late_layers'][0]}-{c8['late_layers'][-1]})", fontsize=10)
    else:
        _blank(a_ratio, "C8 separability late/early", c8.get("reason") or "not computed")

    summary = result.ablation_summary() if not result.ablation.empty else pd.DataFrame()
    if not summary.empty:
        _dodged(a_acc, summary, "accuracy", "low", "high")
        for key, style in (("icl", "--"), ("dummy", ":"), ("chance", "-.")):
            if key in result.baselines and np.isfinite(result.baselines[key]):
                a_acc.axhline(result.baselines[key], ls=style, color="grey", lw=1)
                a_acc.text(-0.45, result.baselines[key], key, fontsize=7, va="bottom", color="grey")
        a_acc.set(ylabel="accuracy (95% Wilson)", ylim=(-0.02, 1.02))
        a_acc.set_title("local patching, subspace ablated", fontsize=10)
        a_acc.legend(fontsize=7, ncol=2)
    else:
        _blank(a_acc, "local patching, subspace ablated", "no ablation run")
    probes = result.probes
    for ax, factor in ((a_plen, "length"), (a_plab, "label")):
        p = probes[probes["factor"] == factor] if not probes.empty else pd.DataFrame()
        factor = "class" if factor == "label" else factor
        if p.empty:
            _blank(ax, f"{factor} decodability (probe)", "no probes run")
            continue
        _dodged(ax, p, "accuracy", sd="accuracy_sd")
        ax.axhline(p["chance"].iloc[0], ls="-.", color="grey", lw=1)
        ax.axhline(p["majority"].iloc[0], ls=":", color="grey", lw=1)
        ax.text(-0.45, p["chance"].iloc[0], "chance", fontsize=7, va="bottom", color="grey")
        ax.set(ylabel="CV accuracy (± SD over folds)", ylim=(-0.02, 1.02))
        ax.set_title(f"{factor} decodability after ablation (linear probe)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    cost = c8.get("ablation_cost")
    if cost and any(cost.get(k) for k in ("early", "late", "late_minus_early")):
        _interval_bars(a_cost, [("early", cost["early"]), ("late", cost["late"]),
                                ("late - early", cost["late_minus_early"])], "tab:blue")
        a_cost.axhline(0, color="grey", lw=0.5)
        a_cost.set_ylabel("accuracy(none) - accuracy(length ablated)")
        a_cost.set_title(f"C8 length-ablation cost (early L{cost['early_layers']}, late L{cost['late_layers']})",
                         fontsize=10)
    else:
        _blank(a_cost, "C8 length-ablation cost", "needs ablated layers early and late")
    fig.suptitle(title)
    fig.tight_layout()
    from taskvec.figures import save_figure

    return save_figure(fig, path)
