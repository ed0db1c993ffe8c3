"""The docs' code runs as written (on the real smollm2-135m): the tutorial's first block makes its figure, every
block of docs/api.md runs in order, the tutorial uses only the front door, and no source file cites a document the
repository does not hold."""
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


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_every_api_example_runs(tmp_path, monkeypatch, smol):
    import taskvec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(taskvec, "load_model", lambda name: smol)
    scope: dict = {}
    for i, code in enumerate(_blocks("api.md")):
        exec(compile(code, f"docs/api.md block {i}", "exec"), scope)
    assert (tmp_path / "runs/api-heads/report.html").exists()
    assert scope["curve"].layer.nunique() == smol.n_layers


def test_the_tutorial_uses_only_the_front_door():
    code = "\n".join(_blocks("tutorial.md"))
    deep = re.findall(r"^\s*(?:from taskvec\.\S+ import|import taskvec\.)", code, re.M)
    assert not deep, deep
    assert "import taskvec as tv" in code


def test_every_front_door_name_resolves_and_is_documented():
    import taskvec as tv

    api = (DOCS / "api.md").read_text()
    for name in tv.__all__:
        assert getattr(tv, name) is not None
        if not name.startswith("_") and name not in ("LayerSkippingWarning",):
            assert name in api, f"tv.{name} is not documented in docs/api.md"


def test_source_cites_only_documents_the_repository_holds():
    root = DOCS.parent
    cited = set()
    for path in (root / "src").rglob("*.py"):
        text = path.read_text()
        assert "SPEC " not in text and "DESIGN.md" not in text, f"{path} cites a document outside the repository"
        cited |= set(re.findall(r"docs/[\w./-]+?\.md", text))
    missing = sorted(c for c in cited if not (root / c).exists())
    assert not missing, missing
