"""dPCA (SPEC A.6) and claim C8 (A.8): planted axes are recovered, Mahalanobis is sensible, finite and exact in span
coordinates, the whole marginal subspace is ablated (levels - 1 axes) against random subspaces of equal dimension,
probes show whether the information is gone; length nested in class (simple_string) is demixed as class and length
within class, with the class (not the label word) as the label factor; the C8 statistics use an early window fixed
before the data, locate the length peak with an honest region, and separate a fading from a constant signal; the
full analysis runs on the tiny Llama and writes its files (and, slow, on smollm2-135m with its 30 layers' windows)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from taskvec.analysis.demix import condition_means, is_nested, marginal_variance
from taskvec.analysis.dpca import TooFewTrialsError, answer_factors, dpca_analysis
from taskvec.analysis.dpca_c8 import ablation_summary, c8_statistics, early_window_of, late_layers_of
from taskvec.analysis.geometry import _ledoit_wolf, mahalanobis_between, separability, span_coordinates, trial_folds
from taskvec.analysis.probes import analyze_layer, probe_accuracy
from taskvec.analysis.subspaces import (ablation_dims, ablation_subspaces, orthonormal, project_out, random_subspace,
                                        refit_ablation)
from taskvec.report.dpca_figures import plot_dpca
from taskvec.errors import ConfigError


def planted(n=400, d=50, seed=0, length_scale=3.0, label_scale=2.0, noise=0.5):
    rng = np.random.default_rng(seed)
    a_len = rng.normal(size=d)
    a_len /= np.linalg.norm(a_len)
    a_lab = rng.normal(size=d)
    a_lab -= a_lab @ a_len * a_len
    a_lab /= np.linalg.norm(a_lab)
    lengths = rng.choice([2, 3, 4, 8, 9, 10], size=n)
    labels = rng.choice(["foo", "bar"], size=n)
    X = (np.outer((lengths - 6) / 3, a_len) * length_scale
         + np.outer(np.where(labels == "foo", 1.0, -1.0), a_lab) * label_scale
         + noise * rng.normal(size=(n, d)))
    return X, lengths, labels, a_len, a_lab


def planted_multidim(n_trials=60, n_demos=10, d=40, seed=0, noise=0.6):
    """Six lengths whose means span 5 dimensions (no single axis carries length), a one-dimensional label."""
    rng = np.random.default_rng(seed)
    n = n_trials * n_demos
    levels = np.array([2, 3, 4, 8, 9, 10])
    basis = np.linalg.qr(rng.normal(size=(d, 6)))[0]  # 5 length dims + 1 label dim, orthonormal
    centers = rng.normal(size=(6, 5))
    centers -= centers.mean(0)
    centers *= 2.5 / np.linalg.norm(centers, axis=1, keepdims=True)  # equal norms: no length is near the mean
    li = rng.integers(0, 6, n)
    labels = rng.choice(["A", "B"], size=n)
    X = (centers[li] @ basis[:, :5].T + np.where(labels == "A", 2.0, -2.0)[:, None] * basis[:, 5]
         + noise * rng.normal(size=(n, d)))
    return X, levels[li], labels, np.repeat(np.arange(n_trials), n_demos)


def _cos(u, v):
    return abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))


# ----------------------------------------------------------------------------------------------- numerics
def test_planted_axes_recovered():
    X, lengths, labels, a_len, a_lab = planted()
    row, enc = analyze_layer(X, lengths, labels)
    assert enc["length"].shape[1] == 5 and enc["label"].shape[1] == 1  # levels - 1 components each
    assert row["dim_length"] == 5 and row["dim_label"] == 1
    assert _cos(enc["length"][:, 0], a_len) > 0.98
    assert _cos(enc["label"][:, 0], a_lab) > 0.98
    assert row["var_length"] > 0.6 and row["var_label"] > 0.2 and row["var_interaction"] < 0.05
    assert abs(row["var_length"] + row["var_label"] + row["var_interaction"] - 1) < 1e-9
    assert row["dpca_length"] > 0.6 and row["dpca_label"] > 0.2
    row1, enc1 = analyze_layer(X, lengths, labels, k=1)
    assert row1["dim_length"] == 1 and row1["dpca_length"] <= row["dpca_length"] + 1e-9


def test_label_only_data_has_no_length_variance():
    X, lengths, labels, _, a_lab = planted(length_scale=0.0, noise=0.01)
    means, _, _ = condition_means(X, lengths, labels)
    v = marginal_variance(means)
    assert v["label"] > 0.99 and v["length"] < 0.01


def test_mahalanobis_sensible():
    X, lengths, labels, _, _ = planted(label_scale=0.0)
    d_len = mahalanobis_between(X, lengths)
    d_lab = mahalanobis_between(X, labels)
    assert np.mean(list(d_lab.values())) < 1.0 < min(d_len.values())
    assert d_len[(2, 10)] > d_len[(2, 3)]  # farther lengths are farther apart
    assert all(np.isfinite(v) for v in d_len.values())


def test_ledoit_wolf_and_span_coordinates_are_exact():
    from sklearn.covariance import ledoit_wolf_shrinkage

    rng = np.random.default_rng(3)
    R = rng.normal(size=(40, 90)) * np.linspace(0.2, 3, 90)
    assert _ledoit_wolf(R, R.T @ R, 90) == pytest.approx(ledoit_wolf_shrinkage(R, assume_centered=True), rel=1e-10)
    X = rng.normal(size=(60, 200)) * np.r_[np.full(3, 20.0), np.ones(197)]  # n < d, a few huge dimensions
    groups = rng.integers(0, 4, 60)
    X[groups == 1] += 0.4
    Z, p = span_coordinates(X)
    assert Z.shape[1] < 60 and p == 200
    full, span = mahalanobis_between(X, groups), mahalanobis_between(Z, groups, n_features=p)
    assert all(span[key] == pytest.approx(full[key], rel=1e-8) for key in full)


def test_singular_covariance_stays_finite():
    X = np.repeat(np.eye(2, 8) * 3, 10, axis=0)  # each group is one point: zero within-group covariance
    groups = np.repeat(np.array([0, 1]), 10)
    d = mahalanobis_between(X, groups)
    assert np.isfinite(d[(0, 1)]) and d[(0, 1)] > 0
    with pytest.raises(ConfigError):
        mahalanobis_between(X, groups, shrinkage=2.0)


def test_cross_validated_separability_has_no_noise_floor():
    rng = np.random.default_rng(0)
    trial = np.repeat(np.arange(40), 10)
    folds = trial_folds(trial, 2, 0)
    assert set(np.bincount(folds)) == {200}  # 20 trials per fold
    assert all(len(set(folds[trial == t])) == 1 for t in range(40))  # a trial's demos share a fold
    g = rng.integers(0, 7, 400)
    X = rng.normal(size=(400, 300)) * np.r_[np.full(3, 20.0), np.ones(297)]  # no group signal, n < d
    Z, p = span_coordinates(X)
    plug, cv = separability(Z, g, folds, n_features=p)
    assert plug > 3 and cv < 0.4 * plug  # the plug-in distance of no signal is a noise floor, crossnobis is not
    X[:, 3:] += 0.5 * np.eye(7)[g] @ rng.normal(size=(7, 297))  # a real signal: both see it
    Z, p = span_coordinates(X)
    plug, cv = separability(Z, g, folds, n_features=p)
    assert cv > 0.7 * plug


def test_too_few_samples_and_empty_conditions():
    X, lengths, labels, _, _ = planted(n=5)
    with pytest.raises(TooFewTrialsError, match="conditions"):
        condition_means(X, lengths, labels)
    X, lengths, labels, _, _ = planted(n=60)
    labels[(lengths == 2)] = "foo"  # no (2, bar) sample
    with pytest.raises(TooFewTrialsError, match="no sample"):
        condition_means(X, lengths, labels)


def test_project_out_removes_span_keeps_center():
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(16, 2))
    v = torch.tensor(rng.normal(size=(5, 3, 16)), dtype=torch.float32)
    c = torch.tensor(rng.normal(size=16), dtype=torch.float32)
    out = project_out(v, basis, c)
    Q = torch.tensor(orthonormal(basis), dtype=torch.float32)
    assert torch.allclose((out - c) @ Q, torch.zeros(5, 3, 2), atol=1e-5)
    assert torch.allclose(project_out(c[None], basis, c)[0], c, atol=1e-6)


# ----------------------------------------------------------------------------------------------- ablation + probes
def test_ablation_dims_are_levels_minus_one():
    assert ablation_dims(7, 2) == {"none": 0, "length": 6, "length_1": 1, "label": 1, "random_length": 6,
                                   "random_label": 1}
    assert ablation_dims(7, 3, k=2) == {"none": 0, "length": 2, "length_1": 1, "label": 2, "random_length": 2,
                                        "random_label": 2}  # k applies to both, capped at levels - 1
    assert ablation_dims(7, 2, k=4)["label"] == 1
    assert "length_1" not in ablation_dims(7, 2, k=1)  # would repeat "length"
    with pytest.raises(ConfigError):
        ablation_dims(7, 2, k=0)


def test_random_control_has_equal_dimension_and_is_seeded():
    X, lengths, labels, trial = planted_multidim()
    _, enc = analyze_layer(X, lengths, labels)
    bases = ablation_subspaces(enc, ablation_dims(6, 2), X.shape[1], seed=[0, 5])
    assert {k: b.shape[1] for k, b in bases.items()} == {"none": 0, "length": 5, "length_1": 1, "label": 1,
                                                         "random_length": 5, "random_label": 1}
    for b in bases.values():
        assert np.allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-8)
    again = ablation_subspaces(enc, ablation_dims(6, 2), X.shape[1], seed=[0, 5])
    assert np.allclose(again["random_length"], bases["random_length"])
    other = ablation_subspaces(enc, ablation_dims(6, 2), X.shape[1], seed=[0, 6])
    assert not np.allclose(other["random_length"], bases["random_length"])
    assert random_subspace(10, 3, 0).shape == (10, 3)


def test_whole_subspace_ablation_removes_length_but_random_does_not():
    X, lengths, labels, trial = planted_multidim()
    _, enc = analyze_layer(X, lengths, labels)
    dims = ablation_dims(6, 2)
    bases = ablation_subspaces(enc, dims, X.shape[1], seed=0)
    center = X.mean(0)
    acc = {}
    for name, basis in bases.items():
        if name in ("length", "length_1", "label"):  # dPCA axes re-fitted within each training fold
            m = "label" if name == "label" else "length"
            Xa, ablate = X, refit_ablation(X, lengths, labels, m, dims[name])
        else:
            Xa, ablate = project_out(torch.tensor(X), basis, torch.tensor(center)).numpy(), None
        for factor, y in (("length", lengths), ("label", labels)):
            acc[name, factor] = probe_accuracy(Xa, y, trial, seed=0, ablate=ablate)
    chance_len = acc["none", "length"]["chance"]
    assert chance_len == pytest.approx(1 / 6) and acc["none", "label"]["chance"] == 0.5
    assert acc["none", "length"]["n_folds"] == 5 and acc["none", "length"]["majority"] < 0.25
    assert acc["none", "length"]["accuracy"] > 0.9 and acc["none", "label"]["accuracy"] > 0.95
    # the whole length subspace (5 axes) takes length decodability to chance (not below: refitted per fold),
    # keeps the label
    assert chance_len - 0.1 < acc["length", "length"]["accuracy"] < chance_len + 0.1
    assert acc["length", "label"]["accuracy"] > 0.95
    # one length axis, or a random 5-dim subspace, leaves length decodable
    assert acc["length_1", "length"]["accuracy"] > 0.6
    assert acc["random_length", "length"]["accuracy"] > 0.85
    # the label axis takes the label to chance, its random 1-dim control does not
    assert 0.4 < acc["label", "label"]["accuracy"] < 0.6
    assert acc["random_label", "label"]["accuracy"] > 0.95


def test_probe_on_noise_is_at_chance_and_reports_levels():
    rng = np.random.default_rng(2)
    y = rng.choice(["a", "b", "c"], 300, p=[0.5, 0.25, 0.25])
    res = probe_accuracy(rng.normal(size=(300, 20)), y, np.repeat(np.arange(30), 10), seed=1)
    assert res["n_levels"] == 3 and res["chance"] == pytest.approx(1 / 3)
    assert res["majority"] == pytest.approx(np.mean(y == "a"))
    assert res["accuracy"] < res["majority"] + 0.08
    assert np.isnan(probe_accuracy(rng.normal(size=(4, 3)), np.array([0, 0, 0, 1]))["accuracy"])  # too few


def test_ablation_summary_has_wilson_intervals_and_paired_costs():
    from taskvec.stats import mean_ci

    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        for layer in (2, 8):
            base = float(rng.random() < 0.9)
            for name, drop in (("none", 0.0), ("length", 0.5 if layer == 2 else 0.0), ("random_length", 0.0)):
                ok = base if rng.random() >= drop else 0.0
                rows.append({"prompt": p, "layer": layer, "ablate": name, "dim": 0 if name == "none" else 3,
                             "correct": ok, "label_correct": ok})
    df = pd.DataFrame(rows)
    s = ablation_summary(df, n_boot=300)
    assert len(s) == 6 and set(s.columns) >= {"layer", "ablate", "dim", "n", "accuracy", "low", "high", "cost",
                                              "cost_low", "cost_high"}
    r = s[(s.layer == 2) & (s.ablate == "length")].iloc[0]
    m, lo, hi = mean_ci(df[(df.layer == 2) & (df.ablate == "length")].label_correct)
    assert (r.accuracy, r.low, r.high) == pytest.approx((m, lo, hi)) and r.n == 40 and r.dim == 3
    assert r.cost_low > 0  # a real cost is detected
    none = s[(s.layer == 2) & (s.ablate == "none")].iloc[0]
    assert none.cost == 0 and none.cost_low == 0 and none.cost_high == 0


# ----------------------------------------------------------------------------------------------- C8
LEVELS = np.array([2, 3, 4, 8, 9, 10, 11])  # simple_string: short 2-4 (class 0), long 8-11 (class 1)


def layered(len_scale, n_trials=40, n_demos=8, n_layers=9, d=60, seed=0, class_scale=1.5, word_scale=lambda l: 0.0):
    """States ``[n, n_layers, d]`` like simple_string: length nested in class, the class -> word mapping drawn per
    trial. A within-class length signal of per-layer scale ``len_scale(l)``, a constant class signal, a word
    signal of scale ``word_scale(l)``; trial-level shared noise makes a trial's demonstrations dependent.

    Returns ``(X, lengths, classes, words, trial)``."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(100)
    A = fixed.normal(size=(7, d)) * 0.25
    A[:3] -= A[:3].mean(0)  # length deviations within each class only
    A[3:] -= A[3:].mean(0)
    C, Wd = fixed.normal(size=d) * 0.25, fixed.normal(size=d) * 0.25
    n = n_trials * n_demos
    li = rng.integers(0, 7, n)
    cls = (li >= 3).astype(int)
    trial = np.repeat(np.arange(n_trials), n_demos)
    flip = rng.integers(0, 2, n_trials)  # the random class -> word mapping of each trial
    word = np.where(cls ^ flip[trial], "B", "A")
    X = np.empty((n, n_layers, d))
    for l in range(n_layers):
        shared = 0.4 * rng.normal(size=(n_trials, d))
        X[:, l] = (len_scale(l) * A[li] + class_scale * np.where(cls == 1, 1.0, -1.0)[:, None] * C
                   + word_scale(l) * np.where(word == "A", 1.0, -1.0)[:, None] * Wd
                   + rng.normal(size=(n, d)) + shared[trial])
    return X, LEVELS[li], cls, word, trial


