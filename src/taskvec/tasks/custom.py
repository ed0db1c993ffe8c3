"""Tasks from user files (JSON list, JSONL or CSV), no Python needed.

* Knowledge-style rows have fields ``input`` and ``output``.
* Categorization-style rows have fields ``input`` and ``label`` with exactly two distinct label values (the
  classes, numbered in order of first appearance). Trials show label words drawn per trial from ``labels`` as for
  the built-in categorization tasks, or the file's own label strings with ``use_file_labels=True``.

Other fields are ignored; values are stripped; exact duplicate rows are dropped. Every problem raises a one-line
:class:`TaskFileError` naming the file and the 1-based line.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taskvec.errors import ConfigError, TaskFileError
from taskvec.tasks.base import Task
from taskvec.tasks.categorization import DEFAULT_LABELS, DEFAULT_N_DEMOS, CategorizationTask
from taskvec.tasks.knowledge import KnowledgeTask

FORMATS = (".json", ".jsonl", ".csv")
_PARAMS = {
    "knowledge": {"single_token_answers", "n_demos", "description"},
    "categorization": {"labels", "use_file_labels", "n_demos", "shuffle_labels", "description"},
}
_WS = " \t\n\r"


class FileCategorizationTask(CategorizationTask):
    """A two-class task over labelled rows; each trial samples balanced demonstrations and a distinct query.

    Args:
        name: task name.
        rows: ``(input, class)`` pairs, class 0 or 1; inputs distinct.
        class_names: the file's two label strings (class 0, class 1).
        labels: label words shown in prompts, assigned to classes at random per trial.
        use_file_labels: show ``class_names`` instead, with the fixed mapping class ``c`` -> ``class_names[c]``.
        n_demos, shuffle_labels: as for :class:`CategorizationTask` (``use_file_labels`` forces no shuffling).
    ``Trial.meta["index"]`` holds the row indices of ``demos + (query,)``.
    """

    def __init__(
        self, name: str, rows: Sequence[tuple[str, int]], class_names: tuple[str, str],
        labels: Sequence[str] = DEFAULT_LABELS, use_file_labels: bool = False, n_demos: int = DEFAULT_N_DEMOS,
        shuffle_labels: bool = True, description: str = "", source: str | None = None,
    ) -> None:
        self.use_file_labels = bool(use_file_labels)
        if self.use_file_labels:
            labels, shuffle_labels = class_names, False
        super().__init__(labels, n_demos, shuffle_labels)
        self.name, self.description, self.source = name, description, source
        self.class_names = (str(class_names[0]), str(class_names[1]))
        self.rows = tuple((str(x), int(c)) for x, c in rows)
        self._pools = [[i for i, (_, c) in enumerate(self.rows) if c == k] for k in (0, 1)]
        if not all(self._pools):
            raise ConfigError(f"task {name!r} needs rows of both classes {self.class_names}")

    def _draw_inputs(self, rng: np.random.Generator, classes: Sequence[int]) -> tuple[list[str], dict[str, list]]:
        picks: list[list[int]] = []
        for k in (0, 1):
            need, pool = sum(c == k for c in classes), self._pools[k]
            if need > len(pool):
                raise ConfigError(
                    f"task {self.name!r} has {len(pool)} rows labelled {self.class_names[k]!r}, too few for this "
                    f"trial ({need} needed); use fewer demonstrations"
                )
            picks.append([int(i) for i in rng.permutation(pool)[:need]])
        index = [picks[c].pop() for c in classes]
        return [self.rows[i][0] for i in index], {"index": index}

    def params(self) -> dict:
        return {**super().params(), "n_rows": len(self.rows), "class_names": list(self.class_names),
                "use_file_labels": self.use_file_labels, "source": self.source}

    def __repr__(self) -> str:
        return f"FileCategorizationTask({self.name!r}, {len(self.rows)} rows, classes={self.class_names})"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _read_json(text: str, where: str) -> list[tuple[int, Any]]:
    """Parse a top-level JSON list, remembering the line where each element starts."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i < len(text) and text[i] != "[":
        raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected a JSON list of objects like "
                            '[{"input": "France", "output": "Paris"}]')
    out: list[tuple[int, Any]] = []
    i = _skip_ws(text, i + 1)
    if i >= len(text) or text[i] == "]":
        return out
    while True:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise TaskFileError(f"{where}: line {err.lineno}: invalid JSON ({err.msg}); fix the syntax") from None
        out.append((_line_of(text, i), obj))
        i = _skip_ws(text, end)
        if text[i:i + 1] == ",":
            i = _skip_ws(text, i + 1)
        elif text[i:i + 1] == "]":
            if _skip_ws(text, i + 1) < len(text):
                raise TaskFileError(f"{where}: line {_line_of(text, i + 1)}: text after the closing ']'; remove it")
            return out
        else:
            raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected ',' or ']' after a list element")


