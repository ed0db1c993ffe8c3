"""The study's function-vector unit (docs/spec.md A.9; Todd et al., *Function Vectors in Large Language Models*):
the function vector beside the global and local vectors, on the same task, trials and prompts.

* **Head means**: every head's last-token output over the study's ``source`` ICL prompts, within each label
  mapping (as the global vector is built: averaging across mappings erases the mapping).
* **Causal indirect effects** on ``fv_n_cie`` fresh ICL prompts whose demonstration answers are shuffled
  (another seed than every split); the AIE per head over those prompts; the function vector is the sum of the
  top-``fv_k`` heads' mean contributions.
* **Layer**: the vector is *added* at the query of the zero-shot prompts of the selection split, every layer; the
  best layer is chosen there (:func:`taskvec.scoring.select_layer`).
* **Evaluation split**, at that layer: the zero-shot prompts with the function vector, and its two nulls —
  ``random_heads`` (the sum of ``fv_k`` other heads' mean contributions: is it *these* heads?) and ``other_task``
  (the control task's head means through the same heads: is it this task's content?); the shuffled-label prompts
  without (``shuffled``) and with it (``function_vector_shuffled``); on knowledge tasks the natural-text template
  greedily continued without (``natural_clean``) and with it (``natural_fv``), correct when the answer appears in
  the first ``fv_n_tokens`` tokens.

Rows: ``experiment="function_vector"`` (scores, as every study row), ``experiment="fv_heads"`` (one per head:
``layer, head, aie, aie_low, aie_high, n, rank, chosen``).
"""
from __future__ import annotations

import random

import pandas as pd
import torch

from taskvec.analysis.function_vectors import (average_indirect_effects, geometry, head_contributions,
                                               indirect_effects, natural_text_scores, shuffled_label_prompts,
                                               top_heads)
from taskvec.task_run import TaskRun, by_mapping, layer_rows, selected_layer

CIE_SALT = 20_011  # the CIE prompts' seed offset: disjoint from source (seed), select/eval (seed + 10_007)


def _vectors(tr: TaskRun, contrib: torch.Tensor, heads: list[tuple[int, int]], trials) -> torch.Tensor:
    """``[T, L, 1, d]``: for each trial, the sum over ``heads`` of the mean contributions of its mapping
    (``contrib``: ``[P_source, L, H, d]`` per source prompt, averaged here within the mapping), the same at every
    layer (the layer sweep picks where it is added)."""
    per_source = torch.stack([contrib[:, l, h] for l, h in heads]).sum(0)  # [P_source, d]
    fv = by_mapping(tr, per_source, trials)  # [T, d]
    return fv[:, None, None, :].expand(len(trials), tr.lm.n_layers, 1, fv.shape[-1])


def _contributions(tr: TaskRun, outputs: torch.Tensor) -> torch.Tensor:
    """``[P, L, H, d]``: each source prompt's head outputs written into the residual stream (through the output
    projection, and a post-attention norm at that prompt's scale; :func:`head_contributions`); the function vector
    averages these within a mapping."""
    return torch.stack([head_contributions(tr.lm, o) for o in outputs])


def random_heads(n_layers: int, n_heads: int, k: int, exclude: list[tuple[int, int]], seed: int) -> list[tuple[int, int]]:
    """``k`` heads drawn without replacement among those not in ``exclude`` (seeded)."""
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in set(exclude)]
    return random.Random(seed).sample(pool, min(k, len(pool)))


def aie_rows(tr: TaskRun) -> tuple[pd.DataFrame, torch.Tensor]:
    """The indirect-effect scan: ``(AIE table with rank, head outputs [P_source, L, H, hd])``."""
    outputs = tr.head_outputs
    trials = tr.task.sample_trials(tr.cfg.fv_n_cie, tr.cfg.n_demos, seed=tr.cfg.seed + CIE_SALT)
    shuffled = shuffled_label_prompts(tr.lm, trials, tr.template, seed=tr.cfg.seed)
    means = by_mapping(tr, outputs, trials)  # [P_cie, L, H, hd]: each prompt's mapping
    table = indirect_effects(tr.lm, None, shuffled, head_means=means, task=tr.name)
    aie = average_indirect_effects(table)
    aie.insert(0, "rank", range(1, len(aie) + 1))
    return aie, outputs


def unit_function_vector(tr: TaskRun, control: TaskRun) -> list[dict]:
    """The function vector of ``tr``'s task: AIE per head, layer sweep on the selection split, the evaluation
    split at the selected layer with its nulls (``control``: the other task whose head means make the
    ``other_task`` null). Rows as described in the module docstring."""
    lm, cfg = tr.lm, tr.cfg
    _, H, _ = geometry(lm)
    aie, outputs = aie_rows(tr)
    k = min(cfg.fv_k, len(aie))
    chosen = top_heads(aie, k)
    contrib = _contributions(tr, outputs)  # [P_source, L, H, d]
    rows = [dict(r, experiment="fv_heads", chosen=(int(r["layer"]), int(r["head"])) in set(chosen))
            for r in aie.to_dict("records")]
    L = lm.n_layers
    sel = layer_rows(tr, tr.zero_shot("select"), {"function_vector": _vectors(tr, contrib, chosen, tr.select)},
                     "query", {"function_vector": list(range(L))}, "single", "function_vector", "select", mode="add")
    layer = selected_layer(sel, "function_vector", "single")
    other = head_contributions(lm, control.head_outputs)  # [L, H, d]: the control task's mean terms, mappings mixed
    other_fv = torch.stack([other[l, h] for l, h in chosen]).sum(0)
    nulls = random_heads(L, H, k, chosen, cfg.seed)
    evals = {"function_vector": _vectors(tr, contrib, chosen, tr.eval),
             "random_heads": _vectors(tr, contrib, nulls, tr.eval),
             "other_task": other_fv[None, None, :].expand(L, 1, other_fv.shape[-1])}
    ev = layer_rows(tr, tr.zero_shot("eval"), evals, "query", {v: [layer] for v in evals}, "single",
                    "function_vector", "eval", mode="add")
    shuffled = shuffled_label_prompts(lm, tr.eval, tr.template, seed=cfg.seed)
    ev += tr.clean(shuffled, experiment="function_vector", vector="shuffled", span="none", split="eval", layer=-1)
    ev += layer_rows(tr, shuffled, {"function_vector_shuffled": evals["function_vector"]}, "query",
                     {"function_vector_shuffled": [layer]}, "single", "function_vector", "eval", mode="add")
    if not tr.categorization and cfg.fv_template:
        ev += natural_rows(tr, evals["function_vector"][0, 0, 0], layer)
    heads = ";".join(f"{l}.{h}" for l, h in chosen)
    return rows + [dict(r, fv_heads=heads, fv_k=k) for r in sel + ev]


def natural_rows(tr: TaskRun, fv: torch.Tensor, layer: int) -> list[dict]:
    """The natural-text evaluation on the evaluation split's queries: greedy continuation of ``fv_template``
    without and with the vector at ``layer``; rows ``vector`` = ``natural_clean`` / ``natural_fv``, ``score`` =
    the answer appears in the first ``fv_n_tokens`` tokens, ``continuation``."""
    df = natural_text_scores(tr.lm, tr.eval, tr.cfg.fv_template, fv, layer, n_tokens=tr.cfg.fv_n_tokens)
    return [dict(experiment="function_vector", vector=f"natural_{r['condition']}", span="single", split="eval",
                 prompt=int(r["item"]), layer=layer, correct=r["correct"], score=r["correct"],
                 continuation=r["continuation"]) for r in df.to_dict("records")]

