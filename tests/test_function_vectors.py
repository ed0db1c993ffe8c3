"""Function vectors (docs/spec.md A.9): the batched indirect-effect scan against a naive one-forward-per-head loop
on a tiny random model of every family, head contributions against the projection itself, the top-k selection,
the layer sweep, greedy generation with the vector, and bad input (one line each)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from taskvec.analysis.function_vectors import (HEAD_FAMILIES, HeadsUnsupportedError, average_indirect_effects,
                                               function_vector, fv_layer_sweep, geometry, greedy_generate, head_contributions,
                                               indirect_effects, mean_head_outputs, natural_text_scores,
                                               shuffled_label_prompts, shuffled_trials, top_heads)
from taskvec.analysis.heads import head_geometry
from taskvec.errors import ConfigError, EmptyInputError, LayerError, RangeError, WidthError
from taskvec.models.tiny import FAMILIES, FamilyUnavailable, build_tiny
from taskvec.prompts import Prompt
from taskvec.tasks.base import Example, Trial

LENGTHS = (9, 12, 7)


def _tiny(family):
    try:
        return build_tiny(family)
    except FamilyUnavailable as err:
        pytest.skip(str(err))


def _prompts(seed: int, lengths=LENGTHS, targets=None) -> list[Prompt]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, T in enumerate(lengths):
        ids = torch.randint(3, 250, (T,), generator=gen).tolist()
        target = int(torch.randint(3, 250, (1,), generator=gen)) if targets is None else targets[i]
        out.append(Prompt("", ids, [], T - 1, target, None))
    return out


# ------------------------------------------------------------------ the naive reference (Todd et al.'s loop)
def _naive_means(lm, prompts):
    projs, H, hd = head_geometry(lm)
    seen = {}
    total = torch.zeros(len(projs), H, hd)
    for p in prompts:
        handles = [proj.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0][0, -1].detach()))
                   for l, proj in enumerate(projs)]
        try:
            lm.model(input_ids=torch.tensor([p.ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        total += torch.stack([seen[l].float().reshape(H, hd) for l in range(len(projs))])
    return total / len(prompts)


def _naive_prob(lm, prompt, layer=None, head=None, value=None, proj=None, H=None, hd=None) -> float:
    handle = None
    if layer is not None:
        def replace(module, args):
            x = args[0].clone()
            x[0, -1, head * hd:(head + 1) * hd] = value.to(x.dtype)
            return (x, *args[1:])
        handle = proj.register_forward_pre_hook(replace)
    try:
        logits = lm.model(input_ids=torch.tensor([prompt.ids]), use_cache=False).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return float(torch.softmax(logits.float(), -1)[prompt.target_id])


def _naive_cie(lm, shuffled, means, layers, heads):
    projs, H, hd = head_geometry(lm)
    out = {}
    for p, prompt in enumerate(shuffled):
        base = _naive_prob(lm, prompt)
        for l in layers:
            for h in heads:
                out[p, l, h] = (_naive_prob(lm, prompt, l, h, means[l, h], projs[l], H, hd), base)
    return out


def _supported(family: str) -> bool:
    return family in HEAD_FAMILIES


@pytest.mark.parametrize("family", list(FAMILIES))
def test_indirect_effects_equal_a_naive_per_head_loop(family):
    lm = _tiny(family)
    icl, shuffled = _prompts(0), _prompts(1, lengths=(10, 8, 13))
    if not _supported(family):
        with pytest.raises(HeadsUnsupportedError, match="per-head attention outputs") as err:
            indirect_effects(lm, icl, shuffled)
        assert "\n" not in str(err.value) and "llama" in str(err.value)
        return
    means = mean_head_outputs(lm, icl)
    torch.testing.assert_close(means, _naive_means(lm, icl), atol=1e-5, rtol=1e-4)
    # the means scaled up: a random tiny model's output is near uniform, so the mean's own effect is small
    scaled = means * 40
    _, H, _ = head_geometry(lm)
    table = indirect_effects(lm, None, shuffled, head_means=scaled, max_rows=7)
    assert len(table) == len(shuffled) * lm.n_layers * H
    assert list(table.columns) == ["prompt", "layer", "head", "p_patched", "p_shuffled", "cie"]
    ref = _naive_cie(lm, shuffled, scaled, range(lm.n_layers), range(H))
    got = {(r.prompt, r.layer, r["head"]): (r.p_patched, r.p_shuffled, r.cie) for _, r in table.iterrows()}
    assert got.keys() == ref.keys()
    for key, (patched, base) in ref.items():
        p, s, c = got[key]
        assert abs(p - patched) < 1e-5 and abs(s - base) < 1e-5 and abs(c - (patched - base)) < 1e-5, key
        assert abs(math.log(p) - math.log(patched)) < 2e-4, key  # relative: the probabilities are small
    assert max(abs(math.log(p) - math.log(b)) for p, b in ref.values()) > 0.01  # not a comparison of no-ops
    # the unscaled means over the ICL prompts, on a subset of layers and heads
    sub = indirect_effects(lm, icl, shuffled, layers=[lm.n_layers - 1], heads=[0, H - 1])
    ref = _naive_cie(lm, shuffled, means, [lm.n_layers - 1], [0, H - 1])
    assert len(sub) == len(ref)
    for _, r in sub.iterrows():
        patched, base = ref[r.prompt, r.layer, r["head"]]
        assert abs(r.cie - (patched - base)) < 1e-5


def test_head_families_list_matches_the_models():
    """HEAD_FAMILIES (named in the unsupported-model error) is exactly the tiny families with per-head outputs."""
    have = []
    for family in FAMILIES:
        try:
            lm = build_tiny(family)
        except FamilyUnavailable:
            continue
        try:
            geometry(lm)
            have.append(family)
        except HeadsUnsupportedError:
            pass
    assert have == [f for f in HEAD_FAMILIES if f in have] and set(have) <= set(HEAD_FAMILIES)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f in HEAD_FAMILIES])
def test_head_contributions_equal_the_projection_of_one_block(family):
    lm = _tiny(family)
    projs, H, hd = head_geometry(lm)
    means = torch.randn(len(projs), H, hd, generator=torch.Generator().manual_seed(3))
    got = head_contributions(lm, means, residual=False)
    assert got.shape == (len(projs), H, lm.d_model)
    for l, proj in enumerate(projs):
        for h in range(H):
            x = torch.zeros(1, H * hd)
            x[0, h * hd:(h + 1) * hd] = means[l, h]
            ref = (proj(x) - proj(torch.zeros_like(x)))[0]  # the bias removed
            torch.testing.assert_close(got[l, h], ref, atol=1e-5, rtol=1e-4)
    # the blocks add up to the projection of the whole concatenated input
    full = projs[0](means[0].reshape(1, -1)) - projs[0](torch.zeros(1, H * hd))
    torch.testing.assert_close(got[0].sum(0), full[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f in HEAD_FAMILIES])
def test_head_contributions_add_up_to_what_the_attention_adds_to_the_residual(family):
    """residual=True: the heads' terms sum to what the layer adds to the residual stream from its attention —
    the projection, through the post-attention norm where there is one (Gemma 2/3, OLMo 2, GLM-4), times Granite's
    residual multiplier — bias aside."""
    from taskvec.analysis.function_vectors import output_norm

    lm = _tiny(family)
    projs, H, hd = head_geometry(lm)
    means = torch.randn(len(projs), H, hd, generator=torch.Generator().manual_seed(5))
    got = head_contributions(lm, means)
    multiplier = float(getattr(lm.model.config, "residual_multiplier", None) or 1.0)
    normed = 0
    for l, proj in enumerate(projs):
        o = proj(means[l].reshape(1, -1))
        bias = proj(torch.zeros(1, H * hd))
        norm = output_norm(lm, l)
        if norm is None:
            ref = (o - bias)[0]
        else:
            normed += 1
            g_over_rms = norm(o)[0] / o[0]  # the norm is a gain over a scalar rms: elementwise ratio
            ref = g_over_rms * (o - bias)[0]
        torch.testing.assert_close(got[l].sum(0), ref * multiplier, atol=1e-4, rtol=1e-3)
    post_norm = {"gemma2", "gemma3_text", "gemma3", "olmo2", "glm4"}  # attention output normed before the add
    assert (normed == len(projs)) == (family in post_norm) and normed in (0, len(projs)), (family, normed)


def test_gpt2_conv1d_block_is_rows_not_columns():
    """GPT-2's Conv1D keeps the weight as [in, out]: a column-block reading would differ (the test can fail)."""
    lm = _tiny("gpt2")
    projs, H, hd = head_geometry(lm)
    assert type(projs[0]).__name__ == "Conv1D"
    means = torch.randn(len(projs), H, hd)
    got = head_contributions(lm, means)
    W = projs[0].weight.detach()
    torch.testing.assert_close(got[0, 1], means[0, 1] @ W[hd:2 * hd], atol=1e-5, rtol=1e-4)
    assert (got[0, 1] - W[:, hd:2 * hd] @ means[0, 1]).abs().max() > 1e-3


