"""ICL prompts as text *and* tokens, with the positions every experiment reads and writes.

A demonstration is ``"{x} {separator} {y}"``, demonstrations are joined by ``joiner``, the query is
``"{x_q} {separator}"``. For every prompt we keep:

* ``answer_positions[i]``: the token position of the **first token of ``" " + y_i``** as tokenized in context;
* ``query_position``: the last token (the final separator), where the next token is predicted;
* ``target_id``: the first token of ``" " + y_q`` tokenized alone.

Positions are the prompt's own (0 = its first token, BOS included); :mod:`taskvec.batching` keeps them valid
under left padding.

Example::

    from taskvec.prompts import Template, build_prompts
    prompts = build_prompts(lm, trials, Template(separator="->"))
    prompts[0].answer_positions, prompts[0].query_position
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from taskvec.errors import AlignmentError, EmptyInputError, TokenizationError
from taskvec.tasks.base import Example, Trial


@dataclass(frozen=True)
class Template:
    """How demonstrations and the query are written. ``"->"`` gives Hendel et al.'s ``x -> y`` format."""

    separator: str = "is"
    joiner: str = "\n"

    def demo(self, x: str, y: str) -> str:
        return f"{x} {self.separator} {y}"

    def query(self, x: str) -> str:
        return f"{x} {self.separator}"

    def render(self, trial: Trial, n_demos: int | None = None) -> str:
        """The prompt text of a trial (its first ``n_demos`` demonstrations, then the query)."""
        return _layout(trial, self, n_demos)[0]


@dataclass
class Prompt:
    """One tokenized prompt and its positions (see module docstring)."""

    text: str
    ids: list[int]
    answer_positions: list[int]
    query_position: int
    target_id: int
    trial: Trial
    label_ids: list[int] | None = None  # first tokens of " " + label word, class order (categorization)

    def __len__(self) -> int:
        return len(self.ids)


def first_token(tokenizer, text: str) -> int:
    """First token id of ``" " + text`` tokenized alone (no special tokens): the token scored for answer ``text``."""
    from taskvec.tasks.tokens import first_token_id

    return first_token_id(tokenizer, text)


def _layout(trial: Trial, template: Template, n_demos: int | None) -> tuple[str, list[int]]:
    demos = trial.demos if n_demos is None else trial.demos[:n_demos]
    parts, answer_chars, cursor = [], [], 0
    for i, ex in enumerate(demos):
        head = ex.input + " " + template.separator
        answer_chars.append(cursor + len(head))  # index of the space before y
        text = template.demo(ex.input, ex.output)
        parts.append(text)
        cursor += len(text) + len(template.joiner)
    parts.append(template.query(trial.query.input))
    return template.joiner.join(parts), answer_chars


def build_prompts(
    lm,
    trials: Sequence[Trial],
    template: Template = Template(),
    n_demos: int | None = None,
) -> list[Prompt]:
    """Tokenize trials into :class:`Prompt` objects following the model's BOS policy.

    Args:
        lm: an :class:`~taskvec.models.LM` (its tokenizer and ``profile.bos`` are used).
        trials: trials from a task (use ``n_demos=0`` or trials without demos for zero-shot prompts).
        template: separator and joiner.
        n_demos: keep only the first ``n_demos`` demonstrations of each trial (default: all).

    Returns:
        one :class:`Prompt` per trial, with answer and query positions.
    """
    if len(trials) == 0:
        raise EmptyInputError("no trials to build prompts from")
    tok, bos = lm.tokenizer, lm.profile.bos
    texts, answer_chars = zip(*(_layout(t, template, n_demos) for t in trials))
    full = [bos.prefix_text + t for t in texts]
    enc = tok(list(full), add_special_tokens=bos.add_special_tokens, return_offsets_mapping=True)
    shift = len(bos.prefix_text)
    cache: dict[str, int] = {}

    def first(text: str) -> int:
        if text not in cache:
            cache[text] = first_token(tok, text)
        return cache[text]

    prompts = []
    for b, trial in enumerate(trials):
        ids, offsets = enc.input_ids[b], enc.offset_mapping[b]
        positions = []
        for char in answer_chars[b]:
            char += shift
            pos = next((i for i, (s, e) in enumerate(offsets) if e > char and e > s), None)
            if pos is None:
                raise TokenizationError(f"cannot locate the answer at character {char} of {full[b]!r}")
            positions.append(pos)
        label_ids = [first(w) for w in trial.label_words] if trial.label_words else None
        prompts.append(Prompt(texts[b], list(ids), positions, len(ids) - 1, first(trial.query.output), trial,
                              label_ids))
    return prompts