def test_nested_design_demixes_class_and_length_within_class():
    X, lengths, cls, word, trial = layered(lambda l: 2.0, n_layers=1)
    assert is_nested(lengths, cls) and not is_nested(lengths, word)
    row, enc = analyze_layer(X[:, 0], lengths, cls, trial=trial, word=word)
    assert row["dim_length"] == 5 and row["dim_label"] == 1  # 7 lengths in 2 classes: 5 within, 1 class axis
    assert row["var_interaction"] == 0 and abs(row["var_length"] + row["var_label"] - 1) < 1e-9
    assert enc["interaction"].shape[1] == 0
    fixed = np.random.default_rng(100)  # the planted class axis, drawn as in layered()
    fixed.normal(size=(7, 60))
    axis = fixed.normal(size=60)
    assert _cos(enc["label"][:, 0], axis) > 0.95
    assert row["maha_label_cv"] > 3 and row["maha_length_cv"] > 1 and row["maha_word_cv"] < 0.5  # no word signal
    assert ablation_dims(7, 2, nested=True) == {"none": 0, "length": 5, "length_1": 1, "label": 1,
                                                "random_length": 5, "random_label": 1}


def test_answer_factors_take_the_class_not_the_word():
    """The demixed "label" is the class of each demonstration; the word (random per trial) is reported apart."""
    from taskvec.tasks import get_task

    trials = get_task("simple_string").sample_trials(30, 6, seed=0)
    length, cls, word = answer_factors(trials, 6)
    assert cls.tolist() == [c for t in trials for c in t.meta["class"][:6]]
    assert word.tolist() == [d.output for t in trials for d in t.demos]
    assert ((length >= 8) == (cls == 1)).all()  # class = long: length is nested in class
    assert is_nested(length, cls) and not is_nested(length, word)  # the word is crossed with length
    assert 0.2 < np.mean(word == np.where(cls == 1, "B", "A")) < 0.8  # the mapping varies across trials