def test_function_vector_top_k_and_bounds():
    lm = _tiny("llama")
    projs, H, hd = head_geometry(lm)
    means = torch.randn(len(projs), H, hd, generator=torch.Generator().manual_seed(4))
    aie = torch.zeros(len(projs), H)
    aie[2, 1], aie[0, 3], aie[1, 0] = 0.5, 0.4, 0.3
    aie[1, 2] = 0.4  # a tie with (0, 3): the lower layer first
    fv, chosen = function_vector(lm, means, aie, k=3)
    assert chosen == [(2, 1), (0, 3), (1, 2)]
    c = head_contributions(lm, means)
    torch.testing.assert_close(fv, c[2, 1] + c[0, 3] + c[1, 2])
    table = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "aie": [0.1, 0.3, 0.2]})
    fv2, chosen2 = function_vector(lm, means, table, k=2)
    assert chosen2 == [(0, 1), (1, 0)]
    torch.testing.assert_close(fv2, c[0, 1] + c[1, 0])
    assert top_heads(table, 3) == [(0, 1), (1, 0), (0, 0)]
    for k, text in ((0, "k = 0 is out of range"), (len(projs) * H + 1, "12 heads"), (-2, "k = -2")):
        with pytest.raises(RangeError, match=text) as err:
            function_vector(lm, means, aie, k=k)
        assert "\n" not in str(err.value)
    with pytest.raises(RangeError, match="choose 1..3"):
        function_vector(lm, means, table, k=4)  # more than the heads ranked
    with pytest.raises(RangeError, match="not a head of this model"):
        function_vector(lm, means, pd.DataFrame({"layer": [7], "head": [0], "aie": [1.0]}), k=1)


