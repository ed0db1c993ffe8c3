"""One self-contained HTML report comparing from-scratch models (e.g. vanilla vs TVP-loss) side by side.

Figures are matplotlib PNGs embedded as base64; tables are pandas HTML. Input: ``{label: evaluate_model(...)}``.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _layers_fig(results: dict) -> str:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, (label, r) in zip(axes[0], results.items()):
        lay = r["layers"]
        xs = range(len(lay["tvp"]))
        ax.plot(xs, lay["tvp"], "o-", label="TVP(l)")
        for name, style in (("random", ":"), ("mean", "--"), ("wrong", "-.")):
            ax.plot(xs, lay[name], style, label=name)
        ax.axhline(lay["icl"], color="k", lw=1, label=f"ICL(k={lay['k']})")
        ax.axhline(lay["zero_shot"], color="gray", lw=1, ls="--", label="zero-shot")
        ax.axvline(r["layer"], color="r", lw=0.5)
        ax.set_title(label)
        ax.set_xlabel("layer l")
    axes[0][0].set_ylabel("error (squared error / E[y²])")
    axes[0][-1].legend(fontsize=7)
    return _png(fig)


def _strength_fig(results: dict) -> str:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, r in results.items():
        ax.plot(r["layers"]["strength"], "o-", label=label)
    ax.axhline(1, color="k", lw=0.5)
    ax.set_xlabel("layer l")
    ax.set_ylabel("strength S(l)")
    ax.legend(fontsize=8)
    return _png(fig)


def _curve_fig(results: dict) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, r in results.items():
        axes[0].plot(r["layers"]["icl_curve"], label=label)
        if "context" in r:
            ks = [c["k"] for c in r["context"]]
            axes[1].plot(ks, [c["icl"] for c in r["context"]], "o-", label=f"{label} ICL")
            axes[1].plot(ks, [c["tvp_layer"] for c in r["context"]], "s--", label=f"{label} TVP(l*)")
    axes[0].set_xlabel("in-context examples i")
    axes[0].set_ylabel("ICL error")
    axes[1].set_xlabel("k demonstrations")
    axes[1].set_ylabel("error")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def _pca_fig(results: dict) -> str:
    rows = [(label, r["pca"]) for label, r in results.items() if "pca" in r]
    if not rows:
        return ""
    n_layers = max(len(p["layers"]) for _, p in rows)
    fig, axes = plt.subplots(len(rows), n_layers, figsize=(2.4 * n_layers, 2.5 * len(rows)), squeeze=False)
    for i, (label, p) in enumerate(rows):
        for l, layer in enumerate(p["layers"]):
            ax = axes[i][l]
            xy = list(zip(*layer["xy"]))
            ax.scatter(xy[0], xy[1], c=p["ids"], cmap="tab10", s=6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label} l={l}\nB/W={layer['between_within']:.2f} probe={layer['probe_acc']:.2f}",
                         fontsize=7)
    return _png(fig)


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0)


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


def write_report(results: dict[str, dict], path: str | Path, title: str = "taskvec: from-scratch models") -> Path:
    """Write the HTML report for ``{label: results}``; returns its path."""
    path = Path(path)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if all("layers" in r for r in results.values()):
        parts.append("<h2>Per-layer TVP error, baselines and ICL</h2>" + _layers_fig(results)
                     + _strength_fig(results))
        parts.append(_table(layer_table(results)))
        parts.append("<h2>ICL curve and context length</h2>" + _curve_fig(results))
    if any("context" in r for r in results.values()):
        parts.append(_table(_rows(results, "context")))
    for key, heading in (("noisy", "Noisy labels (fraction p of demonstration labels replaced)"),
                         ("ood", "Out-of-distribution shifts")):
        if any(key in r for r in results.values()):
            parts.append(f"<h2>{heading}</h2>" + _table(_rows(results, key)))
    if any("pca" in r for r in results.values()):
        parts.append("<h2>PCA of θ_l by task (finite pool)</h2>" + _pca_fig(results))
        sep = [{"model": label, "layer": l, "between/within": x["between_within"], "probe acc": x["probe_acc"]}
               for label, r in results.items() if "pca" in r for l, x in enumerate(r["pca"]["layers"])]
        parts.append(_table(sep))
    if any("compress" in r for r in results.values()):
        parts.append("<h2>Compressed inference (θ at l*, 2-token query passes)</h2>"
                     + _table([{"model": label, **r["compress"]} for label, r in results.items()
                               if "compress" in r]))
    style = ("<style>body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #ddd}img{max-width:100%}</style>")
    small = {k: {kk: vv for kk, vv in v.items() if kk != "pca"} for k, v in results.items()}
    parts.append("<h2>Raw results</h2><details><pre>" + html.escape(json.dumps(small, indent=1)) + "</pre></details>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{style}"
                    f"</head><body>{''.join(parts)}</body></html>")
    return path


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
