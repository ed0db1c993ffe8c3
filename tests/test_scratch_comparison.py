"""Vanilla vs TVP-loss over seeds (taskvec.scratch.comparison): the intervals over seeds, each verdict rule on
planted seed tables where the answer is known, the config's one-line errors, and a real (tiny) comparison end to
end: units, resume without recomputation, workers giving the numbers of one process, the report."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from taskvec.claims import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from taskvec.errors import ConfigError, EmptyInputError, TooFewTrialsError
import taskvec.scratch.comparison as comparison
from taskvec.claims.from_scratch import MIN_ICL_GAIN, NOT_REPRODUCED, PREDATES, claim_overall
from taskvec.scratch.comparison import (ComparisonConfig, aggregate, below_paper_scale, load, markdown_summary,
                                        seed_table, statistic_shown, task_label, verdict_overview, verdict_shown,
                                        verdicts)
from taskvec.kinds import run_comparison
from taskvec.stats import or_nan, t_ci, welch_ci


def test_t_interval_and_welch():
    m, lo, hi = t_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) · s / √n
    with pytest.raises(TooFewTrialsError):  # one seed: no spread to estimate
        t_ci([1.0])
    with pytest.raises(EmptyInputError):
        t_ci([])
    assert math.isnan(or_nan(t_ci, [1.0])[1]) and or_nan(t_ci, [1.0])[0] == 1.0 and math.isnan(or_nan(t_ci, [])[0])
    assert t_ci([1.0, float("nan"), 3.0])[0] == 2.0
    d, lo, hi = welch_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d == 0 and lo < 0 < hi
    d, lo, hi = welch_ci([10.0, 10.1, 9.9], [0.0, 0.1, -0.1])
    assert d == pytest.approx(10.0) and lo > 9.5 and hi < 10.5
    # equal variances and sizes: Welch's df = 2(n-1) = 4
    assert hi - d == pytest.approx(2.776445 * math.sqrt(2 * 0.01 / 3), rel=1e-5)


def planted(icl=0.1, zero=0.9, s_xy=0.8, s_sxy=0.05, s_tvp=0.9, icl_tvp=None, noisy_gap=-0.2, ood_gap=-0.1,
            rand_s=-0.5, seeds=(0, 1, 2), degradation=True, wrong_s=None) -> pd.DataFrame:
    """A seed table with the metrics the verdicts read; per-seed jitter ±0.01. ``noisy_gap`` / ``ood_gap``: how
    much more the TVP arm's error grows from its own clean error than vanilla's (``degradation=False``: a run
    evaluated before the noisy/OOD rows recorded their clean error)."""
    rows = []
    for layout in ("x→y", "*xy"):
        for arm in ("vanilla", "tvp"):
            for i, seed in enumerate(seeds):
                j = 0.01 * (i - 1)
                a_icl = icl if arm == "vanilla" else (icl_tvp if icl_tvp is not None else icl)

                def add(metric, value, layer=-1, **extra):
                    rows.append(dict(layout=layout, arm=arm, seed=seed, metric=metric, layer=layer,
                                     value=value + j, **extra))

                add("icl", a_icl)
                add("zero_shot", zero)
                s_sel = s_xy if layout == "x→y" else s_sxy
                add("strength_selected", s_sel if arm == "vanilla" else s_tvp, 2)
                add("strength_lstar", s_tvp if arm == "tvp" else 0.0, 2)
                for where in ("selected", "lstar"):
                    add(f"random_strength_{where}", rand_s, 2)
                    if wrong_s is not None:
                        add(f"wrong_strength_{where}", wrong_s, 2)
                for layer in range(4):
                    add("strength", s_tvp if arm == "tvp" and layer == 2 else 0.1, layer)
                noisy, ood = 0.3 + (noisy_gap if arm == "tvp" else 0), 0.2 + (ood_gap if arm == "tvp" else 0)
                add("noisy_icl", a_icl + noisy, p=0.25)
                add("noisy_icl", a_icl, p=0.0)
                add("ood_icl", a_icl, shift="in-distribution")
                for shift in ("x×2", "w×2"):
                    add("ood_icl", a_icl + ood, shift=shift)
                if degradation:
                    add("noisy_degradation", noisy, p=0.25)
                    add("noisy_degradation", 0.0, p=0.0)
                    add("ood_degradation", 0.0, shift="in-distribution")
                    for shift in ("x×2", "w×2"):
                        add("ood_degradation", ood, shift=shift)
    return pd.DataFrame(rows)


CFG = ComparisonConfig(train={"task": {"name": "token_offset"}, "preset": "tiny"},
                       arms=[{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}])


def verdict(v: pd.DataFrame, claim: str, layout: str, arm: str = "tvp", condition: str | None = None) -> str:
    return verdict_row(v, claim, layout, arm, condition).verdict


def verdict_row(v: pd.DataFrame, claim: str, layout: str, arm: str = "tvp", condition: str | None = None):
    row = v[(v.claim == claim) & (v.layout == layout) & (v.arm == arm)]
    if condition is not None:
        row = row[row.condition == condition]
    assert len(row) == 1, (claim, layout, arm, condition)
    return row.iloc[0]


def test_each_rule_supported_when_planted():
    v = verdicts(planted(), CFG)
    assert verdict(v, "B1", "x→y vs *xy", "vanilla") == SUPPORTED
    for layout in ("x→y", "*xy"):
        assert verdict(v, "B0", layout, "vanilla") == SUPPORTED
        for claim in ("B0", "B2", "B3", "B4"):
            assert verdict(v, claim, layout) == SUPPORTED, claim
        for shift in ("x×2", "w×2"):
            assert verdict(v, "B5", layout, condition=shift) == SUPPORTED, shift
    row = v[(v.claim == "B3") & (v.layout == "x→y")].iloc[0]
    assert row.estimate == pytest.approx(0.0) and row.low < 0 < row.high  # an interval over seeds, not a point


def test_b2_is_task_specific():
    """Issue 21, item 7: the wrong-task control was computed but no verdict used it. A vector another task's
    vector matches (it only says "do ICL") is no task vector."""
    assert verdict(verdicts(planted(wrong_s=0.1), CFG), "B2", "x→y") == SUPPORTED
    row = verdict_row(verdicts(planted(wrong_s=0.9), CFG), "B2", "x→y")
    assert row.verdict == NOT_SUPPORTED and "another task's vector" in row.detail
    assert "task specificity not tested" in verdict_row(verdicts(planted(), CFG), "B2", "x→y").detail


def test_each_rule_refuted_when_planted_the_other_way():
    v = verdicts(planted(s_xy=0.1, s_tvp=0.1, icl_tvp=0.6, noisy_gap=0.2, ood_gap=0.2, rand_s=0.9), CFG)
    assert verdict(v, "B1", "x→y vs *xy", "vanilla") == NOT_SUPPORTED
    for claim in ("B0", "B2", "B3", "B4"):
        assert verdict(v, claim, "x→y") == NOT_SUPPORTED, claim
    assert set(v[v.claim == "B5"].verdict) == {NOT_SUPPORTED}


def test_every_verdict_is_inconclusive_when_icl_was_not_learned():
    v = verdicts(planted(icl=0.9, zero=0.9), CFG)
    assert set(v.verdict) == {INCONCLUSIVE}
    assert v.detail.str.contains("ICL not learned").all()


def test_wide_seed_spread_is_inconclusive():
    t = planted()
    t.loc[(t.metric == "strength_lstar") & (t.arm == "tvp"), "value"] = np.tile([0.0, 0.9, 1.2], 2)
    v = verdicts(t, CFG)
    assert verdict(v, "B2", "x→y") == INCONCLUSIVE  # mean 0.7 but the t interval over 3 seeds reaches below 0.5


def test_a_seed_without_s_makes_its_verdict_inconclusive_not_dropped():
    """A TVP-loss model whose own ICL did not form has no S; the other two seeds alone would be 'supported'."""
    t = planted()
    t.loc[(t.metric == "strength_lstar") & (t.arm == "tvp") & (t.layout == "x→y") & (t.seed == 1), "value"] = np.nan
    v = verdicts(t, CFG)
    assert verdict(v, "B2", "x→y") == INCONCLUSIVE and verdict(v, "B2", "*xy") == SUPPORTED
    row = v[(v.claim == "B2") & (v.layout == "x→y")].iloc[0]
    assert "S defined for 2 of 3 seeds" in row.detail and row.estimate > 0.5
    assert (row.seeds_with_s, row.seeds) == (2, 3)  # the same fact as columns of verdicts.csv
    full = v[(v.claim == "B2") & (v.layout == "*xy")].iloc[0]
    assert (full.seeds_with_s, full.seeds) == (3, 3)
    b1 = v[v.claim == "B1"].iloc[0]
    assert (b1.seeds_with_s, b1.seeds) == (6, 6)  # both layouts' vanilla seeds
    assert v[v.claim.isin(["B3", "B4", "B5"])].seeds_with_s.isna().all()  # not judged on S
    shown = {(r.claim, r.layout): statistic_shown(r) for r in v.itertuples() if r.arm == "tvp"}
    assert shown[("B2", "x→y")] == "S(l*) of the TVP-loss model (S defined for 2 of 3 seeds)"
    assert shown[("B2", "*xy")] == "S(l*) of the TVP-loss model"  # nothing to say when every seed has S


def test_robustness_compares_each_models_degradation_not_its_absolute_error():
    """The TVP arm's noisy and OOD errors are the lower ones only because its clean error is lower (0.1 vs 0.3); its
    own error grows more (+0.4 vs +0.3 with noisy labels): B4/B5 are difference-in-differences, not supported."""
    t = planted(icl=0.3, icl_tvp=0.1, noisy_gap=0.1, ood_gap=0.1)
    absolute = t[(t.metric == "noisy_icl") & (t.p == 0.25)].groupby("arm").value.mean()
    assert absolute["tvp"] < absolute["vanilla"]  # what the old rule compared (it said 'supported')
    v = verdicts(t, CFG)
    for layout in ("x→y", "*xy"):
        row = verdict_row(v, "B4", layout, condition="p = 0.25")
        assert row.verdict == NOT_SUPPORTED and row.estimate == pytest.approx(0.1)
        assert "noisy − clean" in row.statistic and "degradation" in row.detail
        for shift in ("x×2", "w×2"):
            assert verdict(v, "B5", layout, condition=shift) == NOT_SUPPORTED


def test_robustness_is_inconclusive_for_an_arm_that_never_learned_icl():
    """Linear regression x→y tvp-l2: ICL 1.231 = zero-shot, '25% noisy' 0.773. Its 'degradation' (−0.46) would make
    it the more robust arm; an arm is compared only where its own ICL formed, in every seed."""
    t = planted(zero=1.23)
    tvp = (t.arm == "tvp") & (t.layout == "x→y")
    t.loc[tvp & (t.metric == "icl"), "value"] = t.loc[tvp & (t.metric == "zero_shot"), "value"].to_numpy()
    noisy = tvp & (t.p == 0.25)
    t.loc[noisy & (t.metric == "noisy_icl"), "value"] = 0.773
    t.loc[noisy & (t.metric == "noisy_degradation"), "value"] = 0.773 - 1.23
    v = verdicts(t, CFG)
    for claim in ("B4", "B5"):
        rows = v[(v.claim == claim) & (v.layout == "x→y") & (v.arm == "tvp")]
        assert (rows.verdict == INCONCLUSIVE).all() and rows.detail.str.contains("ICL not learned by tvp").all()
    assert verdict(v, "B4", "*xy") == SUPPORTED  # the other layout, where it learned, is judged
    # one seed of five whose ICL barely beats zero-shot (5 %): the interval over seeds says 'learned', the seed not
    t = planted(seeds=(0, 1, 2, 3, 4))
    one = (t.arm == "tvp") & (t.layout == "x→y") & (t.seed == 4)
    t.loc[one & (t.metric == "icl"), "value"] = 0.95 * t.loc[one & (t.metric == "zero_shot"), "value"].to_numpy()
    row = verdict_row(verdicts(t, CFG), "B4", "x→y")
    assert row.verdict == INCONCLUSIVE and "in 4 of 5 seeds" in row.detail


def test_b5_is_one_verdict_per_shift_not_an_average():
    """Shifts of different scale are not averaged: better under x×2, worse under w×2."""
    t = planted()
    tvp = (t.arm == "tvp") & (t.metric == "ood_degradation")
    t.loc[tvp & (t["shift"] == "w×2"), "value"] += 0.4  # vanilla +0.2, TVP-loss +0.5
    v = verdicts(t, CFG)
    b5 = v[(v.claim == "B5") & (v.layout == "x→y") & (v.arm == "tvp")]
    assert list(b5.condition) == ["x×2", "w×2"]
    assert list(b5.verdict) == [SUPPORTED, NOT_SUPPORTED]
    assert "under w×2 (shifted − clean" in b5.iloc[1].statistic
    assert len(v[v.claim == "B4"]) == 2 and set(v[v.claim == "B4"].condition) == {"p = 0.25"}


def test_a_table_without_clean_errors_makes_b4_b5_inconclusive():
    """A run evaluated before the noisy/OOD rows recorded their clean error: B4/B5 ask for a rerun."""
    v = verdicts(planted(degradation=False), CFG)
    rob = v[v.claim.isin(["B4", "B5"])]
    assert len(rob) == 6 and (rob.verdict == INCONCLUSIVE).all()
    assert (rob.detail == PREDATES).all()
    assert verdict(v, "B3", "x→y") == SUPPORTED  # the other claims are unaffected


def test_seed_table_degradation_from_clean_icl(tmp_path):
    """noisy_degradation / ood_degradation = the row's error − its clean_icl; none for a row without clean_icl."""
    lay = {"icl": 0.1, "zero_shot": 0.9, "tvp": [0.8, 0.2], "random": [0.9, 0.9]}
    result = {"layer": 1, "layers": lay,
              "noisy": [{"p": 0.25, "icl": 0.5, "tvp_layer": 0.6, "clean_icl": 0.1}],
              "ood": [{"shift": "x×2", "icl": 0.4, "tvp_layer": 0.7, "clean_icl": 0.1},
                      {"shift": "w×2", "icl": 0.3, "tvp_layer": 0.7}]}
    row = {"layout": "x→y", "arm": "vanilla", "seed": 0, "selected_layer": 1, "result": result}
    (tmp_path / "results.jsonl").write_text(json.dumps({"unit": "eval/x-y/vanilla/seed-0", "rows": [row]}) + "\n")
    t = seed_table(tmp_path)
    deg = t[t.metric.str.endswith("_degradation")]
    assert list(zip(deg.metric, deg.value.round(6))) == [("noisy_degradation", 0.4), ("ood_degradation", 0.3)]
    assert list(deg["shift"].fillna("")) == ["", "x×2"] and deg.p.iloc[0] == 0.25


