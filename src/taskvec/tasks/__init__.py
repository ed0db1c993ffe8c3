"""The task suite: built-in knowledge and categorization tasks, custom task files, and a registry.

    from taskvec.tasks import get_task, list_tasks
    task = get_task("country_capital")
    trials = task.sample_trials(n_trials=8, n_demos=5, seed=0)
    get_task("simple_string", labels=("A", "B"), n_demos=16)
    get_task("file:my_task.csv")          # or any path ending in .json / .jsonl / .csv
    task_names(["antonyms", "file:/data/a/x.json", "file:/data/b/x.json"])
    # {'antonyms': 'antonyms', 'file:/data/a/x.json': 'x', 'file:/data/b/x.json': 'x-2'}
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from taskvec.errors import ConfigError, TokenizationError
from taskvec.tasks.base import Example, Kind, Task, Trial
from taskvec.tasks.categorization import (
    DEFAULT_LABELS, DEFAULT_N_DEMOS, CategorizationTask, DigitTask, SimpleStringTask, TwoDTask,
)
from taskvec.tasks.custom import FORMATS, ON_CONFLICT, FileCategorizationTask, load_task_file
from taskvec.tasks.knowledge import DEFAULT_KNOWLEDGE_N_DEMOS, KnowledgeTask
from taskvec.tasks.tokens import (
    default_labels_for,
    DroppedPair, check_label_words, filter_for_tokenizer, first_token_collisions, first_token_id,
)

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: ``factory(**params)`` builds it; ``description`` is one line."""

    name: str
    factory: Callable[..., Task]
    description: str


_REGISTRY: dict[str, TaskEntry] = {}


def register_task(name: str, factory: Callable[..., Task], description: str, overwrite: bool = False) -> None:
    """Register ``factory(**params) -> Task`` under ``name`` (a :class:`ConfigError` if taken, unless ``overwrite``)."""
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"task {name!r} is already registered; pick another name or pass overwrite=True")
    if name.startswith("file:") or Path(name).suffix in FORMATS or "/" in name:
        raise ConfigError(f"task name {name!r} looks like a file path; use a plain name")
    _REGISTRY[name] = TaskEntry(name, factory, description)


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return list(_REGISTRY)


def describe_tasks() -> dict[str, str]:
    """``{name: one-line description}`` of the registered tasks."""
    return {n: e.description for n, e in _REGISTRY.items()}


def task_file_path(name: str) -> str | None:
    """The path a task name stands for (``"file:PATH"``, or a path ending in .json / .jsonl / .csv), or ``None``
    for a registered task's name."""
    if name.startswith("file:"):
        return name[len("file:"):]
    if "/" in name or "\\" in name or Path(name).suffix.lower() in FORMATS:
        return name
    return None


def task_names(specs: Sequence[str]) -> dict[str, str]:
    """The name each task goes by in a run's tables, report and file names: a registered task its own name, a task
    file (``file:/long/path/x.json``) the file's stem (``x``), made unique with ``-2``, ``-3``, ... where stems
    collide with each other or with a registered task's name. Keys keep the order of ``specs``; the paths stay in
    the run's config."""
    taken = set(_REGISTRY) | {s for s in specs if task_file_path(s) is None}
    out: dict[str, str] = {}
    for spec in specs:
        path = task_file_path(spec)
        if path is None:
            out[spec] = spec
            continue
        stem = Path(path).stem or "task"
        name, k = stem, 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name)
        out[spec] = name
    return out


def get_task(name: str, /, **params: Any) -> Task:
    """Build a task by name (see :func:`list_tasks`), or load a custom file: ``"file:PATH"`` or a path ending
    in .json / .jsonl / .csv (params as for :func:`load_task_file`). Unknown names or parameters raise
    :class:`ConfigError`."""
    path = task_file_path(name)
    if path is not None:
        return load_task_file(path, **params)
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(_REGISTRY)
        raise ConfigError(f"unknown task {name!r}; known tasks: {known} (or file:PATH for a custom file)")
    accepted = inspect.signature(entry.factory).parameters
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise ConfigError(f"task {name!r} has no parameter(s) {unknown}; its parameters: {', '.join(accepted)}")
    return entry.factory(**params)


