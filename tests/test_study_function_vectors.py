"""The function vector inside the study (docs/spec.md A.9) and the table of every vector method: the unit's rows on
the small study of the tiny Llama (selection at every layer, evaluation at the selected layer only, its nulls), its
numbers against the library's own chain (mean head outputs -> contributions -> the layer sweep), the method table's
verdicts on constructed results (each verdict reachable, each null able to veto), and ``taskvec methods``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskvec.method_table import COLUMNS, markdown, method_table
from taskvec.scoring import select_layer

from conftest import SMALL_STUDY as SMALL  # noqa: E402


@pytest.fixture(scope="module")
def results(small_study):
    return pd.read_parquet(small_study / "results.parquet")


def test_function_vector_rows_select_every_layer_and_evaluate_one(results, tiny_llama):
    from taskvec.analysis.heads import head_geometry

    L, H = tiny_llama.n_layers, head_geometry(tiny_llama)[1]
    for task in ("antonyms", "simple_string"):
        t = results[results.task == task]
        heads = t[t.experiment == "fv_heads"]
        assert len(heads) == L * H and sorted(heads["rank"].astype(int)) == list(range(1, L * H + 1))
        chosen = heads[heads.chosen.astype(bool)]
        assert sorted(chosen["rank"].astype(int)) == [1, 2, 3]  # fv_k=3: the three largest AIE
        assert chosen.aie.min() >= heads[~heads.chosen.astype(bool)].aie.max()
        fv = t[t.experiment == "function_vector"]
        sel = fv[(fv.split == "select") & (fv.vector == "function_vector")]
        assert sorted(sel.layer.unique()) == list(range(L)) and len(sel) == L * SMALL["n_select"]
        layer = select_layer(sel)
        ev = fv[fv.split == "eval"]
        for vec in ("function_vector", "random_heads", "other_task", "function_vector_shuffled"):
            rows = ev[ev.vector == vec]
            assert len(rows) == SMALL["n_eval"] and set(rows.layer) == {layer}, vec
        assert len(ev[ev.vector == "shuffled"]) == SMALL["n_eval"]
        natural = ev[ev.vector.isin(["natural_clean", "natural_fv"])]
        if task == "antonyms":  # knowledge: the natural-text test, with the continuations kept
            assert len(natural) == 2 * SMALL["n_eval"] and natural.continuation.map(type).eq(str).all()
        else:  # categorization labels are arbitrary words: no natural-text answer to generate
            assert natural.empty
        assert set(fv.fv_heads.dropna()) == {";".join(f"{int(r.layer)}.{int(r['head'])}"
                                                       for _, r in chosen.sort_values("rank").iterrows())}


def test_the_units_numbers_equal_the_library_chain(results, tiny_llama):
    """The study's function vector equals the library's: head means over the same source prompts, written through
    the output projection, the chosen heads summed, added at the selected layer (the library chain is itself
    checked against a naive per-head loop in test_function_vectors.py)."""
    from taskvec.analysis.function_vectors import fv_layer_sweep, head_contributions, mean_head_outputs
    from taskvec.study import StudyConfig
    from taskvec.task_run import TaskRun

    tr = TaskRun("antonyms", StudyConfig(**SMALL).effective(), tiny_llama)
    t = results[results.task == "antonyms"]
    chosen = t[(t.experiment == "fv_heads") & t.chosen.astype(bool)]
    contrib = head_contributions(tiny_llama, mean_head_outputs(tiny_llama, tr.source_prompts))
    fv = torch.stack([contrib[int(r.layer), int(r["head"])] for _, r in chosen.iterrows()]).sum(0)
    ev = t[(t.experiment == "function_vector") & (t.vector == "function_vector") & (t.split == "eval")]
    layer = int(ev.layer.iloc[0])
    ref = fv_layer_sweep(tiny_llama, tr.zero_shot("eval"), fv, layers=[layer])
    np.testing.assert_allclose(ev.sort_values("prompt").target_logprob.to_numpy(), ref.target_logprob.to_numpy(),
                               atol=2e-4)
    assert (ev.sort_values("prompt").correct.to_numpy() == ref.correct.to_numpy()).all()


# ------------------------------------------------------------------ the method table on constructed results
def _rows(experiment, vector, scores, layer=5, split="eval", **extra):
    return [dict(task="t", kind="knowledge", experiment=experiment, vector=vector, split=split, span="single",
                 prompt=i, layer=layer, score=float(s), **extra) for i, s in enumerate(scores)]


def _table(fv, fv_null, global_=None, local=None, token=None, icl=None, n=40):
    rng = np.random.default_rng(0)
    coin = lambda p: (rng.random(n) < p).astype(float)  # noqa: E731
    rows = [dict(task="t", kind="knowledge", experiment="chance", score=0.05)]
    rows += [dict(r, n_demos=4) for r in _rows("icl", None, icl if icl is not None else np.ones(n), split="eval")]
    rows += [dict(r, n_demos=0) for r in _rows("icl", None, np.zeros(n), split="eval")]
    rows += _rows("global", "global", global_ if global_ is not None else coin(0.6))
    rows += _rows("global", "other_task", np.zeros(n))
    rows += _rows("function_vector", "function_vector", fv, layer=7)
    rows += _rows("function_vector", "other_task", fv_null, layer=7)
    rows += _rows("function_vector", "random_heads", np.zeros(n), layer=7)
    rows += _rows("local", "local", local if local is not None else coin(0.9), layer=3)
    rows += _rows("local", "token_control", token if token is not None else coin(0.9), layer=3)
    rows += _rows("local", "dummy", np.zeros(n), layer=-1)
    return pd.DataFrame(rows)


def test_method_table_verdicts_each_reachable_and_nulls_veto():
    n = 40
    works = method_table(_table(fv=np.ones(n), fv_null=np.zeros(n)))
    assert list(works.columns) == COLUMNS
    row = works.set_index("method").loc["function_vector"]
    assert row.verdict == "works" and row.layer == 7 and row.acc == 1.0 and row.null in ("other_task", "random_heads")
    assert row.gain_low > 0 and row.margin_low > 0 and np.isfinite(row.vs_global)
    # the other task's vector does as well: beats zero-shot, but not its null
    vetoed = method_table(_table(fv=np.ones(n), fv_null=np.ones(n))).set_index("method").loc["function_vector"]
    assert vetoed.verdict == "not above null" and vetoed.null == "other_task"
    # nothing at all
    flat = method_table(_table(fv=np.zeros(n), fv_null=np.zeros(n))).set_index("method").loc["function_vector"]
    assert flat.verdict == "no effect"
    # local vectors that are only their answer token: above the dummy, not above the token-identity control
    local = method_table(_table(fv=np.ones(n), fv_null=np.zeros(n))).set_index("method").loc["local"]
    assert local.verdict == "not above null" and local.null == "token_control" and local.baseline == "dummy"
    # ICL no better than zero-shot: the task tests nothing, every verdict is "?" and says why
    gated = method_table(_table(fv=np.ones(n), fv_null=np.zeros(n), icl=np.zeros(n)))
    assert set(gated.verdict.dropna()) == {"?"} and gated.note.str.contains("tests nothing").all()
    text = markdown(works)
    assert text.count("\n") == len(works) + 1 and "| t | function_vector | 7 | 1.00 [" in text


def test_method_table_of_a_run_without_function_vectors_lists_the_rest():
    t = _table(fv=np.ones(40), fv_null=np.zeros(40))
    t = t[t.experiment != "function_vector"]
    methods = method_table(t)
    assert "function_vector" not in set(methods.method)
    assert {"icl", "zero_shot", "global", "local"} <= set(methods.method)
    assert method_table(pd.DataFrame()).empty


def test_methods_command_prints_the_table_and_writes_csv(small_study, tmp_path, capsys):
    from taskvec.cli import main

    csv = tmp_path / "methods.csv"
    with pytest.raises(SystemExit) as end:
        main(["methods", str(small_study), "--csv", str(csv)])
    out = capsys.readouterr().out
    assert end.value.code in (0, None), out
    table = pd.read_csv(csv)
    assert {"antonyms", "simple_string"} == set(table.task)
    assert {"icl", "zero_shot", "global", "function_vector", "local"} <= set(table.method)
    assert "| antonyms | function_vector |" in out
    report = (small_study / "report.html").read_text()
    assert "Every vector method side by side" in report and (small_study / "methods.csv").exists()