def test_a_claim_mostly_inconclusive_is_inconclusive_overall(monkeypatch):
    assert claim_overall([SUPPORTED] + [NOT_SUPPORTED] * 2 + [INCONCLUSIVE] * 15) == (
        INCONCLUSIVE, "most cells inconclusive")
    assert claim_overall([NOT_SUPPORTED] * 2 + [INCONCLUSIVE] * 2)[0] == INCONCLUSIVE  # half is not most
    assert claim_overall([NOT_SUPPORTED] * 3 + [INCONCLUSIVE] * 2) == (NOT_SUPPORTED, "")
    assert claim_overall([SUPPORTED, NOT_SUPPORTED, SUPPORTED]) == (INCONCLUSIVE, "decided cells disagree")
    # three runs: B4 not supported in both layouts of one, inconclusive (wide spread over seeds) in the others
    wide = planted()
    spread = (wide.metric == "noisy_degradation") & (wide.arm == "tvp") & (wide.p == 0.25)
    wide.loc[spread, "value"] = np.tile([-0.5, 0.3, 1.1], 2)
    runs = {"a": (CFG, planted(noisy_gap=0.2)), "b": (CFG, wide), "c": (CFG, wide)}
    monkeypatch.setattr(comparison, "load", lambda d: runs[d])
    md = verdict_overview({name: name for name in runs})
    assert "| B4 | x→y | tvp | p = 0.25 | not supported (0.20) | inconclusive (0.00) | inconclusive (0.00) |" in md
    b4 = next(line for line in md.splitlines() if line.startswith("| B4 | the TVP-loss makes"))
    assert b4.endswith("| 0 | 2 | 4 | inconclusive (most cells inconclusive) |")


