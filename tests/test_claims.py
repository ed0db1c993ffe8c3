"""The claims as verdicts (SPEC A.8): each rule on synthetic run tables where the answer is known, the three
outcomes, the ICL gate, and the intervals' sides. No model needed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskvec.claims import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRules, combine, greater, less,
                            verdict_grid, verdicts)
from taskvec.stats import bootstrap_ci, mean_ci, percentile_ci, wilson

L = 12


def _rows(task, kind, experiment, scores, **tags):
    return [dict(task=task, kind=kind, experiment=experiment, prompt=i, score=float(s), target_logprob=-1.0, **tags)
            for i, s in enumerate(scores)]


def task_table(task="t", kind="knowledge", n=50, icl=0.9, zero=0.0, glob=0.85, local=0.8, pos_avg=0.4,
               kofn=None, dummy=0.3, token=0.3, mediated=0.8, dummy_query=0.2, local_layer=3, global_layer=6,
               kofn_wrong=None, chance=None, seed=0):
    """A run table with the columns the claims read; accuracies are planted as exact fractions of n prompts."""
    rng = np.random.default_rng(seed)

    def frac(p, m=n):
        s = np.zeros(m)
        s[: int(round(p * m))] = 1
        return rng.permutation(s)

    rows = []
    rows += _rows(task, kind, "icl", frac(icl), split="eval", n_demos=8)
    rows += _rows(task, kind, "icl", frac(zero), split="eval", n_demos=0)
    rows += _rows(task, kind, "global", frac(glob), vector="global", split="eval", span="single", layer=global_layer)
    rows += _rows(task, kind, "global", frac(0.0), vector="other_task", split="eval", span="single",
                  layer=global_layer)
    rows += _rows(task, kind, "local", frac(dummy, 32), vector="dummy", split="eval", span="none", layer=-1)
    rows += _rows(task, kind, "local", frac(local, 32), vector="local", split="eval", span="single", layer=local_layer)
    rows += _rows(task, kind, "local", frac(token, 32), vector="token_control", split="eval", span="single",
                  layer=local_layer)
    rows += _rows(task, kind, "local", frac(pos_avg, 32), vector="pos_avg", split="eval", span="single", layer=4)
    rows += _rows(task, kind, "mediation", frac(mediated), vector="mediated", split="eval", span="single",
                  layer=global_layer, local_layer=local_layer)
    rows += _rows(task, kind, "mediation", frac(dummy_query), vector="dummy_query", split="eval", span="single",
                  layer=global_layer, local_layer=local_layer)
    kofn = kofn or {0: 0.1, 1: 0.8, 2: 0.8, 4: 0.85, 8: 0.9}
    for fill, curve in (("mean", kofn), ("wrong", kofn_wrong or kofn)):
        for k, p in curve.items():
            rows += _rows(task, kind, "kofn", frac(p, 32), split="eval", k=k, n=max(curve), layer=local_layer,
                          subset=0, fill=fill)
    for layer in range(L):
        rows += [dict(task=task, kind=kind, experiment="convergence", split="eval", prompt=p, layer=layer,
                      centred_separator_global=0.6 + 0.05 * rng.standard_normal(), centred_query_global=0.9,
                      centred_local_local=0.2) for p in range(32)]
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
    assert percentile_ci(np.r_[np.arange(1.0, 1001.0), np.nan, np.inf]) == pytest.approx((25.975, 975.025))
    assert all(map(np.isnan, percentile_ci([np.nan])))


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
    know = task_table("k", "knowledge")  # C2's positive control: global patching works somewhere in the run
    t = task_table(kind="categorization", icl=0.95, zero=0.5, glob=0.5, local=0.9, pos_avg=0.6, dummy=0.5,
                   token=0.5)
    v = verdicts(pd.concat([t, know]), L)
    assert cell(v, "C2", "t").verdict == SUPPORTED  # Wilson upper of 25/50 = 0.63 < 0.5 + 0.15
    assert cell(v, "C3", "t").verdict == SUPPORTED
    assert cell(v, "C4", "t").verdict == SUPPORTED
    v = verdicts(pd.concat([task_table(kind="categorization", icl=0.95, zero=0.5, glob=0.95, local=0.9), know]), L)
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


def test_c6_is_the_mediation_test_with_layer_ordering():
    """Defect 1: C6 compared answer states with the query state (different jobs). Now: the local vectors patched
    into the dummy build a working global vector (mediated − unpatched dummy's query state), local layer before
    the global layer; on categorization the claim is that they do not."""
    know = verdicts(task_table(mediated=0.8, dummy_query=0.2), L)
    assert cell(know, "C6", "t").verdict == SUPPORTED
    assert "mediated" in cell(know, "C6", "t").statistic and "unpatched dummy" in cell(know, "C6", "t").null_control
    assert cell(verdicts(task_table(mediated=0.3, dummy_query=0.3), L), "C6", "t").verdict != SUPPORTED
    assert cell(verdicts(task_table(mediated=0.1, dummy_query=0.4), L), "C6", "t").verdict == NOT_SUPPORTED
    late = verdicts(task_table(local_layer=8, global_layer=6), L)  # the local patch cannot reach the query state
    assert cell(late, "C6", "t").verdict == NOT_SUPPORTED and "≥ global layer" in cell(late, "C6", "t").detail
    cat = dict(kind="categorization", zero=0.5, glob=0.5)
    assert cell(verdicts(task_table(**cat, mediated=0.0, dummy_query=0.0), L), "C6", "t").verdict == SUPPORTED
    assert cell(verdicts(task_table(**cat, mediated=0.9, dummy_query=0.3), L), "C6", "t").verdict == NOT_SUPPORTED
    blind = task_table(**cat, mediated=0.0, dummy_query=0.0, local_layer=8, global_layer=6)
    assert cell(verdicts(blind, L), "C6", "t").verdict == INCONCLUSIVE  # the test could not have found convergence
    alone = verdicts(task_table(), L)  # one task alone is judged: no pooled contrast across kinds any more
    assert cell(alone, "C6", "t").verdict == SUPPORTED


def test_c6_needs_its_positive_controls():
    """Without a working global vector (knowledge) or local vectors that beat the dummy, C6 tests nothing."""
    assert cell(verdicts(task_table(glob=0.0), L), "C6", "t").verdict == INCONCLUSIVE
    no_local = cell(verdicts(task_table(local=0.3, dummy=0.3), L), "C6", "t")
    assert no_local.verdict == INCONCLUSIVE and "positive control not passed" in no_local.detail


def test_local_claims_are_gated_on_beating_the_dummy():
    """Defect 4: local 0.47 = dummy 0.47 gave 'not supported' on C4. Without an effect the verdict is
    inconclusive, whatever the difference."""
    for claim, kw in (("C4", dict(local=0.47, dummy=0.47, pos_avg=0.9)),
                      ("C3", dict(kind="categorization", zero=0.5, glob=0.5, local=0.5, dummy=0.5, token=0.1))):
        row = cell(verdicts(task_table(**kw), L), claim, "t")
        assert row.verdict == INCONCLUSIVE and "local − dummy" in row.positive_control, claim


def test_c4_gap_that_the_answer_tokens_alone_reproduce_is_inconclusive():
    """Defect 2 for C4: Pos Avg averages the A and B token states; when the token-identity control beats Pos Avg as
    well, local > Pos Avg says nothing about local vectors."""
    cat = dict(kind="categorization", zero=0.5, glob=0.5, local=0.95, dummy=0.5, pos_avg=0.4)
    assert cell(verdicts(task_table(**cat, token=0.5), L), "C4", "t").verdict == SUPPORTED
    row = cell(verdicts(task_table(**cat, token=0.95), L), "C4", "t")
    assert row.verdict == INCONCLUSIVE and "answer tokens alone" in row.detail


def test_c3_needs_local_to_beat_its_token_identity_control():
    """Defect 2: local vectors at early layers are the answer token's identity. C3 is supported only when the
    local vector beats the same word's state from another prompt too."""
    cat = dict(kind="categorization", zero=0.5, glob=0.5, local=0.95, dummy=0.5)
    assert cell(verdicts(task_table(**cat, token=0.5), L), "C3", "t").verdict == SUPPORTED
    assert cell(verdicts(task_table(**cat, token=0.95), L), "C3", "t").verdict != SUPPORTED  # just its token
    tok = cell(verdicts(task_table(**{**cat, "local": 0.75}, token=1.0), L), "C3", "t")
    assert tok.verdict == NOT_SUPPORTED and "token-identity" in tok.detail
    assert "token identity" in tok.null_control


def test_c5_is_gated_on_an_effect_of_patching():
    """Defect 3: smollm2 country_capital was 'supported' with k=0 0.47, k=1-2 0.48, k=10 0.47 (patching does
    nothing). acc(n) − acc(0) > 0 must hold first."""
    flat = {0: 0.47, 1: 0.48, 2: 0.48, 8: 0.47}
    row = cell(verdicts(task_table(kofn=flat), L), "C5", "t")
    assert row.verdict == INCONCLUSIVE and "acc(n) − acc(0)" in row.positive_control
    assert "ICL with k demonstrations" in row.detail  # read beside the ICL(k) curve


def test_c5_knowledge_asks_for_most_of_the_effect_not_a_ratio_a_filled_dummy_already_passes():
    """The bare rule acc(few) ≥ 0.8 × acc(n) passes at k = 0 when the filled dummy already does the task."""
    high_floor = {0: 0.75, 1: 0.78, 2: 0.78, 8: 1.0}
    assert cell(verdicts(task_table(kofn=high_floor), L), "C5", "t").verdict == NOT_SUPPORTED


def test_c5_fills_that_disagree_are_inconclusive_and_a_fill_without_effect_is_reported():
    few, many = {0: 0.0, 1: 0.9, 2: 0.9, 8: 0.9}, {0: 0.0, 1: 0.1, 2: 0.1, 8: 0.9}
    row = cell(verdicts(task_table(kofn=few, kofn_wrong=many), L), "C5", "t")
    assert row.verdict == INCONCLUSIVE and "mean-ablated" in row.detail and "wrong answers" in row.detail
    flat = {0: 0.5, 1: 0.5, 2: 0.5, 8: 0.5}
    row = cell(verdicts(task_table(kofn=flat, kofn_wrong=few), L), "C5", "t")
    assert row.verdict == SUPPORTED and "no effect to split" in row.detail


def test_every_verdict_names_its_controls_unit_and_n():
    v = verdicts(pd.concat([task_table("k", "knowledge"), task_table("c", "categorization", zero=0.5, glob=0.5)]), L)
    tested = v[v.estimate.notna()]
    assert (tested.positive_control != "").all() and (tested.null_control != "").all()
    assert (tested.unit != "").all() and (tested.n > 0).all()


def test_c2_needs_global_patching_to_work_somewhere():
    """C2's positive control: a categorization task at chance means nothing if the patch is broken; the run's
    knowledge tasks show it is not."""
    cat = task_table("c", "categorization", zero=0.5, glob=0.5)
    assert cell(verdicts(cat, L), "C2", "c").verdict == INCONCLUSIVE
    both = verdicts(pd.concat([cat, task_table("k", "knowledge")]), L)
    assert cell(both, "C2", "c").verdict == SUPPORTED
    broken = verdicts(pd.concat([cat, task_table("k", "knowledge", glob=0.0)]), L)
    assert cell(broken, "C2", "c").verdict == INCONCLUSIVE


def test_holm_adjustment_of_the_family():
    from taskvec.stats import adjusted_p

    p = [0.01, 0.04, 0.03, float("nan"), 0.005]
    holm = adjusted_p(p, "holm")  # sorted 0.005, 0.01, 0.03, 0.04 x 4, 3, 2, 1, then running max
    assert np.allclose(holm[[4, 0, 2, 1]], [0.02, 0.03, 0.06, 0.06]) and np.isnan(holm[3])
    bh = adjusted_p(p, "bh")  # 0.005x4/1, 0.01x4/2, 0.03x4/3, 0.04x4/4, then running min from the top
    assert np.allclose(bh[[4, 0, 2, 1]], [0.02, 0.02, 0.04, 0.04])


def test_a_borderline_verdict_becomes_inconclusive_after_adjustment():
    tasks = [task_table(f"t{i}", glob=0.85, seed=i) for i in range(6)]
    tasks.append(task_table("edge", icl=0.9, glob=0.83, zero=0.0, seed=9))
    v = verdicts(pd.concat(tasks), L)
    assert {"verdict_adjusted", "p_adjusted", "family"} <= set(v.columns)
    assert (v.p_adjusted.dropna() >= v.p.dropna() - 1e-12).all()
    changed = v[v.verdict != v.verdict_adjusted]
    assert set(changed.verdict_adjusted) <= {INCONCLUSIVE}


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


@pytest.mark.parametrize("curve,verdict", [
    ({5: 1.0}, SUPPORTED),                      # a sharp peak mid-depth
    ({0: 1.0}, NOT_SUPPORTED),                  # a sharp peak at the bottom
    ({2: 1.0, 5: 1.0, 9: 1.0, 11: 1.0}, INCONCLUSIVE),  # a flat top over the depth: the region is wide
])
def test_c7_states_the_peak_as_a_region_that_can_be_wide(curve, verdict):
    """Defect 8: a bootstrap of an argmax gave degenerate intervals ([0.61, 0.61]). The peak is now the region of
    layers not significantly below it. (The saliency rows are the saliency kind's ``tables(run_dir)["saliency"]``.)"""
    rng = np.random.default_rng(0)
    rows = [dict(task="t", prompt=p, layer=l, answers_to_query=curve.get(l, 0.1) + 0.05 * rng.standard_normal())
            for p in range(20) for l in range(L)]
    row = cell(verdicts(task_table(), L, saliency=pd.DataFrame(rows)), "C7", "t")
    assert row.verdict == verdict
    if len(curve) > 1:
        assert row.high - row.low >= (max(curve) - min(curve)) / L - 1e-9


@pytest.mark.parametrize("in_early,length,klass,cost,verdict", [
    (True, (0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), SUPPORTED),
    (False, (0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), NOT_SUPPORTED),  # the peak is not early
    (True, (0.9, 0.7, 1.1), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), NOT_SUPPORTED),
    (True, (0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.1, -0.3, 0.1), INCONCLUSIVE),
    (None, (0.2, 0.1, 0.35), (1.0, 0.9, 1.1), (-0.2, -0.3, -0.1), INCONCLUSIVE),
])
def test_c8_reads_the_dpca_statistics(in_early, length, klass, cost, verdict):
    """Defect 5: the early layer was an argmax over layers 1–11, so 'length peaks early' was never tested; the
    label factor was the word. C8 now reads the fixed early window, where the length peak lies, and the class.
    (The statistics are the dPCA kind's ``tables(run_dir)["c8"]`` row.)"""
    ci = lambda v: dict(zip(("estimate", "low", "high"), v))  # noqa: E731
    c8 = {"task": "simple_string", "length_ratio": ci(length), "class_ratio": ci(klass), "word_ratio": ci((0.1,) * 3),
          "early_window": [1, 4], "length_peak": {"layer": 2, "region": [1, 3], "in_early": in_early},
          "ablation_cost": {"late_minus_early": ci(cost)}}
    t = task_table("simple_string", "categorization", zero=0.5, glob=0.5)
    assert cell(verdicts(t, L, c8=c8), "C8", "simple_string").verdict == verdict


