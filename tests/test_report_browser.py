"""The reports, looked at: small real reports (a study, an analysis, a from-scratch evaluation) rendered in headless
Chromium at laptop width (1280 x 900): every figure loads, nothing overflows the page horizontally (wide tables
scroll inside their own box), figures are not shrunk past legibility, the claims come first.

Chromium is Debian's ``chromium`` package: if it is missing the session first tries to install it (``make browser``:
``apt-get install -y chromium``, as root); only where that fails are these tests skipped, with the command to run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1280, 900
INSTALL = "make browser   (or: sudo apt-get update && sudo apt-get install -y chromium)"

# Runs in the page after load; writes what it measured into <pre id="taskvec-probe"> for --dump-dom to return.
PROBE = """<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });  // collapsed tables must fit too
  const root = document.documentElement, vw = root.clientWidth;
  const imgs = Array.from(document.images);
  const box = e => e.getBoundingClientRect();
  const out = {
    viewport: vw, scroll_width: root.scrollWidth, n_images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40)),
    images: imgs.map(i => [i.alt, i.naturalWidth, Math.round(box(i).width), Math.round(box(i).right)]),
    overflowing: Array.from(document.body.querySelectorAll('*'))
      .filter(e => box(e).right > vw + 1 && !e.closest('.scroll'))
      .slice(0, 20)
      .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') + ' ' + Math.round(box(e).right)),
    first_table_top: (document.querySelector('table') ? box(document.querySelector('table')).top : -1),
    first_img_top: (imgs.length ? box(imgs[0]).top : -1),
  };
  const pre = document.createElement('pre');
  pre.id = 'taskvec-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _install() -> str:
    """Try ``make browser`` (apt-get install chromium, as root); returns what went wrong, or ''."""
    if shutil.which("make") and (ROOT / "Makefile").exists():
        cmd = ["make", "-s", "-C", str(ROOT), "browser"]
    elif shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd = ["sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"]
    else:
        return "no make, and no apt-get as root"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if find_chromium():
        return ""
    lines = (res.stdout + res.stderr).strip().splitlines()
    return lines[-1] if lines else f"{' '.join(cmd)} exited with {res.returncode}"


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        why = _install()
        exe = find_chromium()
        if exe is None:
            pytest.skip(f"headless Chromium is not installed and could not be installed here ({why}); "
                        f"install it with: {INSTALL}")
    return exe


