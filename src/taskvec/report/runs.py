"""Reports of the runs that are not the study: the analyses (saliency, dPCA, heads), a from-scratch evaluation and
a from-scratch training run. Each is built from its kind's tables (read from the run store, e.g.
:func:`taskvec.analysis.tables.dpca_tables`; never from the CSV exports) and the figures its runner drew, with the
one HTML writer, :class:`taskvec.report.html.Page`. Dispatch by run kind: :func:`taskvec.kinds.write_report`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

import taskvec.artifacts as A
from taskvec.errors import ConfigError
from taskvec.report.html import Page


def _saved(run_dir: Path) -> dict:
    path = run_dir / A.CONFIG
    return json.loads(path.read_text()) if path.exists() else {}


def _note(page: Page, saved: dict, skip: tuple[str, ...] = ()) -> None:
    cfg = saved.get("config", {})
    if cfg:
        page.text("Config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in skip), cls="note")
    src = saved.get("model_source") or {}
    sha = src.get("sha256") or src.get("gguf_sha256")
    bits = []
    if sha:
        bits.append(f"weights sha256 {sha[:16]}…")
    if saved.get("n_layers"):
        bits.append(f"{saved['n_layers']} layers")
    if saved.get("versions"):
        bits.append("versions: " + ", ".join(f"{k} {v}" for k, v in saved["versions"].items()))
    if bits:
        page.text("; ".join(bits) + ".", cls="note")


def _table(tables: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame | None:
    """The run's table ``name``; ``None`` when it is empty (not run yet, or not run at all: e.g. no probes with
    ``ablate_layers=[]``)."""
    table = tables[name]
    return None if table.empty else table.reset_index(drop=True)


def _pngs(run_dir: Path, pattern: str) -> list[Path]:
    return sorted((run_dir / A.FIGURES).glob(pattern))


# --------------------------------------------------------------------------------------------------- analyses
def _saliency(page: Page, run_dir: Path, saved: dict) -> None:
    from taskvec.analysis.tables import saliency_tables

    per_layer = _table(saliency_tables(run_dir), "per_layer")
    flows = ["answers_to_query", "inputs_to_answers", "inputs_to_query", "rest"]
    if per_layer is not None and not per_layer.empty:
        rows = []
        for task, g in per_layer.groupby("task", sort=False):
            row = {"task": task}
            for f in flows:
                if f in g:
                    peak = g.loc[g[f].idxmax()]
                    row[f"{f.replace('_', ' ')}: peak layer"] = int(peak.layer)
            rows.append(row)
        page.heading("Where each flow peaks")
        page.table(pd.DataFrame(rows))
    tasks = list(dict.fromkeys(per_layer.task)) if per_layer is not None else []
    for task in tasks or [None]:
        figs = run_dir / A.FIGURES
        pngs = ([p for p in (figs / f"saliency_{task}.png", figs / f"saliency_{task}_share.png") if p.exists()]
                if task else _pngs(run_dir, "saliency_*.png"))
        if pngs:
            page.heading(f"Saliency flows: {task}" if task else "Saliency flows")
            page.images(pngs, ["mean attention x gradient saliency per flow and layer (95% interval)"
                               if not p.stem.endswith("_share") else "each flow's share of the layer's total"
                               for p in pngs])
    if per_layer is not None:
        with page.collapsed("Per-layer flows (table)"):
            page.table(per_layer, floatfmt="{:.3g}", tall=True)


def _scalars(d: dict, prefix: str = "") -> list[dict]:
    """The scalar entries of a nested dict, as ``{statistic, value}`` rows (short lists of scalars, such as a
    window or a region of layers, as text; longer lists, such as per-layer curves, are left out)."""
    rows = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _scalars(v, name + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            rows.append({"statistic": name, "value": v})
        elif isinstance(v, list) and len(v) <= 4 and all(isinstance(x, (int, float)) for x in v):
            rows.append({"statistic": name, "value": str(v)})
    return rows


def _draw_dpca(run_dir: Path, saved: dict, tables: Mapping[str, pd.DataFrame]) -> None:
    """``figures/dpca_<task>.png|svg`` from the run's tables (drawn here, not by the run: a report needs only the
    directory)."""
    from taskvec.analysis.dpca import DPCAResult
    from taskvec.analysis.tables import one_row
    from taskvec.report.dpca_figures import plot_dpca

    per_layer = _table(tables, "per_layer")
    if per_layer is None:
        return
    probes = _table(tables, "probes")
    cfg = saved.get("config", {})
    task, model = cfg.get("task", ""), cfg.get("model", "")
    (run_dir / A.FIGURES).mkdir(exist_ok=True)
    plot_dpca(DPCAResult(per_layer, tables["ablation"], one_row(tables["baselines"]),
                         probes=probes if probes is not None else pd.DataFrame(), c8=one_row(tables["c8"])),
              run_dir / A.FIGURES / f"dpca_{task}", title=f"dPCA: {task} ({model})")


def _dpca(page: Page, run_dir: Path, saved: dict) -> None:
    from taskvec.analysis.tables import dpca_tables, one_row

    tables = dpca_tables(run_dir)
    _draw_dpca(run_dir, saved, tables)
    pngs = _pngs(run_dir, "dpca_*.png")
    if pngs:
        page.heading("dPCA, separability and subspace ablation")
        page.images(pngs)
    if len(tables["baselines"]):
        page.text("Baselines (local patching accuracy): " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in one_row(tables["baselines"]).items()),
            cls="note")
    summary = _table(tables, "ablation_summary")
    if summary is not None:
        page.heading("Subspace ablation: local patching accuracy and its cost")
        page.table(summary, tall=True)
    if len(tables["c8"]):
        rows = _scalars(one_row(tables["c8"]))
        if rows:
            page.heading("Claim C8 statistics (length vs class separability, fixed early window vs late)")
            page.table(pd.DataFrame(rows), floatfmt="{:.3f}", tall=True)
    for name, label in (("per_layer", "Per-layer variance split, dPCA and Mahalanobis (table)"),
                        ("probes", "Linear probes after ablation (table)")):
        df = _table(tables, name)
        if df is not None:
            with page.collapsed(label):
                page.table(df, floatfmt="{:.3g}", tall=True)


def _heads(page: Page, run_dir: Path, saved: dict) -> None:
    from taskvec.analysis.tables import heads_tables

    tables = heads_tables(run_dir)
    top = _table(tables, "top")
    if top is not None:
        page.heading("Heads with the largest effect")
        page.table(top, floatfmt="{:.3f}")
    pngs = _pngs(run_dir, "heads_*.png")
    if pngs:
        page.heading("Effects per head (layer x head)")
        captions = {"heads_mean": "mean-ablating the head at the query: drop in the answer's log-probability",
                    "heads_patch": "patching the head's ICL output into the dummy prompt at the query",
                    "heads_attention": "the query's attention on the demonstrations' answers",
                    "heads_writers": "writers: mean-ablating the head at the answer positions, the drop in the "
                                     "local vectors' patch score (heads below the local layer)",
                    "heads_readers": "readers: mean-ablating the head at the query of the locally patched dummy, "
                                     "the drop in its score (heads at or above the local layer)"}
        page.images(pngs, [captions.get(p.stem, "") for p in pngs])
    for name, heading in (("local_baselines", "Local vectors: positive control (dummy patched with the "
                                                         "clean local vectors vs unpatched), 95% intervals"),
                          ("local_top", "Writers and readers of local vectors: top heads (effect in "
                                                  "target log-prob, 95% t interval over prompts; null: head means "
                                                  "from another task)"),
                          ("function_vector", "Function-vector heads: average indirect effect on "
                                                        "shuffled-label prompts (probability gain, 95% t interval "
                                                        "over prompts)"),
                          ("overlap", "Overlap of the top heads: writers, readers, query heads, "
                                                "function-vector heads (with the overlap chance gives)")):
        df = _table(tables, name)
        if df is not None:
            page.heading(heading)
            page.table(df.head(20) if name == "function_vector" else df,
                       floatfmt="{:.4f}" if name == "function_vector" else "{:.3f}")
    summary = _table(tables, "summary")
    if summary is not None:
        with page.collapsed("Every head (table)"):
            page.table(summary, floatfmt="{:.3g}", tall=True)


ANALYSES = {"saliency": ("Saliency flows", _saliency), "dpca": ("dPCA by length and label", _dpca),
            "heads": ("Attention heads", _heads)}


def write_analysis_report(run_dir: str | Path, kind: str) -> Path:
    """``report.html`` of a saliency / dpca / heads run directory (from the files its runner wrote)."""
    run_dir = Path(run_dir)
    saved = _saved(run_dir)
    title, body = ANALYSES[kind]
    model = saved.get("config", {}).get("model", "")
    page = Page(f"{title} — {model}" if model else title, run_dir / A.FIGURES)
    _note(page, saved, skip=("analysis",))
    before = len(page.parts)
    body(page, run_dir, saved)
    if len(page.parts) == before:
        raise ConfigError(f"{run_dir} has no {kind} results yet (no tables or figures written)")
    return page.write(run_dir / A.REPORT)


def saliency_report(run_dir: str | Path) -> Path:
    """``report.html`` of a saliency run."""
    return write_analysis_report(run_dir, "saliency")


def dpca_report(run_dir: str | Path) -> Path:
    """``report.html`` of a dPCA run (its figure drawn from the tables)."""
    return write_analysis_report(run_dir, "dpca")


def heads_report(run_dir: str | Path) -> Path:
    """``report.html`` of a heads run."""
    return write_analysis_report(run_dir, "heads")


# ---------------------------------------------------------------------------------------------- from scratch
def write_evaluation_report(run_dir: str | Path) -> Path:
    """``report.html`` of a from-scratch evaluation run (``results.json``, written by ``taskvec evaluate``)."""
    from taskvec.report.evaluation import evaluation_page

    run_dir = Path(run_dir)
    path = run_dir / A.EVAL_RESULTS
    if not path.exists():
        raise ConfigError(f"{run_dir} has no results.json yet: the evaluation has not finished (resume it with "
                          "taskvec evaluate ... --resume)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or not results:
        raise ConfigError(f"{path} holds no model results")
    return evaluation_page(results, run_dir / A.REPORT, config=_saved(run_dir) or None)


def _training_figure(log: pd.DataFrame) -> Figure:
    """One panel per logged curve (loss terms, ICL error, throughput) against the step."""
    cols = [c for c in log.columns if c not in ("step", "unit") and pd.api.types.is_numeric_dtype(log[c])
            and log[c].notna().any()]
    n = max(len(cols), 1)
    per_row = min(n, 3)
    rows = -(-n // per_row)
    fig = Figure(figsize=(3.6 * per_row, 2.6 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, per_row, squeeze=False).ravel()
    for ax in axes[len(cols):]:
        ax.set_axis_off()
    for ax, col in zip(axes, cols):
        ax.plot(log["step"], log[col], color="C0", lw=1.5)
        ax.set(title=col.replace("_", " "), xlabel="step")
        ax.grid(alpha=0.25)
    fig.suptitle("Training curves", fontsize=11)
    return fig


def write_training_report(run_dir: str | Path) -> Path:
    """``report.html`` of a from-scratch training run, from its training curve
    (:func:`taskvec.scratch.train.train_tables`: the run store's logged rows)."""
    from taskvec.scratch.train import train_tables

    run_dir = Path(run_dir)
    log = train_tables(run_dir)["log"]
    if log.empty or "step" not in log:
        raise ConfigError(f"{run_dir} has no logged training steps yet")
    saved = _saved(run_dir)
    page = Page("From-scratch training run", run_dir / A.FIGURES)
    _note(page, saved)
    page.heading("Training curves")
    page.figures([("training", _training_figure(log))])
    page.heading("Last logged step")
    page.table(log.tail(1), floatfmt="{:.4g}")
    with page.collapsed("Every logged step (table)"):
        page.table(log, floatfmt="{:.4g}", tall=True)
    return page.write(run_dir / A.REPORT)
