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
    ("tasks-show-negative-demos", ["tasks", "show", "two_d", "--n-demos", "-1"], "--n-demos must be >= 0", False),
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


@pytest.mark.parametrize("args", [["saliency", "--no-such-flag"], ["dpca", "--k", "many"], ["train"]],
                         ids=["unknown-option", "non-integer", "missing-required"])
def test_usage_errors_exit_2_without_traceback(workdir, args):
    """Typer's own usage errors (a box, not our one line) also exit with code 2 and no traceback."""
    out = _cli(args, workdir)
    assert out.returncode == 2 and "Traceback" not in out.stderr