def test_c8_fixed_early_window_and_fading_length():
    fading = lambda l: 3.0 if l == 2 else (1.5 if l < 6 else 0.3)  # noqa: E731  peak at 2, late = 6, 7, 8
    X, lengths, cls, word, trial = layered(fading, word_scale=lambda l: 1.0)
    c8 = c8_statistics(X, lengths, cls, trial, list(range(9)), 9, word=word, n_boot=200, seed=0, task="planted")
    assert c8["task"] == "planted" and c8["design"] == "nested" and c8["n_layers"] == 9
    assert c8["early_window"] == [1, 3] and c8["early_layers"] == [1, 2] and c8["late_layers"] == [6, 7, 8]
    r = c8["length_ratio"]
    assert r["estimate"] < 0.5 and r["high"] < 0.5 and r["low"] <= r["estimate"] <= r["high"]
    cl = c8["class_ratio"]
    assert 0.8 < cl["estimate"] < 1.25 and cl["low"] < 1 < cl["high"]
    assert 0.7 < c8["word_ratio"]["estimate"] < 1.3  # reported, not part of the claim
    peak = c8["length_peak"]
    assert peak["layer"] == 2 and peak["region"] == [2, 2] and peak["in_early"] is True
    json.dumps(c8)  # plain types
    assert c8["ablation_cost"] is None and "label_ratio" not in c8


