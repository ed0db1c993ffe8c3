"""The claims as verdicts (SPEC A.8): each rule on synthetic run tables where the answer is known, the three
outcomes, the ICL gate, and the intervals' sides. No model needed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskvec.claims import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRules, combine, greater, less,
                            verdict_grid, verdicts)
from taskvec.stats import bootstrap_ci, mean_ci, wilson

L = 12


def _rows(task, kind, experiment, scores, **tags):
    return [dict(task=task, kind=kind, experiment=experiment, prompt=i, score=float(s), target_logprob=-1.0, **tags)
            for i, s in enumerate(scores)]


def task_table(task="t", kind="knowledge", n=50, icl=0.9, zero=0.0, glob=0.85, local=0.8, pos_avg=0.4,
               kofn=None, late_cos=0.7, chance=None, seed=0):
    """A run table with the columns the claims read; accuracies are planted as exact fractions of n prompts."""
    rng = np.random.default_rng(seed)

    def frac(p, m=n):
        s = np.zeros(m)
        s[: int(round(p * m))] = 1
        return rng.permutation(s)

    rows = []
    rows += _rows(task, kind, "icl", frac(icl), split="eval", n_demos=8)
    rows += _rows(task, kind, "icl", frac(zero), split="eval", n_demos=0)
    rows += _rows(task, kind, "global", frac(glob), vector="global", split="eval", span="single", layer=6)
    rows += _rows(task, kind, "local", frac(local, 32), vector="local", split="eval", span="single", layer=3)
    rows += _rows(task, kind, "local", frac(pos_avg, 32), vector="pos_avg", split="eval", span="single", layer=4)
    kofn = kofn or {0: 0.1, 1: 0.8, 2: 0.8, 4: 0.85, 8: 0.9}
    for k, p in kofn.items():
        rows += _rows(task, kind, "kofn", frac(p, 32), split="eval", k=k, n=max(kofn), layer=3, subset=0)
    for layer in range(L):
        level = late_cos if layer >= 8 else 0.1
        rows += [dict(task=task, kind=kind, experiment="convergence", split="source", prompt=p, layer=layer,
                      centred_local_global=level + 0.05 * rng.standard_normal()) for p in range(40)]
    chance = chance if chance is not None else (0.5 if kind == "categorization" else 0.01)
    rows.append(dict(task=task, kind=kind, experiment="chance", score=chance))
    return pd.DataFrame(rows)


def cell(v, claim, task):
    row = v[(v.claim == claim) & (v.task == task)]
    assert len(row) == 1, (claim, task)
    return row.iloc[0]


def test_three_outcomes_from_an_interval():
    assert greater(0.1, 0.3, 0.0) == SUPPORTED
    assert greater(-0.3, -0.1, 0.0) == NOT_SUPPORTED
    assert greater(-0.1, 0.2, 0.0) == INCONCLUSIVE
    assert less(0.3, 0.6, 0.65) == SUPPORTED and less(0.7, 0.9, 0.65) == NOT_SUPPORTED
    assert less(0.5, 0.8, 0.65) == INCONCLUSIVE and greater(float("nan"), 1.0, 0.0) == INCONCLUSIVE
    assert combine(SUPPORTED, SUPPORTED) == SUPPORTED
    assert combine(SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE) == NOT_SUPPORTED
    assert combine(SUPPORTED, INCONCLUSIVE) == INCONCLUSIVE


def test_intervals():
    lo, hi = wilson(0, 20)
    assert lo == 0 and 0.1 < hi < 0.2
    m, lo, hi = mean_ci([1] * 25 + [0] * 25)
    assert m == 0.5 and lo < 0.4 and hi > 0.6
    x = np.random.default_rng(0).normal(1.0, 1.0, 200)
    est, lo, hi = bootstrap_ci(lambda a: a.mean(), [x], seed=0)
    assert lo < est < hi and lo > 0.7 and hi < 1.3
    assert bootstrap_ci(lambda a: a.mean(), [x], seed=0) == (est, lo, hi)  # seeded: reproducible


def test_c1_global_matches_icl_on_a_knowledge_task():
    v = verdicts(task_table(icl=0.9, glob=0.9, zero=0.0), L)
    assert cell(v, "C1", "t").verdict == SUPPORTED
    v = verdicts(task_table(icl=0.9, glob=0.1, zero=0.0), L)
    assert cell(v, "C1", "t").verdict == NOT_SUPPORTED
    assert "depth 0.50" in cell(v, "C1", "t").detail  # layer 6 of 12


def test_every_claim_is_inconclusive_when_icl_is_not_above_chance():
    v = verdicts(task_table(kind="categorization", icl=0.5, zero=0.5, glob=0.5), L)
    rows = v[v.task == "t"]
    assert set(rows.verdict) == {INCONCLUSIVE}
    assert rows.detail.str.contains("tests nothing").all()


def test_c2_c3_on_categorization():
    t = task_table(kind="categorization", icl=0.95, zero=0.5, glob=0.5, local=0.9, pos_avg=0.6)
    v = verdicts(t, L)
    assert cell(v, "C2", "t").verdict == SUPPORTED  # Wilson upper of 25/50 = 0.63 < 0.5 + 0.15
    assert cell(v, "C3", "t").verdict == SUPPORTED
    assert cell(v, "C4", "t").verdict == SUPPORTED
    v = verdicts(task_table(kind="categorization", icl=0.95, zero=0.5, glob=0.95, local=0.9), L)
    assert cell(v, "C2", "t").verdict == NOT_SUPPORTED


def test_c5_graded_versus_all_or_nothing():
    graded = {0: 0.5, 4: 0.75, 8: 1.0}
    cliff = {0: 0.6, 4: 0.1, 8: 1.0}  # half the positions patched: worse than none, not in between
    v = verdicts(task_table(kind="categorization", zero=0.5, glob=0.5, kofn=graded), L)
    assert cell(v, "C5", "t").verdict == SUPPORTED
    v = verdicts(task_table(kind="categorization", zero=0.5, glob=0.5, kofn=cliff), L)
    assert cell(v, "C5", "t").verdict == NOT_SUPPORTED
    few = verdicts(task_table(kofn={0: 0.0, 1: 0.9, 2: 0.9, 8: 0.9}), L)
    assert cell(few, "C5", "t").verdict == SUPPORTED
    many = verdicts(task_table(kofn={0: 0.0, 1: 0.1, 2: 0.1, 8: 0.9}), L)
    assert cell(many, "C5", "t").verdict == NOT_SUPPORTED


def test_c6_compares_knowledge_with_categorization_late_layers():
    know = task_table("k", "knowledge", late_cos=0.8)
    cat = task_table("c", "categorization", zero=0.5, glob=0.5, late_cos=0.1)
    v = verdicts(pd.concat([know, cat]), L)
    assert cell(v, "C6", "k").verdict == SUPPORTED and cell(v, "C6", "c").verdict == SUPPORTED
    assert "convergence layer" in cell(v, "C6", "k").detail
    v = verdicts(pd.concat([task_table("k", "knowledge", late_cos=0.1),
                            task_table("c", "categorization", zero=0.5, glob=0.5, late_cos=0.8)]), L)
    assert cell(v, "C6", "k").verdict == NOT_SUPPORTED
    alone = verdicts(know, L)
    assert cell(alone, "C6", "k").verdict == INCONCLUSIVE and "other kind" in cell(alone, "C6", "k").detail


def test_thresholds_are_parameters():
    t = task_table(icl=0.9, glob=0.65, zero=0.0)
    assert cell(verdicts(t, L), "C1", "t").verdict != SUPPORTED  # 0.65 < 0.8 x 0.9
    assert cell(verdicts(t, L, ClaimRules(global_icl_ratio=0.5)), "C1", "t").verdict == SUPPORTED


def test_grid_has_one_row_per_claim_and_a_column_per_task():
    v = verdicts(pd.concat([task_table("k", "knowledge"), task_table("c", "categorization", zero=0.5, glob=0.5)]), L)
    grid = verdict_grid(v)
    assert list(grid.claim) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert {"k", "c"} <= set(grid.columns)
    assert grid.set_index("claim").loc["C1", "c"] == ""  # C1 does not apply to a categorization task


@pytest.mark.parametrize("peak,verdict", [(5, SUPPORTED), (0, NOT_SUPPORTED)])
def test_c7_saliency_peak_depth(tmp_path, peak, verdict):
    rows = [dict(task="t", prompt=p, layer=l, answers_to_query=(1.0 if l == peak else 0.1)) for p in range(20)
            for l in range(L)]
    (tmp_path / "analyses" / "saliency").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "analyses" / "saliency" / "saliency.parquet")
    v = verdicts(task_table(), L, run_dir=tmp_path)
    assert cell(v, "C7", "t").verdict == verdict


@pytest.mark.parametrize("length,label,cost,verdict", [
    ((0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), SUPPORTED),
    ((0.9, 0.7, 1.1), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), NOT_SUPPORTED),
    ((0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.1, -0.3, 0.1), INCONCLUSIVE),
])
def test_c8_reads_the_dpca_statistics(tmp_path, length, label, cost, verdict):
    import json

    ci = lambda v: dict(zip(("estimate", "low", "high"), v))  # noqa: E731
    (tmp_path / "analyses" / "dpca").mkdir(parents=True)
    (tmp_path / "analyses" / "dpca" / "dpca_c8.json").write_text(json.dumps(
        {"length_ratio": ci(length), "label_ratio": ci(label), "early_layer": 3,
         "ablation_cost": {"late_minus_early": ci(cost)}}))
    t = task_table("simple_string", "categorization", zero=0.5, glob=0.5)
    assert cell(verdicts(t, L, run_dir=tmp_path), "C8", "simple_string").verdict == verdict