def test_b1_from_small_models_is_not_reproduced_at_this_scale(monkeypatch):
    """Not 'against the paper': 2-layer models at 10,000 steps are far below its 12 layers and 300k steps."""
    t = planted(s_xy=0.1)
    row = verdict_row(verdicts(t, CFG), "B1", "x→y vs *xy", "vanilla")
    assert row.verdict == NOT_SUPPORTED and "2 layers, 10,000 steps: far below the paper's scale" in row.detail
    assert NOT_REPRODUCED in row.detail and verdict_shown(row, below_paper_scale(CFG)) == NOT_REPRODUCED
    big = ComparisonConfig(train={"task": {"name": "token_offset"}, "preset": "paper", "steps": 100_000},
                           arms=[{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 6}])
    assert below_paper_scale(big) == ""
    row = verdict_row(verdicts(t, big), "B1", "x→y vs *xy", "vanilla")
    assert NOT_REPRODUCED not in row.detail and verdict_shown(row, below_paper_scale(big)) == NOT_SUPPORTED
    monkeypatch.setattr(comparison, "load", lambda d: {"small": (CFG, t), "big": (big, t)}[d])
    md = verdict_overview({"small": "small"})
    assert f"| B1 | x→y vs *xy | vanilla | – | {NOT_REPRODUCED} (" in md
    assert next(line for line in md.splitlines() if line.startswith("| B1 | task vectors")).endswith(
        f"| {NOT_REPRODUCED} |")
    both = verdict_overview({"small": "small", "big": "big"})  # a paper-scale run's 'not supported' stands
    assert f"| B1 | x→y vs *xy | vanilla | – | {NOT_REPRODUCED} (0.05) | not supported (0.05) |" in both
    assert "| B1 | task vectors emerge in vanilla models in x→y but not in *xy | 0 | 2 | 0 | not supported |" in both


