"""From-scratch evaluation: batched layer sweep equals the per-layer loop, analyses, report, CLI, the run
directory (RunStore units, resume, refused configs)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import taskvec.scratch.evaluate as ev
from taskvec.errors import ConfigError, LayerError
from taskvec.runs import RunStore
from taskvec.cli import app
from taskvec.scratch.evaluate import CompressConfig, EvalConfig, compress_model, evaluate_model, separability
from taskvec.scratch.passes import blocked_query_predictions, icl_predictions, query_with_vectors, task_vectors
from taskvec.kinds import run_evaluation
from taskvec.scratch.model import ScratchModel, build_model
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
    cfg = EvalConfig(n_trials=24, k=4, context_ks=[1, 4], noisy_fracs=[0.0, 0.5], ood=["x×2"],
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
    cfg = dict(n_trials=8, analyses=["layers"])
    with pytest.warns(UserWarning, match="beyond the 9 examples"):
        evaluate_model(m, EvalConfig(k=9, **cfg), progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_model(m, EvalConfig(k=8, **cfg), progress=False)


def test_noisy_and_ood_rows_are_scored_on_the_clean_evaluation_prompts():
    """Every noisy/OOD row records the same model's clean ICL error on the same prompts: the ``layers`` analysis's
    error. p = 0 and in-distribution *are* the layers analysis (same prompts, same controls), so a row's
    degradation (icl − clean_icl) is the model's own, on common prompts; each analysis alone records the same."""
    m = tiny()
    cfg = EvalConfig(n_trials=16, k=3, analyses=["layers", "noisy", "ood"], noisy_fracs=[0.0, 0.5],
                     ood=["x×2", "w×2"])
    r = evaluate_model(m, cfg, progress=False)
    clean = r["layers"]["icl"]
    assert [row["clean_icl"] for row in r["noisy"] + r["ood"]] == [clean] * 5
    for row in (r["noisy"][0], r["ood"][0]):
        assert row["icl"] == clean and row["tvp_layer"] == r["layers"]["tvp"][r["layer"]]
    assert r["noisy"][1]["icl"] != clean and r["ood"][1]["icl"] != clean
    for analysis in ("noisy", "ood"):
        alone = evaluate_model(m, cfg.model_copy(update={"analyses": [analysis]}), progress=False)
        assert alone[analysis] == r[analysis]


def test_ood_and_noisy_prompts_are_the_clean_draw_transformed():
    cfg = EvalConfig(n_trials=8, k=3)
    lr = TaskConfig(d=4)
    base, _ = ev.eval_prompts(make_task(lr), cfg)

    def shifted(tc: TaskConfig, update: dict) -> dict:
        return ev.eval_prompts(make_task(tc.model_copy(update=update)), cfg)[0]

    x2, w2 = shifted(lr, {"x_scale": 2.0}), shifted(lr, {"w_scale": 2.0})
    assert torch.allclose(x2["xs"], 2 * base["xs"]) and torch.allclose(x2["yq"], 2 * base["yq"])
    assert torch.equal(w2["xs"], base["xs"]) and torch.allclose(w2["yq"], 2 * base["yq"])
    half = shifted(lr, {"half_subspace": True})
    assert torch.allclose(half["xs"][..., :2], 2**0.5 * base["xs"][..., :2]) and (half["xs"][..., 2:] == 0).all()
    tok = TaskConfig(name="token_offset", vocab=16, offsets=[1, 2, 3])
    [(name, update)] = ev.ood_shifts(tok, [])[1:]
    held, clean = shifted(tok, update), ev.eval_prompts(make_task(tok), cfg)[0]
    assert name == "held-out offsets" and torch.equal(held["xs"], clean["xs"]) and torch.equal(held["xq"], clean["xq"])
    assert not torch.equal(held["yq"], clean["yq"])
    # noisy labels: corrupted on top of the clean prompts, nested across fractions
    task = make_task(lr)
    n1, n2 = (ev.with_noisy_labels(task, base, p, ev.analysis_generator(cfg.seed, "noisy")) for p in (0.25, 0.5))
    hit1, hit2 = n1["ys"] != base["ys_clean"], n2["ys"] != base["ys_clean"]
    assert hit1.any() and hit2.sum() > hit1.sum() and torch.equal(n2["ys"][hit1], n1["ys"][hit1])
    assert all(torch.equal(n1[k], base[k]) for k in ("xs", "ys_clean", "xp", "xq", "yq"))


