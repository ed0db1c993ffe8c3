"""The tutorial's first code block runs as written (on the real smollm2-135m) and makes its figure."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_tutorial_code_runs_and_writes_the_figure(tmp_path, monkeypatch, smol):
    import taskvec

    code = re.findall(r"```python\n(.*?)```", (DOCS / "tutorial.md").read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(taskvec, "load_model", lambda name: smol)  # same model, loaded once per session
    scope: dict = {}
    exec(compile(code, "docs/tutorial.md", "exec"), scope)
    assert (tmp_path / "tutorial_layers.png").stat().st_size > 10_000
    global_acc = scope["global_curve"].groupby("layer").correct.mean()
    assert len(global_acc) == smol.n_layers and len(scope["keep"]) >= 6