def test_c8_late_length_peak_is_not_early():
    """Length peaks at a late layer: the old code took the best *early* candidate as "the peak"."""
    X, lengths, cls, word, trial = layered(lambda l: 3.0 if l == 7 else 1.0, seed=2)
    c8 = c8_statistics(X, lengths, cls, trial, list(range(9)), 9, word=word, n_boot=200, seed=2)
    peak = c8["length_peak"]
    assert peak["layer"] == 7 and peak["in_early"] is False
    assert peak["region"][0] >= 3 and 7 in peak["region_layers"]
    assert c8["length_ratio"]["low"] > 1  # late above early: the claim's "falls" fails


def test_c8_class_is_the_class_not_the_word():
    """A constant class signal and a word signal only in the early layers, with the word mapping random per
    trial: class separability stays (ratio ~ 1) while the word's vanishes late."""
    X, lengths, cls, word, trial = layered(lambda l: 1.5, seed=1, word_scale=lambda l: 2.0 if l < 3 else 0.0)
    c8 = c8_statistics(X, lengths, cls, trial, list(range(9)), 9, word=word, n_boot=200, seed=1)
    cl = c8["class_ratio"]
    assert 0.8 < cl["estimate"] < 1.25 and cl["low"] < 1 < cl["high"]
    assert c8["word_ratio"]["estimate"] < 0.2
    curves = c8["curves"]
    late_word = [curves["sep_word"][l] for l in c8["late_layers"]]
    late_class = [curves["sep_class"][l] for l in c8["late_layers"]]
    assert np.mean(late_word) < 0.2 * np.mean(late_class)  # crossnobis of no signal: ~0 (noise on d^2)
    r = c8["length_ratio"]  # a constant length signal: ratio ~ 1 and no peak region inside the early window
    assert 0.8 < r["estimate"] < 1.25 and r["low"] < 1 < r["high"]
    assert c8["length_peak"]["in_early"] is not True


