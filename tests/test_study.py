"""The local-vs-global study end to end on the real smollm2-135m with small trial counts: every vector type and
variant, cross-checks between experiments, the run store, resume after killing a real run, and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from taskvec.errors import ConfigError
from taskvec.runs import RunStore
from taskvec.study import StudyConfig, run_study
from taskvec.vectors import load_vectors

SMALL = dict(model="smollm2-135m", tasks=["antonyms", "simple_string"], n_trials=4, n_patch_trials=3, n_demos=4,
             demo_counts=[0, 2], spans=["single", "from"], kofn_subsets=1, control_stride=2)


@pytest.fixture(scope="module")
def small_run(smol, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    run_study(StudyConfig(**SMALL), out, lm=smol)
    return out, pd.read_parquet(out / "results.parquet")


def test_every_vector_type_and_variant_is_measured_at_every_layer(small_run, smol):
    out, t = small_run
    L = smol.n_layers
    for task in ("antonyms", "simple_string"):
        tt = t[t.task == task]
        for exp, vectors in [("global", ["global", "random", "other_task"]),
                             ("local", ["local", "pos_avg", "trial_avg", "random", "other_task"])]:
            for vec in vectors:
                for span in ("single", "from"):
                    sel = tt[(tt.experiment == exp) & (tt.vector == vec) & (tt.span == span)]
                    layers = sorted(set(range(0, L, 2)) | {L - 1}) if vec in ("random", "other_task") else range(L)
                    assert sorted(sel.layer.unique()) == list(layers), (task, exp, vec, span)
                    assert sel.groupby("layer").size().eq(4 if exp == "global" else 3).all()
                    assert sel.score.between(0, 1).all()
        assert set(tt[tt.experiment == "icl"].n_demos) == {0, 2, 4}
        assert len(tt[(tt.experiment == "local") & (tt.vector == "dummy")]) == 3
        assert set(tt[tt.experiment == "kofn"].k) == set(range(5))
        assert len(tt[tt.experiment == "convergence"]) == L
        assert len(tt[tt.experiment == "chance"]) == 1
    cat = t[t.task == "simple_string"]
    assert (cat.kind == "categorization").all() and (cat.labels == "A/B").all()
    assert t[t.task == "antonyms"].kind.eq("knowledge").all()


def test_kofn_endpoints_equal_the_dummy_and_the_full_local_patch(small_run):
    """k = 0 of n is the unpatched dummy prompt; k = n is single-layer local patching at the k-of-n layer."""
    _, t = small_run
    for task, tt in t.groupby("task"):
        kofn = tt[tt.experiment == "kofn"]
        layer, n = int(kofn.layer.iloc[0]), int(kofn.k.max())
        dummy = tt[(tt.experiment == "local") & (tt.vector == "dummy")].set_index("prompt").sort_index()
        local = tt[(tt.experiment == "local") & (tt.vector == "local") & (tt.span == "single")
                   & (tt.layer == layer)].set_index("prompt").sort_index()
        k0 = kofn[kofn.k == 0].set_index("prompt").sort_index()
        kn = kofn[kofn.k == n].set_index("prompt").sort_index()
        assert torch.allclose(torch.tensor(k0.target_logprob.values), torch.tensor(dummy.target_logprob.values),
                              atol=1e-4), task
        assert torch.allclose(torch.tensor(kn.target_logprob.values), torch.tensor(local.target_logprob.values),
                              atol=1e-4), task


def test_vectors_are_saved_with_shapes_and_reload(small_run, smol):
    out, _ = small_run
    vec, meta = load_vectors(out / "vectors" / "antonyms.safetensors")
    L, d = smol.n_layers, smol.d_model
    assert vec["global_per_prompt"].shape == (4, L, d)
    assert vec["local"].shape == (4, L, 4, d)
    assert torch.equal(vec["global"], vec["global_per_prompt"].mean(0))
    assert torch.equal(vec["trial_avg"], vec["local"].mean(0))
    assert meta["task"] == "antonyms" and meta["model"] == "smollm2-135m"
    assert (out / "vectors" / "country_capital.safetensors").exists()  # the other-task control


def test_convergence_is_cosine_in_range_and_global_matches_query_state(small_run):
    _, t = small_run
    conv = t[t.experiment == "convergence"]
    for col in ("local_global", "local_local", "local_global_per_trial"):
        assert conv[col].between(-1, 1).all()
    # the last layers' local vectors point towards the global one more than at random (cos > 0)
    assert conv.groupby("task").local_global.max().gt(0.1).all()


def test_report_and_summary_are_written(small_run):
    out, _ = small_run
    html = (out / "report.html").read_text()
    assert "antonyms" in html and "simple_string" in html and html.count("<img") >= 6
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.kind) == ["knowledge", "categorization"]
    assert {"global best", "local best", "pos_avg best", "trial_avg best", "chance"} <= set(summary.columns)
    for name in ("antonyms_layers", "antonyms_layers_from", "simple_string_kofn", "simple_string_convergence"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()


def test_finished_run_resumes_without_recomputing(small_run, smol):
    out, _ = small_run
    before = (out / "results.jsonl").read_text()
    run_study(StudyConfig(**SMALL), out, resume=True, lm=smol, report=False)
    assert (out / "results.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(small_run, smol):
    out, _ = small_run
    with pytest.raises(ConfigError, match="different config"):
        run_study(StudyConfig(**{**SMALL, "seed": 1}), out, resume=True, lm=smol)
    with pytest.raises(ConfigError, match="--resume"):
        run_study(StudyConfig(**SMALL), out, lm=smol)


def test_run_store_appends_and_skips_done_units(tmp_path):
    store = RunStore(tmp_path / "r", {"a": 1})
    calls = []
    assert store.run_unit("u", lambda: calls.append(1) or [{"x": 1}, {"x": 2}])
    assert not store.run_unit("u", lambda: calls.append(1) or [{"x": 3}])
    assert calls == [1] and list(store.table().x) == [1, 2]
    again = RunStore(tmp_path / "r", {"a": 1}, resume=True)
    assert again.done("u") and not again.done("v")


def test_bad_study_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="n_trials"):
        StudyConfig.from_dict({"n_trials": 1})
    with pytest.raises(ConfigError, match="nope"):
        StudyConfig.from_dict({"nope": 3})
    with pytest.raises(ConfigError, match="unknown task 'capitals'"):
        run_study(StudyConfig(tasks=["capitals"]), "/nonexistent/never-created")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "taskvec.cli", *args], capture_output=True, text=True, **kw)


def test_cli_errors_are_one_line_without_traceback(small_run):
    out, _ = small_run
    for args, needle in [(["study", "local-global", "--tasks", "capitals", "--out", "x"], "unknown task"),
                         (["study", "local-global", "--model", "smollm2-135m", "--tasks", "antonyms", "--out",
                           str(out), "--resume"], "different config"),
                         (["models", "prepare", "gpt5"], "unknown model"),
                         (["tasks", "show", "nope"], "unknown task"),
                         (["report", "/nonexistent"], "not a study run")]:
        res = _cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and needle in res.stderr
        assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_resume_after_killing_a_real_run(tmp_path, smol):
    """Start the study CLI in a subprocess, kill -9 it once units are finished, resume: finished units are kept
    byte for byte and not recomputed; the resumed run completes every unit exactly once."""
    cfg = dict(SMALL, tasks=["antonyms"], spans=["single"])
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "taskvec.cli", "study", "local-global", "--config",
                             str(tmp_path / "cfg.json"), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            units = [json.loads(x)["unit"] for x in results.read_text().splitlines()] if results.exists() else []
            if "antonyms/global" in units:
                break
            assert proc.poll() is None, "the study exited before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no finished unit within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = results.read_text()
    kept_units = [json.loads(x)["unit"] for x in kept.splitlines()]
    assert "antonyms/local" not in kept_units  # killed mid-run, not after it
    run_study(StudyConfig(**cfg), out, resume=True, lm=smol)
    after = results.read_text()
    assert after.startswith(kept)
    units = [json.loads(x)["unit"] for x in after.splitlines()]
    assert len(units) == len(set(units))
    for u in ("icl", "vectors", "global", "local", "kofn", "convergence", "chance"):
        assert f"antonyms/{u}" in units
    assert (out / "report.html").exists()
