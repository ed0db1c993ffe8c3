"""The one experiment pattern: configs (file + flags), one-line config errors, the run store of an analysis."""
from __future__ import annotations

import json

import pytest

from taskvec.analysis.runners import DPCAConfig, HeadsConfig, SaliencyConfig
from taskvec.kinds import run_heads
from taskvec.errors import ConfigError
from taskvec.experiment import config_from
from taskvec.study import StudyConfig


def test_flags_override_the_config_file_and_unset_flags_do_not(tmp_path):
    path = tmp_path / "dpca.yaml"
    path.write_text("k: 3\nn_trials: 12\nseed: 5\n")
    cfg = config_from(DPCAConfig, path, {"k": 2, "n_trials": None, "model": "smollm2-135m"})
    assert (cfg.k, cfg.n_trials, cfg.seed, cfg.model) == (2, 12, 5, "smollm2-135m")
    assert config_from(DPCAConfig, None, {}).n_trials == DPCAConfig().n_trials  # defaults live in the config


@pytest.mark.parametrize("cls, data, expected", [
    (StudyConfig, {"n_trials": -3}, "study config field 'n_trials' (--n-trials)"),
    (SaliencyConfig, {"loss": "foo"}, "saliency config field 'loss' (--loss)"),
    (DPCAConfig, {"shrinkage": 2.0}, "--shrinkage must be 'auto' or a number in [0, 1], got '2'"),
    (HeadsConfig, {"layers": []}, "--layers is empty"),
    (HeadsConfig, {"colour": "red"}, "heads config field 'colour'"),
    (SaliencyConfig, {"tasks": ["no_such_task"]}, "unknown task 'no_such_task'"),
])
def test_config_mistakes_are_one_line_errors_naming_the_field(cls, data, expected):
    with pytest.raises(ConfigError) as err:
        cls.from_dict(data)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_an_analysis_run_saves_its_kind_model_hash_and_resumes(tiny_llama, tmp_path):
    cfg = HeadsConfig(model="smollm2-135m", n_trials=2, n_demos=3, modes=["mean"], layers=[0])
    out = run_heads(cfg, tmp_path / "heads", lm=tiny_llama, progress=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == "heads" and saved["config"] == cfg.saved()
    assert saved["model_source"]["sha256"] and set(saved["versions"]) >= {"taskvec", "torch", "transformers"}
    assert (out / "report.html").exists()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["unit"] for line in lines] == ["heads/simple_string/mean", "heads/simple_string/attention"]
    run_heads(cfg, out, resume=True, lm=tiny_llama, progress=False)  # nothing left to do: no unit runs again
    assert (out / "results.jsonl").read_text().splitlines() == lines
    with pytest.raises(ConfigError, match="already holds a run"):
        run_heads(cfg, out, lm=tiny_llama, progress=False)
    with pytest.raises(ConfigError, match="differs in: n_trials"):
        run_heads(cfg.model_copy(update={"n_trials": 3}), out, resume=True, lm=tiny_llama, progress=False)
