"""dPCA (SPEC A.6): planted axes are recovered, Mahalanobis is sensible and finite, too few trials fail clearly,
and the full analysis with subspace ablation runs on smollm2-135m."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from taskvec.analysis.dpca import (TooFewTrialsError, analyze_layer, condition_means, dpca_analysis,
                                   mahalanobis_between, marginal_variance, orthonormal, plot_dpca, project_out)
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


def _cos(u, v):
    return abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))


def test_planted_axes_recovered():
    X, lengths, labels, a_len, a_lab = planted()
    row, enc = analyze_layer(X, lengths, labels, k=1)
    assert _cos(enc["length"][:, 0], a_len) > 0.98
    assert _cos(enc["label"][:, 0], a_lab) > 0.98
    assert row["var_length"] > 0.6 and row["var_label"] > 0.2 and row["var_interaction"] < 0.05
    assert abs(row["var_length"] + row["var_label"] + row["var_interaction"] - 1) < 1e-9
    assert row["dpca_length"] > 0.6 and row["dpca_label"] > 0.2


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
    # farther lengths are farther apart
    assert d_len[(2, 10)] > d_len[(2, 3)]
    # symmetric in the choice of pair order and finite
    assert all(np.isfinite(v) for v in d_len.values())


def test_singular_covariance_stays_finite():
    X = np.repeat(np.eye(2, 8) * 3, 10, axis=0)  # each group is one point: zero within-group covariance
    groups = np.repeat(np.array([0, 1]), 10)
    d = mahalanobis_between(X, groups)
    assert np.isfinite(d[(0, 1)]) and d[(0, 1)] > 0
    with pytest.raises(ConfigError):
        mahalanobis_between(X, groups, shrinkage=2.0)


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


def test_dpca_analysis_on_smollm(smol, tmp_path):
    from taskvec.tasks import get_task

    task = get_task("simple_string", short=(2, 3), long=(8, 9), labels=("A", "B"))  # 4 lengths x 2 labels = 8 conditions
    trials = task.sample_trials(8, 8, seed=0)  # covers all 8 cells (checked)
    res = dpca_analysis(smol, trials, task=task, layers=[2, 12], ablate_layers=[12], k=1)
    assert list(res.per_layer.layer) == [2, 12]
    assert np.isfinite(res.per_layer.drop(columns="layer").to_numpy()).all()
    assert (res.per_layer.var_label > 0.5).all()  # the answer token is the label word
    acc = res.ablation_per_layer()
    assert set(acc.ablate) == {"none", "length", "label", "random"}
    assert len(res.ablation) == 4 * len(trials)
    assert 0 <= res.baselines["icl"] <= 1 and res.baselines["chance"] == 0.5
    files = plot_dpca(res, tmp_path / "dpca")
    assert all(f.exists() for f in files)
    with pytest.raises(TooFewTrialsError, match="trials"):
        dpca_analysis(smol, trials[:3], task=task, ablate_layers=[])


def test_dpca_needs_length_meta(smol, capital_trials):
    with pytest.raises(ConfigError, match="length"):
        dpca_analysis(smol, capital_trials, ablate_layers=[])
