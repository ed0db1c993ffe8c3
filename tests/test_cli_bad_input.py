"""Bad input on the command line: every command answers a user mistake with exit code 2 and exactly one line
``error: ...`` on stderr, never a traceback. Each case runs the console entry point (``taskvec.cli.main``) in this
process under typer's ``CliRunner`` (:func:`conftest.cli`); ``tests/test_cli.py`` runs the installed ``taskvec``
script once in a fresh process.

Errors that do not need a model are raised before one is loaded, so their stderr is that one line and nothing else
(no loading bars); they also leave no run directory behind. The one that needs a model loads the tiny Llama's
checkpoint (``{tiny}`` in its arguments), never a real model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import cli  # noqa: E402

SMOL = ["--model", "smollm2-135m"]

# (case id, arguments, text the error line must contain, whether a model is loaded before the error)
CASES = [
    ("models-prepare-unknown", ["models", "prepare", "no-such-model"], "unknown model 'no-such-model'", False),
    ("tasks-show-unknown", ["tasks", "show", "no_such_task"], "unknown task 'no_such_task'", False),
    ("tasks-show-negative-demos", ["tasks", "show", "two_d", "--n-demos", "-1"], "--n-demos must be >= 1", False),
    ("tasks-show-unknown-model", ["tasks", "show", "two_d", "--model", "no-such-model"], "unknown model", False),
    ("study-bad-task", ["study", "local-global", *SMOL, "--tasks", "no_such_task", "--out", "{tmp}/s"],
     "unknown task 'no_such_task'", False),
    ("study-bad-spans", ["study", "local-global", *SMOL, "--spans", "sideways", "--out", "{tmp}/s"], "spans", False),
    ("study-negative-trials", ["study", "local-global", *SMOL, "--n-trials", "-3", "--out", "{tmp}/s"], "n_trials",
     False),
    ("study-missing-config", ["study", "local-global", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/s"],
     "missing.yaml", False),
    ("study-config-is-a-directory", ["study", "local-global", "--config", "{tmp}", "--out", "{tmp}/s"],
     "Is a directory", False),
    ("report-not-a-run", ["report", "{tmp}"], "not a study run directory", False),
    ("report-missing-dir", ["report", "{tmp}/nowhere"], "not a study run directory", False),
    ("saliency-bad-loss", ["saliency", *SMOL, "--loss", "foo", "--out", "{tmp}/run"],
     "field 'loss' (--loss): Input should be 'auto', 'vocab' or 'label'", False),
    ("saliency-bad-task", ["saliency", *SMOL, "--tasks", "no_such_task", "--out", "{tmp}/run"],
     "unknown task 'no_such_task'", False),
    ("saliency-batch-size-0", ["saliency", *SMOL, "--batch-size", "0", "--out", "{tmp}/run"],
     "(--batch-size): Input should be greater than or equal to 1", False),
    ("saliency-zero-trials", ["saliency", *SMOL, "--n-trials", "0", "--out", "{tmp}/run"], "--n-trials", False),
    ("dpca-unreadable-shrinkage", ["dpca", *SMOL, "--shrinkage", "lots", "--out", "{tmp}/run"], "--shrinkage",
     False),
    ("dpca-shrinkage-above-1", ["dpca", *SMOL, "--shrinkage", "2", "--out", "{tmp}/run"], "[0, 1], got '2'", False),
    ("dpca-unreadable-layers", ["dpca", *SMOL, "--layers", "2-x", "--out", "{tmp}/run"], "cannot read --layers",
     False),
    ("dpca-k-0", ["dpca", *SMOL, "--k", "0", "--out", "{tmp}/run"], "(--k): Input should be greater than or equal to 1",
     False),
    ("dpca-layer-beyond-model", ["dpca", "--model", "{tiny}", "--layers", "0,99", "--out", "{tmp}/run"],
     "layer 99 is out of range", True),
    ("heads-bad-mode", ["heads", *SMOL, "--modes", "sideways", "--out", "{tmp}/run"],
     "field 'modes.0' (--modes): Input should be 'mean'", False),
    ("heads-negative-layer", ["heads", *SMOL, "--layers=-2", "--out", "{tmp}/run"], "layer -2", False),
    ("study-device-that-does-not-exist", ["study", "local-global", *SMOL, "--device", "tpu", "--out", "{tmp}/s"],
     "unknown device 'tpu'", False),
    ("saliency-bad-dtype", ["saliency", *SMOL, "--dtype", "fp8", "--out", "{tmp}/run"], "--dtype must be one of",
     False),
    ("heads-empty-layers", ["heads", *SMOL, "--layers", "", "--out", "{tmp}/run"], "--layers is empty", False),
    ("dpca-config-and-flag", ["dpca", *SMOL, "--config", "{tmp}/dpca.yaml", "--k", "0", "--out", "{tmp}/run"],
     "(--k)", False),
    ("heads-backwards-layers", ["heads", *SMOL, "--layers", "6-2", "--out", "{tmp}/run"], "runs backwards", False),
    ("train-bad-layout", ["train", "--out", "{tmp}/run", "--layout", "yx"], "unknown layout 'yx'", False),
    ("train-bad-preset", ["train", "--out", "{tmp}/run", "--preset", "huge"], "unknown preset 'huge'", False),
    ("train-tvp-layer-beyond-model", ["train", "--out", "{tmp}/run", "--preset", "tiny", "--tvp-layer", "50"],
     "tvp_layer 50 is beyond the model", False),
    ("train-curriculum-above-d", ["train", "--out", "{tmp}/run", "--d", "4", "--curriculum", "--curriculum-start",
                                  "6"], "curriculum_start 6 is above the input dimension d = 4", False),
    ("train-device-that-does-not-exist", ["train", "--out", "{tmp}/run", "--preset", "tiny", "--device", "tpu"],
     "unknown device 'tpu'", False),
    ("train-unparseable-config", ["train", "--out", "{tmp}/run", "--config", "{tmp}/bad.yaml"], "cannot read config",
     False),
    ("evaluate-missing-model", ["evaluate", "--model", "{tmp}/nowhere", "--out", "{tmp}/run"],
     "not a from-scratch model directory (no such directory", False),
    ("evaluate-k-0", ["evaluate", "--model", "{tmp}/nowhere", "--out", "{tmp}/run", "--k", "0"],
     "--k must be >= 1, got 0", False),
    ("compress-missing-model", ["compress", "--model", "{tmp}/nowhere"],
     "not a from-scratch model directory (no such directory", False),
    ("compress-not-a-model", ["compress", "--model", "{tmp}"], "not a from-scratch model directory", False),
    ("evaluate-no-gpu", ["evaluate", "--model", "{tmp}/nowhere", "--out", "{tmp}/run", "--device", "cuda"],
     "--device cuda: no CUDA GPU is available here", False),
    ("compress-bad-device", ["compress", "--model", "{tmp}/nowhere", "--device", "cuda:x"],
     "--device cuda:x", False),
    ("compare-bad-seeds", ["compare", "--out", "{tmp}/run", "--seeds", "0,one"], "--seeds '0,one': write whole",
     False),
    ("compare-xy-layout", ["compare", "--out", "{tmp}/run", "--layouts", "xy"], "no task-vector slot", False),
    ("compare-workers-0", ["compare", "--out", "{tmp}/run", "--workers", "0"], "--workers must be >= 1", False),
    ("compare-train-sets-seed", ["compare", "--out", "{tmp}/run", "--config", "{tmp}/cmp.yaml"],
     "train must not set seed", False),
    ("train-negative-lr-warmup", ["train", "--out", "{tmp}/run", "--lr-warmup", "-5"], "lr_warmup must be >= 0",
     False),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory (the command's cwd: a mistake must leave no ``runs/`` here) with bad configs."""
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n")
    (tmp_path / "cmp.yaml").write_text("train: {seed: 3}\n")
    (tmp_path / "dpca.yaml").write_text("k: 3\nn_trials: 12\n")  # the flag --k 0 must win over the file's k
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("args, expected, loads", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_code_2(workdir, args, expected, loads, request):
    tiny = str(request.getfixturevalue("tiny_llama").path) if loads else "{tiny}"
    out = cli(*[a.replace("{tmp}", str(workdir)).replace("{tiny}", tiny) for a in args])
    assert out.exit_code == 2, (out.exit_code, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-2000:]
    assert expected in errors[0]
    if not loads:  # raised before any model was loaded: that line is all there is
        assert lines == errors, out.stderr[-2000:]
    assert not (workdir / "run").exists()  # nothing half-created for a mistake
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["saliency", "--no-such-flag"], "error: taskvec saliency: No such option: --no-such-flag"),
    (["dpca", "--k", "many"], "error: taskvec dpca: Invalid value for '--k'"),
    (["train"], "error: taskvec train: Missing option '--out'")],
    ids=["unknown-option", "non-integer", "missing-required"])
