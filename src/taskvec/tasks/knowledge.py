"""Knowledge tasks: ``x -> y`` pairs the model knows from pretraining (country -> capital, word -> antonym, ...)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from taskvec.errors import ConfigError, EmptyInputError
from taskvec.tasks.base import Example, Task, Trial

DEFAULT_KNOWLEDGE_N_DEMOS = 10


class KnowledgeTask(Task):
    """A task over fixed ``(input, output)`` pairs.

    Each trial draws ``n_demos + 1`` distinct pairs without replacement: the first ``n_demos`` are the
    demonstrations, the last is the query (so the query's input never appears among the demonstrations).
    ``Trial.meta["index"]`` holds the pair indices of ``demos + (query,)``.

    Args:
        name: task name.
        pairs: ``(input, output)`` pairs; inputs must be distinct and no string empty.
        single_token_answers: ask :func:`taskvec.tasks.tokens.filter_for_tokenizer` to keep only pairs whose
            ``" " + output`` is one token (otherwise scoring uses the first token and nothing is dropped).
        n_demos: default number of demonstrations when :meth:`sample_trials` gets ``n_demos=None``.
        description: one line for ``list_tasks``.
        source: where the pairs came from (saved in :meth:`params`).
    """

    kind = "knowledge"
    labels: tuple[str, ...] | None = None  # knowledge tasks have no label set

    def __init__(
        self,
        name: str,
        pairs: Iterable[tuple[str, str]],
        single_token_answers: bool = False,
        n_demos: int = DEFAULT_KNOWLEDGE_N_DEMOS,
        description: str = "",
        source: str | None = None,
    ) -> None:
        self.name = name
        self.pairs: tuple[tuple[str, str], ...] = tuple((str(x), str(y)) for x, y in pairs)
        self.single_token_answers = bool(single_token_answers)
        self.n_demos = int(n_demos)
        self.description = description
        self.source = source
        if len(self.pairs) < 2:
            raise EmptyInputError(f"task {name!r} needs at least 2 (input, output) pairs, got {len(self.pairs)}")
        seen: dict[str, str] = {}
        for x, y in self.pairs:
            if not x.strip() or not y.strip():
                raise EmptyInputError(f"task {name!r} has an empty input or output in pair ({x!r}, {y!r})")
            if x in seen:
                raise ConfigError(f"task {name!r} lists input {x!r} twice; keep one answer per input")
            seen[x] = y
        if self.n_demos < 0:
            raise ConfigError(f"n_demos must be >= 0, got {self.n_demos}")

    def with_pairs(self, pairs: Iterable[tuple[str, str]]) -> KnowledgeTask:
        """The same task over other pairs (e.g. after filtering for a tokenizer)."""
        task = KnowledgeTask(
            self.name, pairs, self.single_token_answers, self.n_demos, self.description, self.source
        )
        task.file_stats = self.file_stats
        return task

    def sample_trials(self, n_trials: int, n_demos: int | None = None, seed: int = 0) -> list[Trial]:
        """Draw ``n_trials`` trials of ``n_demos`` demonstrations (default ``self.n_demos``); same seed, same trials."""
        k = self.n_demos if n_demos is None else int(n_demos)
        if k < 0:
            raise ConfigError(f"n_demos must be >= 0, got {k}")
        if k + 1 > len(self.pairs):
            raise ConfigError(
                f"task {self.name!r} has {len(self.pairs)} pairs, too few for {k} demonstrations + 1 query; "
                f"use n_demos <= {len(self.pairs) - 1}"
            )
        if n_trials < 0:
            raise ConfigError(f"n_trials must be >= 0, got {n_trials}")
        rng = np.random.default_rng(seed)
        trials = []
        for _ in range(n_trials):
            idx = [int(i) for i in rng.choice(len(self.pairs), size=k + 1, replace=False)]
            ex = [Example(*self.pairs[i]) for i in idx]
            trials.append(Trial(demos=tuple(ex[:-1]), query=ex[-1], label_words=None, meta={"index": tuple(idx)}))
        return trials

    def answer_pool(self, trial: Trial | None = None) -> list[str]:
        """Every distinct output of the task, in file order."""
        return list(dict.fromkeys(y for _, y in self.pairs))

    def params(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "n_pairs": len(self.pairs),
            "single_token_answers": self.single_token_answers,
            "n_demos": self.n_demos,
            "source": self.source,
            **(self.file_stats or {}),
        }

    def __repr__(self) -> str:
        return f"KnowledgeTask({self.name!r}, {len(self.pairs)} pairs)"