def test_c8_early_window_is_fixed_before_the_data():
    assert early_window_of(9) == (1, 3) and early_window_of(18) == (1, 6) and early_window_of(10) == (1, 4)
    assert late_layers_of(18) == 12 and late_layers_of(30) == 20
    layers = [0, 1, 3, 5, 6, 9, 12, 15, 17]
    for peak in (1, 9):  # wherever the length signal peaks, the windows are the same
        X, lengths, cls, word, trial = layered(lambda l, p=peak: 3.0 if l == layers.index(p) else 1.0,
                                               n_trials=12, n_layers=len(layers), d=30, seed=peak)
        c8 = c8_statistics(X, lengths, cls, trial, layers, 18, word=word, n_boot=20, seed=0)
        assert c8["early_window"] == [1, 6] and c8["early_layers"] == [1, 3, 5]
        assert c8["late_layers"] == [12, 15, 17]
        sep = dict(zip(c8["curves"]["layers"], c8["curves"]["sep_length"]))
        expect = np.mean([sep[l] for l in (12, 15, 17)]) / np.mean([sep[l] for l in (1, 3, 5)])
        assert c8["length_ratio"]["estimate"] == pytest.approx(expect)  # a mean over the window, no argmax
        assert c8["length_peak"]["layer"] == peak
    custom = c8_statistics(X, lengths, cls, trial, layers, 18, word=word, n_boot=5, early_window=(3, 7))
    assert custom["early_window"] == [3, 7] and custom["early_layers"] == [3, 5, 6]
    with pytest.raises(ConfigError):
        c8_statistics(X, lengths, cls, trial, layers, 18, n_boot=5, early_window=(3, 14))  # overlaps late


