"""The ``taskvec`` command line: every command group is mounted; listings work without loading a model."""
from __future__ import annotations

import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "taskvec.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    out = _cli("--help")
    assert out.returncode == 0
    for command in ("models", "tasks", "study", "report", "saliency", "dpca", "heads", "train", "evaluate", "compress"):
        assert command in out.stdout, command


def test_tasks_and_models_listings():
    tasks = _cli("tasks", "list")
    assert tasks.returncode == 0
    for name in ("country_capital", "antonyms", "english_french", "present_past", "lowercase_uppercase",
                 "simple_string", "digit", "two_d"):
        assert name in tasks.stdout
    models = _cli("models", "list")
    assert models.returncode == 0 and "gemma3-270m" in models.stdout and "smollm2-135m" in models.stdout


def test_tasks_show_prints_an_example_prompt():
    out = _cli("tasks", "show", "two_d", "--n-demos", "4")
    assert out.returncode == 0
    prompt = out.stdout.split("example prompt", 1)[1].splitlines()[1:]
    assert len(prompt) == 5 and prompt[-1].endswith(" is") and all(" is " in line for line in prompt[:-1])


def test_custom_task_file_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    out = _cli("tasks", "show", f"file:{bad}")
    assert out.returncode == 2 and "line 2" in out.stderr and "Traceback" not in out.stderr


def test_an_analysis_command_runs_and_its_config_json_reruns_it(tmp_path):
    """`taskvec heads` end to end on the real small model; `--config RUN/config.json` reruns the same config (flags
    given on top win), and the run directory ends in report.html."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    first = tmp_path / "first"
    args = ["heads", "--model", "smollm2-135m", "--n-trials", "2", "--n-demos", "3", "--modes", "mean",
            "--layers", "0", "--out", str(first)]
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (first / "report.html").exists() and "report:" in out.stdout
    second = tmp_path / "second"
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", "heads", "--config", str(first / "config.json"),
                          "--top", "3", "--out", str(second)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = (json.loads((d / "config.json").read_text())["config"] for d in (first, second))
    assert b == {**a, "top": 3}