def zero_shot(trials: Sequence[Trial]) -> list[Trial]:
    """The same trials with no demonstrations (prompt = ``"{x_q} is"``)."""
    return [replace(t, demos=()) for t in trials]


def dummy_trials(trials: Sequence[Trial], pools: Sequence[Sequence[str]], seed: int, tokenizer=None) -> list[Trial]:
    """The same demonstration inputs with **random answers** (docs/spec.md A.4), one independent draw per demonstration.

    * Categorization trials (``trial.label_words`` set): each dummy label is drawn uniformly from the trial's
      label words, so it equals the true label half of the time. (Never "the other label": that would make the
      dummy prompt a consistent reversed-rule prompt.)
    * Knowledge trials: each dummy answer is drawn from ``pool`` without the query's answer (the model could copy
      it) and without that demonstration's own answer. When a tokenizer is given, only answers with as many
      tokens as the real one are drawn, so the dummy prompt keeps the ICL prompt's token layout; where no other
      answer has that many tokens, the demonstration keeps its own answer (never the query's) — the layout must
      align, and this is rare (a handful of long answers per task).

    Args:
        trials: ICL trials.
        pools: per trial, the answers a dummy may use (``task.answer_pool(trial)``).
        seed: seed of the draws.
        tokenizer: match answers' token counts (knowledge trials).

    Raises :class:`EmptyInputError` if a pool leaves nothing to draw.
    """
    rng = random.Random(seed)
    n_tokens = (lambda s: len(tokenizer(" " + s, add_special_tokens=False).input_ids)) if tokenizer else None
    length_cache: dict[str, int] = {}

    def length(answer: str) -> int:
        if answer not in length_cache:
            length_cache[answer] = n_tokens(answer)
        return length_cache[answer]

    out = []
    for trial, pool in zip(trials, pools):
        pool = list(dict.fromkeys(pool))
        if not pool:
            raise EmptyInputError("empty answer pool for a dummy prompt")
        if trial.label_words:
            labels = list(trial.label_words)
            demos = tuple(Example(ex.input, rng.choice(labels), None) for ex in trial.demos)
            out.append(replace(trial, demos=demos))
            continue
        demos = []
        for ex in trial.demos:
            allowed = [a for a in pool if a != ex.output and a != trial.query.output]
            if not allowed:
                raise EmptyInputError(
                    f"no dummy answer for {ex.input!r}: the pool holds only the query's and the demonstration's "
                    "own answers; give the task more pairs")
            if n_tokens:
                same = [a for a in allowed if length(a) == length(ex.output)]
                allowed = same or [ex.output]  # nothing else of this token length: keep it, the layout must align
            demos.append(Example(ex.input, rng.choice(allowed), None))
        out.append(replace(trial, demos=tuple(demos)))
    return out


def check_aligned(source: Sequence[Prompt], target: Sequence[Prompt]) -> None:
    """Raise :class:`AlignmentError` unless each pair of prompts has the same length and answer positions."""
    if len(source) != len(target):
        raise AlignmentError(f"{len(source)} source prompts but {len(target)} target prompts")
    for i, (s, t) in enumerate(zip(source, target)):
        if len(s) != len(t) or s.answer_positions != t.answer_positions:
            raise AlignmentError(
                f"prompt {i}: the dummy prompt's token layout differs from the ICL prompt's "
                f"(lengths {len(t)} vs {len(s)}, answers at {t.answer_positions} vs {s.answer_positions}); "
                "use single-token answers or an answer pool of matching token lengths"
            )