def _read_jsonl(text: str, where: str) -> list[tuple[int, Any]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as err:
                raise TaskFileError(f"{where}: line {n}: invalid JSON ({err.msg}); one object per line") from None
    return out


def _read_csv(text: str, where: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None:
            return []
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
        return [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise TaskFileError(f"{where}: line {reader.line_num}: invalid CSV ({err})") from None


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """The rows of a task file as ``(line, record)``; the format follows the extension (.json, .jsonl, .csv)."""
    p = Path(path)
    suffix = p.suffix.lower()
    kinds = ", ".join(FORMATS)
    if not str(path).strip():
        raise TaskFileError(f"file: names no file; write file:PATH, PATH a task file ending in {kinds}")
    if p.is_dir():
        raise TaskFileError(f"{p} is a directory; give a task file in it (ending in {kinds})")
    if not suffix:
        raise TaskFileError(f"{p}: a task file's name must end in {kinds} (its extension picks the format); "
                            "rename it")
    if suffix not in FORMATS:
        raise TaskFileError(f"{p}: unknown task file type {suffix!r}; use one of {kinds}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TaskFileError(f"{p}: no such task file; check the path") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TaskFileError(f"{p}: cannot read it as UTF-8 text ({err.__class__.__name__})") from None
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}[suffix]
    return reader(text, str(p))


def _field(rec: Any, field: str, line: int, where: str) -> str:
    _object(rec, line, where)
    if rec.get(field) is None:
        raise TaskFileError(f"{where}: line {line}: missing field {field!r}; add it")
    v = rec[field]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise TaskFileError(f"{where}: line {line}: field {field!r} must be a string or a number, got {v!r}")
    s = str(v).strip()
    if not s:
        raise TaskFileError(f"{where}: line {line}: field {field!r} is empty; give it a value or drop the row")
    return s


def _object(rec: Any, line: int, where: str) -> None:
    if not isinstance(rec, dict):
        raise TaskFileError(f"{where}: line {line}: expected an object with fields 'input' and 'output' (or "
                            f"'label'), got {type(rec).__name__} {_short(rec)}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _infer_kind(rec: Any, line: int, where: str) -> str:
    _object(rec, line, where)
    has_out, has_label = "output" in rec, "label" in rec
    if has_out and has_label:
        raise TaskFileError(f"{where}: line {line}: has both 'output' and 'label'; pass kind='knowledge' or "
                            "kind='categorization'")
    if not has_out and not has_label:
        raise TaskFileError(f"{where}: line {line}: missing field 'output' (or 'label' for a categorization "
                            "file); add it")
    return "categorization" if has_label else "knowledge"


def load_task_file(path: str | Path, name: str | None = None, kind: str | None = None, **params: Any) -> Task:
    """Load a task from a JSON list, JSONL or CSV file.

    Args:
        path: the file; its extension picks the format.
        name: task name (default: the file's stem).
        kind: ``"knowledge"`` (fields ``input``/``output``) or ``"categorization"`` (``input``/``label``);
            inferred from the first row when ``None``.
        params: knowledge: ``single_token_answers``, ``n_demos``, ``description``; categorization: ``labels``,
            ``use_file_labels``, ``n_demos``, ``shuffle_labels``, ``description``.

    Raises :class:`TaskFileError` for a malformed file (empty, missing field, empty value, conflicting duplicate,
    not exactly two labels) and :class:`ConfigError` for a bad ``kind`` or parameter.
    """
    where = str(path)
    name = name or Path(path).stem
    if kind not in (None, "knowledge", "categorization"):
        raise ConfigError(f"kind must be 'knowledge' or 'categorization', got {kind!r}")
    records = read_records(path)
    if not records:
        raise TaskFileError(f"{where}: no rows; add rows with fields 'input' and 'output' (or 'label')")
    kind = kind or _infer_kind(records[0][1], records[0][0], where)
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {sorted(unknown)} for a {kind} file; "
                          f"use {sorted(_PARAMS[kind])}")
    field = "output" if kind == "knowledge" else "label"
    seen: dict[str, tuple[str, int]] = {}
    for line, rec in records:
        x, y = _field(rec, "input", line, where), _field(rec, field, line, where)
        if x in seen and seen[x][0] != y:
            raise TaskFileError(f"{where}: line {line}: input {x!r} repeats line {seen[x][1]} with a different "
                                f"{field} ({seen[x][0]!r} vs {y!r}); keep one")
        seen.setdefault(x, (y, line))
    if kind == "knowledge":
        if len(seen) < 2:
            raise TaskFileError(f"{where}: only {len(seen)} distinct row(s); a task needs at least 2")
        return KnowledgeTask(name, [(x, y) for x, (y, _) in seen.items()], source=where, **params)
    classes: list[str] = []
    for x, (y, line) in seen.items():
        if y not in classes:
            if len(classes) == 2:
                raise TaskFileError(f"{where}: line {line}: a third label {y!r} (after {classes[0]!r}, "
                                    f"{classes[1]!r}); a categorization file needs exactly two labels")
            classes.append(y)
    if len(classes) < 2:
        raise TaskFileError(f"{where}: only one label {classes[0]!r}; a categorization file needs exactly two")
    rows = [(x, classes.index(y)) for x, (y, _) in seen.items()]
    return FileCategorizationTask(name, rows, (classes[0], classes[1]), source=where, **params)