def task_for(name: str, tokenizer: Any, /, **params: Any) -> Task:
    """:func:`get_task` fitted to a tokenizer: a categorization task given no ``labels`` gets
    :func:`~taskvec.tasks.tokens.default_labels_for` the tokenizer (A/B, or X/Y where those collide); its label
    words are then checked (:class:`TokenizationError` on a collision)."""
    task = get_task(name, **params)
    if task.kind == "categorization":
        if "labels" not in params and not params.get("use_file_labels") and hasattr(task, "labels"):
            labels = default_labels_for(tokenizer)
            if tuple(task.labels) != labels:
                task = get_task(name, **params, labels=labels)
        try:
            check_label_words(tokenizer, task.sample_trials(1, 0, seed=0)[0].label_words)  # the query alone
        except TokenizationError as err:
            whose = (f"the labels of {task.source} (shown with use_file_labels)" if params.get("use_file_labels")
                     else "its labels")
            raise TokenizationError(f"task {task.name!r}: {whose} cannot be scored apart: {err}") from None
    return task


def _packaged(name: str, kind: str, description: str, **params: Any) -> Task:
    """A task from the packaged data file ``data/{name}.json``."""
    task = load_task_file(DATA_DIR / f"{name}.json", name=name, kind=kind, description=description, **params)
    task.source = f"taskvec/tasks/data/{name}.json"  # machine-independent, for saved configs
    return task


def _knowledge_factory(name: str, description: str) -> Callable[..., Task]:
    def make(single_token_answers: bool = False, n_demos: int = DEFAULT_KNOWLEDGE_N_DEMOS) -> Task:
        return _packaged(name, "knowledge", description, single_token_answers=single_token_answers, n_demos=n_demos)

    return make


_KNOWLEDGE = {
    "country_capital": "country -> capital city (sovereign states, e.g. France -> Paris)",
    "antonyms": "word -> antonym (e.g. hot -> cold)",
    "english_french": "English word -> French word (e.g. cat -> chat)",
    "present_past": "verb -> simple past (e.g. go -> went)",
    "lowercase_uppercase": "word -> the same word in capitals (e.g. cat -> CAT)",
}
for _name, _desc in _KNOWLEDGE.items():
    register_task(_name, _knowledge_factory(_name, _desc), _desc)
for _cls in (SimpleStringTask, DigitTask, TwoDTask):
    register_task(_cls.name, _cls, _cls.description)


def _word_categorization_factory(name: str, description: str) -> Callable[..., Task]:
    """A packaged two-class word list ``data/{name}.json`` (rows ``{"input", "label"}``; first label = class 0)."""
    def make(labels: Sequence[str] = DEFAULT_LABELS, n_demos: int = DEFAULT_N_DEMOS,
             shuffle_labels: bool = True) -> Task:
        return _packaged(name, "categorization", description, labels=labels, n_demos=n_demos,
                         shuffle_labels=shuffle_labels)

    return make


# Semantic word categorization: the class is obvious to a language model from the word itself.
_WORD_CATEGORIZATION = {
    "sentiment": "English words -> label word by sentiment (positive e.g. happy vs negative e.g. awful)",
    "animal_object": "English nouns -> label word by animal (e.g. horse) vs man-made object (e.g. hammer)",
    "food_body": "English nouns -> label word by food (e.g. bread) vs body part (e.g. elbow)",
    "color_number": "English words -> label word by color name (e.g. crimson) vs number word (e.g. forty)",
}
for _name, _desc in _WORD_CATEGORIZATION.items():
    register_task(_name, _word_categorization_factory(_name, _desc), _desc)

__all__ = [
    "CategorizationTask", "DATA_DIR", "DEFAULT_KNOWLEDGE_N_DEMOS", "DEFAULT_LABELS", "DEFAULT_N_DEMOS", "DigitTask",
    "DroppedPair", "Example", "FileCategorizationTask", "Kind", "KnowledgeTask", "SimpleStringTask", "Task",
    "TaskEntry", "Trial", "TwoDTask", "check_label_words", "describe_tasks", "filter_for_tokenizer",
    "first_token_collisions", "first_token_id", "get_task", "task_for", "list_tasks", "load_task_file", "register_task",
    "task_file_path", "task_names", "ON_CONFLICT",
]
