"""The tables of a study run directory, built from its run store (``results.jsonl``) and those of the analyses run
beside it (``analyses/saliency``, ``analyses/dpca``): what the study's report shows and exports, and what the claims
read (:func:`taskvec.claims.verdicts` gets the saliency rows and the C8 statistics from here, never from files)::

    from taskvec.study_tables import study_tables
    t = study_tables("runs/local-global")
    t["results"]     # DataFrame: every result row of every unit (task, experiment, vector, layer, prompt, score, ...)
    t["verdicts"]    # the claims C1-C8 as verdicts (summary.csv)
    t["evaluation"]  # evaluation-split accuracy per task and vector at its selected layer (evaluation.csv)
    t["methods"]     # every vector method side by side (methods.csv)

The experiments floor, beside :mod:`taskvec.study`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import taskvec.artifacts as A
from taskvec.analysis.tables import dpca_tables, one_row, saliency_tables
from taskvec.claims import ClaimRules, verdicts
from taskvec.method_table import method_table
from taskvec.runs import read_saved, store_table
from taskvec.stats import mean_ci


def n_layers_of(saved: dict, table: pd.DataFrame) -> int:
    """The model's layer count: from ``config.json`` (``n_layers``), else one past the highest layer in the rows."""
    return int(saved.get("n_layers") or (table.layer.max() + 1))


def rules_of(saved: dict) -> ClaimRules:
    """The claims' thresholds the run was made with (saved in its config)."""
    return ClaimRules(**saved["config"].get("claims", {}))


def analysis_saliency(run_dir: str | Path) -> pd.DataFrame | None:
    """The saliency rows of the study's saliency analysis (claim C7, from its store), once it has finished (its
    runner has written its exports after its last unit); ``None`` before (or without ``--with-analyses``)."""
    sub = Path(run_dir) / A.ANALYSES / "saliency"
    if not (sub / A.CONFIG).is_file() or not (sub / A.SALIENCY).is_file():
        return None
    rows = saliency_tables(sub)["saliency"]
    return None if rows.empty else rows


def analysis_c8(run_dir: str | Path) -> dict | None:
    """The C8 statistics of the study's dPCA analysis (``{}`` for a dPCA of an older protocol); ``None`` before it
    has finished (or without ``--with-analyses``)."""
    sub = Path(run_dir) / A.ANALYSES / "dpca"
    if not (sub / A.CONFIG).is_file():
        return None
    c8 = dpca_tables(sub)["c8"]
    return one_row(c8) if len(c8) else None


EVAL_VECTORS = [  # (experiment, vector, what it is)
    ("global", "global", "global vector → zero-shot"),
    ("global", "demo_separators", "demonstrations' separator states → zero-shot (role-matched)"),
    ("global", "random", "control: norm-matched random → zero-shot"),
    ("global", "other_task", "control: other task's global vector → zero-shot"),
    ("local", "local", "local vectors → dummy prompt"),
    ("local", "token_control", "token-identity control: same answer word, other prompt"),
    ("local", "pos_avg", "Pos Avg → dummy prompt"),
    ("local", "trial_avg", "Trial Avg (same label mapping) → dummy prompt"),
    ("local", "trial_avg_mixed", "null control: Trial Avg across mappings"),
    ("local", "shuffled_slots", "null control: own local vectors in shuffled slots"),
    ("local", "slot_mean", "null control: the dummy's slot means"),
    ("local", "other_task", "null control: other task's local vectors"),
    ("local", "dummy", "dummy prompt unpatched"),
    ("mediation", "mediated", "mediation: query state of the locally patched dummy → zero-shot"),
    ("mediation", "dummy_query", "mediation null: query state of the unpatched dummy → zero-shot"),
    ("function_vector", "function_vector", "function vector (top-k heads) added → zero-shot"),
    ("function_vector", "random_heads", "null control: k random heads' mean outputs added → zero-shot"),
    ("function_vector", "other_task", "null control: other task's means of the same heads added → zero-shot"),
    ("function_vector", "shuffled", "shuffled-label ICL prompt unpatched"),
    ("function_vector", "function_vector_shuffled", "function vector added → shuffled-label ICL prompt"),
    ("function_vector", "natural_clean", "natural-text template, generated (answer in the first tokens)"),
    ("function_vector", "natural_fv", "function vector added → natural-text template, generated"),
]


def baselines(t: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """ICL (most demonstrations), zero-shot and chance of one task's rows: ``{name: (mean, low, high)}``."""
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
        for name, (m, lo, hi) in baselines(t).items():
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
    return pd.DataFrame(rows).astype({"layer": "Int64", "n": "Int64"})


def study_tables(run_dir: str | Path) -> A.Tables:
    """``results`` (the store's rows, ``results.parquet``), ``verdicts`` (:func:`taskvec.claims.verdicts` with the
    analyses' C7 and C8, ``summary.csv``), ``evaluation`` (:func:`evaluation_table`, ``evaluation.csv``) and
    ``methods`` (:func:`taskvec.method_table.method_table`,
    ``methods.csv``); lazy (:class:`~taskvec.artifacts.Tables`)."""
    run_dir = Path(run_dir)
    saved = read_saved(run_dir)

    def verdict_table() -> pd.DataFrame:
        table = t["results"]
        return verdicts(table, n_layers_of(saved, table), rules_of(saved), saliency=analysis_saliency(run_dir),
                        c8=analysis_c8(run_dir))

    t = A.Tables({"results": lambda: store_table(run_dir), "verdicts": verdict_table,
                  "evaluation": lambda: evaluation_table(t["results"]),
                  "methods": lambda: method_table(t["results"], rules_of(saved))})
    return t
