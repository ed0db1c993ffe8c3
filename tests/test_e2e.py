"""Slow end-to-end runs of the main job through the CLI (``make test-slow``; CI runs them too)."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _study(*args):
    res = subprocess.run([sys.executable, "-m", "taskvec.cli", "study", "local-global", *args],
                         capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.mark.gemma
def test_quick_study_on_the_default_model(tmp_path):
    """The main job on gemma3-270m (quick): on the evaluation split, the global vector at its selected layer lifts
    country_capital above zero-shot, its controls stay at zero, and the verdict table is in the report."""
    out = tmp_path / "run"
    res = _study("--model", "gemma3-270m", "--tasks", "country_capital,simple_string", "--quick", "--out", str(out))
    ev = pd.read_csv(out / "evaluation.csv").set_index(["task", "what"])
    glob = ev.loc[("country_capital", "global vector → zero-shot")]
    zero = ev.loc[("country_capital", "zero-shot")]
    assert glob.low > zero.high  # intervals, not point estimates
    for control in ("control: norm-matched random → zero-shot", "control: other task's global vector → zero-shot"):
        assert ev.loc[("country_capital", control)].accuracy <= 0.1
    verdicts = pd.read_csv(out / "summary.csv")
    assert {"C1", "C2", "C3", "C4", "C5", "C6"} <= set(verdicts.claim)
    html = (out / "report.html").read_text()
    assert html.index("Claims of the paper") < html.index("<img") and (out / "report.html").stat().st_size > 50_000
    assert "C1" in res.stdout  # the CLI prints the verdict grid


def test_study_with_analyses_puts_them_in_the_report(tmp_path):
    out = tmp_path / "run"
    _study("--model", "smollm2-135m", "--tasks", "antonyms,simple_string", "--quick", "--with-analyses",
           "--out", str(out))
    for sub in ("saliency", "dpca", "heads"):
        assert list((out / "analyses" / sub / "figures").glob("*.png")), sub
    assert (out / "analyses" / "dpca" / "dpca_c8.json").exists()
    html = (out / "report.html").read_text()
    assert "Where task information flows" in html and html.count("<img") >= 10
    verdicts = pd.read_csv(out / "summary.csv")
    assert {"C7", "C8"} <= set(verdicts.claim)  # computed from the analyses, never written by hand
