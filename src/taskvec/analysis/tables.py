"""The tables of the three analyses' run directories, built from their run store (``results.jsonl``) alone: what the
runner exports (CSV / Parquet / JSON, :mod:`taskvec.artifacts`), the report shows and the claims (C7, C8) read.

Each ``xxx_tables(run_dir)`` returns a lazy :class:`~taskvec.artifacts.Tables` (a table is built when first read)::

    from taskvec.analysis.tables import dpca_tables
    t = dpca_tables("runs/dpca")
    t["per_layer"]        # DataFrame [layers]: variance split, dPCA explained variance, Mahalanobis
    t["c8"].iloc[0]       # the C8 statistics (one row; nested values as dicts / lists)

Before a run has finished its units a table holds what has finished (saliency), or is empty (dPCA: one unit; heads:
until its last unit, ``attention``). The experiments floor: beside :mod:`taskvec.analysis.runners`, which writes its
exports from these tables.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from taskvec.artifacts import Tables
from taskvec.runs import read_saved, store_table

_INT_COLUMNS = ("layer", "prompt", "dim", "n_folds", "n_samples", "n_levels", "dim_length", "dim_label")


# --------------------------------------------------------------------------------------------------- saliency
def saliency_per_layer(flows: pd.DataFrame) -> pd.DataFrame:
    """Per (task, layer) the mean of each flow over prompts with its 95% half-interval (``<flow>_ci``), tasks in
    sorted order; ``flows``: the saliency rows (``task, prompt, layer, loss, <flows>``)."""
    from taskvec.analysis.saliency import FLOWS, SaliencyResult

    if flows.empty:
        return pd.DataFrame()
    parts = [SaliencyResult(g[["prompt", "layer", *FLOWS]], str(g.loss.iloc[0])).flows_per_layer().assign(task=task)
             for task, g in flows.groupby("task")]
    return pd.concat(parts, ignore_index=True)


def saliency_tables(run_dir: str | Path) -> Tables:
    """``saliency``: one row per (task, prompt, layer) with the four flows, the loss and the unit (the store's
    rows; exported as ``saliency.parquet``, read by claim C7); ``per_layer``: :func:`saliency_per_layer`
    (``saliency_per_layer.csv``)."""
    run_dir = Path(run_dir)
    t: Tables = Tables({"saliency": lambda: store_table(run_dir),
                        "per_layer": lambda: saliency_per_layer(t["saliency"])})
    return t


# --------------------------------------------------------------------------------------------------- dPCA
DPCA_PARTS = ("per_layer", "ablation", "probes", "baselines", "c8")
"""The dPCA run's tables, each stored as its own unit ``dpca/<task>/<part>`` (one analysis makes them all)."""
_PACKED = {"probes": "probe"}
"""Runs before that packed every table into one unit ``dpca/<task>`` with a ``table`` column (``probe`` for probes,
the C8 statistics as a JSON string ``c8_json``): still read."""


def _rows_of(results: pd.DataFrame, part: str) -> pd.DataFrame:
    """The store rows of one dPCA table: its unit's, or in a packed run the rows its ``table`` column names."""
    if results.empty or "unit" not in results:
        return pd.DataFrame()
    rows = results[results["unit"].str.endswith(f"/{part}")]
    if rows.empty and "table" in results:
        rows = results[(results["table"] == _PACKED.get(part, part)) & ~results["unit"].str.count("/").gt(1)]
    return rows


def _dpca_part(results: pd.DataFrame, name: str) -> pd.DataFrame:
    """One dPCA table from the store rows, whole-number columns as ints again (a JSONL round trip with NaN-padded
    rows makes them floats)."""
    df = _rows_of(results, name).dropna(axis=1, how="all").drop(columns=["table", "unit"], errors="ignore")
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = df[col].astype(int)
    return df.reset_index(drop=True)


def _dpca_c8(results: pd.DataFrame) -> pd.DataFrame:
    """The C8 statistics (:func:`~taskvec.analysis.dpca_c8.c8_statistics`) as one row whose cells hold the
    nested values; a finished run of an older protocol (no statistics) gives one row of no columns, a run whose
    analysis has not finished no row."""
    rows = _rows_of(results, "c8")
    if len(rows) and "c8" in rows:
        return pd.DataFrame([rows["c8"].iloc[0] or {}])
    if len(rows) and "c8_json" in rows:
        return pd.DataFrame([json.loads(rows["c8_json"].iloc[0])])
    finished_packed = "table" in results and not _rows_of(results, "per_layer").empty
    return pd.DataFrame([{}]) if finished_packed else pd.DataFrame()


