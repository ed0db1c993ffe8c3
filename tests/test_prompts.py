"""Prompts carry the right positions on the real tokenizer (SmolLM2's, on the tiny Llama), under its BOS policy."""
from __future__ import annotations

import pytest

from taskvec.errors import AlignmentError, EmptyInputError
from taskvec.prompts import Template, build_prompts, check_aligned, dummy_trials, zero_shot
from taskvec.tasks.base import Example, Trial


def _tokens(lm, prompt, positions):
    toks = lm.tokenizer.convert_ids_to_tokens(prompt.ids)
    return [toks[i] for i in positions]


@pytest.mark.parametrize("separator", ["is", "->"])
def test_positions_on_smollm2(tiny_llama, separator):
    trial = Trial((Example("France", "Paris"), Example("Mauritius", "Port Louis"), Example("cat", "CAT")),
                  Example("Spain", "Madrid"))
    p = build_prompts(tiny_llama, [trial], Template(separator=separator))[0]
    assert p.text == (f"France {separator} Paris\nMauritius {separator} Port Louis\ncat {separator} CAT\n"
                      f"Spain {separator}")
    assert _tokens(tiny_llama, p, p.answer_positions) == ["ĠParis", "ĠPort", "ĠCAT"]
    assert p.query_position == len(p.ids) - 1
    assert _tokens(tiny_llama, p, [p.query_position]) == ["Ġ" + separator]
    assert p.ids[0] == tiny_llama.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # SmolLM2 needs it prepended
    assert tiny_llama.tokenizer.convert_ids_to_tokens([p.target_id]) == ["ĠMadrid"]


def test_answer_position_is_first_token_of_answer_alone(tiny_llama, capital_trials):
    for p in build_prompts(tiny_llama, capital_trials):
        for ex, pos in zip(p.trial.demos, p.answer_positions):
            alone = tiny_llama.tokenizer(" " + ex.output, add_special_tokens=False).input_ids
            assert p.ids[pos] == alone[0]


def test_zero_shot_and_label_ids(tiny_llama):
    trial = Trial((Example("abc", "foo"), Example("abcdefghij", "bar")), Example("xy", "foo"), ("foo", "bar"))
    p = build_prompts(tiny_llama, zero_shot([trial]))[0]
    assert p.text == "xy is" and p.answer_positions == []
    assert p.label_ids == [tiny_llama.tokenizer(" foo").input_ids[0], tiny_llama.tokenizer(" bar").input_ids[0]]


def test_dummy_prompts_keep_layout_and_change_answers(tiny_llama, capital_trials):
    pools = [[ex.output for ex in t.demos] + [t.query.output] for t in capital_trials]
    dummies = dummy_trials(capital_trials, pools, seed=0, tokenizer=tiny_llama.tokenizer)
    icl, dummy = build_prompts(tiny_llama, capital_trials), build_prompts(tiny_llama, dummies)
    check_aligned(icl, dummy)
    changed = sum(a.output != b.output for t, d in zip(capital_trials, dummies) for a, b in zip(t.demos, d.demos))
    assert changed == sum(len(t.demos) for t in capital_trials)  # every answer replaced
    assert [e.input for e in dummies[0].demos] == [e.input for e in capital_trials[0].demos]


def test_categorization_dummy_labels_are_independent_uniform_draws():
    """Defect 1: dummy labels were always the *other* label (a consistent reversed-rule prompt). Each dummy label
    must be an independent uniform draw from the label set: equal to the true label about half of the time, and
    the dummy prompt must not encode the reversed rule."""
    from taskvec.tasks import get_task

    task = get_task("simple_string")
    trials = task.sample_trials(40, 16, seed=3)
    dummies = dummy_trials(trials, [task.answer_pool(t) for t in trials], seed=0)
    same = [d.output == e.output for t, dt in zip(trials, dummies) for e, d in zip(t.demos, dt.demos)]
    assert all(d.output in t.label_words for t, dt in zip(trials, dummies) for d in dt.demos)
    assert len(same) == 640 and 0.42 < sum(same) / len(same) < 0.58  # binomial(640, 0.5): > 4 sd away otherwise
    reversed_prompts = sum(all(not s for s in same[i * 16:(i + 1) * 16]) for i in range(40))
    assert reversed_prompts == 0  # no dummy prompt is the consistent reversed rule
    assert [e.input for e in dummies[5].demos] == [e.input for e in trials[5].demos]


def test_knowledge_dummy_answers_never_show_the_query_answer(tiny_llama):
    """Defect 2: the query's answer could appear among the dummy answers (the model could copy it); a
    demonstration must also never keep its own answer."""
    from taskvec.tasks import task_for

    task = task_for("country_capital", tiny_llama.tokenizer)
    trials = task.sample_trials(60, 10, seed=1)
    dummies = dummy_trials(trials, [task.answer_pool(t) for t in trials], seed=0, tokenizer=tiny_llama.tokenizer)
    n_tokens = lambda a: len(tiny_llama.tokenizer(" " + a, add_special_tokens=False).input_ids)  # noqa: E731
    pool = task.answer_pool(trials[0])
    kept = 0
    for t, d in zip(trials, dummies):
        answers = [e.output for e in d.demos]
        assert t.query.output not in answers
        for a, e in zip(answers, t.demos):
            if a == e.output:  # only when no other answer but the query's has this many tokens
                kept += 1
                assert not [b for b in pool if b not in (e.output, t.query.output) and n_tokens(b) == n_tokens(a)]
    assert kept <= 3


def test_misaligned_prompts_fail_loudly(tiny_llama, capital_trials):
    t = capital_trials[0]
    longer = Trial((Example(t.demos[0].input, "Port Moresby and more"),) + t.demos[1:], t.query)
    with pytest.raises(AlignmentError, match="token layout"):
        check_aligned(build_prompts(tiny_llama, [t]), build_prompts(tiny_llama, [longer]))


def test_empty_trials_rejected(tiny_llama):
    with pytest.raises(EmptyInputError):
        build_prompts(tiny_llama, [])