def test_linear_regression_is_named_with_its_dimension(monkeypatch):
    lr = ComparisonConfig(train={"task": {"name": "linear_regression", "d": 1}, "preset": "tiny"},
                          arms=[{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}])
    assert task_label(lr) == "linear regression (d = 1)" and task_label(CFG) == "token_offset"
    runs = {"token_offset": (CFG, planted()), "linear_regression": (lr, planted()), "lr_remedies": (lr, planted())}
    monkeypatch.setattr(comparison, "load", lambda d: runs[d])
    md = verdict_overview({name: name for name in runs})
    assert md.splitlines()[0] == ("| claim | layout | arm | condition | token_offset | linear regression (d = 1) | "
                                  "lr_remedies (linear regression (d = 1)) |")


def test_s_is_undefined_unless_icl_beats_zero_shot_clearly():
    from taskvec.scratch.evaluate import strengths

    assert strengths(1.0, 0.5, [0.5, 1.0, 0.75]) == [1.0, 0.0, 0.5]
    near = 1.0 - 0.5 * MIN_ICL_GAIN  # ICL 5% better than zero-shot: S would be 1 / 0.05 = 20× the error gap
    assert all(math.isnan(x) for x in strengths(1.0, near, [0.0, 1.0]))


def test_aggregate_gives_mean_interval_and_count_per_layer():
    agg = aggregate(planted())
    r = agg[(agg.layout == "x→y") & (agg.arm == "tvp") & (agg.metric == "strength") & (agg.layer == 2)].iloc[0]
    assert r["mean"] == pytest.approx(0.9) and r["n"] == 3 and r["low"] < 0.9 < r["high"]
    noisy = agg[agg.metric == "noisy_icl"]
    assert set(noisy.p) == {0.0, 0.25}