def test_c8_of_an_older_dpca_run_is_inconclusive():
    t = task_table("simple_string", "categorization", zero=0.5, glob=0.5)
    row = cell(verdicts(t, L, c8={"task": "simple_string", "label_ratio": {"estimate": 1.0}}), "C8", "simple_string")
    assert row.verdict == INCONCLUSIVE and "rerun" in row.detail


def test_verdicts_decided_by_a_structural_rule_stay_out_of_the_adjusted_family():
    """A verdict forced by a rule rather than by its test (C6 with the local layer not below the global one, C4
    where the answer tokens beat Pos Avg too, C5 with fills that disagree) has no p value: counting it would make
    every other verdict's adjustment stricter for a test that was never run."""
    cat = dict(kind="categorization", zero=0.5, glob=0.5, local=0.95, dummy=0.5, pos_avg=0.4)
    forced = [task_table("late", local_layer=8, global_layer=6),
              task_table("tok", **cat, token=0.95),
              task_table("fills", kofn={0: 0.0, 1: 0.9, 2: 0.9, 8: 0.9}, kofn_wrong={0: 0.0, 1: 0.1, 2: 0.1, 8: 0.9})]
    v = verdicts(pd.concat(forced), L)
    for claim, task in (("C6", "late"), ("C4", "tok"), ("C5", "fills")):
        row = cell(v, claim, task)
        assert np.isnan(row.p) and np.isnan(row.p_against), (claim, task)
        assert "decided by rule" in row.detail and row.verdict_adjusted == row.verdict
    tested = cell(v, "C6", "tok")  # a verdict reached by its test keeps its p value
    assert np.isfinite(tested.p) or np.isfinite(tested.p_against)
    assert v.family.iloc[0] == int(np.isfinite(v.p.to_numpy(float)).sum())
