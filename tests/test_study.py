"""The local-vs-global study end to end on the tiny random Llama with SmolLM2's tokenizer (``tiny_llama``: the
mechanics; the real model's numbers are the slow end-to-end runs') with small trial counts: the selection /
evaluation protocol, every vector type and control, cross-checks between experiments, the run record, resume after
killing a real run, custom task files, and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from taskvec.errors import ConfigError
from taskvec.runs import RunStore
from taskvec.scoring import select_layer
from taskvec.kinds import run_study
from taskvec.study import StudyConfig, TaskRun, by_mapping, convergence_rows, select_local_layer, token_beating_layers
from taskvec.study_states import mapping_trial_avg
from taskvec.vectors import load_vectors

from conftest import SMALL_STUDY as SMALL, cli  # noqa: E402


@pytest.fixture(scope="module")
def small_run(small_study):
    return small_study, pd.read_parquet(small_study / "results.parquet")


def test_selection_sweeps_every_layer_and_evaluation_uses_one_layer_per_vector(small_run, tiny_llama):
    out, t = small_run
    L = tiny_llama.n_layers
    for task in ("antonyms", "simple_string"):
        tt = t[t.task == task]
        for exp, vectors, n_sel in [("global", ["global", "demo_separators"], 4),
                                    ("local", ["local", "token_control", "pos_avg", "trial_avg"], 3)]:
            for vec in vectors:
                for span in ("single", "from"):
                    sel = tt[(tt.experiment == exp) & (tt.vector == vec) & (tt.span == span) & (tt.split == "select")]
                    # local vectors from min_local_layer (1) on: below it a local vector is its token; Pos Avg
                    # and Trial Avg where the own vectors beat their token (else at the local layer)
                    local_rows = tt[tt.experiment == "local"].to_dict("records")
                    swept = (list(range(1 if exp == "local" else 0, L)) if vec not in ("pos_avg", "trial_avg")
                             else token_beating_layers(local_rows, span, 1)
                             or [select_local_layer(local_rows, span, 1)[0]])
                    assert sorted(sel.layer.unique()) == swept, (task, exp, vec)
                    assert sel.groupby("layer").size().eq(n_sel).all()
                    ev = tt[(tt.experiment == exp) & (tt.vector == vec) & (tt.span == span) & (tt.split == "eval")]
                    assert ev.layer.nunique() == 1, (task, vec)
                    # controls are compared at the layer of the vector they control
                    chooser = {"demo_separators": "global", "token_control": "local"}.get(vec, vec)
                    chosen = tt[(tt.experiment == exp) & (tt.vector == chooser) & (tt.span == span)
                                & (tt.split == "select") & (tt.layer >= (1 if exp == "local" else 0))]
                    expected = (select_local_layer(tt[tt.experiment == "local"].to_dict("records"), span, 1)[0]
                                if chooser == "local" else select_layer(chosen))
                    assert int(ev.layer.iloc[0]) == expected  # chosen on selection, not evaluation
                    if exp == "local":
                        assert int(ev.layer.iloc[0]) >= 1  # layer 0 would restore the ICL prompt itself
                    assert len(ev) == (6 if exp == "global" else 4)
        ev = tt[(tt.split == "eval") & (tt.span == "single")]
        layer = {(e, v): int(g.layer.iloc[0]) for (e, v), g in ev.groupby(["experiment", "vector"]) if v != "dummy"}
        # every control is evaluated at the layer of the vector it controls, never selected on its own
        assert layer[("global", "random")] == layer[("global", "other_task")] == layer[("global", "global")]
        assert (layer[("local", "token_control")] == layer[("local", "shuffled_slots")] == layer[("local", "slot_mean")]
                == layer[("local", "other_task")] == layer[("local", "local")])
        assert ("local", "random") not in layer  # a norm-matched random vector destroys the prompt: not a null
        assert layer[("mediation", "mediated")] == layer[("mediation", "dummy_query")] == layer[("global", "global")]
        assert set(tt[tt.experiment == "icl"].n_demos) == {0, 2, 4}
        assert len(tt[(tt.experiment == "local") & (tt.vector == "dummy")]) == 4
        kofn = tt[tt.experiment == "kofn"]
        assert set(kofn.k) == set(range(5)) and set(kofn.fill) == {"wrong", "mean"}
        assert len(tt[tt.experiment == "convergence"]) == L * 4
        assert t[t.task == task].score.dropna().between(0, 1).all()
    cat = t[t.task == "simple_string"]
    assert (cat.kind == "categorization").all() and (cat.labels == "A/B").all()
    assert "trial_avg_mixed" in set(cat.vector)  # the mapping-mixed Trial Avg, kept as a null control
    assert "trial_avg_mixed" not in set(t[t.task == "antonyms"].vector)


def test_selection_and_evaluation_queries_are_disjoint(tiny_llama):
    for name in ("country_capital", "simple_string"):
        tr = TaskRun(name, StudyConfig(**{**SMALL, "n_select": 24, "n_eval": 50}), tiny_llama)
        sel, ev = {t.query.input for t in tr.select}, [t.query.input for t in tr.eval]
        assert len(tr.select) == 24 and len(tr.eval) == 50
        assert not sel & set(ev) and len(set(ev)) == 50  # distinct queries: no zero-shot prompt counted twice


def test_select_layer_breaks_ties_by_log_probability_then_lower_layer():
    rows = pd.DataFrame(dict(layer=[0, 0, 1, 1, 2, 2], score=[1, 0, 1, 0, 1, 0],
                             target_logprob=[-2.0, -2.0, -1.0, -1.0, -1.0, -1.0]))
    assert select_layer(rows) == 1


def test_kofn_endpoints_equal_the_dummy_and_the_full_local_patch(small_run):
    """k = 0 of n is the unpatched dummy prompt; k = n is local patching at the k-of-n layer (the local vector's
    selected layer), on the same evaluation dummy prompts."""
    _, t = small_run
    for task, tt in t.groupby("task"):
        kofn = tt[tt.experiment == "kofn"]
        layer, n = int(kofn.layer.iloc[0]), int(kofn.k.max())
        local = tt[(tt.experiment == "local") & (tt.vector == "local") & (tt.span == "single")
                   & (tt.split == "eval")].set_index("prompt").sort_index()
        assert int(local.layer.iloc[0]) == layer
        dummy = tt[(tt.experiment == "local") & (tt.vector == "dummy")].set_index("prompt").sort_index()
        slot_mean = tt[(tt.experiment == "local") & (tt.vector == "slot_mean") & (tt.span == "single")
                       & (tt.split == "eval")].set_index("prompt").sort_index()
        for fill, k0_equals in (("wrong", dummy), ("mean", slot_mean)):  # k = 0: nothing patched / all mean-ablated
            kf = kofn[kofn.fill == fill]
            k0 = kf[kf.k == 0].set_index("prompt").sort_index()
            kn = kf[kf.k == n].set_index("prompt").sort_index()
            assert torch.allclose(torch.tensor(k0.target_logprob.values),
                                  torch.tensor(k0_equals.target_logprob.values), atol=1e-4), (task, fill)
            assert torch.allclose(torch.tensor(kn.target_logprob.values), torch.tensor(local.target_logprob.values),
                                  atol=1e-4), (task, fill)


def test_local_patching_at_layer_0_is_the_icl_prompt_itself(tiny_llama):
    """Why local layers are selected from layer 1 on (``min_local_layer``): h_0 at an answer position is the answer
    token's embedding, so local patching at layer 0 turns the dummy prompt back into the ICL prompt."""
    from taskvec.sweep import patch_layers
    from taskvec.vectors import read_icl_states

    tr = TaskRun("simple_string", StudyConfig(**SMALL), tiny_llama)
    icl, dummy = tr.dummy_select
    _, local = read_icl_states(tiny_llama, icl)
    patched = patch_layers(tiny_llama, dummy, local, "answers", layers=[0])
    clean = patch_layers(tiny_llama, icl, local, "answers", layers=[0])  # writing a prompt's own states changes nothing
    assert torch.allclose(torch.tensor(patched.target_logprob.values), torch.tensor(clean.target_logprob.values),
                          atol=1e-4)


