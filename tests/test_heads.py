"""Head attribution (SPEC B.7, A.9) on the tiny Llama with SmolLM2's tokenizer: shapes, identity patch is a no-op,
ablation changes logits; writers and readers of local vectors against a naive per-head loop on a tiny random model
(and, slow, their run on the real smollm2-135m)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskvec.analysis.heads import (_run_head_variants, attention_to_answers, head_effects, head_geometry,
                                    plot_heads, record_head_outputs, summarize, top_heads)
from taskvec.analysis.local_heads import (head_overlap, local_summary, reader_effects, record_head_outputs_at,
                                          writer_effects)
from taskvec.errors import AlignmentError, ConfigError, EmptyInputError, LayerError, RangeError
from taskvec.hooks import Hooks
from taskvec.intervene import Edits, patched_logits, read_states
from taskvec.prompts import Prompt, build_prompts, dummy_trials
from taskvec.tasks import get_task

from conftest import TINY_LLAMA  # noqa: E402

H, HD = TINY_LLAMA["num_attention_heads"], TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"]


@pytest.fixture(scope="module")
def pair(tiny_llama):
    task = get_task("simple_string")
    trials = task.sample_trials(2, 6, seed=3)
    icl = build_prompts(tiny_llama, trials)
    pools = [task.answer_pool(t) for t in trials]
    dummy = build_prompts(tiny_llama, dummy_trials(trials, pools, 0, tiny_llama.tokenizer))
    return icl, dummy


def test_geometry(tiny_llama):
    projs, H, hd = head_geometry(tiny_llama)
    assert len(projs) == tiny_llama.n_layers and (H, hd) == (TINY_LLAMA["num_attention_heads"], HD)


def test_writing_own_outputs_is_a_noop(tiny_llama, pair):
    icl, _ = pair
    src = record_head_outputs(tiny_llama, icl)
    assert src.shape == (2, tiny_llama.n_layers, H, HD)
    table = _run_head_variants(tiny_llama, icl, src, [0, 3], max_rows=64)
    ref = torch.log_softmax(patched_logits(tiny_llama, [p.ids for p in icl]), -1)
    ref = ref.gather(1, torch.tensor([[p.target_id] for p in icl]))[:, 0]
    for p, g in table.groupby("prompt"):
        assert (g.target_logprob - float(ref[p])).abs().max() < 1e-3


def test_mean_ablation_changes_logits(tiny_llama, pair):
    icl, _ = pair
    last = tiny_llama.n_layers - 1
    table = head_effects(tiny_llama, icl, mode="mean", layers=[last - 3, last], max_rows=40)
    assert len(table) == 2 * 2 * H
    assert {"prompt", "layer", "head", "mode", "effect", "label_correct"} <= set(table.columns)
    assert table.effect.abs().max() > 1e-3  # some head matters
    assert torch.isfinite(torch.tensor(table.effect.to_numpy())).all()


def test_patch_and_summary(tiny_llama, pair, tmp_path):
    icl, dummy = pair
    patch = head_effects(tiny_llama, icl, dummy, mode="patch", layers=[3])
    attn = attention_to_answers(tiny_llama, icl)
    assert tiny_llama.model.config._attn_implementation != "eager"
    assert len(attn) == tiny_llama.n_layers * H and attn.attn_to_answers.between(0, 1).all()
    s = summarize(patch, attn)
    top = top_heads(s.dropna(subset=["patch_effect"]), 3)
    assert len(top) == 3 and top.patch_effect.is_monotonic_decreasing
    files = plot_heads(s.dropna(subset=["patch_effect"]), tmp_path / "h")
    assert all(f.exists() for f in files)


def test_bad_inputs(tiny_llama, pair):
    icl, dummy = pair
    with pytest.raises(EmptyInputError):
        head_effects(tiny_llama, [])
    with pytest.raises(ConfigError):
        head_effects(tiny_llama, icl, mode="zero")
    with pytest.raises(ConfigError, match="dummy"):
        head_effects(tiny_llama, icl, mode="patch", layers=[0])
    with pytest.raises(AlignmentError):
        head_effects(tiny_llama, icl, dummy[:1], mode="patch", layers=[0])
    with pytest.raises(LayerError):
        head_effects(tiny_llama, icl, mode="mean", layers=[99])


# ------------------------------------------------------------------ writers and readers, on a tiny random model
@pytest.fixture(scope="module")
def tiny_pairs():
    """A tiny random Llama and three ICL/dummy prompt pairs (two of one length, one shorter: two exact-length
    groups), three demonstrations each; the dummy differs only at the answer tokens."""
    from taskvec.models.tiny import build_tiny

    lm = build_tiny("llama")
    gen = torch.Generator().manual_seed(0)
    icl, dummy = [], []
    for T, answers in ((14, [3, 7, 11]), (14, [2, 6, 10]), (11, [2, 5, 8])):
        ids = torch.randint(3, 250, (T,), generator=gen).tolist()
        other = list(ids)
        for a in answers:
            other[a] = int(torch.randint(3, 250, (1,), generator=gen))
        target = int(torch.randint(3, 250, (1,), generator=gen))
        icl.append(Prompt("", ids, answers, T - 1, target, None))
        dummy.append(Prompt("", other, answers, T - 1, target, None))
    return lm, icl, dummy


def _lp(lm, prompt, edits=None) -> float:
    return float(torch.log_softmax(patched_logits(lm, [prompt.ids], edits), -1)[0, prompt.target_id])


def _replace(layer, head, cols, value):
    def fn(z):
        z = z.clone()
        z[0, cols, head] = value
        return z
    return fn


def _naive_writers(lm, icl, dummy, local_layer, means, layers, heads):
    """One full forward per (prompt, head): the head mean-ablated at the answer positions, the local vectors read
    at ``local_layer``, then one plain patched forward of the dummy."""
    out = {}
    for p, (a, d) in enumerate(zip(icl, dummy)):
        n, ans = len(a.answer_positions), a.answer_positions
        at = lambda states: Edits.at([0] * n, [local_layer] * n, ans, states)  # noqa: E731
        base = _lp(lm, d, at(read_states(lm, [a.ids], [ans], [local_layer])[0, 0]))
        for l in layers:
            for h in heads:
                with Hooks(lm).add(f"heads.{l}", _replace(l, h, ans, means[:, l, h])):
                    states = read_states(lm, [a.ids], [ans], [local_layer])[0, 0]
                out[p, l, h] = base - _lp(lm, d, at(states))
    return out


def _naive_readers(lm, icl, dummy, local_layer, mean, layers, heads):
    out = {}
    for p, (a, d) in enumerate(zip(icl, dummy)):
        n, ans = len(a.answer_positions), a.answer_positions
        local = read_states(lm, [a.ids], [ans], [local_layer])[0, 0]
        at = lambda: Edits.at([0] * n, [local_layer] * n, ans, local)  # noqa: E731
        base, plain = _lp(lm, d, at()), _lp(lm, d)
        for l in layers:
            for h in heads:
                with Hooks(lm).add(f"heads.{l}", _replace(l, h, [-1], mean[l, h])):
                    out[p, l, h] = (base - _lp(lm, d, at()), plain - _lp(lm, d))
    return out


@pytest.mark.parametrize("skip_layers", [True, False])
def test_batched_writers_equal_a_naive_per_head_loop(tiny_pairs, skip_layers):
    lm, icl, dummy = tiny_pairs
    source = [dummy[1], dummy[0], icl[2]]  # means from other prompts: larger effects than the own-prompt mean
    table = writer_effects(lm, icl, dummy, 2, mean_from=source, max_batch_tokens=40, skip_layers=skip_layers)
    assert len(table) == 3 * 2 * 4 and table.attrs["skipped_layers"] == [2] and table.attrs["local_layer"] == 2
    means = record_head_outputs_at(lm, source).mean(0)
    ref = _naive_writers(lm, icl, dummy, 2, means, [0, 1], range(4))
    got = {(r.prompt, r.layer, r["head"]): r.effect for _, r in table.iterrows()}
    assert got.keys() == ref.keys()
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-4
    assert max(abs(v) for v in ref.values()) > 1e-3  # the comparison is not between zeros
    base = pd.DataFrame(table.attrs["baseline"])
    assert list(base.prompt) == [0, 1, 2] and {"local_target_logprob", "dummy_target_logprob"} <= set(base)


def test_batched_readers_equal_a_naive_per_head_loop(tiny_pairs):
    lm, icl, dummy = tiny_pairs
    table = reader_effects(lm, icl, dummy, 1, heads=[0, 3], max_rows=5)
    assert sorted(table.layer.unique()) == [1, 2] and sorted(table["head"].unique()) == [0, 3]
    assert table.attrs["skipped_layers"] == [0]
    mean = record_head_outputs(lm, icl).mean(0)
    ref = _naive_readers(lm, icl, dummy, 1, mean, [1, 2], [0, 3])
    for _, r in table.iterrows():
        effect, unpatched = ref[r.prompt, r.layer, r["head"]]
        assert abs(r.effect - effect) < 1e-4 and abs(r.unpatched_effect - unpatched) < 1e-4
    assert table.effect.abs().max() > 1e-3
    s = local_summary(table)
    assert len(s) == 2 * 2 and {"effect_low", "effect_high", "transfer_effect", "n_prompts"} <= set(s)
    assert (s.effect_low <= s.effect).all() and (s.effect <= s.effect_high).all()


def test_overlap_of_top_sets():
    a = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "effect": [4.0, 3.0, 2.0, 1.0]})
    b = pd.DataFrame({"layer": [1, 1, 0], "head": [1, 0, 1], "effect": [5.0, 4.0, 0.0]})
    c = pd.DataFrame({"layer": [5], "head": [0], "effect": [1.0]})
    o = head_overlap({"a": a, "b": b, "c": c}, n=2).set_index(["a", "b"])
    assert o.loc[("a", "b"), "shared"] == 0 and o.loc[("a", "b"), "jaccard"] == 0.0
    assert o.loc[("a", "b"), "tested_both"] == 3 and o.loc[("a", "c"), "tested_both"] == 0
    o = head_overlap({"a": a, "b": b}, n=3).iloc[0]
    assert o.shared == 2 and o.shared_heads == "0.1 1.0" and o.jaccard == pytest.approx(2 / 4)


def test_writers_and_readers_bad_input_is_one_line(tiny_pairs):
    lm, icl, dummy = tiny_pairs
    no_demos = [Prompt("", p.ids, [], len(p) - 1, p.target_id, None) for p in icl]
    cases = [
        (LayerError, "out of range", lambda: writer_effects(lm, icl, dummy, 7)),
        (LayerError, "out of range", lambda: reader_effects(lm, icl, dummy, 1, layers=[9])),
        (LayerError, "local layer 0", lambda: writer_effects(lm, icl, dummy, 0)),
        (LayerError, "no layer below the local layer 1", lambda: writer_effects(lm, icl, dummy, 1, layers=[2])),
        (LayerError, "at or above the local layer 2", lambda: reader_effects(lm, icl, dummy, 2, layers=[0, 1])),
        (RangeError, "head 4 is out of range", lambda: writer_effects(lm, icl, dummy, 2, heads=[4])),
        (RangeError, "head -1 is out of range", lambda: reader_effects(lm, icl, dummy, 1, heads=[-1])),
        (EmptyInputError, "no demonstrations", lambda: writer_effects(lm, no_demos, no_demos, 1)),
        (EmptyInputError, "no demonstrations", lambda: reader_effects(lm, no_demos, no_demos, 1)),
        (EmptyInputError, "no prompts", lambda: reader_effects(lm, [], [], 1)),
        (AlignmentError, "aligned", lambda: writer_effects(lm, icl, dummy[:2], 1)),
        (AlignmentError, "does not match", lambda: reader_effects(lm, icl, dummy[::-1], 1)),
        (RangeError, "head 9", lambda: head_effects(lm, icl, heads=[9])),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text) as err:
            call()
        assert "\n" not in str(err.value)


def test_heads_config_bad_input_is_one_line():
    from taskvec.analysis.runners import HeadsConfig

    for fields, text in (({"n_demos": 0}, "n_demos"), ({"heads": [-1]}, "head -1"), ({"heads": []}, "--heads is empty"),
                         ({"local_layer": -1}, "local_layer"), ({"modes": ["writers", "writers"]}, "repeats"),
                         ({"null_task": "no_such_task"}, "no_such_task")):
        with pytest.raises(ConfigError, match=text) as err:
            HeadsConfig(model="smollm2-135m", **fields)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_writers_and_readers_run_on_smollm2(smol, tmp_path):
    """The CLI's run on the real model, small: local layer chosen, both roles with their nulls, overlap written;
    out-of-range layer and head fail before any unit runs."""
    from taskvec.analysis.runners import HeadsConfig
    from taskvec.kinds import run_heads
    from taskvec.errors import RangeError as _RangeError

    cfg = HeadsConfig(model="smollm2-135m", task="antonyms", n_trials=3, n_demos=3, n_select=3,
                      modes=["mean", "writers", "readers"], layers=[0, 1, 2, 3, 26, 27, 28, 29], local_layer=3)
    out = run_heads(cfg, tmp_path / "run", lm=smol, progress=False)
    top = pd.read_csv(out / "heads_local_top.csv")
    assert set(top.role) == {"writers", "readers"} and top.null_effect.notna().all()
    assert (top[top.role == "writers"].layer < 3).all() and (top[top.role == "readers"].layer >= 3).all()
    overlap = pd.read_csv(out / "heads_overlap.csv")
    assert {("writers", "readers"), ("writers", "query"), ("readers", "query")} == set(zip(overlap.a, overlap.b))
    base = pd.read_csv(out / "heads_local_baselines.csv")
    assert (base.local_layer == 3).all() and (base.local_logprob > base.dummy_logprob).all()
    assert (out / "figures" / "heads_writers.png").exists() and (out / "report.html").exists()
    with pytest.raises(LayerError):
        run_heads(cfg.model_copy(update={"local_layer": 30}), tmp_path / "bad", lm=smol, progress=False)
    with pytest.raises(_RangeError):
        run_heads(cfg.model_copy(update={"heads": [9]}), tmp_path / "bad2", lm=smol, progress=False)


def test_heads_run_ranks_function_vector_heads_beside_the_others(tiny_llama, tmp_path):
    """--modes mean,function_vector: the AIE table of the run's own prompts (equal to the library's scan on them)
    and the overlap of its top heads with the query heads."""
    from taskvec.analysis.function_vectors import average_indirect_effects, indirect_effects, shuffled_label_prompts
    from taskvec.analysis.runners import HeadsConfig, _trials
    from taskvec.kinds import run_heads
    from taskvec.prompts import build_prompts

    cfg = HeadsConfig(model="smollm2-135m", task="antonyms", n_trials=2, n_demos=3, modes=["mean", "function_vector"],
                      layers=[3, 4], top=3)
    out = run_heads(cfg, tmp_path / "heads", lm=tiny_llama)
    aie = pd.read_csv(out / "heads_function_vector.csv")
    _, trials, template = _trials(tiny_llama, "antonyms", 2, 3, 0, "is")
    prompts = build_prompts(tiny_llama, trials, template)
    shuffled = shuffled_label_prompts(tiny_llama, trials, template)
    ref = average_indirect_effects(indirect_effects(tiny_llama, prompts, shuffled, layers=[3, 4]))
    merged = aie.merge(ref, on=["layer", "head"], suffixes=("", "_ref"))
    assert len(merged) == 2 * H and np.allclose(merged.aie, merged.aie_ref, atol=1e-7)
    overlap = pd.read_csv(out / "heads_overlap.csv")
    assert {tuple(sorted(p)) for p in zip(overlap.a, overlap.b)} == {("function_vector", "query")}
    assert "Function-vector heads" in (out / "report.html").read_text()
