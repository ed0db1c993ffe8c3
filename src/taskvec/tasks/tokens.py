"""Tokenizer checks for answers and label words (docs/spec.md A.1).

The scored token of an answer ``y`` is the first token of ``" " + y``. Label words must each be a single token and
must not share a first token; a violation is an error naming the label and its tokens, never a silent drop.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from taskvec.errors import EmptyInputError, TokenizationError
from taskvec.tasks.base import Task
from taskvec.tasks.knowledge import KnowledgeTask


class DroppedPair(NamedTuple):
    """A knowledge pair removed by :func:`filter_for_tokenizer`, with the tokens of ``" " + output``."""

    input: str
    output: str
    tokens: tuple[str, ...]


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``" " + text`` without special tokens (how an answer is tokenized after ``is``)."""
    return list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])


def token_strings(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """Each id decoded on its own, for error messages (``(' ', '0')`` reads better than ``[216, 32]``)."""
    return tuple(tokenizer.decode([i]) for i in ids)


def first_token_id(tokenizer: Any, text: str) -> int:
    """First id of ``tokenizer(" " + text, add_special_tokens=False)``: the token scored for answer ``text``."""
    ids = token_ids(tokenizer, text)
    if not ids:
        raise TokenizationError(f"answer {text!r} tokenizes to nothing; use a non-empty answer")
    return ids[0]


def check_label_words(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Check that every ``" " + w`` is one token and that no two labels share it; return those token ids.

    Raises :class:`TokenizationError` naming the offending label(s) and their tokens.
    """
    if len(words) < 2:
        raise TokenizationError(f"need at least two label words, got {list(words)!r}")
    seen: dict[int, str] = {}
    ids_out: list[int] = []
    for w in words:
        ids = token_ids(tokenizer, w)
        if len(ids) != 1:
            raise TokenizationError(
                f"label {w!r} is {len(ids)} tokens {token_strings(tokenizer, ids)!r} with a leading space in this "
                "tokenizer; choose label words that are one token each"
            )
        if ids[0] in seen:
            raise TokenizationError(
                f"labels {seen[ids[0]]!r} and {w!r} share the token {token_strings(tokenizer, ids)[0]!r}; "
                "choose label words with distinct tokens"
            )
        seen[ids[0]] = w
        ids_out.append(ids[0])
    return ids_out


def default_labels_for(tokenizer: Any) -> tuple[str, str]:
    """The categorization label pair for this tokenizer: ``DEFAULT_LABELS`` (A/B) when each is one distinct token
    after a space, else ``FALLBACK_LABELS`` (X/Y). Explicit ``labels=`` given by a user are never replaced."""
    from taskvec.tasks.categorization import DEFAULT_LABELS, FALLBACK_LABELS

    for pair in (DEFAULT_LABELS, FALLBACK_LABELS):
        try:
            check_label_words(tokenizer, pair)
            return pair
        except TokenizationError:
            continue
    raise TokenizationError(f"neither {DEFAULT_LABELS} nor {FALLBACK_LABELS} are single distinct tokens in this "
                            "tokenizer; pass labels=... in the task parameters")


def first_token_collisions(tokenizer: Any, words: Sequence[str]) -> dict[str, list[str]]:
    """Groups of distinct words whose ``" " + w`` share a first token, keyed by that token's text.

    For knowledge tasks this is informational (e.g. ``' San'`` for San Jose / San Salvador): a model predicting the
    shared token is scored correct for either answer.
    """
    groups: dict[int, list[str]] = {}
    for w in dict.fromkeys(words):
        groups.setdefault(first_token_id(tokenizer, w), []).append(w)
    return {tokenizer.decode([i]): ws for i, ws in groups.items() if len(ws) > 1}


def filter_for_tokenizer(task: Task, tokenizer: Any) -> tuple[Task, list[DroppedPair]]:
    """Fit a task to a tokenizer; return ``(task, dropped)``.

    * Knowledge task with ``single_token_answers=True``: a new task keeping only pairs whose ``" " + output`` is a
      single token; ``dropped`` lists the others with their tokens (report it, do not hide it).
    * Knowledge task otherwise: every answer is scored by its first token, so nothing is dropped (answers that
      tokenize to nothing raise :class:`TokenizationError`).
    * Categorization task: its label words are checked with :func:`check_label_words` (raises on a problem);
      the task is returned unchanged.
    """
    if task.kind == "categorization":
        words = getattr(task, "labels", None)
        if words:
            check_label_words(tokenizer, list(words))
        return task, []
    if not isinstance(task, KnowledgeTask):
        return task, []
    kept: list[tuple[str, str]] = []
    dropped: list[DroppedPair] = []
    for x, y in task.pairs:
        ids = token_ids(tokenizer, y)
        if not ids:
            raise TokenizationError(f"answer {y!r} (input {x!r}) tokenizes to nothing; fix the task's data")
        if task.single_token_answers and len(ids) != 1:
            dropped.append(DroppedPair(x, y, token_strings(tokenizer, ids)))
        else:
            kept.append((x, y))
    if not dropped:
        return task, []
    if len(kept) < 2:
        raise EmptyInputError(
            f"task {task.name!r}: only {len(kept)} pair(s) have single-token answers in this tokenizer; "
            "set single_token_answers=False"
        )
    return task.with_pairs(kept), dropped