def test_c8_ablation_cost_and_guards():
    rows = []
    rng = np.random.default_rng(0)
    for p in range(60):
        for layer in (0, 1, 2, 5, 7):  # 9 layers: early window [1, 3), late 6..8; layers 0 and 5 in neither
            none = float(rng.random() < 0.9)
            length = none * float(rng.random() >= (0.6 if layer in (1, 2, 5) else 0.0))
            rows += [{"prompt": p, "layer": layer, "ablate": "none", "label_correct": none, "correct": none},
                     {"prompt": p, "layer": layer, "ablate": "length", "label_correct": length, "correct": length}]
    X, lengths, cls, word, trial = layered(lambda l: 1.0, n_trials=12)
    c8 = c8_statistics(X, lengths, cls, trial, list(range(9)), 9, ablation=pd.DataFrame(rows), n_boot=200)
    cost = c8["ablation_cost"]
    assert cost["early_layers"] == [1, 2] and cost["late_layers"] == [7] and cost["n_prompts"] == 60
    assert cost["late"]["estimate"] == 0 and cost["early"]["low"] > 0.3
    assert cost["late_minus_early"]["high"] < 0  # late costs less, paired over prompts
    assert c8["word_ratio"] is None  # no word given
    no_late = c8_statistics(X[:, :5], lengths, cls, trial, list(range(5)), 9, n_boot=10)
    assert no_late["length_ratio"] is None and "need analysed layers" in no_late["reason"]
    assert no_late["length_peak"]["layer"] in range(5)  # the peak is still located
    with pytest.raises(TooFewTrialsError):
        c8_statistics(X[:24], lengths[:24], cls[:24], trial[:24], list(range(9)), 9)  # 3 trials, 2 folds