def test_usage_errors_are_one_line_too(workdir, args, expected):
    """Typer's own usage errors are one line ``error: ...`` naming the command (not click's boxed panel), exit 2."""
    out = cli(*args)
    assert out.exit_code == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(expected), out.stderr


# ------------------------------------------------------------------------------------------------- in process
# (case id, the flag it gives a bad value: "COMMAND --flag" or "COMMAND <argument>" (None: no flag's fault), arguments,
# text the error line must contain): run through taskvec.cli.main in this process (fast); none loads a model. {tmp}
# is the workdir below, which also holds damaged run directories and fake checkpoints. Every option and argument of
# every command needs a case here, or an entry in EXEMPT saying why it has no bad value
# (test_every_flag_of_every_command_has_a_bad_input_case): a flag added tomorrow fails that test until it has one.
RUN = ["--out", "{tmp}/run"]
STUDY = ["study", "local-global", *SMOL]
SCRATCH = ["--model", "{tmp}/scratch"]
IN_PROCESS = [
    # models, tasks, report
    ("models-prepare-unknown", "models prepare <names>", ["models", "prepare", "no-such-model"],
     "unknown model 'no-such-model'; named offline models"),
    ("models-list-cache-is-a-file", None, ["models", "list"], "TASKVEC_CACHE={tmp}/afile is a file, not a directory"),
    ("tasks-show-unknown", "tasks show <name>", ["tasks", "show", "no_such_task"], "unknown task 'no_such_task'"),
    ("tasks-show-negative-seed", "tasks show --seed", ["tasks", "show", "two_d", "--seed", "-1"],
     "--seed must be >= 0, got -1"),
    ("tasks-show-zero-demos", "tasks show --n-demos", ["tasks", "show", "two_d", "--n-demos", "0"],
     "--n-demos must be >= 1, got 0"),
    ("tasks-show-unknown-model", "tasks show --model", ["tasks", "show", "two_d", "--model", "no-such-model"],
     "unknown model 'no-such-model'"),
    ("tasks-show-empty-separator", "tasks show --separator", ["tasks", "show", "two_d", "--separator", " "],
     "--separator ' ' is empty: give the word between input and answer"),
    ("tasks-show-file-without-path", None, ["tasks", "show", "file:"], "file: names no file; write file:PATH"),
    ("tasks-show-file-is-a-directory", None, ["tasks", "show", "file:{tmp}"], "is a directory; give a task file in it"),
    ("tasks-show-jsonl-array-line", None, ["tasks", "show", "file:{tmp}/array.jsonl"],
     "line 1: expected an object with fields 'input' and 'output' (or 'label'), got list"),
    ("tasks-show-conflicting-file", None, ["tasks", "show", "file:{tmp}/conflict.json"],
     "conflict.json: line 1 (entry 3): input 'a' repeats line 1 (entry 1) with a different output ('b' vs 'x')"),
    ("tasks-show-bad-on-conflict", "tasks show --on-conflict",
     ["tasks", "show", "file:{tmp}/conflict.json", "--on-conflict", "keep_last"],
     "--on-conflict must be one of error, keep_first, drop_both, got 'keep_last'"),
    ("tasks-show-on-conflict-of-a-registered-task", None, ["tasks", "show", "two_d", "--on-conflict", "keep_first"],
     "--on-conflict applies to task files; 'two_d' is a registered task"),
    ("report-missing-dir", "report <run_dir>", ["report", "{tmp}/nowhere"], "not a study run directory"),
    ("report-garbage-amid-results", None, ["report", "{tmp}/garbage"], "line 2 is not a result record"),
    # study local-global
    ("study-scratch-model", "study local-global --model", ["study", "local-global", *SCRATCH, *RUN],
     "is a from-scratch model (made by taskvec train), not a pretrained LM"),
    ("study-unknown-device", "study local-global --device", [*STUDY, "--device", "tpu", *RUN], "unknown device 'tpu'"),
    ("study-bad-dtype", "study local-global --dtype", [*STUDY, "--dtype", "fp8", *RUN], "--dtype must be one of"),
    ("study-unknown-task", "study local-global --tasks", [*STUDY, "--tasks", "no_such_task", *RUN],
     "unknown task 'no_such_task'"),
    ("study-out-is-a-file", "study local-global --out", [*STUDY, "--out", "{tmp}/afile"],
     "--out {tmp}/afile is a file, not a directory"),
    ("study-resume-of-nothing", "study local-global --resume", [*STUDY, *RUN, "--resume"],
     "--resume: {tmp}/run holds no run (no config.json)"),
    ("study-negative-seed", "study local-global --seed", [*STUDY, "--seed", "-1", *RUN], "field 'seed' (--seed)"),
    ("study-one-trial", "study local-global --n-trials", [*STUDY, "--n-trials", "1", *RUN],
     "field 'n_trials' (--n-trials): Input should be greater than or equal to 2"),
    ("study-one-select", "study local-global --n-select", [*STUDY, "--n-select", "1", *RUN], "(--n-select)"),
    ("study-one-eval", "study local-global --n-eval", [*STUDY, "--n-eval", "1", *RUN], "(--n-eval)"),
    ("study-zero-local-select", "study local-global --n-local-select", [*STUDY, "--n-local-select", "0", *RUN],
     "(--n-local-select)"),
    ("study-zero-local-eval", "study local-global --n-local-eval", [*STUDY, "--n-local-eval", "0", *RUN],
     "(--n-local-eval)"),
    ("study-zero-demos", "study local-global --n-demos", [*STUDY, "--n-demos", "0", *RUN], "(--n-demos)"),
    ("study-bad-spans", "study local-global --spans", [*STUDY, "--spans", "sideways", *RUN],
     "field 'spans.0' (--spans): Input should be 'single' or 'from'"),
    ("study-unparseable-config", "study local-global --config", [*STUDY, "--config", "{tmp}/bad.yaml", *RUN],
     "cannot read config"),
    ("study-bad-on-conflict", "study local-global --on-conflict", [*STUDY, "--on-conflict", "keep_last", *RUN],
     "(--on-conflict): Input should be 'error', 'keep_first' or 'drop_both'"),
    ("study-zero-fv-k", "study local-global --fv-k", [*STUDY, "--fv-k", "0", *RUN],
     "field 'fv_k' (--fv-k): Input should be greater than or equal to 1"),
    ("study-bad-fv-tasks", "study local-global --fv-tasks", [*STUDY, "--fv-tasks", "some", *RUN],
     "(--fv-tasks): Input should be 'knowledge' or 'all'"),
    ("study-bad-local-sweep", "study local-global --local-sweep", [*STUDY, "--local-sweep", "every", *RUN],
     "(--local-sweep): Input should be 'beats_token' or 'all'"),
    ("methods-missing-dir", "methods <run_dir>", ["methods", "{tmp}/nowhere"], "is not a study run directory"),
    ("methods-of-a-heads-run", None, ["methods", "{tmp}/garbage"], "is a heads run: the method table needs a study"),
    ("methods-csv-into-no-dir", "methods --csv", ["methods", "{tmp}/nowhere", "--csv", "{tmp}/x/y.csv"],
     "--csv {tmp}/x/y.csv: its folder {tmp}/x does not exist"),
    ("methods-csv-is-a-dir", None, ["methods", "{tmp}/nowhere", "--csv", "{tmp}"], "is a directory: give a file"),
    ("study-task-params-of-no-task", None, [*STUDY, "--config", "{tmp}/params.yaml", *RUN],
     "task_params names 'nosuch', which is not a task of this run"),
    ("run-missing-config", "run <config>", ["run", "{tmp}/nowhere.yaml", "--out", "{tmp}/run"],
     "config file {tmp}/nowhere.yaml does not exist"),
    ("run-names-no-kind", None, ["run", "{tmp}/params.yaml", "--out", "{tmp}/run"],
     "{tmp}/params.yaml does not name its run kind: give --kind, one of study, saliency"),
    ("run-unknown-kind", "run --kind", ["run", "{tmp}/params.yaml", "--kind", "nonsense", "--out", "{tmp}/run"],
     "unknown run kind 'nonsense': one of study, saliency, dpca, heads, train, evaluate, compare"),
    ("run-empty-out", "run --out", ["run", "{tmp}/params.yaml", "--kind", "study", "--out", ""], "--out is empty"),
    ("run-no-out", None, ["run", "{tmp}/params.yaml", "--kind", "study"], "taskvec run needs --out"),
    ("run-resume-of-nothing", "run --resume", ["run", "{tmp}/params.yaml", "--kind", "study", "--out", "{tmp}/run",
                                               "--resume"], "holds no run (no config.json)"),
    ("run-bad-field", None, ["run", "{tmp}/params.yaml", "--kind", "study", "--out", "{tmp}/run"],
     "task_params names 'nosuch', which is not a task of this run"),
    # saliency
    ("saliency-unknown-model", "saliency --model", ["saliency", "--model", "no-such-model", *RUN],
     "unknown model 'no-such-model'"),
    ("saliency-unknown-device", "saliency --device", ["saliency", *SMOL, "--device", "tpu", *RUN],
     "unknown device 'tpu'"),
    ("saliency-bad-dtype", "saliency --dtype", ["saliency", *SMOL, "--dtype", "fp8", *RUN], "--dtype must be one of"),
    ("saliency-unknown-task", "saliency --tasks", ["saliency", *SMOL, "--tasks", "no_such_task", *RUN],
     "unknown task 'no_such_task'"),
    ("saliency-zero-trials", "saliency --n-trials", ["saliency", *SMOL, "--n-trials", "0", *RUN], "(--n-trials)"),
    ("saliency-negative-demos", "saliency --n-demos", ["saliency", *SMOL, "--n-demos", "-1", *RUN], "(--n-demos)"),
    ("saliency-negative-seed", "saliency --seed", ["saliency", *SMOL, "--seed", "-1", *RUN],
     "field 'seed' (--seed): Input should be greater than or equal to 0"),
    ("saliency-bad-loss", "saliency --loss", ["saliency", *SMOL, "--loss", "foo", *RUN],
     "field 'loss' (--loss): Input should be 'auto', 'vocab' or 'label'"),
    ("saliency-batch-size-0", "saliency --batch-size", ["saliency", *SMOL, "--batch-size", "0", *RUN],
     "(--batch-size): Input should be greater than or equal to 1"),
    ("saliency-empty-separator", "saliency --separator", ["saliency", *SMOL, "--separator", "", *RUN],
     "--separator '' is empty"),
    ("saliency-unparseable-config", "saliency --config", ["saliency", *SMOL, "--config", "{tmp}/bad.yaml", *RUN],
     "cannot read config"),
    ("saliency-out-is-a-file", "saliency --out", ["saliency", *SMOL, "--out", "{tmp}/afile"],
     "is a file, not a directory"),
    ("saliency-empty-out", None, ["saliency", *SMOL, "--out", ""], "--out is empty"),
    ("saliency-resume-of-nothing", "saliency --resume", ["saliency", *SMOL, *RUN, "--resume"], "holds no run"),
    # dpca
    ("dpca-scratch-model", "dpca --model", ["dpca", *SCRATCH, *RUN], "is a from-scratch model"),
    ("dpca-unknown-device", "dpca --device", ["dpca", *SMOL, "--device", "tpu", *RUN], "unknown device 'tpu'"),
    ("dpca-bad-dtype", "dpca --dtype", ["dpca", *SMOL, "--dtype", "fp8", *RUN], "--dtype must be one of"),
    ("dpca-knowledge-task", None, ["dpca", *SMOL, "--task", "antonyms", *RUN],
     "task 'antonyms' is a knowledge task with no labels"),
    ("saliency-zero-demos", None, ["saliency", *SMOL, "--n-demos", "0", *RUN], "(--n-demos)"),
    ("dpca-unknown-task", "dpca --task", ["dpca", *SMOL, "--task", "no_such_task", *RUN],
     "unknown task 'no_such_task'"),
    ("dpca-zero-trials", "dpca --n-trials", ["dpca", *SMOL, "--n-trials", "0", *RUN], "(--n-trials)"),
    ("dpca-zero-demos", "dpca --n-demos", ["dpca", *SMOL, "--n-demos", "0", *RUN], "(--n-demos)"),
    ("dpca-negative-seed", "dpca --seed", ["dpca", *SMOL, "--seed", "-1", *RUN], "(--seed)"),
    ("dpca-k-0", "dpca --k", ["dpca", *SMOL, "--k", "0", *RUN], "(--k): Input should be greater than or equal to 1"),
    ("dpca-empty-layers", "dpca --layers", ["dpca", *SMOL, "--layers", "", *RUN], "--layers is empty"),
    ("dpca-unreadable-ablate-layers", "dpca --ablate-layers", ["dpca", *SMOL, "--ablate-layers", "2-x", *RUN],
     "cannot read --ablate-layers '2-x'"),
    ("dpca-negative-regularizer", "dpca --regularizer", ["dpca", *SMOL, "--regularizer", "-1", *RUN],
     "(--regularizer)"),
    ("dpca-shrinkage-above-1", "dpca --shrinkage", ["dpca", *SMOL, "--shrinkage", "2", *RUN], "[0, 1], got '2'"),
    ("dpca-empty-separator", "dpca --separator", ["dpca", *SMOL, "--separator", "", *RUN], "--separator '' is empty"),
    ("dpca-unparseable-config", "dpca --config", ["dpca", *SMOL, "--config", "{tmp}/bad.yaml", *RUN],
     "cannot read config"),
    ("dpca-out-is-a-file", "dpca --out", ["dpca", *SMOL, "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("dpca-resume-of-nothing", "dpca --resume", ["dpca", *SMOL, *RUN, "--resume"], "holds no run"),
    # heads
    ("heads-from-scratch-model", "heads --model", ["heads", *SCRATCH, *RUN],
     "is a from-scratch model (made by taskvec train), not a pretrained LM"),
    ("heads-unknown-device", "heads --device", ["heads", *SMOL, "--device", "tpu", *RUN], "unknown device 'tpu'"),
    ("heads-bad-dtype", "heads --dtype", ["heads", *SMOL, "--dtype", "fp8", *RUN], "--dtype must be one of"),
    ("heads-unknown-task", "heads --task", ["heads", *SMOL, "--task", "no_such_task", *RUN],
     "unknown task 'no_such_task'"),
    ("heads-zero-trials", "heads --n-trials", ["heads", *SMOL, "--n-trials", "0", *RUN], "(--n-trials)"),
    ("heads-zero-demos", "heads --n-demos", ["heads", *SMOL, "--n-demos", "0", *RUN],
     "field 'n_demos' (--n-demos): Input should be greater than or equal to 1"),
    ("heads-negative-seed", "heads --seed", ["heads", *SMOL, "--seed", "-1", *RUN], "(--seed)"),
    ("heads-bad-mode", "heads --modes", ["heads", *SMOL, "--modes", "sideways", *RUN],
     "field 'modes.0' (--modes): Input should be 'mean'"),
    ("heads-backwards-layers", "heads --layers", ["heads", *SMOL, "--layers", "6-2", *RUN], "runs backwards"),
    ("heads-top-0", "heads --top", ["heads", *SMOL, "--top", "0", *RUN], "(--top)"),
    ("heads-negative-head", "heads --heads", ["heads", *SMOL, "--heads=-1", *RUN], "--heads: head -1 is out of range"),
    ("heads-negative-local-layer", "heads --local-layer", ["heads", *SMOL, "--local-layer=-1", *RUN],
     "(--local-layer)"),
    ("heads-zero-select", "heads --n-select", ["heads", *SMOL, "--n-select", "0", *RUN], "(--n-select)"),
    ("heads-unknown-null-task", "heads --null-task", ["heads", *SMOL, "--null-task", "no_such_task", *RUN],
     "unknown task 'no_such_task'"),
    ("heads-empty-separator", "heads --separator", ["heads", *SMOL, "--separator", "", *RUN],
     "--separator '' is empty"),
    ("heads-unparseable-config", "heads --config", ["heads", *SMOL, "--config", "{tmp}/bad.yaml", *RUN],
     "cannot read config"),
    ("heads-out-is-a-file", "heads --out", ["heads", *SMOL, "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("heads-resume-torn-config", "heads --resume", ["heads", *SMOL, "--out", "{tmp}/torn", "--resume"],
     "torn/config.json is torn or not JSON"),
    ("heads-results-without-config", None, ["heads", *SMOL, "--seed", "1", "--out", "{tmp}/noconfig"],
     "holds run output (results.jsonl) but no config.json"),
    ("heads-garbage-amid-results", None, ["heads", *SMOL, "--out", "{tmp}/garbage", "--resume"],
     "line 2 is not a result record"),
    # train
    ("train-out-is-a-file", "train --out", ["train", "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("train-empty-out", None, ["train", "--out", ""], "--out is empty"),
    ("train-unparseable-config", "train --config", ["train", *RUN, "--config", "{tmp}/bad.yaml"], "cannot read config"),
    ("train-unknown-task", "train --task", ["train", *RUN, "--task", "bogus"],
     "Input should be 'linear_regression', 'sinusoid' or 'token_offset'"),
    ("train-d-0", "train --d", ["train", *RUN, "--d", "0"], "field 'd' (--d): must be >= 1"),
    ("train-negative-noise", "train --noise", ["train", *RUN, "--noise", "-1"],
     "field 'noise' (--noise): Input should be greater than or equal to 0"),
    ("train-pool-size-0", "train --pool-size", ["train", *RUN, "--pool-size", "0"], "(--pool-size)"),
    ("train-bad-layout", "train --layout", ["train", *RUN, "--layout", "yx"], "unknown layout 'yx'"),
    ("train-bad-preset", "train --preset", ["train", *RUN, "--preset", "huge"], "unknown preset 'huge'"),
    ("train-n-layer-0", "train --n-layer", ["train", *RUN, "--n-layer", "0"], "n_layer: Input should be greater"),
    ("train-heads-do-not-divide-width", "train --n-head", ["train", *RUN, "--n-head", "7"],
     "n_embd 128 is not divisible by n_head 7"),
    ("train-n-embd-0", "train --n-embd", ["train", *RUN, "--n-embd", "0"], "n_embd: Input should be greater"),
    ("train-k-max-0", "train --k-max", ["train", *RUN, "--k-max", "0"], "k_max must be >= 1"),
    ("train-steps-0", "train --steps", ["train", *RUN, "--steps", "0"], "steps must be >= 1"),
    ("train-batch-size-0", "train --batch-size", ["train", *RUN, "--batch-size", "0"], "batch_size must be >= 1"),
    ("train-negative-lr", "train --lr", ["train", *RUN, "--lr", "-0.1"], "lr: Input should be greater than 0"),
    ("train-negative-lr-warmup", "train --lr-warmup", ["train", *RUN, "--lr-warmup", "-5"], "lr_warmup must be >= 0"),
    ("train-tvp-layer-beyond-model", "train --tvp-layer", ["train", *RUN, "--preset", "tiny", "--tvp-layer", "50"],
     "tvp_layer 50 is beyond the model"),
    ("train-nan-tvp-weight", "train --tvp-weight", ["train", *RUN, "--tvp-weight", "nan"],
     "tvp_weight: Input should be a finite number"),
    ("train-unreadable-tvp-schedule", "train --tvp-schedule", ["train", *RUN, "--tvp-schedule", "sometimes"],
     "tvp_schedule: cannot read 'sometimes'"),
    ("train-tvp-slots-0", "train --tvp-slots", ["train", *RUN, "--tvp-layer", "1", "--tvp-slots", "0"],
     "tvp_slots: Input should be greater than or equal to 1"),
    ("train-shared-query-on-xy-first", "train --tvp-shared-query",
     ["train", *RUN, "--layout", "*xy", "--tvp-shared-query"], "tvp_shared_query needs the x→y layout"),
    ("train-curriculum-every-0", "train --curriculum-every", ["train", *RUN, "--curriculum-every", "0"],
     "curriculum_every must be >= 1"),
    ("train-curriculum-above-d", "train --curriculum-start",
     ["train", *RUN, "--d", "4", "--curriculum", "--curriculum-start", "6"],
     "curriculum_start 6 is above the input dimension d = 4"),
    ("train-negative-seed", "train --seed", ["train", *RUN, "--seed", "-1"],
     "seed: Input should be greater than or equal to 0"),
    ("train-save-every-0", "train --save-every", ["train", *RUN, "--save-every", "0"], "save_every must be >= 1"),
    ("train-log-every-0", "train --log-every", ["train", *RUN, "--log-every", "0"], "log_every must be >= 1"),
    ("train-resume-of-nothing", "train --resume", ["train", *RUN, "--resume"], "holds no run"),
    ("train-unknown-device", "train --device", ["train", *RUN, "--device", "tpu"], "unknown device 'tpu'"),
    ("train-fp16", "train --precision", ["train", *RUN, "--precision", "fp16"],
     "precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ("train-threads-0", "train --threads", ["train", *RUN, "--threads", "0"], "--threads must be >= 1, got 0"),
    # evaluate
    ("evaluate-pretrained-llm", "evaluate --model", ["evaluate", "--model", "{tmp}/llm", *RUN],
     "not a from-scratch model directory but a 'llama' checkpoint"),
    ("evaluate-label-without-model", "evaluate --label", ["evaluate", "--label", "a", *RUN],
     "--label names a --model: give the models too"),
    ("evaluate-out-is-a-file", "evaluate --out", ["evaluate", *SCRATCH, "--out", "{tmp}/afile"],
     "is a file, not a directory"),
    ("evaluate-resume-of-nothing", "evaluate --resume", ["evaluate", *SCRATCH, *RUN, "--resume"],
     "--resume: {tmp}/run holds no run (no config.json)"),
    ("evaluate-unparseable-config", "evaluate --config", ["evaluate", *SCRATCH, *RUN, "--config", "{tmp}/bad.yaml"],
     "cannot read config"),
    ("evaluate-zero-trials", "evaluate --n-trials", ["evaluate", *SCRATCH, *RUN, "--n-trials", "0"],
     "--n-trials must be >= 1, got 0"),
    ("evaluate-k-0", "evaluate --k", ["evaluate", *SCRATCH, *RUN, "--k", "0"], "--k must be >= 1, got 0"),
    ("evaluate-negative-layer", "evaluate --layer", ["evaluate", *SCRATCH, *RUN, "--layer", "-1"],
     "--layer must be >= 0, got -1"),
    ("evaluate-unknown-analysis", "evaluate --analyses", ["evaluate", *SCRATCH, *RUN, "--analyses", "bogus"],
     "field 'analyses.0' (--analyses)"),
    ("evaluate-negative-seed", "evaluate --seed", ["evaluate", *SCRATCH, *RUN, "--seed", "-1"], "(--seed)"),
    ("evaluate-batch-size-0", "evaluate --batch-size", ["evaluate", *SCRATCH, *RUN, "--batch-size", "0"],
     "--batch-size must be >= 1, got 0"),
    ("evaluate-unknown-device", "evaluate --device", ["evaluate", *SCRATCH, *RUN, "--device", "tpu"],
     "unknown device 'tpu'"),
    ("evaluate-renamed-n-prompts", "evaluate --n-prompts", ["evaluate", *SCRATCH, *RUN, "--n-prompts", "5"],
     "--n-prompts is now --n-trials"),
    # compare
    ("compare-out-is-a-file", "compare --out", ["compare", "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("compare-train-sets-seed", "compare --config", ["compare", *RUN, "--config", "{tmp}/cmp.yaml"],
     "train must not set seed"),
    ("compare-negative-seed", "compare --seeds", ["compare", *RUN, "--seeds", "-1,0"], "seeds must be >= 0"),
    ("compare-xy-layout", "compare --layouts", ["compare", *RUN, "--layouts", "xy"], "no task-vector slot"),
    ("compare-resume-of-nothing", "compare --resume", ["compare", *RUN, "--resume"], "holds no run"),
    ("compare-more-workers-than-cores", "compare --workers", ["compare", *RUN, "--workers", "1000"],
     "--workers 1000 is more than the"),
    ("compare-threads-0", "compare --threads", ["compare", *RUN, "--threads", "0"], "--threads must be >= 1, got 0"),
    # compress
    ("compress-pretrained-llm", "compress --model", ["compress", "--model", "{tmp}/llm"], "but a 'llama' checkpoint"),
    ("compress-unparseable-config", "compress --config", ["compress", *SCRATCH, "--config", "{tmp}/bad.yaml"],
     "cannot read config"),
    ("compress-k-0", "compress --k", ["compress", *SCRATCH, "--k", "0"], "--k must be >= 1, got 0"),
    ("compress-negative-layer", "compress --layer", ["compress", *SCRATCH, "--layer", "-1"], "--layer must be >= 0"),
    ("compress-n-tasks-0", "compress --n-tasks", ["compress", *SCRATCH, "--n-tasks", "0"], "--n-tasks must be >= 1"),
    ("compress-n-queries-0", "compress --n-queries", ["compress", *SCRATCH, "--n-queries", "0"],
     "--n-queries must be >= 1"),
    ("compress-negative-seed", "compress --seed", ["compress", *SCRATCH, "--seed", "-1"], "field 'seed' (--seed)"),
    ("compress-unknown-device", "compress --device", ["compress", *SCRATCH, "--device", "tpu"], "unknown device"),
    ("compress-renamed-tasks", "compress --tasks", ["compress", *SCRATCH, "--tasks", "3"], "--tasks is now --n-tasks"),
    ("compress-renamed-queries", "compress --queries", ["compress", *SCRATCH, "--queries", "3"],
     "--queries is now --n-queries"),
    # usage errors: typer's own, one line too
    ("usage-non-integer", None, ["dpca", "--k", "many"], "taskvec dpca: Invalid value for '--k'"),
    ("usage-unknown-option", None, ["saliency", "--no-such-flag"], "taskvec saliency: No such option: --no-such-flag"),
]

# Flags with no bad value: each says why. --help (click's own) is not a parameter of any command.
EXEMPT = {
    "study local-global --quick": "a switch (--quick/--no-quick): either value is a valid run",
    "study local-global --with-analyses": "a switch (--with-analyses/--no-analyses): either value is a valid run",
    "study local-global --function-vectors": "a switch (--function-vectors/--no-function-vectors): either value is "
                                             "a valid run",
    "train --detach-theta": "a switch (--detach-theta/--no-detach-theta): either value is a valid training",
    "train --curriculum": "a switch (--curriculum/--no-curriculum); its bad values are in --curriculum-start/-every",
    "train --tensorboard": "a switch (--tensorboard/--no-tensorboard): logging on or off",
}


def _main(args: list[str]) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of the command line on ``args``, in this process (:func:`conftest.cli`)."""
    out = cli(*args)
    return out.exit_code, out.stdout, out.stderr


@pytest.fixture
def damaged(workdir):
    """``workdir`` with a file, fake checkpoints and damaged run directories of ``heads`` (default config)."""
    import json

    from taskvec.analysis.runners import HeadsConfig

    (workdir / "afile").write_text("not a directory\n")
    (workdir / "array.jsonl").write_text('["Paris", "France"]\n')
    (workdir / "conflict.json").write_text('{"a": "b", "c": "d", "a": "x"}')
    (workdir / "params.yaml").write_text("tasks: [antonyms]\ntask_params: {nosuch: {n_demos: 2}}\n")
    for name, model_type in (("llm", "llama"), ("scratch", "taskvec_scratch")):
        (workdir / name).mkdir()
        (workdir / name / "config.json").write_text(json.dumps({"model_type": model_type}))
        (workdir / name / "model.safetensors").write_bytes(b"weights")
    saved = {"config": HeadsConfig(model="smollm2-135m").saved(), "kind": "heads", "versions": {}}
    record = json.dumps({"unit": "heads/simple_string/mean", "rows": []})
    (workdir / "torn").mkdir()
    (workdir / "torn" / "config.json").write_text(json.dumps(saved)[:40])
    (workdir / "noconfig").mkdir()
    (workdir / "noconfig" / "results.jsonl").write_text(record + "\n")
    (workdir / "garbage").mkdir()
    (workdir / "garbage" / "config.json").write_text(json.dumps(saved))
    (workdir / "garbage" / "results.jsonl").write_text(f"{record}\n{{oops\n{record}\n")
    return workdir


@pytest.mark.parametrize("args, expected", [c[2:] for c in IN_PROCESS], ids=[c[0] for c in IN_PROCESS])
def test_bad_input_in_process_is_one_error_line_and_exit_code_2(damaged, monkeypatch, args, expected):
    monkeypatch.chdir(damaged)
    monkeypatch.setenv("TASKVEC_CACHE", str(damaged / "afile") if args == ["models", "list"] else
                       os.environ.get("TASKVEC_CACHE", str(Path.home() / ".cache" / "taskvec")))
    code, out, err = _main([a.replace("{tmp}", str(damaged)) for a in args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [lines[0]] and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in out + err
    assert expected.replace("{tmp}", str(damaged)) in lines[0], lines[0]
    assert not (damaged / "run").exists() and not (damaged / "runs").exists()
    assert not (damaged / "noconfig" / "config.json").exists()  # a refused run changes nothing


def test_report_says_how_many_torn_lines_it_skipped(workdir):
    """A run killed mid-write: the report is written, and says that one line was skipped."""
    import json

    run = workdir / "trained"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"steps": 2}, "kind": "train", "versions": {}}))
    row = {"step": 1, "loss": 1.0, "icl_loss": 1.0, "tvp_loss": 0.0, "icl_err": 1.0, "seq_per_s": 10}
    (run / "results.jsonl").write_text(json.dumps({"unit": "train/step-0000001", "rows": [row]}) + '\n{"unit": "tr')
    code, out, err = _main(["report", str(run)])
    assert code == 0 and "report: " in out and (run / "report.html").exists()
    assert "skipped 1 torn last line" in err


def _parameters() -> dict[str, list[str]]:
    """``{"COMMAND --flag" or "COMMAND <argument>": the names it answers to}`` for every parameter of every command
    of the ``taskvec`` CLI (the main app, with the analysis and from-scratch commands mounted), read from typer."""
    import typer

    from taskvec.cli import app

    out: dict[str, list[str]] = {}

    def walk(command, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
            return
        for p in command.params:
            if p.param_type_name == "argument":
                out[f"{' '.join(path)} <{p.name}>"] = []
            else:
                names = [*p.opts, *p.secondary_opts]
                out[f"{' '.join(path)} {p.opts[0]}"] = names  # by its first name (--d for --d/--dim)

    walk(typer.main.get_command(app), [])
    return out


def test_every_flag_of_every_command_has_a_bad_input_case():
    """Every option and argument of every command has a bad-input case in IN_PROCESS (each case above gives one
    error line and exit code 2), or an EXEMPT entry saying why it has none. A flag added without a case fails here."""
    params = _parameters()
    assert len(params) > 100 and "train --tvp-weight" in params and "report <run_dir>" in params  # it walked them
    covered = {c[1] for c in IN_PROCESS if c[1]}
    missing = sorted(set(params) - covered - set(EXEMPT))
    assert not missing, f"flags without a bad-input case in IN_PROCESS (or a reason in EXEMPT): {missing}"
    stale = sorted((covered | set(EXEMPT)) - set(params))
    assert not stale, f"cases or exemptions for flags that no longer exist: {stale}"
    assert not covered & set(EXEMPT), "a flag is both exempt and covered"
    for case_id, flag, args, _ in IN_PROCESS:  # a case gives its flag a value, where it says it does
        if flag is None:
            continue
        command, name = flag.rsplit(" ", 1)
        assert " ".join(args).startswith(command + " "), (case_id, command)
        if not name.startswith("<"):
            assert set(params[flag]) & {a.split("=", 1)[0] for a in args}, (case_id, flag)  # --k 0, --k=0
