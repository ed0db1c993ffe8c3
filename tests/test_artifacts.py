"""One run-directory schema (issue 22): every file name is defined once, in ``taskvec.artifacts``; each kind declares
the entries it writes and a ``tables(run_dir)`` that its report and the claims read. (That the declared entries
are what a run writes is checked on real runs of every kind: ``tests/test_kinds_contract.py``.)"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest

import taskvec
from taskvec import artifacts as A

SRC = Path(taskvec.__file__).parent
NAME = re.compile(r"[A-Za-z][\w-]*(?:\.[\w-]+)*\.(?:csv|parquet|jsonl|json|html|safetensors)")
"""What an artifact's file name looks like (``dpca_per_layer.csv``, ``model.safetensors``)."""


def file_names_in(code: str) -> list[tuple[int, str]]:
    """``(line, literal)`` of every string literal in ``code`` that is a whole file name: not the text of a
    docstring or other bare string statement, not the literal text of an f-string (``f"{task}.json"``)."""
    tree = ast.parse(code)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip.add(id(node.value))  # a docstring (of a module, class, function or attribute)
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and NAME.fullmatch(node.value)]


def test_no_module_but_artifacts_spells_a_file_name():
    found = [f"{path.relative_to(SRC)}:{line}: {name!r}" for path in sorted(SRC.rglob("*.py"))
             if path.name != "artifacts.py" or path.parent != SRC
             for line, name in file_names_in(path.read_text(encoding="utf-8"))]
    assert not found, ("file names spelled outside taskvec/artifacts.py (use its constants):\n" + "\n".join(found))


def test_the_scan_finds_a_file_name_and_leaves_docstrings_and_f_strings_alone():
    code = ('"""Writes summary.csv."""\n'
            'def f(run_dir, task):\n'
            '    """Reads ``dpca_c8.json``."""\n'
            '    a = run_dir / "dpca_per_layer.csv"\n'
            '    b = f"{task}.patch.safetensors"\n'
            "    c = f\"{run_dir / 'report.html'}\"\n"
            '    d = ".csv", "*.json", "figures"\n')
    assert file_names_in(code) == [(4, "dpca_per_layer.csv"), (6, "report.html")]


def test_every_kind_declares_its_artifacts_and_tables():
    from taskvec.kinds import KINDS

    names = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    for kind in KINDS.values():
        assert {A.CONFIG, A.RESULTS, A.REPORT} <= set(kind.artifacts), kind.name
        assert set(kind.artifacts) <= names, f"{kind.name} declares entries not named in taskvec.artifacts"
        assert len(set(kind.artifacts)) == len(kind.artifacts), f"{kind.name} declares an entry twice"
        assert callable(_resolve(kind.tables_ref)), kind.tables_ref


def _resolve(ref: str):
    import importlib

    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def test_tables_are_built_when_first_read_and_kept():
    calls = []

    def make():
        calls.append(1)
        return pd.DataFrame({"layer": [0, 1]})

    t = A.Tables({"per_layer": make, "other": lambda: pytest.fail("a table nobody read was built")})
    assert not calls and list(t) == ["per_layer", "other"] and len(t) == 2 and "other" in t and "nosuch" not in t
    assert t["per_layer"] is t["per_layer"] and calls == [1]
    with pytest.raises(KeyError):
        t["nosuch"]


def test_the_training_report_reads_the_store_not_the_csv_export(tmp_path):
    """log.csv is an export: the report draws the run store's rows (here the CSV says otherwise and is ignored)."""
    import json

    from taskvec.kinds import KINDS, write_report

    run = tmp_path / "train"
    run.mkdir()
    (run / A.CONFIG).write_text(json.dumps({"config": {"steps": 4}, "kind": "train", "versions": {}}))
    rows = [{"step": s, "loss": 1.0 / s, "icl_loss": 1.0 / s, "tvp_loss": 0.0, "icl_err": 0.5, "seq_per_s": 9.0}
            for s in (2, 4)]
    (run / A.RESULTS).write_text(json.dumps({"unit": "train/step-0000004", "rows": rows}) + "\n")
    (run / A.LOG_CSV).write_text("step,loss\n99,7.0\n")
    log = KINDS["train"].tables(run)["log"]
    assert list(log.step) == [2, 4] and "unit" not in log
    html = write_report(run).read_text()
    assert "Training curves" in html and ">99<" not in html