def test_average_indirect_effects_over_prompts_and_tasks():
    t1 = pd.DataFrame({"task": "a", "prompt": [0, 1, 0, 1], "layer": [0, 0, 1, 1], "head": [0, 0, 0, 0],
                       "cie": [0.1, 0.3, -0.1, 0.1]})
    one = average_indirect_effects(t1).set_index(["layer", "head"])
    assert one.loc[(0, 0), "aie"] == pytest.approx(0.2) and one.loc[(0, 0), "n"] == 2
    assert one.loc[(0, 0), "aie_low"] < 0.2 < one.loc[(0, 0), "aie_high"]
    assert list(average_indirect_effects(t1).layer) == [0, 1]  # largest first
    t2 = t1.assign(task="b", cie=[0.5, 0.5, 0.0, 0.0])
    t3 = pd.concat([t1, t2, t1.assign(task="c", prompt=[0, 1, 2, 3], layer=[0, 0, 0, 0], cie=[0.0] * 4)])
    both = average_indirect_effects(t3).set_index(["layer", "head"])
    # per task first: (0.2 + 0.5 + 0.0) / 3 over tasks, not over the 8 prompts
    assert both.loc[(0, 0), "aie"] == pytest.approx(0.7 / 3) and both.loc[(0, 0), "n"] == 3
    assert both.loc[(1, 0), "n"] == 2
    with pytest.raises(EmptyInputError):
        average_indirect_effects(t1.iloc[:0])