def test_kofn_grid_holds_every_k_the_claims_read():
    from taskvec.study import kofn_values

    assert kofn_values(16) == [0, 1, 2, 8, 16]  # what the C5 rules read
    assert kofn_values(16, icl_counts=[0, 1, 2, 4, 8]) == [0, 1, 2, 4, 8, 16]  # and where ICL(k) is run
    assert kofn_values(10, icl_counts=[0, 1, 2, 4, 8, 32]) == [0, 1, 2, 4, 5, 8, 10]
    assert kofn_values(4) == list(range(5)) and kofn_values(16, "all") == list(range(17))
    for n in range(1, 33):
        assert {0, n // 2, n} | ({1, 2} & set(range(n))) <= set(kofn_values(n))


def test_vectors_are_saved_with_shapes_and_reload(small_run, tiny_llama):
    out, _ = small_run
    vec, meta = load_vectors(out / "vectors" / "antonyms.safetensors")
    L, d = tiny_llama.n_layers, tiny_llama.d_model
    assert vec["global_per_prompt"].shape == (4, L, d)
    assert vec["local"].shape == (4, L, 4, d)
    assert torch.equal(vec["global"], vec["global_per_prompt"].mean(0))
    assert meta["task"] == "antonyms" and meta["model"] == "smollm2-135m"
    patch, _ = load_vectors(out / "vectors" / "antonyms.patch.safetensors")
    assert patch["local_select"].shape == (3, L, 4, d) and patch["local_eval"].shape == (4, L, 4, d)
    assert patch["reference_mean"].shape == (L, d)
    assert (out / "vectors" / "country_capital.safetensors").exists()  # the other-task control


def test_kofn_slots_are_seeded_per_prompt_k_and_subset():
    from taskvec.study import kofn_slots

    draws = {(p, k, s): kofn_slots(0, "antonyms", p, k, s, 10) for p in range(4) for k in (1, 2, 5) for s in range(2)}
    assert all(len(v) == k and v == sorted(set(v)) and set(v) <= set(range(10)) for (_, k, _), v in draws.items())
    assert draws == {key: kofn_slots(0, "antonyms", *key, 10) for key in draws}  # the same whatever else is drawn
    assert len({tuple(v) for (_, k, _), v in draws.items() if k == 2}) > 1  # prompts and subsets differ
    assert kofn_slots(1, "antonyms", 0, 5, 0, 10) != kofn_slots(0, "antonyms", 0, 5, 0, 10) or \
        kofn_slots(1, "antonyms", 1, 5, 0, 10) != kofn_slots(0, "antonyms", 1, 5, 0, 10)  # the seed matters


def test_function_vectors_go_to_knowledge_tasks_by_default_and_tasks_are_dealt_by_cost(tiny_llama):
    from taskvec.study import has_function_vector, task_cost

    runs = {cfg: {name: TaskRun(name, StudyConfig(**{**SMALL, "fv_tasks": cfg}), tiny_llama)
                  for name in ("antonyms", "simple_string")} for cfg in ("knowledge", "all")}
    assert StudyConfig(model="smollm2-135m").fv_tasks == "knowledge"
    assert has_function_vector(runs["knowledge"]["antonyms"]) and not has_function_vector(runs["knowledge"]["simple_string"])
    assert all(has_function_vector(tr) for tr in runs["all"].values())
    off = TaskRun("antonyms", StudyConfig(**{**SMALL, "function_vectors": False}), tiny_llama)
    assert not has_function_vector(off)
    tr = runs["knowledge"]["antonyms"]
    assert task_cost(tr) == pytest.approx(1.25 * len(tr.eval_prompts[0].ids)) and task_cost(off) == task_cost(tr) / 1.25


def test_trial_avg_averages_within_one_label_mapping(tiny_llama):
    """Defect 5: Trial Avg on categorization averaged over per-trial label mappings (so it carried no mapping).
    A planted mapping signal must survive the within-mapping average and vanish from the mixed one."""
    tr = TaskRun("simple_string", StudyConfig(**{**SMALL, "n_trials": 40}), tiny_llama)
    sign = torch.tensor([1.0 if t.label_words == ("A", "B") else -1.0 for t in tr.source])
    assert 0 < (sign > 0).sum() < 40  # both mappings occur
    local = sign[:, None, None, None] * torch.ones(40, 2, 4, 3)  # [P, L, n, d]: +1 for A/B prompts, -1 for B/A
    per_target = mapping_trial_avg(tr, {"local": local}, tr.select)
    for t, v in zip(tr.select, per_target):
        assert torch.allclose(v, torch.full_like(v, 1.0 if t.label_words == ("A", "B") else -1.0))
    mixed = local.mean(0)
    assert mixed.abs().max() < 1.0  # the mapping-mixed version mixes +1 and -1


def test_convergence_compares_states_of_the_same_role_centred():
    """Defect 1: answer states (which predict the token after an answer) were compared with the query state (which
    predicts the answer). The geometry now compares the demonstrations' separator states and held-out query states
    with the global vector, and local vectors only with each other, all centred: with a large common offset,
    unrelated directions give ~0 and aligned ones ~1."""
    gen = torch.Generator().manual_seed(0)
    P, L, n, d = 8, 2, 5, 256
    offset = 50 * torch.ones(d)
    g = offset + torch.randn(L, d, generator=gen)
    separators = offset + torch.randn(P, L, n, d, generator=gen)
    separators[:, 1] = offset + (g[1] - offset) * 3 + 0.1 * torch.randn(P, n, d, generator=gen)  # layer 1: same job
    local = offset + torch.randn(P, L, n, d, generator=gen)
    query = offset + torch.randn(P, L, d, generator=gen)
    rows = pd.DataFrame(convergence_rows(local, separators, query, g, offset[None].expand(L, d)))
    by = rows.groupby("layer").mean(numeric_only=True)
    assert abs(by.centred_separator_global[0]) < 0.1 and by.centred_separator_global[1] > 0.95
    assert abs(by.centred_local_local[0]) < 0.1 and abs(by.centred_query_global[0]) < 0.1
    assert not any("local_global" in c for c in rows.columns)  # never answer states against the query's


def test_convergence_rows_from_the_run_are_cosines(small_run):
    _, t = small_run
    conv = t[t.experiment == "convergence"]
    for col in ("centred_separator_global", "centred_query_global", "centred_local_local"):
        assert conv[col].between(-1.0001, 1.0001).all()
    assert "local_as_global" not in set(t.vector.dropna())


def test_mediation_is_the_locally_patched_dummys_query_state(tiny_llama):
    """Defect 1, the mediation test: the dummy's query state read at the global layer after local patching at the
    local layer. Patching at layer 0 turns the dummy into its ICL prompt (single-token labels), so the mediated
    state equals the ICL prompt's own query state; a patch at or above the read layer cannot reach it."""
    from taskvec.intervene import Edits, read_states
    from taskvec.vectors import read_role_states

    tr = TaskRun("simple_string", StudyConfig(**SMALL), tiny_llama)
    icl, dummy = tr.dummy_eval
    own, plain = read_role_states(tiny_llama, icl), read_role_states(tiny_llama, dummy)
    n, d = len(dummy[0].answer_positions), tiny_llama.d_model

    def mediated(layer: int, read_at: int) -> torch.Tensor:
        edits = Edits.at(rows=[p for p in range(len(dummy)) for _ in range(n)], layers=[layer] * (len(dummy) * n),
                         positions=[a for p in dummy for a in p.answer_positions],
                         vectors=own["answers"][:, layer].reshape(-1, d))
        return read_states(tiny_llama, [p.ids for p in dummy], [[p.query_position] for p in dummy], [read_at],
                           edits=edits)[:, 0, 0]

    top = tiny_llama.n_layers - 1
    assert torch.allclose(mediated(0, top), own["query"][:, top], atol=1e-3)
    assert torch.allclose(mediated(top, top), plain["query"][:, top], atol=1e-5)


def test_mediation_rows_pair_every_zero_shot_prompt(small_run):
    _, t = small_run
    med = t[t.experiment == "mediation"]
    assert set(med.vector) == {"mediated", "dummy_query"} and (med.split == "eval").all()
    for task, m in med.groupby("task"):
        assert m.groupby("vector").prompt.nunique().eq(6).all()  # every zero-shot evaluation prompt, paired


def test_token_identity_control_is_the_same_word_from_another_prompt(tiny_llama):
    """Defect 2: local vectors at the selected layers were the answer token's identity. The control fills each
    slot with the same answer word's state from a *different* prompt, preferring the same slot."""
    from taskvec.study_states import token_control

    tr = TaskRun("simple_string", StudyConfig(**SMALL), tiny_llama)
    P, L, n, d = 3, 2, 4, 1
    ids = lambda k: torch.arange(k * L * n, dtype=torch.float).reshape(k, L, n, d)  # noqa: E731
    src = {"local": 1000 + ids(len(tr.source))}
    states = {"local_select": 2000 + ids(P), "local_eval": 3000 + ids(4), "dummy_select": -ids(P)}
    control, coverage = token_control(tr, src, states, "select")
    assert coverage == 1.0  # two label words: always found
    donors = {"source": (tr.source, src["local"]), "select": (tr.select, states["local_select"]),
              "eval": (tr.eval, states["local_eval"])}
    for p in range(P):
        for i, demo in enumerate(tr.select[p].demos):
            value = float(control[p, 0, i, 0])
            found = [(name, q, j) for name, (trials, tensor) in donors.items() for q in range(len(tensor))
                     for j in range(n) if float(tensor[q, 0, j, 0]) == value]
            assert len(found) == 1
            name, q, j = found[0]
            assert (name, q) != ("select", p)  # another prompt
            assert donors[name][0][q].demos[j].output == demo.output  # the same answer word


def test_local_layers_are_selected_only_where_local_beats_its_token():
    """Defect 2: layers where the local vector is only its answer token are not selected; where it is its token at
    every layer (knowledge tasks: the control is the same answer in another context), the best own layer, flagged."""
    def rows(levels):
        return [dict(split="select", span="single", layer=l, vector=v, prompt=p, score=s, target_logprob=lp + 0.01 * p)
                for l, (own, ctl, gain) in levels.items()
                for v, s, lp in (("local", own, -1.0 + gain), ("token_control", ctl, -1.0)) for p in range(6)]
    picked = select_local_layer(rows({1: (1.0, 1.0, 0.0), 2: (0.9, 0.5, 0.8), 3: (0.8, 0.4, 0.9),
                                      4: (0.95, 0.95, 0.0)}), "single", 1)
    assert picked == (2, True)  # layers 1 and 4 score higher, but only as their tokens
    assert select_local_layer(rows({1: (0.9, 0.9, 0.0), 2: (1.0, 1.0, 0.0)}), "single", 1) == (2, False)


def test_global_vector_is_built_within_each_label_mapping(tiny_llama):
    """Defect 6: the global vector of a categorization task averaged over label mappings."""
    tr = TaskRun("simple_string", StudyConfig(**{**SMALL, "n_trials": 40}), tiny_llama)
    sign = torch.tensor([1.0 if t.label_words == ("A", "B") else -1.0 for t in tr.source])
    per_prompt = sign[:, None, None] * torch.ones(40, 2, 3)  # [P, L, d]
    g = by_mapping(tr, per_prompt, tr.eval)
    for t, v in zip(tr.eval, g):
        assert torch.allclose(v, torch.full_like(v, 1.0 if t.label_words == ("A", "B") else -1.0))


def test_report_verdicts_and_tables_are_written_from_the_run(small_run, tiny_llama):
    from taskvec.claims import ClaimRules, verdicts

    out, t = small_run
    html = (out / "report.html").read_text()
    assert "Claims of the paper, as verdicts" in html and html.count("<img") >= 8
    assert html.index("Claims of the paper") < html.index("<img")  # the claims table comes first
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.claim) >= {"C1", "C2", "C3", "C4", "C5", "C6"}
    assert set(summary.verdict) <= {"supported", "not supported", "inconclusive"}
    again = verdicts(t, tiny_llama.n_layers, ClaimRules())  # recomputed from the saved rows: the same cells
    assert list(again.verdict) == list(summary.verdict)
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert {"accuracy", "low", "high", "layer", "n"} <= set(evaluation.columns)
    assert (evaluation.low <= evaluation.accuracy + 1e-9).all() and (evaluation.accuracy <= evaluation.high + 1e-9).all()
    for name in ("antonyms_global", "antonyms_local_from", "simple_string_kofn", "simple_string_convergence"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.svg").exists()


def test_run_record_saves_the_config_that_ran_and_the_model_hash(tiny_llama, tmp_path):
    """Defect 8: config.json stored the requested config (a --quick run reported trial counts it never ran) and no
    model hash."""
    out = tmp_path / "q"
    run_study(StudyConfig(**{**SMALL, "tasks": ["antonyms"], "spans": ["single"], "n_trials": 40, "quick": True}),
              out, lm=tiny_llama, report=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["n_trials"] == 12 and saved["config"]["quick"] is True  # what ran
    assert saved["config"]["demo_counts"] == [0, 2]
    assert saved["requested"]["n_trials"] == 40
    source = saved["model_source"]  # the weights that ran, by their sha256
    assert source["sha256"] == tiny_llama.source["sha256"] and source["hf"] == tiny_llama.path
    assert saved["n_layers"] == tiny_llama.n_layers
    assert load_vectors(out / "vectors" / "antonyms.safetensors")[0]["local"].shape[0] == 12


def test_finished_run_resumes_without_recomputing(small_run, tiny_llama):
    out, _ = small_run
    before = (out / "results.jsonl").read_text()
    run_study(StudyConfig(**SMALL), out, resume=True, lm=tiny_llama, report=False)
    assert (out / "results.jsonl").read_text() == before


def test_resume_with_a_different_config_is_refused(small_run, tiny_llama):
    out, _ = small_run
    with pytest.raises(ConfigError, match="different config"):
        run_study(StudyConfig(**{**SMALL, "seed": 1}), out, resume=True, lm=tiny_llama)
    with pytest.raises(ConfigError, match="--resume"):
        run_study(StudyConfig(**SMALL), out, lm=tiny_llama)


def test_task_files_go_by_their_stem_and_keep_their_path_in_the_run_record(tiny_llama, tmp_path):
    """Defect 8 (a task given as file:PATH crashed the report) and issue 24: a task file is named by its stem in the
    results, the report, the CSVs, the file names and the markdown summary, never by its path (two files with one
    stem: capitals and capitals-2); the paths and the files' counts stay in config.json; task_params and
    control_task may name a task file by its stem. The second file is in Hendel et al.'s format (a JSON object)
    with an exact duplicate and a conflicting repeat, kept first as its task_params ask."""
    from taskvec.report.local_global import markdown_summary

    pairs = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
             ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"),
             ("Greece", "Athens"), ("Russia", "Moscow"), ("China", "Beijing"), ("Norway", "Oslo")]
    a, b = tmp_path / "my data" / "capitals.csv", tmp_path / "peer files" / "capitals.json"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_text("input,output\n" + "".join(f"{x},{y}\n" for x, y in pairs))
    b.write_text("{" + ", ".join(f'"{x}": "{y}"' for x, y in pairs) + ', "France": "Paris", "Spain": "Barcelona"}')
    out = tmp_path / "run"
    cfg = {**SMALL, "tasks": [f"file:{a}", f"file:{b}"], "spans": ["single"], "n_select": 4, "n_eval": 6,
           "control_task": "capitals", "task_params": {"capitals-2": {"on_conflict": "keep_first"}}}
    run_study(StudyConfig(**cfg), out, lm=tiny_llama)
    assert (out / "report.html").exists()
    for table in ("summary.csv", "evaluation.csv"):
        assert set(pd.read_csv(out / table).task) == {"capitals", "capitals-2"}
        assert str(tmp_path) not in (out / table).read_text()
    assert {r["unit"].split("/")[0] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())} \
        == {"capitals", "capitals-2"}
    assert (out / "figures" / "capitals_global.png").exists() and (out / "figures" / "capitals-2_global.png").exists()
    assert (out / "vectors" / "capitals-2.safetensors").exists()
    md = markdown_summary(out)
    assert "| claim | capitals | capitals-2 |" in md and str(tmp_path) not in md
    for export in ("summary.csv", "evaluation.csv"):  # exports for other tools: the summary reads the store
        (out / export).write_text("task,what\nnonsense,0\n")
    assert markdown_summary(out) == md
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["tasks"] == [f"file:{a}", f"file:{b}"]
    assert saved["task_files"] == {
        "capitals": {"path": str(a), "rows": 14, "duplicates_merged": 0, "conflicts": 0, "conflict_rows_dropped": 0,
                     "on_conflict": "error"},
        "capitals-2": {"path": str(b), "rows": 16, "duplicates_merged": 1, "conflicts": 1,
                       "conflict_rows_dropped": 1, "on_conflict": "keep_first"}}
    assert str(b) in (out / "report.html").read_text()  # the report's note says which file each name is


