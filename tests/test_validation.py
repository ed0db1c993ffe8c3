"""Every input validated at the door, in the Python API too (issue 24): config classes raise a one-line
ConfigError naming the field however they are built; intervals refuse what has no interval instead of returning
NaN; load_model, patched_logits and read_states refuse what is not a model, a row or a token id of the model."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from taskvec.analysis.runners import DPCAConfig, HeadsConfig, SaliencyConfig
from taskvec.errors import (ConfigError, EmptyInputError, ModelNotFoundError, PositionError, RangeError,
                            TaskvecError, TokenizationError, TooFewTrialsError)
from taskvec.scratch.comparison import ComparisonConfig
from taskvec.scratch.evaluate import EvalConfig
from taskvec.scratch.tasks import TaskConfig
from taskvec.scratch.train import TrainConfig


def _one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("build, needle", [
    (lambda: SaliencyConfig(seed=-1), "saliency config field 'seed' (--seed)"),
    (lambda: DPCAConfig.model_validate({"k": 0}), "dpca config field 'k' (--k)"),
    (lambda: DPCAConfig(layers=[]), "--layers is empty"),
    (lambda: HeadsConfig(n_demos=0), "'n_demos'"),
    (lambda: TrainConfig(lr=-0.1), "bad training config: lr"),
    (lambda: TrainConfig(n_head=7), "not divisible by n_head 7"),
    (lambda: TaskConfig(noise=-1), "field 'noise'"),
    (lambda: EvalConfig(seed=-1), "field 'seed'"),
    (lambda: ComparisonConfig.model_validate_json('{"seeds": [-1, 0]}'), "seeds must be >= 0"),
], ids=["saliency-seed", "dpca-k", "dpca-layers", "heads-demos", "train-lr", "train-heads", "task-noise",
        "eval-seed", "comparison-seeds"])
def test_config_classes_raise_a_one_line_config_error_naming_the_field(build, needle):
    with pytest.raises(ConfigError) as err:  # not pydantic's multi-line ValidationError
        build()
    assert needle in _one_line(err)


def test_intervals_refuse_what_has_no_interval():
    from taskvec.stats import mean_ci, or_nan, summarize, t_ci, wilson

    with pytest.raises(EmptyInputError):
        wilson(0, 0)
    with pytest.raises(RangeError):
        wilson(3, 2)
    for empty in ([], [float("nan")]):
        with pytest.raises(EmptyInputError):
            mean_ci(empty)
    with pytest.raises(TooFewTrialsError):
        t_ci([1.0])
    assert isinstance(TooFewTrialsError("x"), TaskvecError)
    m, lo, hi = or_nan(t_ci, [1.0])  # where a caller means "missing": NaN, as before
    assert m == 1.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in or_nan(mean_ci, []))
    s = summarize(pd.DataFrame({"g": [0, 0, 1], "v": [1.0, 0.0, np.nan]}), ["g"], "v")
    assert s["mean"].tolist()[0] == 0.5 and math.isnan(s["mean"].tolist()[1]) and s.n.tolist() == [2, 0]


def test_load_model_refuses_what_is_not_a_pretrained_lm(tmp_path):
    from taskvec.models import load_model

    with pytest.raises(ModelNotFoundError, match=r"\(a str or a path\), got int 123") as err:
        load_model(123)
    _one_line(err)
    with pytest.raises(ModelNotFoundError, match="model name is empty"):
        load_model("")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "taskvec_scratch"}))
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(ModelNotFoundError, match="is a from-scratch model .* taskvec evaluate --model") as err:
        load_model(tmp_path)
    _one_line(err)


def test_evaluate_refuses_a_pretrained_checkpoint(tmp_path):
    from taskvec.scratch.model import check_model_dir

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(ModelNotFoundError, match="but a 'llama' checkpoint"):
        check_model_dir(tmp_path)


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from taskvec.models.registry import cache_dir

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("TASKVEC_CACHE", str(tmp_path / "f"))
    with pytest.raises(ConfigError, match="is a file, not a directory") as err:
        cache_dir()
    _one_line(err)


def test_edits_and_token_ids_outside_the_batch_or_vocabulary(tiny_llama):
    from taskvec.intervene import Edits, patched_logits, read_states

    ids = tiny_llama.tokenizer("The capital of France is", add_special_tokens=False).input_ids
    vector = torch.zeros(tiny_llama.d_model)
    with pytest.raises(PositionError, match="row 1 is outside the batch") as err:
        patched_logits(tiny_llama, [ids], Edits.at(rows=[1], layers=[0], positions=[0], vectors=vector))
    _one_line(err)
    vocab = tiny_llama.model.get_input_embeddings().num_embeddings
    for bad in (vocab, -1):
        with pytest.raises(TokenizationError, match=f"token id {bad} is outside"):
            patched_logits(tiny_llama, [[*ids, bad]])
        with pytest.raises(TokenizationError):
            read_states(tiny_llama, [[*ids, bad]], [[-1]])


# --- task files in a study (issue 24): refused before any work or file, their params found by the name they go by


def _clash_file(tmp_path):
    rows = [f"x{i},A1" for i in range(20)] + [f"y{i},A2" for i in range(20)]  # " A1" and " A2" both begin " A"
    path = tmp_path / "data" / "clash.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("input,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("key", ["clash", "file:{path}"])
def test_use_file_labels_whose_labels_collide_is_refused_before_the_run_directory(tiny_llama, tmp_path, key):
    """Keyed by the file's stem (as the report names it) or by file:PATH, use_file_labels takes effect, and labels
    that the model cannot score apart stop the study in one line before anything is written."""
    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    path = _clash_file(tmp_path)
    cfg = StudyConfig(model="smollm2-135m", tasks=[f"file:{path}"], quick=True,
                      task_params={key.format(path=path): {"use_file_labels": True}})
    expected = (r"task 'clash': the labels of .*clash.csv \(shown with use_file_labels\) cannot be scored apart: "
                r"label 'A1' is 2 tokens")
    with pytest.raises(TokenizationError, match=expected) as err:
        run_study(cfg, tmp_path / "run", lm=tiny_llama)
    _one_line(err)
    assert not (tmp_path / "run").exists()


def test_task_params_keyed_by_a_files_stem_reach_the_task(tiny_llama, tmp_path):
    from taskvec.study import StudyConfig, TaskRun

    path = _clash_file(tmp_path)
    path.write_text(path.read_text().replace("A1", "yes").replace("A2", "no"))
    cfg = StudyConfig(model="smollm2-135m", tasks=["antonyms", f"file:{path}"], quick=True,
                      task_params={"clash": {"use_file_labels": True, "n_demos": 4}})
    tr = TaskRun(f"file:{path}", cfg.effective(), tiny_llama)
    assert tr.name == "clash" and tr.file == "clash" and tr.task.name == "clash"
    assert tr.task.labels == ("yes", "no") and tr.task.use_file_labels and tr.task.n_demos == 4
    assert {t.label_words for t in tr.source} == {("yes", "no")}


@pytest.mark.parametrize("params, needle", [
    ({"nosuch": {}}, "task_params names 'nosuch', which is not a task of this run (antonyms, clash; a task file by "
                     "its name or as file:PATH)"),
    ({"clash": {}, "file:{path}": {}}, "task_params gives the task 'clash' twice, as 'file:"),
])
def test_task_params_naming_no_task_or_one_task_twice_are_refused(tmp_path, params, needle):
    from taskvec.study import StudyConfig

    path = _clash_file(tmp_path)
    with pytest.raises(ConfigError) as err:
        StudyConfig(tasks=["antonyms", f"file:{path}"], task_params={k.format(path=path): v for k, v in params.items()})
    assert needle in _one_line(err)


def test_a_task_file_with_a_conflict_stops_the_study_before_the_run_directory(tiny_llama, tmp_path):
    from taskvec.errors import TaskFileError
    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps([{"input": f"w{i}", "output": f"v{i}"} for i in range(30)]
                               + [{"input": "w3", "output": "other"}]))
    cfg = StudyConfig(model="smollm2-135m", tasks=[f"file:{peer}"], quick=True)
    expected = r"line 1 \(entry 31\): input 'w3' repeats line 1 \(entry 4\) with a different output \('v3' vs 'other'\)"
    with pytest.raises(TaskFileError, match=expected) as err:
        run_study(cfg, tmp_path / "run", lm=tiny_llama)
    assert "on_conflict" in _one_line(err) and not (tmp_path / "run").exists()


def test_analysis_configs_refuse_what_the_cli_refuses():
    """The Python API gets the CLI's checks: an empty separator, saliency without demonstrations, dPCA on a task
    without labels are one-line errors when the config is made (before any model loads or directory is created)."""
    from taskvec.analysis.runners import DPCAConfig, HeadsConfig, SaliencyConfig

    cases = [(SaliencyConfig, dict(separator=" "), "separator ' ' is empty"),
             (SaliencyConfig, dict(n_demos=0), "greater than or equal to 1"),
             (HeadsConfig, dict(separator=""), "separator '' is empty"),
             (DPCAConfig, dict(separator=""), "separator '' is empty"),
             (DPCAConfig, dict(task="antonyms"), "knowledge task with no labels")]
    for cls, fields, text in cases:
        with pytest.raises(ConfigError, match=text) as err:
            cls(**fields)
        assert "\n" not in str(err.value)
    assert DPCAConfig(task="two_d").task == "two_d"


def test_study_on_conflict_reaches_task_files_only(tmp_path):
    from taskvec.study import StudyConfig

    path = tmp_path / "caps.json"
    path.write_text('[{"input": "a", "output": "b"}, {"input": "a", "output": "c"}]')
    spec = f"file:{path}"
    cfg = StudyConfig(tasks=[spec, "antonyms"], on_conflict="drop_both")
    assert cfg.task_params_for(spec)["on_conflict"] == "drop_both"
    assert "on_conflict" not in cfg.task_params_for("antonyms")  # a registered task takes no such parameter
    own = StudyConfig(tasks=[spec], on_conflict="drop_both", task_params={"caps": {"on_conflict": "keep_first"}})
    assert own.task_params_for(spec)["on_conflict"] == "keep_first"  # the file's own setting wins
    assert StudyConfig(tasks=[spec]).task_params_for(spec)["on_conflict"] == "error"
    with pytest.raises(ConfigError, match="on_conflict"):
        StudyConfig(tasks=[spec], on_conflict="keep_last")