def dpca_tables(run_dir: str | Path) -> Tables:
    """The dPCA run's tables: ``per_layer`` (``dpca_per_layer.csv``), ``ablation`` (per prompt, layer and
    ablation: ``dpca_ablation.parquet``), ``ablation_summary`` (accuracy and cost with intervals, empty without an
    ablation: ``dpca_ablation_summary.csv``), ``probes`` (``dpca_probes.csv``), ``baselines`` (one row:
    ``dpca_baselines.json``) and ``c8`` (one row: ``dpca_c8.json``, see :func:`_dpca_c8`)."""
    from taskvec.analysis.dpca import ablation_summary

    run_dir = Path(run_dir)

    def summary() -> pd.DataFrame:
        ablation = t["ablation"]
        if ablation.empty:
            return pd.DataFrame()
        return ablation_summary(ablation, seed=int(read_saved(run_dir)["config"].get("seed", 0)))

    def baselines() -> pd.DataFrame:
        part = _dpca_part(t["results"], "baselines")
        return part.iloc[[0]].reset_index(drop=True) if len(part) else part

    t: Tables = Tables({
        "results": lambda: store_table(run_dir),
        "per_layer": lambda: _dpca_part(t["results"], "per_layer"),
        "ablation": lambda: _dpca_part(t["results"], "ablation"),
        "ablation_summary": summary,
        "probes": lambda: _dpca_part(t["results"], "probes"),
        "baselines": baselines,
        "c8": lambda: _dpca_c8(t["results"]),
    })
    return t


def one_row(table: pd.DataFrame) -> dict:
    """The first row of a one-row table (``baselines``, ``c8``) as a dict (``{}`` when it has none)."""
    return table.iloc[0].to_dict() if len(table) else {}


# --------------------------------------------------------------------------------------------------- heads
def _heads_of(results: pd.DataFrame, unit_pattern: str) -> pd.DataFrame:
    if results.empty:
        return pd.DataFrame()
    return results[results.unit.str.contains(unit_pattern, regex=True)]


def heads_tables(run_dir: str | Path) -> Tables:
    """The heads run's tables, each empty until the run's last unit (``attention``) has finished, and each empty
    where its mode was not run:

    * ``effects``: per (mode, prompt, layer, head) mean-ablation / patching effects (``heads.parquet``);
    * ``attention``: the query's attention on the answers per (prompt, layer, head);
    * ``summary``: per (layer, head) mean effects and attention (``heads_summary.csv``);
    * ``top``: the ``top`` heads by patch (else mean) effect (``heads_top.csv``; modes mean / patch);
    * ``local``, ``local_summary``, ``local_top``, ``local_baselines``: the writers and readers of local vectors
      (``heads_local*.parquet|csv``; modes writers / readers);
    * ``function_vector``: each head's average indirect effect (``heads_function_vector.csv``);
    * ``overlap``: overlap of the top heads of every ranking (``heads_overlap.csv``; two rankings or more).
    """
    from taskvec.analysis.function_vectors import average_indirect_effects
    from taskvec.analysis.heads import summarize, top_heads
    from taskvec.analysis.local_heads import head_overlap, local_summary

    run_dir = Path(run_dir)
    cfg = read_saved(run_dir)["config"]
    modes = list(cfg.get("modes") or ["mean", "patch"])
    top = int(cfg.get("top", 10))
    query_modes = [m for m in modes if m in ("mean", "patch")]
    roles = [m for m in modes if m in ("writers", "readers")]

    def results() -> pd.DataFrame:
        r = store_table(run_dir)
        finished = not r.empty and r.unit.str.endswith("/attention").any()
        return r if finished else pd.DataFrame()

    def effects() -> pd.DataFrame:
        return _heads_of(t["results"], r"/(?:mean|patch)$").dropna(axis=1, how="all")

    def attention() -> pd.DataFrame:
        return _heads_of(t["results"], r"/attention$").dropna(axis=1, how="all").drop(columns=["unit"],
                                                                                       errors="ignore")

    def summary() -> pd.DataFrame:
        if t["results"].empty:
            return pd.DataFrame()
        parts = [g for _, g in t["effects"].groupby("mode")] if len(t["effects"]) else []
        return summarize(*parts, t["attention"])

    def top_table() -> pd.DataFrame:
        s = t["summary"]
        if s.empty or not query_modes:
            return pd.DataFrame()
        return top_heads(s, top, by="patch_effect" if "patch_effect" in s else "mean_effect")

    def local() -> pd.DataFrame:
        rows = _heads_of(t["results"], r"/(?:writers|readers)(?:_null)?$")
        if not roles or rows.empty:
            return pd.DataFrame()
        heads = rows[rows.record == "head"].dropna(axis=1, how="all").drop(columns=["record"])
        return heads.astype({c: int for c in ("prompt", "layer", "head", "local_layer")})  # NaN-padded: floats

    def local_sum() -> pd.DataFrame:
        return local_summary(t["local"].drop(columns=["unit"])) if len(t["local"]) else pd.DataFrame()

    def function_vector() -> pd.DataFrame:
        cie = _heads_of(t["results"], r"/function_vector$").dropna(axis=1, how="all")
        return average_indirect_effects(cie.drop(columns=["unit"])) if len(cie) else pd.DataFrame()

    def overlap() -> pd.DataFrame:
        named = head_rankings(t, modes)
        return head_overlap(named, n=top) if len(named) > 1 else pd.DataFrame()

    t: Tables = Tables({"results": results, "effects": effects, "attention": attention, "summary": summary,
                        "top": top_table, "local": local, "local_summary": local_sum,
                        "local_top": lambda: _local_top(t["local_summary"], modes, top),
                        "local_baselines": lambda: _local_baselines(t["results"], roles),
                        "function_vector": function_vector, "overlap": overlap})
    return t


