"""The ``taskvec`` command line: every command group is mounted; listings work without loading a model. The
commands run in this process (:func:`conftest.cli`, typer's ``CliRunner``); one test runs the installed console
script in a fresh process, to prove the entry point itself works."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import cli  # noqa: E402

COMMANDS = ("models", "tasks", "study", "report", "saliency", "dpca", "heads", "train", "evaluate", "compress")


def test_the_console_script_runs_and_its_mistakes_are_one_line():
    """The one subprocess test: the ``taskvec`` script pip installed (``taskvec.cli:main``) lists every command,
    and a usage error there is one line ``error: ...`` with exit code 2, no traceback."""
    script = Path(sys.executable).with_name("taskvec")
    assert script.exists(), f"{script}: the console script is not installed (pip install -e .)"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert helped.returncode == 0, helped.stderr[-2000:]
    for command in COMMANDS:
        assert command in helped.stdout, command
    bad = subprocess.run([str(script), "dpca", "--k", "many"], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: taskvec dpca: Invalid value for '--k'"), bad.stderr


def test_help_lists_every_command():
    out = cli("--help")
    assert out.exit_code == 0
    for command in COMMANDS:
        assert command in out.stdout, command


def test_tasks_and_models_listings():
    tasks = cli("tasks", "list")
    assert tasks.exit_code == 0
    for name in ("country_capital", "antonyms", "english_french", "present_past", "lowercase_uppercase",
                 "simple_string", "digit", "two_d"):
        assert name in tasks.stdout
    models = cli("models", "list")
    assert models.exit_code == 0 and "gemma3-270m" in models.stdout and "smollm2-135m" in models.stdout


def test_tasks_show_prints_an_example_prompt():
    out = cli("tasks", "show", "two_d", "--n-demos", "4")
    assert out.exit_code == 0
    prompt = out.stdout.split("example prompt", 1)[1].splitlines()[1:]
    assert len(prompt) == 5 and prompt[-1].endswith(" is") and all(" is " in line for line in prompt[:-1])


def test_custom_task_file_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    out = cli("tasks", "show", f"file:{bad}")
    assert out.exit_code == 2 and "line 2" in out.stderr and "Traceback" not in out.stderr


def test_an_analysis_command_runs_and_its_config_json_reruns_it(tmp_path, tiny_llama):
    """`taskvec heads` end to end (on the tiny Llama's checkpoint); `--config RUN/config.json` reruns the same
    config (flags given on top win), and the run directory ends in report.html."""
    first = tmp_path / "first"
    out = cli("heads", "--model", tiny_llama.path, "--n-trials", "2", "--n-demos", "3", "--modes", "mean",
              "--layers", "0", "--out", first)
    assert out.exit_code == 0, out.stderr[-2000:]
    assert (first / "report.html").exists() and "report:" in out.stdout
    second = tmp_path / "second"
    out = cli("heads", "--config", first / "config.json", "--top", "3", "--out", second)
    assert out.exit_code == 0, out.stderr[-2000:]
    a, b = (json.loads((d / "config.json").read_text())["config"] for d in (first, second))
    assert b == {**a, "top": 3}


def test_every_run_kind_has_its_command_registered_from_the_registry():
    """One command per kind of ``KINDS`` (from ``cli.KIND_COMMANDS``, registered in the registry's order), each
    answering ``--help``; ``taskvec kinds`` lists them with their config classes."""
    from taskvec.cli import KIND_COMMANDS
    from taskvec.kinds import KINDS

    assert set(KIND_COMMANDS) == set(KINDS)
    listed = cli("kinds")
    assert listed.exit_code == 0
    for name, (group, word, _) in KIND_COMMANDS.items():
        words = [group, word] if group else [word]
        assert cli(*words, "--help").exit_code == 0, name
        line = next(x for x in listed.stdout.splitlines() if x.split()[0] == name)
        assert f"taskvec {' '.join(words)}" in line and KINDS[name].config.__name__ in line


def test_taskvec_run_reruns_any_kind_from_its_config_json(tmp_path):
    """``taskvec run RUN/config.json --out NEW`` reruns a run of any kind (here a tiny training run) with the same
    config: the same logged numbers, and a report. A file that names no kind needs ``--kind``; mistakes are one
    line."""
    first = tmp_path / "first"
    out = cli("train", "--out", first, "--preset", "tiny", "--dim", "4", "--k-max", "4", "--batch-size", "8",
              "--steps", "3", "--log-every", "1", "--no-tensorboard")
    assert out.exit_code == 0, out.stderr[-2000:]
    again = tmp_path / "again"
    out = cli("run", first / "config.json", "--out", again)
    assert out.exit_code == 0, out.stderr[-2000:]
    assert "train run:" in out.stdout and (again / "report.html").exists()
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert a["config"] == b["config"] and b["kind"] == "train"
    logs = [[{k: v for k, v in json.loads(x).items() if k in ("step", "loss", "icl_loss", "tvp_loss", "icl_err")}
             for x in (d / "log.jsonl").read_text().splitlines()] for d in (first, again)]
    assert logs[0] == logs[1] and len(logs[0]) == 3

    plain = tmp_path / "plain.yaml"
    plain.write_text("preset: tiny\nsteps: 2\n")
    out = cli("run", plain, "--out", tmp_path / "x")
    assert out.exit_code == 2 and out.stderr.startswith(f"error: {plain} does not name its run kind: give --kind")
    out = cli("run", plain, "--out", tmp_path / "x", "--kind", "nonsense")
    assert out.exit_code == 2 and "unknown run kind 'nonsense'" in out.stderr
    out = cli("run", plain)
    assert out.exit_code == 2 and "needs --out" in out.stderr
    assert not (tmp_path / "x").exists()
