"""The docs' code runs as written (``tv.load_model`` gives a tiny Llama with SmolLM2's tokenizer: the same prompts,
tasks and calls; what the code computes, not what a real model answers): the tutorial's first block makes its figure,
every block of docs/api.md runs in order, the tutorial uses only the front door, and no source file cites a document
the repository does not hold."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import load_tiny_llama  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def tiny_llama_16(tmp_path_factory):
    """The tiny Llama of conftest at 16 layers: the examples name layers up to 12 (of the real model's 30)."""
    return load_tiny_llama(tmp_path_factory.mktemp("tiny-llama-16"), num_hidden_layers=16)


def test_tutorial_code_runs_and_writes_the_figure(tmp_path, monkeypatch, tiny_llama):
    import taskvec

    code = re.findall(r"```python\n(.*?)```", (DOCS / "tutorial.md").read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(taskvec, "load_model", lambda name: tiny_llama)  # loaded once per session
    scope: dict = {}
    exec(compile(code, "docs/tutorial.md", "exec"), scope)
    assert (tmp_path / "tutorial_layers.png").stat().st_size > 10_000
    global_acc = scope["global_curve"].groupby("layer").correct.mean()
    assert len(global_acc) == tiny_llama.n_layers and len(scope["keep"]) >= 6


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def test_every_api_example_runs(tmp_path, monkeypatch, tiny_llama_16):
    import taskvec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(taskvec, "load_model", lambda name: tiny_llama_16)
    scope: dict = {}
    for i, code in enumerate(_blocks("api.md")):
        exec(compile(code, f"docs/api.md block {i}", "exec"), scope)
    assert (tmp_path / "runs/api-heads/report.html").exists()
    assert scope["curve"].layer.nunique() == tiny_llama_16.n_layers


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


def test_the_front_door_is_small_and_old_names_say_where_they_went():
    import importlib

    import taskvec as tv

    assert len(tv.__all__) <= 30, "the front door holds about twenty names, one per concept"
    for name, module in tv._MOVED.items():
        assert name not in tv.__all__
        with pytest.warns(FutureWarning, match=rf"from {module} import {name}"):
            assert getattr(tv, name) is getattr(importlib.import_module(module), name)
    assert tv.errors.LayerError.__mro__[1:3] == (tv.TaskvecError, Exception)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        tv.nothing_here
