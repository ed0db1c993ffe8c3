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
    """The main job on gemma3-270m (quick): the global vector lifts country_capital above zero-shot in some layer,
    and the report is written."""
    out = tmp_path / "run"
    _study("--model", "gemma3-270m", "--tasks", "country_capital,simple_string", "--quick", "--out", str(out))
    summary = pd.read_csv(out / "summary.csv").set_index("task")
    assert summary.loc["country_capital", "global best"] > summary.loc["country_capital", "zero-shot"] + 0.3
    assert (out / "report.html").stat().st_size > 50_000


def test_study_with_analyses_puts_them_in_the_report(tmp_path):
    out = tmp_path / "run"
    _study("--model", "smollm2-135m", "--tasks", "antonyms,simple_string", "--quick", "--with-analyses",
           "--out", str(out))
    for sub in ("saliency", "dpca", "heads"):
        assert list((out / "analyses" / sub / "figures").glob("*.png")), sub
    html = (out / "report.html").read_text()
    assert "Where task information flows" in html and html.count("<img") >= 10