def test_shuffled_trials_permute_answers_among_demos():
    demos = tuple(Example(f"x{i}", f"y{i}") for i in range(6))
    trials = [Trial(demos, Example("q", "a"))] * 3
    out = shuffled_trials(trials, seed=1)
    assert out == shuffled_trials(trials, seed=1) and out != shuffled_trials(trials, seed=2)
    for t in out:
        assert [d.input for d in t.demos] == [d.input for d in demos] and t.query == Example("q", "a")
        assert sorted(d.output for d in t.demos) == sorted(d.output for d in demos)
    assert any([d.output for d in t.demos] != [d.output for d in demos] for t in out)


def test_zero_vector_sweep_equals_the_clean_scores():
    from taskvec.intervene import patched_logits

    lm = _tiny("llama")
    prompts = _prompts(5)
    df = fv_layer_sweep(lm, prompts, torch.zeros(lm.d_model))
    assert len(df) == len(prompts) * lm.n_layers and "p_target" in df
    clean = torch.log_softmax(patched_logits(lm, [p.ids for p in prompts]).float(), -1)
    for _, r in df.iterrows():
        p = int(r.prompt)
        assert abs(r.target_logprob - float(clean[p, prompts[p].target_id])) < 1e-5
    fv = torch.randn(lm.d_model) * 5
    moved = fv_layer_sweep(lm, prompts, fv, layers=[1])
    assert list(moved.layer.unique()) == [1]
    assert (moved.target_logprob.to_numpy() - df[df.layer == 1].target_logprob.to_numpy()).__abs__().max() > 1e-3


