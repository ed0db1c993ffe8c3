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
