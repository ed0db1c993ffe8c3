"""Prompts carry the right positions on the real tokenizers, under each model's BOS policy."""
from __future__ import annotations

import pytest

from taskvec.errors import AlignmentError, EmptyInputError
from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials, zero_shot
from taskvec.tasks.base import Example, Trial


def _tokens(lm, prompt, positions):
    toks = lm.tokenizer.convert_ids_to_tokens(prompt.ids)
    return [toks[i] for i in positions]


@pytest.mark.parametrize("separator", ["is", "->"])
def test_positions_on_smollm2(smol, separator):
    trial = Trial((Example("France", "Paris"), Example("Mauritius", "Port Louis"), Example("cat", "CAT")),
                  Example("Spain", "Madrid"))
    p = build_prompts(smol, [trial], Template(separator=separator))[0]
    assert p.text == f"France {separator} Paris\nMauritius {separator} Port Louis\ncat {separator} CAT\nSpain {separator}"
    assert _tokens(smol, p, p.answer_positions) == ["ĠParis", "ĠPort", "ĠCAT"]
    assert p.query_position == len(p.ids) - 1
    assert _tokens(smol, p, [p.query_position]) == ["Ġ" + separator]
    assert p.ids[0] == smol.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # SmolLM2 needs it prepended
    assert smol.tokenizer.convert_ids_to_tokens([p.target_id]) == ["ĠMadrid"]


def test_answer_position_is_first_token_of_answer_alone(smol, capital_trials):
    for p in build_prompts(smol, capital_trials):
        for ex, pos in zip(p.trial.demos, p.answer_positions):
            alone = smol.tokenizer(" " + ex.output, add_special_tokens=False).input_ids
            assert p.ids[pos] == alone[0]


def test_zero_shot_and_label_ids(smol):
    trial = Trial((Example("abc", "foo"), Example("abcdefghij", "bar")), Example("xy", "foo"), ("foo", "bar"))
    p = build_prompts(smol, zero_shot([trial]))[0]
    assert p.text == "xy is" and p.answer_positions == []
    assert p.label_ids == [smol.tokenizer(" foo").input_ids[0], smol.tokenizer(" bar").input_ids[0]]


def test_dummy_prompts_keep_layout_and_change_answers(smol, capital_trials):
    pools = [[ex.output for ex in t.demos] + [t.query.output] for t in capital_trials]
    dummies = dummy_trials(capital_trials, pools, seed=0, tokenizer=smol.tokenizer)
    icl, dummy = build_prompts(smol, capital_trials), build_prompts(smol, dummies)
    check_aligned(icl, dummy)
    changed = sum(a.output != b.output for t, d in zip(capital_trials, dummies) for a, b in zip(t.demos, d.demos))
    assert changed == sum(len(t.demos) for t in capital_trials)  # every answer replaced
    assert [e.input for e in dummies[0].demos] == [e.input for e in capital_trials[0].demos]


def test_misaligned_prompts_fail_loudly(smol, capital_trials):
    t = capital_trials[0]
    longer = Trial((Example(t.demos[0].input, "Port Moresby and more"),) + t.demos[1:], t.query)
    with pytest.raises(AlignmentError, match="token layout"):
        check_aligned(build_prompts(smol, [t]), build_prompts(smol, [longer]))


def test_empty_trials_rejected(smol):
    with pytest.raises(EmptyInputError):
        build_prompts(smol, [])