def _chromium(exe: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="taskvec-chromium-")
    try:
        return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
                               f"--window-size={WIDTH},{HEIGHT}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def probe_report(exe: str, report: Path) -> dict:
    """Load a copy of ``report`` with :data:`PROBE` in headless Chromium at 1280 px; returns what it measured."""
    page = report.read_text(encoding="utf-8")
    assert "</body>" in page
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "probed.html"
        probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        res = _chromium(exe, "--virtual-time-budget=15000", "--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="taskvec-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"chromium returned no probe result (rc {res.returncode}): {res.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def screenshot(exe: str, report: Path, png: Path, height: int = 3000) -> Path:
    """A 1280 px wide screenshot of the top ``height`` px of ``report`` (to look at)."""
    _chromium(exe, f"--screenshot={png}", f"--window-size={WIDTH},{height}", report.as_uri())
    return png


def check_layout(result: dict, min_images: int) -> None:
    assert result["viewport"] == WIDTH, result
    assert result["n_images"] >= min_images, result
    assert not result["broken"], f"figures that did not load: {result['broken']}"
    assert result["scroll_width"] <= result["viewport"], \
        f"the page scrolls sideways at {WIDTH} px ({result['scroll_width']} px wide): {result['overflowing']}"
    assert not result["overflowing"], f"elements past the right edge: {result['overflowing']}"
    for alt, natural, shown, right in result["images"]:
        assert right <= WIDTH, (alt, right)
        assert shown >= 0.45 * natural, f"figure {alt} shown at {shown} of its {natural} px: too small to read"


# ----------------------------------------------------------------------------------------------------- reports
@pytest.fixture(scope="module")
def study_report(small_study) -> Path:
    """The report of the session's small real study (two tasks, both spans; shared with tests/test_study.py)."""
    return small_study / "report.html"


def test_study_report_loads_every_figure_and_fits_a_laptop_screen(chromium, study_report, tmp_path):
    t0 = time.time()
    result = probe_report(chromium, study_report)
    check_layout(result, min_images=4)  # local, global, convergence, k-of-n
    assert 0 <= result["first_table_top"] < result["first_img_top"]  # the claims table comes before any figure
    assert time.time() - t0 < 60
    html = study_report.read_text()
    assert html.index("Claims of the paper") < html.index("<img")
    png = screenshot(chromium, study_report, tmp_path / "study.png")
    assert png.exists() and png.stat().st_size > 10_000


def test_analysis_and_evaluation_reports_render_in_the_browser(chromium, tiny_llama, tmp_path):
    """The one report writer (``taskvec.write_report``) on an analysis run and a from-scratch evaluation."""
    import torch

    from taskvec.analysis.runners import HeadsConfig
    from taskvec.kinds import run_evaluation, run_heads
    from taskvec.kinds import run_kind, write_report
    from taskvec.scratch.evaluate import EvalConfig
    from taskvec.scratch.model import build_model

    heads = run_heads(HeadsConfig(model="smollm2-135m", n_trials=2, n_demos=3, modes=["mean"], layers=[0, 1]),
                      tmp_path / "heads", lm=tiny_llama, progress=False)
    assert run_kind(heads) == "heads"
    check_layout(probe_report(chromium, write_report(heads)), min_images=2)

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    build_model("tiny", d_in=4, n_positions=60, task={"d": 4}, layout="x→y").save_pretrained(model_dir)
    cfg = EvalConfig(models={"a": str(model_dir), "b": str(model_dir)}, n_trials=8, k=3, analyses=["layers", "pca"])
    ev = run_evaluation(cfg, tmp_path / "eval", progress=False)
    assert run_kind(ev) == "evaluate"
    report = write_report(ev)
    check_layout(probe_report(chromium, report), min_images=4)
    assert "data:image/png;base64," in report.read_text()


def test_comparison_report_renders_in_the_browser(chromium, tmp_path):
    """A real (tiny) vanilla-vs-TVP comparison over two seeds: verdicts, figures and the OOD/per-layer tables fit."""
    from taskvec.kinds import run_kind
    from taskvec.kinds import run_comparison
    from taskvec.scratch.comparison import ComparisonConfig

    cfg = ComparisonConfig.from_dict({
        "train": {"task": {"name": "linear_regression", "d": 2}, "preset": "tiny", "k_max": 4, "steps": 6,
                  "batch_size": 8, "save_every": 6, "log_every": 3},
        "arms": [{"name": "vanilla"}, {"name": "tvp", "tvp_layer": 1}], "seeds": [0, 1],
        "evaluation": {"n_trials": 12, "k": 3, "analyses": ["layers", "noisy", "ood", "pca"], "pca_tasks": 3,
                       "pca_per_task": 4, "noisy_fracs": [0.0, 0.25]}})
    out = tmp_path / "cmp"
    run_comparison(cfg, out, progress=False)
    assert run_kind(out) == "compare"
    result = probe_report(chromium, out / "report.html")
    check_layout(result, min_images=3)  # strength, errors, noisy
    assert 0 <= result["first_table_top"] < result["first_img_top"]  # the verdicts come before any figure


def test_the_probe_sees_a_broken_figure_and_a_page_that_scrolls_sideways(chromium, tmp_path):
    """The checks are not vacuous: a figure that does not decode and a wide table outside a scroll box fail them."""
    from taskvec.report.html import Page

    page = Page("bad", tmp_path / "figures")
    page.raw('<figure><img alt="broken" src="data:image/png;base64,AAAA"></figure>')
    page.raw("<table><tr>" + "<td>a_long_unbreakable_cell_value</td>" * 60 + "</tr></table>")
    result = probe_report(chromium, page.write(tmp_path / "report.html"))
    assert result["broken"] == ["broken"]
    assert result["scroll_width"] > WIDTH and result["overflowing"]
    with pytest.raises(AssertionError):
        check_layout(result, min_images=1)