@pytest.mark.parametrize("bad, needle", [
    ({"train": {"seed": 3}}, "train must not set seed"),
    ({"arms": [{"name": "a"}, {"name": "b"}]}, "exactly one vanilla arm"),
    ({"arms": [{"name": "vanilla"}, {"name": "t", "tvp_layer": 9}], "train": {"preset": "tiny"}},
     "arm 't', layout x→y: tvp_layer 9 is beyond the model"),
    ({"layouts": ["xy"]}, "no task-vector slot"),
    ({"select_seed": 1, "eval_seed": 1}, "must differ"),
    ({"evaluation": {"layer": 2}}, "evaluation must not set layer"),
    ({"arms": [{"name": "a/b"}]}, "names directories"),
])
def test_bad_config_is_one_line(bad, needle):
    with pytest.raises(ConfigError) as err:
        ComparisonConfig.from_dict(bad)
    assert needle in str(err.value) and "\n" not in str(err.value)


TINY = {"train": {"task": {"name": "token_offset", "vocab": 16, "offsets": [1, 2, 3]}, "preset": "tiny",
                  "k_max": 4, "steps": 12, "batch_size": 8, "save_every": 6, "log_every": 3, "lr": 3e-3},
        "arms": [{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}],
        "seeds": [0, 1],
        "evaluation": {"n_trials": 12, "k": 3, "analyses": ["layers", "noisy", "ood", "pca"], "pca_tasks": 3,
                       "pca_per_task": 4, "noisy_fracs": [0.0, 0.25]}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    cfg = ComparisonConfig.from_dict(TINY)
    run_comparison(cfg, out, progress=False)
    return cfg, out


def test_comparison_end_to_end(tiny_run):
    cfg, out = tiny_run
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    units = [r["unit"] for r in recs]
    assert len(units) == len(set(units)) == 2 * len(cfg.runs()) == 16
    assert units[0].startswith("train/") and units[-1].startswith("eval/")
    for layout in ("x-y", "sxy"):
        for arm in ("vanilla", "tvp"):
            assert (out / "models" / f"{layout}-{arm}-seed-1" / "model" / "model.safetensors").exists()
    ev = next(r for r in recs if r["unit"] == "eval/x-y/tvp/seed-0")["rows"][0]
    assert ev["result"]["layer"] == 1 and 0 <= ev["selected_layer"] < 2  # l* prescribed; the selection's own
    table = seed_table(out)
    assert set(table.seed) == {0, 1} and {"icl", "strength", "noisy_icl", "ood_icl", "pca_probe", "noisy_degradation",
                                          "ood_degradation"} <= set(table.metric)
    # B5 per OOD shift: token_offset's one shift, the held-out offsets
    assert set(pd.read_csv(out / "verdicts.csv").query("claim == 'B5'").condition) == {"held-out offsets"}
    v = pd.read_csv(out / "verdicts.csv")
    assert set(v.claim) == {"B0", "B1", "B2", "B3", "B4", "B5"} and v.verdict.isin(
        [SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE]).all()
    html = (out / "report.html").read_text()
    assert html.index("Verdicts") < html.index("<img")  # the verdicts come before the first figure
    assert (out / "figures" / "strength.png").exists()
    agg = aggregate(table)
    sel = agg[agg.metric == "strength_selected"]
    assert set(sel.layer) == {-1} and len(sel) == 4  # one group per (layout, arm), whatever layer each seed chose
    md = markdown_summary(out)
    assert md.count("| B3 | x→y | tvp |") == 1 and "S(l*)" in md
    assert md.count("\n| x→y | ") == 2  # the headline table: one row per (layout, arm)
    b1 = next(line for line in md.splitlines() if line.startswith("| B1 |"))
    assert "x→y: S = " in b1 and "*xy: S = " in b1  # the verdict's two parts beside the difference
    # θ probe accuracy of a TVP arm: the PCA analysis's probe at l*, averaged over seeds
    probe = table[(table.layout == "x→y") & (table.arm == "tvp") & (table.metric == "pca_probe") & (table.layer == 1)]
    row = next(line for line in md.splitlines() if line.startswith("| x→y | tvp |")).split(" | ")
    assert row[-1].rstrip(" |").startswith(f"{probe.value.mean():.3f}")


def test_verdict_overview_has_a_column_per_run(tiny_run):
    cfg, out = tiny_run
    md = verdict_overview({"first": out, "second": out})
    cells, overall = (part.splitlines() for part in md.split("\n\n"))
    assert cells[0] == "| claim | layout | arm | condition | first | second |"
    v = verdicts(seed_table(out), cfg)
    assert len(cells) == 2 + len(v)  # one row per (claim, layout, arm, condition)
    b3 = v[(v.claim == "B3") & (v.layout == "x→y")].iloc[0]
    want = f"{b3.verdict} ({b3.estimate:.2f})"
    assert f"| B3 | x→y | tvp | – | {want} | {want} |" in md
    assert overall[0] == "| claim | text | supported | not supported | inconclusive | overall |"
    assert len(overall) == 2 + 6  # one row per claim, B0–B5


def test_a_run_evaluated_before_the_degradation_rule_still_loads(tiny_run, tmp_path):
    """The same run with ``clean_icl`` taken out of its noisy/OOD rows: it loads, and B4/B5 ask for a rerun."""
    cfg, out = tiny_run
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((out / "config.json").read_text())
    lines = []
    for line in (out / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for r in rec["rows"]:
            for analysis in ("noisy", "ood"):
                for row in r.get("result", {}).get(analysis, []):
                    del row["clean_icl"]
        lines.append(json.dumps(rec))
    (old / "results.jsonl").write_text("\n".join(lines) + "\n")
    _, table = load(old)
    assert "noisy_icl" in set(table.metric) and "noisy_degradation" not in set(table.metric)
    v = verdicts(table, cfg)
    rob = v[v.claim.isin(["B4", "B5"])]
    assert set(rob.claim) == {"B4", "B5"} and (rob.verdict == INCONCLUSIVE).all()
    assert rob.detail.str.contains(PREDATES, regex=False).all()
    assert "B4" in markdown_summary(old)


def test_resume_recomputes_nothing_finished(tiny_run, tmp_path):
    cfg, out = tiny_run
    before = (out / "results.jsonl").read_text()
    run_comparison(cfg, out, resume=True, progress=False, report=False)
    assert (out / "results.jsonl").read_text() == before
    with pytest.raises(ConfigError):  # an out that holds a run is refused without --resume
        run_comparison(cfg, out, progress=False)


def test_killed_training_resumes_from_its_checkpoint_and_workers_agree(tiny_run, tmp_path):
    """A copy of the run with one training cut after its first checkpoint and every evaluation undone, resumed
    with two worker processes, gives exactly the single-process numbers."""
    import shutil

    cfg, out = tiny_run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    keep = [x for x in (cut / "results.jsonl").read_text().splitlines()
            if json.loads(x)["unit"].startswith("train/") and json.loads(x)["unit"] != "train/x-y/tvp/seed-1"]
    (cut / "results.jsonl").write_text("\n".join(keep) + "\n")
    run = cut / "models" / "x-y-tvp-seed-1"
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step-0000012")
    run_comparison(cfg, cut, resume=True, workers=2, progress=False, report=False)
    a = seed_table(out).sort_values(["layout", "arm", "seed", "metric", "layer", "p", "shift"]).reset_index(drop=True)
    b = seed_table(cut).sort_values(["layout", "arm", "seed", "metric", "layer", "p", "shift"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_strength_figure_says_how_many_seeds_a_line_stands_on():
    from taskvec.report.comparison import strength_figure

    t = planted()
    t.loc[(t.metric == "strength") & (t.arm == "tvp") & (t.layout == "x→y") & (t.seed == 1), "value"] = np.nan
    arms = [{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}]
    fig = strength_figure(aggregate(t), ["x→y", "*xy"], arms, 0.5)
    notes = [[x.get_text() for x in ax.texts] for ax in fig.axes[:2]]
    assert notes == [["seeds with S (of 3): tvp: 2"], []]  # only the panel, and the arm, that lost a seed
    for ax in fig.axes[:2]:  # every panel marks the TVP arm's l* (a dotted vertical line at x = 1)
        dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
        assert [list(line.get_xdata()) for line in dotted] == [[1, 1]]