# ----------------------------------------------------------------------------------------------- run
def _dpca_run(lm, out, layers: list[int], ablate_layers: list[int]):
    """One end-to-end run (simple_string with 4 lengths x 2 labels; few trials, demos and layers) and the checks
    that hold on any model: every file, one row per analysed layer, the nested design's dimensions, every ablation
    variant, summary and probe. Returns ``(per_layer, ablation, probes, c8, baselines)``."""
    from taskvec.analysis.runners import DPCAConfig
    from taskvec.kinds import run_dpca

    cfg = DPCAConfig(model="smollm2-135m", n_trials=8, n_demos=5, layers=layers, ablate_layers=ablate_layers,
                     n_boot=50, task_params={"short": (2, 3), "long": (8, 9)})  # 8 cells, all covered
    out = run_dpca(cfg, out, lm=lm, progress=False)
    for name in ("dpca_per_layer.csv", "dpca_ablation.parquet", "dpca_ablation_summary.csv", "dpca_probes.csv",
                 "dpca_c8.json", "dpca_baselines.json", "figures/dpca_simple_string.png",
                 "figures/dpca_simple_string.svg"):
        assert (out / name).exists(), name
    per_layer = pd.read_csv(out / "dpca_per_layer.csv")
    assert list(per_layer.layer) == layers
    assert np.isfinite(per_layer.drop(columns="layer").to_numpy()).all()
    assert (per_layer.dim_length == 2).all() and (per_layer.dim_label == 1).all()  # 4 lengths nested in 2 classes
    assert (per_layer.var_interaction == 0).all() and {"maha_word", "maha_word_cv"} <= set(per_layer.columns)
    ablation = pd.read_parquet(out / "dpca_ablation.parquet")
    variants = {"none", "length", "length_1", "label", "random_length", "random_label"}
    assert set(ablation.ablate) == variants and len(ablation) == 6 * 2 * 8
    dims = ablation.groupby("ablate")["dim"].first().to_dict()
    assert dims == {"none": 0, "length": 2, "length_1": 1, "label": 1, "random_length": 2, "random_label": 1}
    summary = pd.read_csv(out / "dpca_ablation_summary.csv")
    assert len(summary) == 12 and set(summary.ablate) == variants
    assert (summary.low <= summary.accuracy + 1e-12).all() and (summary.accuracy <= summary.high + 1e-12).all()
    assert {"cost", "cost_low", "cost_high", "n"} <= set(summary.columns) and (summary.n == 8).all()
    probes = pd.read_csv(out / "dpca_probes.csv")
    assert len(probes) == 2 * 6 * 2 and set(probes.factor) == {"length", "label"}
    assert np.allclose(probes.chance[probes.factor == "length"], 1 / 4)
    assert np.allclose(probes.chance[probes.factor == "label"], 1 / 2)
    assert {"accuracy", "majority", "n_folds"} <= set(probes.columns)
    c8 = json.loads((out / "dpca_c8.json").read_text())
    assert c8["task"] == "simple_string" and c8["n_layers"] == lm.n_layers and c8["design"] == "nested"
    for key in ("length_ratio", "class_ratio", "word_ratio"):
        assert set(c8[key]) == {"estimate", "low", "high"}
    assert c8["length_peak"]["layer"] in layers and c8["length_peak"]["in_early"] in (True, False, None)
    baselines = json.loads((out / "dpca_baselines.json").read_text())
    assert 0 <= baselines["icl"] <= 1 and baselines["chance"] == 0.5
    return per_layer, ablation, probes, c8, baselines