def test_run_store_appends_and_skips_done_units(tmp_path):
    store = RunStore(tmp_path / "r", {"a": 1})
    calls = []
    assert store.run_unit("u", lambda: calls.append(1) or [{"x": 1}, {"x": 2}])
    assert not store.run_unit("u", lambda: calls.append(1) or [{"x": 3}])
    assert calls == [1] and list(store.table().x) == [1, 2]
    again = RunStore(tmp_path / "r", {"a": 1}, resume=True)
    assert again.done("u") and not again.done("v")


def test_bad_study_configs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_trials"):
        StudyConfig.from_dict({"n_trials": 1})
    with pytest.raises(ConfigError, match="nope"):
        StudyConfig.from_dict({"nope": 3})
    with pytest.raises(ConfigError, match="n_local_eval"):
        StudyConfig.from_dict({"n_eval": 10, "n_local_eval": 20})
    with pytest.raises(ConfigError, match="single"):
        StudyConfig.from_dict({"spans": ["from"]})
    with pytest.raises(ConfigError, match="unknown task 'capitals'"):
        run_study(StudyConfig(tasks=["capitals"]), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _cli(*args):
    """The ``taskvec`` command line, in this process (:func:`conftest.cli`): ``exit_code``, ``stderr``."""
    return cli(*args)


def test_cli_errors_are_one_line_without_traceback(small_run, tmp_path):
    out, _ = small_run
    for args, needle in [(["study", "local-global", "--tasks", "capitals", "--out", "x"], "unknown task"),
                         (["study", "local-global", "--model", "smollm2-135m", "--tasks", "antonyms", "--out",
                           str(out), "--resume"], "different config"),
                         (["study", "local-global", "--model", "smollm2-13m", "--tasks", "antonyms", "--out",
                           str(tmp_path / "typo")], "unknown model"),
                         (["models", "prepare", "gpt5"], "unknown model"),
                         (["tasks", "show", "nope"], "unknown task"),
                         (["report", "/nonexistent"], "not a study run")]:
        res = _cli(*args)
        assert res.exit_code == 2, (args, res.stderr)
        assert "Traceback" not in res.stderr and needle in res.stderr, res.stderr
        assert res.stderr.strip().startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()  # a mistyped --model leaves no run directory behind


def test_cli_flags_override_a_config_file_and_defaults_never_do(tmp_path):
    """A flag left at its default must not override the file (the old CLI's defaults table could)."""
    (tmp_path / "cfg.yaml").write_text("model: smollm2-135m\ntasks: [nope_task]\nseed: 3\n")
    res = _cli("study", "local-global", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2 and "unknown task 'nope_task'" in res.stderr  # the file's task, not the default
    res = _cli("study", "local-global", "--config", str(tmp_path / "cfg.yaml"), "--tasks", "also_nope",
               "--out", str(tmp_path / "r"))
    assert "unknown task 'also_nope'" in res.stderr  # the flag wins over the file


def test_resume_after_killing_a_real_run(tmp_path, tiny_llama):
    """Start the study CLI in a subprocess, kill -9 it once units are finished, resume: finished units are kept
    byte for byte and not recomputed; the resumed run completes every unit exactly once."""
    cfg = dict(SMALL, tasks=["antonyms"], spans=["single"], model=str(tiny_llama.path))  # the same checkpoint
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "taskvec.cli", "study", "local-global", "--config",
                             str(tmp_path / "cfg.json"), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            units = [json.loads(x)["unit"] for x in results.read_text().splitlines()] if results.exists() else []
            if "antonyms/global" in units:
                break
            assert proc.poll() is None, ("the study exited before it could be killed: "
                                         + (tmp_path / "stderr.txt").read_text()[-1500:])
            time.sleep(0.02)
        else:
            pytest.fail("no finished unit within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = results.read_text()
    kept_units = [json.loads(x)["unit"] for x in kept.splitlines()]
    assert "antonyms/local" not in kept_units  # killed mid-run, not after it
    run_study(StudyConfig(**cfg), out, resume=True, lm=tiny_llama)
    after = results.read_text()
    assert after.startswith(kept)
    units = [json.loads(x)["unit"] for x in after.splitlines()]
    assert len(units) == len(set(units))
    for u in ("icl", "vectors", "patch_states", "global", "local", "kofn", "convergence", "chance"):
        assert f"antonyms/{u}" in units
    assert (out / "report.html").exists()


def test_resume_may_add_the_analyses_but_nothing_else(tmp_path):
    """with_analyses only adds units, so a finished run may be resumed with it switched on (the saved config
    follows); any other change is refused."""
    store = RunStore(tmp_path / "r", {"a": 1, "with_analyses": False})
    store.append("u", [{"x": 1}])
    again = RunStore(tmp_path / "r", {"a": 1, "with_analyses": True}, resume=True, additive=("with_analyses",))
    assert again.done("u")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["with_analyses"] is True
    with pytest.raises(ConfigError, match="differs in: with_analyses"):
        RunStore(tmp_path / "r", {"a": 1, "with_analyses": False}, resume=True)
    with pytest.raises(ConfigError, match="differs in: a"):
        RunStore(tmp_path / "r", {"a": 2, "with_analyses": True}, resume=True, additive=("with_analyses",))


def test_role_states_with_the_mean_are_the_two_passes_in_one(tiny_llama, capital_trials):
    """patch_states reads the evaluation prompts' role states and the centring mean in one pass: both equal what
    the two separate passes give."""
    from taskvec.prompts import Template, build_prompts
    from taskvec.vectors import mean_state, read_role_states

    prompts = build_prompts(tiny_llama, capital_trials[:5], Template())
    one = read_role_states(tiny_llama, prompts, batch_size=4, with_mean=True)
    apart = read_role_states(tiny_llama, prompts, batch_size=4)
    for k in ("query", "answers", "separators"):
        assert torch.equal(one[k], apart[k]), k
    assert torch.allclose(one["mean"], mean_state(tiny_llama, prompts, batch_size=4), atol=1e-6)


def test_kofn_copies_the_variants_the_local_sweep_ran(tiny_llama, monkeypatch):
    """k = 0 with wrong answers (the dummy), k = 0 mean-ablated (slot_mean) and k = n (local) are variants the
    local sweep already scored on the same prompts at the same layer: copied, not run again."""
    from taskvec.study import unit_kofn

    tr = TaskRun("antonyms", StudyConfig(**SMALL), tiny_llama)
    _, dummy = tr.dummy_eval
    P, n, L, d = len(dummy), len(dummy[0].answer_positions), tiny_llama.n_layers, tiny_llama.d_model
    gen = torch.Generator().manual_seed(0)
    states = {"local_eval": torch.randn(P, L, n, d, generator=gen), "dummy_eval": torch.randn(P, L, n, d, generator=gen)}
    ran = []

    def fake_run(prompts, variants, meta, label):
        ran.extend(variants)
        return [dict(m, correct=0.0, target_logprob=-9.0, score=0.0) for m in meta]

    monkeypatch.setattr(tr, "run", fake_run)
    local = pd.DataFrame([dict(vector=v, layer=(-1 if v == "dummy" else 3), prompt=p, correct=1.0,
                               target_logprob=-float(i + 1), score=1.0)
                          for i, v in enumerate(["dummy", "slot_mean", "local"]) for p in range(P)])
    rows = pd.DataFrame(unit_kofn(tr, states, 3, local))
    n_copying = len(ran)
    fresh = pd.DataFrame(unit_kofn(tr, states, 3, None))
    assert len(rows) == len(fresh) and len(ran) - 2 * n_copying == 3 * P  # same rows, 3 per prompt not rerun
    pick = lambda k, fill: rows[(rows.k == k) & (rows.fill == fill)].target_logprob  # noqa: E731
    assert (pick(0, "wrong") == -1.0).all() and (pick(0, "mean") == -2.0).all() and (pick(n, "wrong") == -3.0).all()
    assert (pick(n, "mean") == -3.0).all() and (pick(1, "wrong") == -9.0).all()