def test_evaluation_is_seeded():
    m = tiny()
    cfg = EvalConfig(n_trials=16, k=3, analyses=["layers"])
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
                              "--label", "a", "--label", "b", "--out", str(tmp_path / "ev"), "--n-trials", "16",
                              "--k", "3", "--analyses", "layers,noisy,pca"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Noisy labels" in html
    assert set(json.loads((tmp_path / "ev" / "results.json").read_text())) == {"a", "b"}
    saved = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert saved["config"]["n_trials"] == 16 and saved["config"]["seed"] == 12345  # the default: EvalConfig's
    assert saved["config"]["models"]["a"] == str((out / "model").resolve()) and "torch" in saved["versions"]
    assert set(saved["weights"]) == {"a", "b"} and saved["weights"]["a"] == saved["weights"]["b"]
    again = ["evaluate", "--model", str(out / "model"), "--model", str(out / "model"), "--label", "a", "--label", "b",
             "--out", str(tmp_path / "ev"), "--n-trials", "16", "--k", "3", "--analyses", "layers,noisy,pca"]
    res = runner.invoke(app, again)
    assert res.exit_code == 2 and "already holds a run" in res.output
    res = runner.invoke(app, [*again, "--resume"])  # every unit done: nothing is recomputed
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*again[:-1], "layers", "--n-trials", "8", "--resume"])
    assert res.exit_code == 2 and "differs in: n_trials" in res.output
    res = runner.invoke(app, ["evaluate", "--model", str(out / "model"), "--out", str(tmp_path / "old"),
                              "--n-prompts", "16"])
    assert res.exit_code == 2 and "--n-prompts is now --n-trials" in res.output
    res = runner.invoke(app, ["evaluate", "--model", str(out), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "training run: give its model" in res.output
    # --config gives any EvalConfig field (n_prompts mapped); a flag given wins over the file
    (tmp_path / "ev.yaml").write_text("n_prompts: 9\nk: 2\nanalyses: [layers]\nseed: 3\n")
    res = runner.invoke(app, ["evaluate", "--model", str(out / "model"), "--out", str(tmp_path / "cfg"),
                              "--config", str(tmp_path / "ev.yaml"), "--seed", "4"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "cfg" / "config.json").read_text())["config"]
    assert (saved["n_trials"], saved["k"], saved["analyses"], saved["seed"]) == (9, 2, ["layers"], 4)
    assert list(saved["models"]) == ["run"]  # .../run/model is labelled by its run
    res = runner.invoke(app, ["compress", "--model", str(out / "model"), "--k", "3", "--n-tasks", "2",
                              "--n-queries", "3"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)  # (stderr: loading bars)
    assert printed["tasks"] == 2 and printed["queries_per_task"] == 3 and printed["k"] == 3
    res = runner.invoke(app, ["compress", "--model", str(out / "model"), "--tasks", "2"])
    assert res.exit_code == 2 and "--tasks is now --n-tasks" in res.output
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
    r = evaluate_model(m, EvalConfig(n_trials=16, k=3, analyses=["layers"]), progress=False)
    if r["layers"]["zero_shot"] - r["layers"]["icl"] <= 0.01 * r["layers"]["zero_shot"]:
        assert all(math.isnan(s) for s in r["layers"]["strength"])


# ----------------------------------------------------------------------------------------------- run directory

SMALL = dict(n_trials=12, k=3, context_ks=[1, 3], noisy_fracs=[0.0, 0.5], ood=["x×2"], pca_tasks=3, pca_per_task=6,
             compress_tasks=2, compress_queries=3)


@pytest.fixture
def two_models(tmp_path):
    paths = {}
    for seed, label in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        path = tmp_path / label / "model"
        build_model("tiny", d_in=4, n_positions=60, task={"d": 4}).save_pretrained(path)
        paths[label] = path
    return paths


def _same(a: dict, b: dict) -> bool:
    """Equal results, wall times of compressed inference aside (NaN-safe: compared as JSON)."""
    strip = lambda r: {lab: {k: ({kk: vv for kk, vv in v.items() if not kk.startswith("seconds")}  # noqa: E731
                                 if k == "compress" else v) for k, v in m.items()} for lab, m in r.items()}
    return json.dumps(strip(a), sort_keys=True) == json.dumps(strip(b), sort_keys=True)


def test_resumed_evaluation_recomputes_nothing_finished(tmp_path, two_models, monkeypatch):
    cfg = EvalConfig(**SMALL, models=two_models)
    full = run_evaluation(cfg, tmp_path / "full", progress=False, report=False)
    expected = json.loads((full / "results.json").read_text())
    assert list(expected) == ["a", "b"] and set(expected["a"]) >= set(ev.ANALYSES)
    for lab, path in two_models.items():  # the same numbers as the in-memory API
        assert _same({lab: expected[lab]}, {lab: evaluate_model(ScratchModel.from_pretrained(path), cfg,
                                                                progress=False)})

    calls: list[str] = []
    real = ev.run_analysis

    def counted(s, c, analysis):
        calls.append(analysis)
        if len(calls) == 9 and not getattr(counted, "killed", False):  # b's third unit: "killed" once
            counted.killed = True
            raise KeyboardInterrupt
        return real(s, c, analysis)

    monkeypatch.setattr(ev, "run_analysis", counted)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(cfg, tmp_path / "cut", progress=False, report=False)
    assert not (tmp_path / "cut" / "results.json").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        run_evaluation(cfg, tmp_path / "cut", progress=False, report=False)
    calls.clear()
    run_evaluation(cfg, tmp_path / "cut", resume=True, progress=False, report=False)
    assert calls == ["noisy", "ood", "pca", "compress"]  # a's six units and b's first two were not recomputed
    assert _same(json.loads((tmp_path / "cut" / "results.json").read_text()), expected)

    # a line cut by a kill mid-write: that unit (only) is redone
    lines = (tmp_path / "cut" / "results.jsonl").read_text().splitlines()
    assert [json.loads(l)["unit"] for l in lines[-2:]] == ["b/pca", "b/compress"]
    (tmp_path / "cut" / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    calls.clear()
    run_evaluation(cfg, tmp_path / "cut", resume=True, progress=False, report=False)
    assert calls == ["compress"]
    assert _same(json.loads((tmp_path / "cut" / "results.json").read_text()), expected)


def test_evaluation_run_refuses_another_config_or_other_weights(tmp_path, two_models):
    cfg = EvalConfig(**SMALL, analyses=["layers"], models=two_models)
    out = run_evaluation(cfg, tmp_path / "r", progress=False, report=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "evaluate" and set(saved["weights"]) == {"a", "b"}
    assert saved["config"]["models"] == {lab: str(p.resolve()) for lab, p in two_models.items()}
    table = RunStore(out, saved["config"], resume=True).table()
    assert list(table.unit) == ["a/layers", "b/layers"] and list(table.model) == ["a", "b"]
    with pytest.raises(ConfigError, match=r"differs in: n_trials\)") as err:
        run_evaluation(cfg.model_copy(update={"n_trials": 13}), out, resume=True, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="differs in: models"):
        run_evaluation(EvalConfig(**SMALL, analyses=["layers"], models={"a": two_models["a"]}), out, resume=True,
                       progress=False)
    # more analyses may be added on resume: only the new units run
    more = cfg.model_copy(update={"analyses": ["layers", "noisy"]})
    run_evaluation(more, out, resume=True, progress=False, report=False)
    assert set(json.loads((out / "results.json").read_text())["b"]) >= {"layers", "noisy"}
    torch.manual_seed(7)  # model a retrained in place: its weights no longer match the run's
    build_model("tiny", d_in=4, n_positions=60, task={"d": 4}).save_pretrained(two_models["a"])
    with pytest.raises(ConfigError, match="other weights for 'a'"):
        run_evaluation(more, out, resume=True, progress=False)


def test_old_n_prompts_key_maps_to_n_trials():
    with pytest.warns(DeprecationWarning, match="'n_prompts' is now 'n_trials'"):
        assert EvalConfig(n_prompts=7).n_trials == 7
    with pytest.warns(DeprecationWarning):
        assert EvalConfig.from_dict({"n_prompts": 9, "k": 2}).n_trials == 9
    with pytest.raises(ConfigError, match="n_trials only"):
        EvalConfig.from_dict({"n_prompts": 9, "n_trials": 9})
    with pytest.raises(ConfigError, match="n_trials"):
        EvalConfig.from_dict({"n_trials": 0})
    with pytest.raises(ConfigError, match="unknown shift"):
        EvalConfig.from_dict({"ood": ["x×9"]})


def test_compress_config_matches_the_evaluate_analysis():
    m = tiny()
    small = CompressConfig(k=3, n_tasks=2, n_queries=3)
    a = compress_model(m, small)
    b = evaluate_model(m, EvalConfig(k=3, analyses=["compress"], compress_tasks=2, compress_queries=3),
                       progress=False)["compress"]
    assert {k: v for k, v in a.items() if not k.startswith("seconds")} == \
        {k: v for k, v in b.items() if not k.startswith("seconds")}
    with pytest.raises(LayerError):
        compress_model(m, CompressConfig(layer=5))


def test_cli_help_defaults_are_the_config_defaults():
    """The CLI keeps no defaults: every option is None unless given, and each ``[default: N]`` in its help is the
    config class's."""
    import re

    import typer.main

    for name, cls in (("evaluate", EvalConfig), ("compress", CompressConfig)):
        command = typer.main.get_command(app).commands[name]
        for param in command.params:
            field = cls.model_fields.get(param.name)
            if field is None or param.name in ("models", "analyses"):
                continue
            assert param.default is None, (name, param.name)
            shown = re.search(r"\[default: ([-\w.]+)", param.help or "")
            if shown and field.default is not None:
                assert shown.group(1) == str(field.default), (name, param.name)