def head_rankings(t: Tables, modes: list[str]) -> dict[str, pd.DataFrame]:
    """The rankings the overlap table compares, ``{name: DataFrame[layer, head, effect, ...]}``: the writers and
    readers (own head means, in ``modes`` order), the query heads (mode ``mean``), the function-vector heads."""
    named: dict[str, pd.DataFrame] = {}
    if len(t["local_summary"]):
        own = t["local_summary"][t["local_summary"].mean_from == "own"]
        named = {role: own[own.role == role] for role in modes if role in set(own.role)}
    if "mean" in modes and "mean_effect" in t["summary"]:
        named["query"] = t["summary"].rename(columns={"mean_effect": "effect"})[["layer", "head", "effect"]]
    if "function_vector" in modes and len(t["function_vector"]):
        named["function_vector"] = t["function_vector"].rename(columns={"aie": "effect"})[["layer", "head", "effect"]]
    return named


def _local_top(summary: pd.DataFrame, modes: list[str], top: int) -> pd.DataFrame:
    """Per role the ``top`` heads by effect (own head means), beside the null's effect of the same heads."""
    if summary.empty:
        return pd.DataFrame()
    own = summary[summary.mean_from == "own"]
    null = summary[summary.mean_from != "own"].set_index(["role", "layer", "head"])
    tops = []
    for role in [m for m in modes if m in set(own.role)]:
        best = own[own.role == role].sort_values("effect", ascending=False).head(top).copy()
        if len(null):
            idx = list(zip(best.role, best.layer, best["head"]))
            best["null_effect"] = null.effect.reindex(idx).to_numpy()
            best["null_effect_low"] = null.effect_low.reindex(idx).to_numpy()
            best["null_effect_high"] = null.effect_high.reindex(idx).to_numpy()
        tops.append(best)
    return pd.concat(tops) if tops else pd.DataFrame()


def _local_baselines(results: pd.DataFrame, roles: list[str]) -> pd.DataFrame:
    """The positive control of writers / readers per role: the clean local patch vs the unpatched dummy (accuracy
    and target log-prob with 95% t intervals over prompts)."""
    from taskvec.stats import mean_ci, or_nan

    local = _heads_of(results, r"/(?:writers|readers)(?:_null)?$")
    if not roles or local.empty:
        return pd.DataFrame()
    base = local[local.record == "baseline"].dropna(axis=1, how="all")
    rows = []
    for (role, label), g in base.groupby(["role", "mean_from"], sort=False):
        if label != "own":
            continue  # the same prompts and local vectors as "own"
        acc = "local_label_correct" if "local_label_correct" in g else "local_correct"
        row = dict(role=role, local_layer=int(g.local_layer.iloc[0]), n_prompts=len(g))
        for name, col in (("local_acc", acc), ("dummy_acc", acc.replace("local_", "dummy_")),
                          ("local_logprob", "local_target_logprob"), ("dummy_logprob", "dummy_target_logprob")):
            m, lo, hi = or_nan(mean_ci, g[col].to_numpy(dtype=float))
            row.update({name: m, f"{name}_low": lo, f"{name}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["saliency_tables", "saliency_per_layer", "dpca_tables", "heads_tables", "head_rankings", "one_row"]
