"""One table of every vector method on the same task, model and evaluation prompts (docs/spec.md A.9).

For each task of a study run, each method at the layer chosen for it on the selection split, scored on the
evaluation split (95% intervals; differences paired over prompts, seeded percentile bootstrap):

=========================  ===========================  ==========================================================
method                     prompts it is scored on      baseline / nulls (each on the same prompts)
=========================  ===========================  ==========================================================
``icl``                    ICL prompts (all demos)      zero-shot
``zero_shot``              zero-shot prompts            –
``global``                 zero-shot, state replaced    zero-shot / another task's global vector, random vector
``function_vector``        zero-shot, vector added      zero-shot / the same heads' means of another task, k random
                                                        heads of this task
``function_vector (shuffled)`` shuffled-label ICL       the shuffled-label prompt unpatched
``function_vector (text)`` natural-text template        the template unpatched (answer in the first N tokens)
``local``                  dummy prompts, answers       unpatched dummy / the same answer word's state from another
                           replaced                     prompt (token identity), another task's local vectors
=========================  ===========================  ==========================================================

``verdict``: ``works`` — the gain over the baseline and the margin over the strongest null are both above 0 (their
lower 95% bounds); ``not above null`` — it beats the baseline but not, shown, its strongest null (what an artefact
would give);
``no effect`` — the gain's interval lies at or below 0; ``?`` — otherwise. A task where ICL is not above chance and
zero-shot tests nothing (``note``). ``vs_global`` compares a method on zero-shot prompts with the global vector on the
same prompts.

Example::

    from taskvec.method_table import method_table
    method_table(RunStore(run_dir, cfg, resume=True).table())   # task, method, layer, acc, gain, margin, verdict, ...
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from taskvec.claims import ClaimRules, TaskResults
from taskvec.stats import mean_ci

# name, (experiment, vector), the prompts it is scored on, baseline (experiment, vector) or the tk attribute, nulls
METHODS: list[tuple[str, tuple[str, str] | str, str, tuple[str, str] | str | None, list[tuple[str, str]]]] = [
    ("icl", "icl", "ICL prompts", "zero", []),
    ("zero_shot", "zero", "zero-shot prompts", None, []),
    ("global", ("global", "global"), "zero-shot (replace at the query)", "zero",
     [("global", "other_task"), ("global", "random")]),
    ("function_vector", ("function_vector", "function_vector"), "zero-shot (add at the query)", "zero",
     [("function_vector", "other_task"), ("function_vector", "random_heads")]),
    ("function_vector (shuffled)", ("function_vector", "function_vector_shuffled"), "shuffled-label ICL (add)",
     ("function_vector", "shuffled"), []),
    ("function_vector (text)", ("function_vector", "natural_fv"), "natural-text template (generation)",
     ("function_vector", "natural_clean"), []),
    ("local", ("local", "local"), "dummy prompts (replace at the answers)", ("local", "dummy"),
     [("local", "token_control"), ("local", "other_task")]),
]
COLUMNS = ["task", "kind", "method", "prompts", "layer", "n", "acc", "acc_low", "acc_high", "baseline", "baseline_acc",
           "gain", "gain_low", "gain_high", "null", "null_acc", "margin", "margin_low", "margin_high", "vs_global",
           "vs_global_low", "vs_global_high", "verdict", "note"]
NAN = float("nan")


def _series(tk: TaskResults, ref) -> pd.Series:
    if isinstance(ref, str):
        return getattr(tk, ref)
    return tk.vector(*ref)


def _verdict(gain: tuple, margin: tuple | None) -> str:
    if not math.isfinite(gain[1]):
        return "?"
    if gain[2] <= 0:
        return "no effect"
    if gain[1] <= 0:
        return "?"
    if margin is None or (math.isfinite(margin[1]) and margin[1] > 0):
        return "works"
    return "not above null"


def _rows(tk: TaskResults) -> list[dict]:
    rows = []
    gate = tk.icl_gate()
    glob = tk.vector("global", "global")
    for name, ref, prompts, base_ref, null_refs in METHODS:
        s = _series(tk, ref)
        if s.empty:
            continue
        m, lo, hi = mean_ci(s.to_numpy(float))
        layer = None if isinstance(ref, str) else tk.layer(*ref)
        row = dict(task=tk.name, kind=tk.kind, method=name, prompts=prompts,
                   layer=NAN if layer is None or layer < 0 else layer, n=len(s), acc=m, acc_low=lo, acc_high=hi,
                   note=gate or "")
        gain = margin = None
        if base_ref is not None:
            base = _series(tk, base_ref)
            if not base.empty:
                gain, _ = tk.diff(s, base)
                row.update(baseline="zero_shot" if base_ref == "zero" else base_ref[1],
                           baseline_acc=float(base.mean()), gain=gain[0], gain_low=gain[1], gain_high=gain[2])
        nulls = {f"{e}/{v}": tk.vector(e, v) for e, v in null_refs}
        nulls = {k: v for k, v in nulls.items() if not v.empty}
        if nulls:
            strongest = max(nulls, key=lambda k: nulls[k].mean())
            margin, _ = tk.diff(s, nulls[strongest])
            row.update(null=strongest.split("/")[1], null_acc=float(nulls[strongest].mean()), margin=margin[0],
                       margin_low=margin[1], margin_high=margin[2])
        if name == "function_vector" and not glob.empty:
            vs, _ = tk.diff(s, glob)
            row.update(vs_global=vs[0], vs_global_low=vs[1], vs_global_high=vs[2])
        if gain is not None:
            row["verdict"] = "?" if gate else _verdict(gain, margin)
        rows.append(row)
    return rows


def method_table(table: pd.DataFrame, rules: ClaimRules | None = None) -> pd.DataFrame:
    """Every method of every task of a study's results table, side by side (module docstring); columns
    :data:`COLUMNS`, tasks in the order of the table."""
    rules = rules or ClaimRules()
    if table.empty or "task" not in table:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for task in dict.fromkeys(table.task.dropna()):
        rows += _rows(TaskResults(table[table.task == task], rules))
    out = pd.DataFrame(rows)
    return out.reindex(columns=COLUMNS).replace({np.nan: NAN})


def markdown(methods: pd.DataFrame) -> str:
    """The table as Markdown (docs): per task and method, accuracy [95% interval] @ layer, gain over the baseline,
    margin over the strongest null, the verdict."""
    def ci(est, low, high) -> str:
        return "–" if not math.isfinite(est) else f"{est:.2f} [{low:.2f}, {high:.2f}]"

    lines = ["| task | method | layer | accuracy | baseline | gain | strongest null | margin | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in methods.itertuples():
        layer = "" if not math.isfinite(r.layer) else str(int(r.layer))
        base = "" if not isinstance(r.baseline, str) else f"{r.baseline} {r.baseline_acc:.2f}"
        null = "" if not isinstance(r.null, str) else f"{r.null} {r.null_acc:.2f}"
        verdict = r.verdict if isinstance(r.verdict, str) else ""
        lines.append(f"| {r.task} | {r.method} | {layer} | {ci(r.acc, r.acc_low, r.acc_high)} | {base} | "
                     f"{ci(r.gain, r.gain_low, r.gain_high)} | {null} | {ci(r.margin, r.margin_low, r.margin_high)} "
                     f"| {verdict} |")
    return "\n".join(lines)
