"""Bad input on the command line: every command answers a user mistake with exit code 2 and exactly one line
``error: ...`` on stderr, never a traceback. Each case runs ``python -m taskvec.cli`` in a fresh process.

Errors that do not need a model are raised before one is loaded, so those cases take the CLI's start-up time
only and their stderr is that one line and nothing else (no loading bars); they also leave no run directory
behind. The few that need a model load smollm2-135m, never gemma."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    ("dpca-layer-beyond-model", ["dpca", *SMOL, "--layers", "0,99", "--out", "{tmp}/run"],
     "layer 99 is out of range", True),
    ("heads-bad-mode", ["heads", *SMOL, "--modes", "sideways", "--out", "{tmp}/run"],
     "field 'modes.0' (--modes): Input should be 'mean' or 'patch'", False),
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


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "taskvec.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [1, 2\n")
    (tmp_path / "cmp.yaml").write_text("train: {seed: 3}\n")
    (tmp_path / "dpca.yaml").write_text("k: 3\nn_trials: 12\n")  # the flag --k 0 must win over the file's k
    return tmp_path


@pytest.mark.parametrize("args, expected, loads", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_code_2(workdir, args, expected, loads):
    out = _cli([a.replace("{tmp}", str(workdir)) for a in args], workdir)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
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
    out = _cli(args, workdir)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(expected), out.stderr


# ------------------------------------------------------------------------------------------------- in process
# (case id, arguments, text the error line must contain): run through taskvec.cli.main in this process (fast);
# none loads a model. {tmp} is the workdir below, which also holds damaged run directories and fake checkpoints.
IN_PROCESS = [
    ("tasks-show-negative-seed", ["tasks", "show", "two_d", "--seed", "-1"], "--seed must be >= 0, got -1"),
    ("tasks-show-zero-demos", ["tasks", "show", "two_d", "--n-demos", "0"], "--n-demos must be >= 1, got 0"),
    ("tasks-show-file-without-path", ["tasks", "show", "file:"], "file: names no file; write file:PATH"),
    ("tasks-show-file-is-a-directory", ["tasks", "show", "file:{tmp}"], "is a directory; give a task file in it"),
    ("tasks-show-jsonl-array-line", ["tasks", "show", "file:{tmp}/array.jsonl"],
     "line 1: expected an object with fields 'input' and 'output' (or 'label'), got list"),
    ("saliency-negative-seed", ["saliency", *SMOL, "--seed", "-1", "--out", "{tmp}/run"],
     "field 'seed' (--seed): Input should be greater than or equal to 0"),
    ("dpca-negative-seed", ["dpca", *SMOL, "--seed", "-1", "--out", "{tmp}/run"], "(--seed)"),
    ("heads-negative-seed", ["heads", *SMOL, "--seed", "-1", "--out", "{tmp}/run"], "(--seed)"),
    ("heads-zero-demos", ["heads", *SMOL, "--n-demos", "0", "--out", "{tmp}/run"],
     "field 'n_demos' (--n-demos): Input should be greater than or equal to 1"),
    ("dpca-empty-layers", ["dpca", *SMOL, "--layers", "", "--out", "{tmp}/run"], "--layers is empty"),
    ("train-negative-seed", ["train", "--out", "{tmp}/run", "--seed", "-1"],
     "seed: Input should be greater than or equal to 0"),
    ("train-negative-lr", ["train", "--out", "{tmp}/run", "--lr", "-0.1"], "lr: Input should be greater than 0"),
    ("train-nan-tvp-weight", ["train", "--out", "{tmp}/run", "--tvp-weight", "nan"],
     "tvp_weight: Input should be a finite number"),
    ("train-negative-noise", ["train", "--out", "{tmp}/run", "--noise", "-1"],
     "field 'noise' (--noise): Input should be greater than or equal to 0"),
    ("train-heads-do-not-divide-width", ["train", "--out", "{tmp}/run", "--n-head", "7"],
     "n_embd 128 is not divisible by n_head 7"),
    ("train-tvp-slots-0", ["train", "--out", "{tmp}/run", "--tvp-layer", "1", "--tvp-slots", "0"],
     "tvp_slots: Input should be greater than or equal to 1"),
    ("evaluate-negative-seed", ["evaluate", "--model", "{tmp}/scratch", "--out", "{tmp}/run", "--seed", "-1"],
     "(--seed)"),
    ("compare-negative-seed", ["compare", "--out", "{tmp}/run", "--seeds", "-1,0"], "seeds must be >= 0"),
    ("compare-more-workers-than-cores", ["compare", "--out", "{tmp}/run", "--workers", "1000"],
     "--workers 1000 is more than the"),
    ("evaluate-pretrained-llm", ["evaluate", "--model", "{tmp}/llm", "--out", "{tmp}/run"],
     "not a from-scratch model directory but a 'llama' checkpoint"),
    ("compress-pretrained-llm", ["compress", "--model", "{tmp}/llm"], "but a 'llama' checkpoint"),
    ("heads-from-scratch-model", ["heads", "--model", "{tmp}/scratch", "--out", "{tmp}/run"],
     "is a from-scratch model (made by taskvec train), not a pretrained LM"),
    ("study-out-is-a-file", ["study", "local-global", *SMOL, "--out", "{tmp}/afile"],
     "--out {tmp}/afile is a file, not a directory"),
    ("saliency-out-is-a-file", ["saliency", *SMOL, "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("train-out-is-a-file", ["train", "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("evaluate-out-is-a-file", ["evaluate", "--model", "{tmp}/scratch", "--out", "{tmp}/afile"],
     "is a file, not a directory"),
    ("compare-out-is-a-file", ["compare", "--out", "{tmp}/afile"], "is a file, not a directory"),
    ("saliency-empty-out", ["saliency", *SMOL, "--out", ""], "--out is empty"),
    ("train-empty-out", ["train", "--out", ""], "--out is empty"),
    ("study-resume-of-nothing", ["study", "local-global", *SMOL, "--out", "{tmp}/run", "--resume"],
     "--resume: {tmp}/run holds no run (no config.json)"),
    ("evaluate-resume-of-nothing", ["evaluate", "--model", "{tmp}/scratch", "--out", "{tmp}/run", "--resume"],
     "--resume: {tmp}/run holds no run (no config.json)"),
    ("heads-resume-torn-config", ["heads", *SMOL, "--out", "{tmp}/torn", "--resume"],
     "torn/config.json is torn or not JSON"),
    ("heads-results-without-config", ["heads", *SMOL, "--seed", "1", "--out", "{tmp}/noconfig"],
     "holds run output (results.jsonl) but no config.json"),
    ("heads-garbage-amid-results", ["heads", *SMOL, "--out", "{tmp}/garbage", "--resume"],
     "line 2 is not a result record"),
    ("report-garbage-amid-results", ["report", "{tmp}/garbage"], "line 2 is not a result record"),
    ("models-list-cache-is-a-file", ["models", "list"], "TASKVEC_CACHE={tmp}/afile is a file, not a directory"),
    ("usage-non-integer", ["dpca", "--k", "many"], "taskvec dpca: Invalid value for '--k'"),
    ("usage-unknown-option", ["saliency", "--no-such-flag"], "taskvec saliency: No such option: --no-such-flag"),
]


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    from taskvec.cli import main

    with pytest.raises(SystemExit) as end:
        main(args)
    out = capsys.readouterr()
    return end.value.code, out.out, out.err


@pytest.fixture
def damaged(workdir):
    """``workdir`` with a file, fake checkpoints and damaged run directories of ``heads`` (default config)."""
    import json

    from taskvec.analysis.runners import HeadsConfig

    (workdir / "afile").write_text("not a directory\n")
    (workdir / "array.jsonl").write_text('["Paris", "France"]\n')
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


@pytest.mark.parametrize("args, expected", [c[1:] for c in IN_PROCESS], ids=[c[0] for c in IN_PROCESS])
def test_bad_input_in_process_is_one_error_line_and_exit_code_2(damaged, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(damaged)
    monkeypatch.setenv("TASKVEC_CACHE", str(damaged / "afile") if args == ["models", "list"] else
                       os.environ.get("TASKVEC_CACHE", str(Path.home() / ".cache" / "taskvec")))
    code, _, err = _main([a.replace("{tmp}", str(damaged)) for a in args], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines == [lines[0]] and lines[0].startswith("error: "), err[-2000:]
    assert expected.replace("{tmp}", str(damaged)) in lines[0], lines[0]
    assert not (damaged / "run").exists() and not (damaged / "runs").exists()
    assert not (damaged / "noconfig" / "config.json").exists()  # a refused run changes nothing


def test_report_says_how_many_torn_lines_it_skipped(workdir, capsys):
    """A run killed mid-write: the report is written, and says that one line was skipped."""
    import json

    run = workdir / "trained"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"steps": 2}, "kind": "train", "versions": {}}))
    (run / "log.csv").write_text("step,loss,icl_loss,tvp_loss,icl_err,seq_per_s\n1,1.0,1.0,0.0,1.0,10\n")
    (run / "results.jsonl").write_text(json.dumps({"unit": "train/step-0000001", "rows": []}) + '\n{"unit": "tr')
    code, out, err = _main(["report", str(run)], capsys)
    assert code == 0 and "report: " in out and (run / "report.html").exists()
    assert "skipped 1 torn last line" in err
