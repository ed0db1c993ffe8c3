"""The task interface: a task draws *trials* (demonstrations + query) deterministically from a seed.

Knowledge tasks answer from pretraining (country -> capital); categorization tasks map inputs to two arbitrary
label words whose class -> word mapping is drawn per trial.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["knowledge", "categorization"]


@dataclass(frozen=True)
class Example:
    """One (input, output) pair. ``label`` is the class index for categorization tasks, else ``None``."""

    input: str
    output: str
    label: int | None = None


@dataclass(frozen=True)
class Trial:
    """Demonstrations and a query.

    ``label_words[c]`` is the word of class ``c`` in this trial (categorization), or ``None`` (knowledge).
    ``meta`` holds task-specific facts per example (e.g. string lengths for dPCA), keyed by name, each a tuple
    aligned with ``demos + (query,)``.
    """

    demos: tuple[Example, ...]
    query: Example
    label_words: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False)


class Task(ABC):
    """Base class of every task. Subclasses set ``name``, ``kind`` and implement :meth:`sample_trials`."""

    name: str
    kind: Kind
    description: str = ""
    file_stats: dict | None = None
    """For a task read from a file: ``rows``, ``duplicates_merged``, ``conflicts``, ``conflict_rows_dropped`` and
    the ``on_conflict`` policy (:func:`taskvec.tasks.custom.load_task_file`); ``None`` otherwise."""

    @abstractmethod
    def sample_trials(self, n_trials: int, n_demos: int, seed: int) -> list[Trial]:
        """Draw ``n_trials`` trials of ``n_demos`` demonstrations each; same seed, same trials."""

    @abstractmethod
    def answer_pool(self, trial: Trial) -> list[str]:
        """The answers a *dummy* prompt may use in place of the real ones for this trial
        (knowledge: every output of the task; categorization: the trial's label words)."""

    def params(self) -> dict:
        """The task's parameters, saved with every run's config."""
        return {"name": self.name}