def test_dpca_run_on_the_tiny_llama(tiny_llama, tmp_path):
    """The run's mechanics on the tiny Llama (SmolLM2's tokenizer): files, tables, design, ablations, probes, and the
    early window of its 6 layers; the figure leaves matplotlib's backend alone."""
    import matplotlib

    from taskvec.analysis.dpca import DPCAResult

    per_layer, ablation, probes, c8, baselines = _dpca_run(tiny_llama, tmp_path / "run", [1, 3, 4, 5], [1, 4])
    assert c8["early_window"] == [1, 2] and c8["early_layers"] == [1] and c8["late_layers"] == [4, 5]
    backend = matplotlib.get_backend()
    files = plot_dpca(DPCAResult(per_layer, ablation, baselines, probes=probes, c8=c8), tmp_path / "again")
    assert all(f.exists() for f in files) and matplotlib.get_backend() == backend
    _packed_runs_read_alike(tmp_path / "run", tmp_path / "packed")


def _packed_runs_read_alike(run, packed):
    """The store holds one unit per table (``dpca/<task>/<part>``, C8 as a nested row, no JSON string inside); a
    run of the format before (every table packed into ``dpca/<task>`` with a ``table`` column and ``c8_json``) gives
    the same tables."""
    import shutil

    from taskvec.analysis.tables import DPCA_PARTS, dpca_tables

    records = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert [r["unit"] for r in records] == [f"dpca/simple_string/{p}" for p in DPCA_PARTS]
    assert isinstance(records[-1]["rows"][0]["c8"], dict) and "c8_json" not in records[-1]["rows"][0]
    old_name = {"probes": "probe"}
    rows = [dict(row, table=old_name.get(r["unit"].split("/")[-1], r["unit"].split("/")[-1]))
            for r in records[:-1] for row in r["rows"]]
    rows.append({"table": "c8", "c8_json": json.dumps(records[-1]["rows"][0]["c8"])})
    shutil.copytree(run, packed)
    (packed / "results.jsonl").write_text(json.dumps({"unit": "dpca/simple_string", "rows": rows,
                                                      "config_hash": records[0]["config_hash"]}) + "\n")
    new, old = dpca_tables(run), dpca_tables(packed)
    for name in ("per_layer", "ablation", "ablation_summary", "probes", "baselines", "c8"):
        assert old[name].shape == new[name].shape, name
        pd.testing.assert_frame_equal(old[name].astype(str), new[name].astype(str), check_like=True)


@pytest.mark.slow
def test_dpca_run_on_smollm(smol, tmp_path):
    """The run on the real model: its C8 windows are the real model's 30 layers; the figure leaves matplotlib's
    backend alone."""
    import matplotlib

    from taskvec.analysis.dpca import DPCAResult

    per_layer, ablation, probes, c8, baselines = _dpca_run(smol, tmp_path / "run", [3, 12, 22, 26], [3, 22])
    assert c8["n_layers"] == 30
    assert c8["early_window"] == [1, 10] and c8["early_layers"] == [3] and c8["late_layers"] == [22, 26]
    assert c8["ablation_cost"]["early_layers"] == [3] and c8["ablation_cost"]["late_layers"] == [22]
    # the figure does not touch the matplotlib backend
    backend = matplotlib.get_backend()
    res = DPCAResult(per_layer, ablation, baselines, probes=probes, c8=c8)
    files = plot_dpca(res, tmp_path / "again")
    assert all(f.exists() for f in files) and matplotlib.get_backend() == backend


def test_dpca_too_few_trials(tiny_llama):
    from taskvec.tasks import get_task

    task = get_task("simple_string", short=(2, 3), long=(8, 9), labels=("A", "B"))  # 8 conditions
    with pytest.raises(TooFewTrialsError, match="trials"):
        dpca_analysis(tiny_llama, task.sample_trials(3, 8, seed=0), task=task, ablate_layers=[])


def test_dpca_needs_length_meta(tiny_llama, capital_trials):
    with pytest.raises(ConfigError, match="length"):
        dpca_analysis(tiny_llama, capital_trials, ablate_layers=[])
