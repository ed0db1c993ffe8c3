"""From-scratch evaluation: batched layer sweep equals the per-layer loop, analyses, report, CLI."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from taskvec.errors import LayerError
from taskvec.scratch.cli import app
from taskvec.scratch.evaluate import (EvalConfig, blocked_query_predictions, evaluate_model, icl_predictions,
                                      query_with_vectors, separability, task_vectors)
from taskvec.scratch.model import build_model
from taskvec.scratch.tasks import TaskConfig, make_task


def tiny(layout: str = "x→y"):
    torch.manual_seed(0)
    return build_model("tiny", d_in=4, n_positions=60, task={"d": 4}, layout=layout).eval()


def test_batched_tvp_equals_per_layer_loop():
    m = tiny()
    task = make_task(TaskConfig(d=4))
    g = torch.Generator().manual_seed(0)
    p = task.draw_tasks(6, g)
    xs, ys = task.draw_points(p, 5, g)
    xp, _ = task.draw_points(p, 1, g)
    xq, _ = task.draw_points(p, 1, g)
    theta = task_vectors(m, "x→y", xs, ys, xp)  # [6, 2, 32]
    layers = torch.tensor([0, 1]).repeat(6)
    batched = query_with_vectors(m, "x→y", xq.repeat_interleave(2, 0), layers, theta.reshape(-1, 32))
    for l in range(2):
        single = query_with_vectors(m, "x→y", xq, torch.full((6,), l), theta[:, l])
        assert torch.allclose(batched.reshape(6, 2)[:, l], single, atol=1e-5)
    # the unpatched row (layer -1) is the zero-shot prediction, which the injected vectors change
    clean = query_with_vectors(m, "x→y", xq, torch.full((6,), -1), torch.zeros(6, 32))
    assert not torch.allclose(clean, batched.reshape(6, 2)[:, 1])
    with pytest.raises(LayerError):
        query_with_vectors(m, "x→y", xq, torch.full((6,), 5), theta[:, 0])


def test_evaluate_model_all_analyses():
    m = tiny()
    cfg = EvalConfig(n_prompts=24, k=4, context_ks=[1, 4], noisy_fracs=[0.0, 0.5], ood=["x×2"],
                     pca_tasks=3, pca_per_task=8, compress_tasks=3, compress_queries=4)
    r = evaluate_model(m, cfg, progress=False)
    lay = r["layers"]
    assert len(lay["icl_curve"]) == 5 and len(lay["tvp"]) == 2 and len(lay["strength"]) == 2
    for name in ("tvp", "random", "mean", "wrong"):
        assert all(v >= 0 for v in lay[name])
    assert [c["k"] for c in r["context"]] == [1, 4]
    assert [n["p"] for n in r["noisy"]] == [0.0, 0.5]
    assert [o["shift"] for o in r["ood"]] == ["in-distribution", "x×2"]
    assert len(r["pca"]["layers"]) == 2 and len(r["pca"]["layers"][0]["xy"]) == 24
    c = r["compress"]
    assert c["tokens_compressed"] < c["tokens_full_icl"] and c["err_masked_after_layer"] >= 0
    json.dumps(r)


@pytest.mark.parametrize("layout", ["x→y", "*xy", "xy"])
def test_query_blocked_from_demonstrations_after_a_layer(layout):
    m = tiny(layout)
    task = make_task(TaskConfig(d=4))
    g = torch.Generator().manual_seed(0)
    p = task.draw_tasks(6, g)
    xs, ys = task.draw_points(p, 5, g)
    xq, _ = task.draw_points(p, 1, g)
    full = icl_predictions(m, layout, xs, ys, xq)[:, -1]
    # nothing blocked after the last layer: plain ICL (an explicit causal mask: float rounding only)
    assert torch.allclose(blocked_query_predictions(m, layout, xs, ys, xq, after_layer=1), full, atol=1e-6)
    # blocked everywhere: the query cannot see its demonstrations, so other demonstrations change nothing
    cut = blocked_query_predictions(m, layout, xs, ys, xq, after_layer=-1)
    assert torch.allclose(cut, blocked_query_predictions(m, layout, xs.flip(0), ys.flip(0), xq, -1), atol=1e-6)
    # blocked after layer 0: differs from full ICL, and demonstrations still matter through layer 0
    mid = blocked_query_predictions(m, layout, xs, ys, xq, after_layer=0)
    assert not torch.allclose(mid, full) and not torch.allclose(mid, cut)
    with pytest.raises(LayerError):
        blocked_query_predictions(m, layout, xs, ys, xq, after_layer=2)


def test_query_beyond_trained_examples_warns():
    m = tiny()  # n_positions 60 = sequences of 9 examples in training
    cfg = dict(n_prompts=8, analyses=["layers"])
    with pytest.warns(UserWarning, match="beyond the 9 examples"):
        evaluate_model(m, EvalConfig(k=9, **cfg), progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_model(m, EvalConfig(k=8, **cfg), progress=False)


def test_evaluation_is_seeded():
    m = tiny()
    cfg = EvalConfig(n_prompts=16, k=3, analyses=["layers"])
    a, b = evaluate_model(m, cfg, progress=False), evaluate_model(m, cfg, progress=False)
    assert json.dumps(a) == json.dumps(b)  # (NaN-safe equality)


def test_separability_detects_clusters():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(4).repeat_interleave(20)
    centers = torch.randn(4, 8, generator=g) * 5
    x = (centers[ids] + torch.randn(80, 8, generator=g)).numpy()
    s = separability(x, ids.numpy())
    assert s["between_within"] > 5 and s["probe_acc"] > 0.9
    noise = torch.randn(80, 8, generator=g).numpy()
    assert separability(noise, ids.numpy())["between_within"] < 0.5


def test_cli_train_evaluate_report(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--out", str(out), "--preset", "tiny", "--d", "4", "--k-max", "4",
                              "--batch-size", "4", "--steps", "2", "--tvp-layer", "1", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--model", str(out / "model"), "--model", str(out / "model"),
                              "--label", "a", "--label", "b", "--out", str(tmp_path / "ev"), "--n-prompts", "16",
                              "--k", "3", "--analyses", "layers,noisy,pca"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Noisy labels" in html
    assert set(json.loads((tmp_path / "ev" / "results.json").read_text())) == {"a", "b"}
    res = runner.invoke(app, ["train", "--out", str(out), "--preset", "tiny", "--tvp-layer", "9"])
    assert res.exit_code == 2 and "beyond the model" in res.output
    res = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a from-scratch model" in res.output


def test_ood_shifts_per_family():
    from taskvec.scratch.evaluate import ood_shifts

    names = ["x×2", "skewed", "half-subspace"]
    assert [n for n, _ in ood_shifts(TaskConfig(), names)] == ["in-distribution", *names]
    assert [n for n, _ in ood_shifts(TaskConfig(name="sinusoid"), names)] == ["in-distribution", "x×2"]
    (_, upd), = ood_shifts(TaskConfig(name="token_offset", offsets=[1, 2]), names)[1:]
    assert 1 not in upd["offsets"] and 2 not in upd["offsets"] and 3 in upd["offsets"]


def test_degenerate_cases_are_nan_not_noise():
    import math

    import numpy as np

    ids = np.repeat(np.arange(3), 10)
    same = np.ones((30, 4), dtype=np.float32)
    assert math.isnan(separability(same, ids)["between_within"])
    m = tiny()  # untrained: ICL does not beat zero-shot, so S(l) is undefined
    r = evaluate_model(m, EvalConfig(n_prompts=16, k=3, analyses=["layers"]), progress=False)
    if r["layers"]["zero_shot"] - r["layers"]["icl"] <= 0.01 * r["layers"]["zero_shot"]:
        assert all(math.isnan(s) for s in r["layers"]["strength"])
