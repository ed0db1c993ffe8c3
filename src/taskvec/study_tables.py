"""The tables of a study run directory, built from its run store (``results.jsonl``) and those of the analyses run
beside it (``analyses/saliency``, ``analyses/dpca``): what the study's report shows and exports, and what the claims
read (:func:`taskvec.claims.verdicts` gets the saliency rows and the C8 statistics from here, never from files)::

    from taskvec.study_tables import study_tables
    t = study_tables("runs/local-global")
    t["results"]     # DataFrame: every result row of every unit (task, experiment, vector, layer, prompt, score, ...)
    t["verdicts"]    # the claims C1-C8 as verdicts (summary.csv)
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


def study_tables(run_dir: str | Path) -> A.Tables:
    """``results`` (the store's rows, ``results.parquet``), ``verdicts`` (:func:`taskvec.claims.verdicts` with the
    analyses' C7 and C8, ``summary.csv``) and ``methods`` (:func:`taskvec.method_table.method_table`,
    ``methods.csv``); lazy (:class:`~taskvec.artifacts.Tables`)."""
    run_dir = Path(run_dir)
    saved = read_saved(run_dir)

    def verdict_table() -> pd.DataFrame:
        table = t["results"]
        return verdicts(table, n_layers_of(saved, table), rules_of(saved), saliency=analysis_saliency(run_dir),
                        c8=analysis_c8(run_dir))

    t = A.Tables({"results": lambda: store_table(run_dir), "verdicts": verdict_table,
                  "methods": lambda: method_table(t["results"], rules_of(saved))})
    return t
