"""The one report writer: ``taskvec.write_report(run_dir)`` (the registry, taskvec.kinds) dispatches on the run's kind; no module of taskvec
switches the user's matplotlib backend or imports pyplot. (The reports rendered in a browser:
test_report_browser.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import taskvec
from taskvec.errors import ConfigError
from taskvec.kinds import run_kind, write_report


def test_no_module_switches_the_matplotlib_backend_or_uses_pyplot():
    src = Path(taskvec.__file__).parent
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if any(s in p.read_text(encoding="utf-8") for s in
                        ("matplotlib.use(", "import matplotlib.pyplot", "from matplotlib import pyplot", "pylab"))]
    assert not offenders, f"these modules touch pyplot or the backend: {offenders}"


def test_a_notebook_backend_survives_importing_taskvec_and_writing_reports(tmp_path):
    code = f"""
import sys, matplotlib
matplotlib.use("svg")  # stands for a user's (notebook) backend
import taskvec, taskvec.kinds, taskvec.report.local_global, taskvec.report.runs, taskvec.report.evaluation
import taskvec.analysis.saliency, taskvec.analysis.dpca, taskvec.analysis.heads, taskvec.cli
import torch
from taskvec.scratch.evaluate import EvalConfig, evaluate_model
from taskvec.scratch.model import build_model
from taskvec.report.evaluation import evaluation_page
torch.manual_seed(0)
m = build_model("tiny", d_in=4, n_positions=60, task={{"d": 4}}, layout="x→y").eval()
res = evaluate_model(m, EvalConfig(n_trials=8, k=3, analyses=["layers", "pca"]), progress=False)
evaluation_page({{"a": res}}, {str(tmp_path / "report.html")!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
    assert (tmp_path / "report.html").exists() and (tmp_path / "figures" / "layers_a.png").exists()


def test_a_directory_that_is_not_a_run_is_a_one_line_error(tmp_path):
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ConfigError, match="not a study run directory") as err:
            write_report(path)
        assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        run_kind(tmp_path)


def test_evaluation_and_training_runs_get_their_report(tmp_path):
    from taskvec.kinds import run_evaluation, train
    from taskvec.scratch.evaluate import EvalConfig
    from taskvec.scratch.model import build_model
    from taskvec.scratch.train import TrainConfig

    torch.manual_seed(0)
    model = tmp_path / "model"
    build_model("tiny", d_in=4, n_positions=60, task={"d": 4}, layout="x→y").save_pretrained(model)
    cfg = EvalConfig(models={"a": str(model), "b": str(model)}, n_trials=8, k=3, analyses=["layers", "noisy"])
    ev = run_evaluation(cfg, tmp_path / "eval", progress=False, report=False)
    assert run_kind(ev) == "evaluate"
    html = write_report(ev).read_text()
    assert "Per-layer task-vector patching" in html and "Noisy labels" in html and html.count("<img") >= 4
    (ev / "results.json").unlink()
    with pytest.raises(ConfigError, match="no results.json yet"):
        write_report(ev)

    run = tmp_path / "train"
    train(TrainConfig(preset="tiny", task={"d": 4}, k_max=4, batch_size=4, steps=4, log_every=2), run,
          progress=False, tensorboard=False, report=False)
    assert run_kind(run) == "train"
    html = write_report(run).read_text()
    assert "Training curves" in html and "<img" in html


def test_the_report_command_dispatches_and_fails_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from taskvec.cli import app

    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: ")
    (tmp_path / "results.json").write_text(json.dumps({}))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "holds no model results" in res.output


def test_older_run_directories_keep_their_kind(tmp_path):
    """config.json files written before the registry named kinds once (``scratch-evaluate``,
    ``scratch-comparison``, or no kind at all) are read as today's kinds."""
    for saved, kind in (({"kind": "scratch-evaluate", "config": {}}, "evaluate"),
                        ({"kind": "scratch-comparison", "config": {}}, "compare"),
                        ({"config": {"tasks": [], "n_select": 1, "n_eval": 2}}, "study"),
                        ({"config": {"analysis": "dpca"}}, "dpca")):
        run = tmp_path / kind
        run.mkdir()
        (run / "config.json").write_text(json.dumps(saved))
        assert run_kind(run) == kind


def test_the_registry_runs_any_kind_by_its_config_and_refuses_what_is_not_one(tmp_path):
    from taskvec.kinds import KINDS, kind_named, kind_of_config, run

    assert set(KINDS) == {"study", "saliency", "dpca", "heads", "train", "evaluate", "compare"}
    for name, kind in KINDS.items():
        assert kind.config.kind == name, f"{kind.config.__name__}.kind is {kind.config.kind!r}, the registry says {name!r}"
        assert kind_named(name) is kind and callable(kind.report)
    assert kind_named("evaluation") is KINDS["evaluate"]
    with pytest.raises(ConfigError, match="unknown run kind"):
        kind_named("nosuch")
    with pytest.raises(ConfigError, match="not the config of a run kind"):
        run({"model": "x"}, tmp_path / "r")
    from taskvec.scratch.train import TrainConfig

    assert kind_of_config(TrainConfig()) is KINDS["train"]