def _naive_generate(lm, ids, n, layer, vec):
    """No cache: the whole sequence each step, ``vec`` added at the prompt's last position only."""
    seq, T = list(ids), len(ids)

    def add(module, args, kwargs):
        h = (args[0] if args else kwargs["hidden_states"]).clone()
        h[:, T - 1] += vec
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
    handle = lm.profile.layers[layer].register_forward_pre_hook(add, with_kwargs=True)
    try:
        for _ in range(n):
            seq.append(int(lm.model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    finally:
        handle.remove()
    return seq[T:]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_greedy_generation_with_a_vector(family):
    lm = _tiny(family)
    prompts = [p.ids for p in _prompts(6, lengths=(8, 11))]
    zero = greedy_generate(lm, prompts, 6, 1, torch.zeros(2, lm.d_model))
    plain = greedy_generate(lm, prompts, 6)
    assert torch.equal(zero, plain)
    ref = lm.model.generate(torch.tensor([prompts[1]]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert plain[1].tolist() == ref[0, len(prompts[1]):].tolist()
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)) * 20
    got = greedy_generate(lm, prompts, 6, 1, vec[None].expand(2, -1))
    for b in range(2):
        assert got[b].tolist() == _naive_generate(lm, prompts[b], 6, 1, vec)
    assert not torch.equal(got, plain)  # the vector changes the continuation (the checks can fail)


class _CharTokenizer:
    """Characters as tokens (ids 3 + ord % 250) for a tiny model; decodes back to letters."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=[3 + ord(c) % 250 for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3) for i in ids if i >= 3)


def test_natural_text_scores_on_a_tiny_model():
    from taskvec.models.registry import LM

    base = _tiny("llama")
    lm = LM(base.model, _CharTokenizer(), base.profile, "tiny-chars", {})
    items = [("cat", "a"), Example("dog", "zzzzzz"), Trial((), Example("owl", "x"))]
    zero = natural_text_scores(lm, items, 'The word "{x}" means', torch.zeros(lm.d_model), 1, n_tokens=4)
    assert len(zero) == 6 and set(zero.condition) == {"clean", "fv"}
    c, f = zero[zero.condition == "clean"], zero[zero.condition == "fv"]
    assert list(c.continuation) == list(f.continuation) and list(c.input) == ["cat", "dog", "owl"]
    ids = [lm.tokenizer('The word "cat" means').input_ids]
    assert c.continuation.iloc[0] == lm.tokenizer.decode(greedy_generate(lm, ids, 4)[0].tolist())
    assert f.correct.iloc[1] == 0.0  # "zzzzzz" cannot appear in 4 characters
    text = c.continuation.iloc[0]
    hit = natural_text_scores(lm, [("cat", " " + text[1:3].upper() + " ")], 'The word "{x}" means',
                              torch.zeros(lm.d_model), 0, n_tokens=4)
    assert hit.correct.tolist() == [1.0, 1.0]  # stripped, case-insensitive containment
    for template, err, text in (('The word "x" means', ConfigError, "placeholder"),):
        with pytest.raises(err, match=text) as e:
            natural_text_scores(lm, items, template, torch.zeros(lm.d_model), 1)
        assert "\n" not in str(e.value)


def test_bad_input_is_one_line():
    lm = _tiny("llama")
    icl = _prompts(0)
    means = mean_head_outputs(lm, icl)
    unsupported = _tiny("lfm2")
    cases = [
        (LayerError, "layer 5 is out of range", lambda: indirect_effects(lm, icl, icl, layers=[5])),
        (RangeError, "head 4 is out of range", lambda: indirect_effects(lm, icl, icl, heads=[4])),
        (RangeError, "head -1 is out of range", lambda: indirect_effects(lm, icl, icl, heads=[-1])),
        (EmptyInputError, "no shuffled", lambda: indirect_effects(lm, icl, [])),
        (EmptyInputError, "no ICL prompts", lambda: indirect_effects(lm, [], icl)),
        (WidthError, "head means", lambda: indirect_effects(lm, None, icl, head_means=means[:2])),
        (WidthError, "head means", lambda: head_contributions(lm, means[:, :2])),
        (HeadsUnsupportedError, "lfm2 does not expose", lambda: indirect_effects(unsupported, icl, icl)),
        (HeadsUnsupportedError, "need one of: llama", lambda: head_contributions(unsupported, means)),
        (WidthError, r"shape \[32\]", lambda: fv_layer_sweep(lm, icl, torch.zeros(5))),
        (LayerError, "layer 3 is out of range", lambda: fv_layer_sweep(lm, icl, torch.zeros(32), layers=[3])),
        (LayerError, "layer 9", lambda: natural_text_scores(lm, [("a", "b")], "{x} is", torch.zeros(32), 9)),
        (RangeError, "n_tokens = 0", lambda: greedy_generate(lm, [[5, 6]], 0)),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


@pytest.mark.slow
def test_function_vector_on_smollm2(smol):
    """The whole chain on the real model, small: shuffled prompts align with their ICL prompts' targets, the
    scan's numbers are probabilities, the top heads' vector moves a zero-shot prompt's answer up somewhere."""
    from taskvec.prompts import build_prompts, zero_shot
    from taskvec.tasks import get_task

    task = get_task("country_capital")
    trials = task.sample_trials(3, 5, seed=0)
    icl = build_prompts(smol, trials)
    shuffled = shuffled_label_prompts(smol, trials, seed=0)
    assert [p.target_id for p in shuffled] == [p.target_id for p in icl]
    means = mean_head_outputs(smol, icl)
    table = indirect_effects(smol, icl, shuffled, layers=[10, 11, 12], task=task.name)
    assert table.p_patched.between(0, 1).all() and len(table) == 3 * 3 * 9
    aie = average_indirect_effects(table)
    fv, heads = function_vector(smol, means, aie, k=5)
    assert fv.shape == (smol.d_model,) and len(heads) == 5
    sweep = fv_layer_sweep(smol, build_prompts(smol, zero_shot(trials)), fv, layers=[6, 9, 12])
    assert len(sweep) == 9 and sweep.p_target.between(0, 1).all()
