"""Tasks from user files (JSON list, JSON object, JSONL or CSV), no Python needed.

* Knowledge-style rows have fields ``input`` and ``output``: a JSON list of such objects (Todd et al.'s format), one
  object per line (JSONL), a CSV with a header row, or a JSON object mapping each input to its output (Hendel et
  al.'s format; with ``kind="categorization"`` each input to its label).
* Categorization-style rows have fields ``input`` and ``label`` with exactly two distinct label values (the
  classes, numbered in order of first appearance). Trials show label words drawn per trial from ``labels`` as for
  the built-in categorization tasks, or the file's own label strings with ``use_file_labels=True``.

Other fields are ignored; values are stripped; exact duplicate rows are merged (and counted). An input repeated
with a different output or label follows ``on_conflict``: ``"error"`` (default), ``"keep_first"`` or
``"drop_both"`` (every row of that input is dropped); the counts are in the task's ``file_stats``. Every problem
raises a one-line :class:`TaskFileError` naming the file and the 1-based line.
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
    "knowledge": {"single_token_answers", "n_demos", "description", "on_conflict"},
    "categorization": {"labels", "use_file_labels", "n_demos", "shuffle_labels", "description", "on_conflict"},
}
ON_CONFLICT = ("error", "keep_first", "drop_both")
"""What :func:`load_task_file` does with an input repeated under two different outputs (or labels)."""
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
                "use_file_labels": self.use_file_labels, "source": self.source, **(self.file_stats or {})}

    def __repr__(self) -> str:
        return f"FileCategorizationTask({self.name!r}, {len(self.rows)} rows, classes={self.class_names})"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


class _MappingEntry(dict):
    """One ``"input": output`` entry of a JSON object file (Hendel et al.'s format), as a row ``{"input", "output"}``
    (the output is the label of a categorization file)."""


_ROW_FIELDS = {"input", "output", "label"}


def _read_json(text: str, where: str) -> list[tuple[int, Any]]:
    """Parse a top-level JSON list of rows, or a JSON object mapping input -> output, remembering the line where
    each element (each key) starts. Keys repeated in an object are all kept (``json.loads`` would silently keep
    the last one): they are conflicts or duplicates, for :func:`load_task_file` to judge."""
    i = _skip_ws(text, 0)
    if i < len(text) and text[i] == "{":
        return _read_json_object(text, where, i)
    if i < len(text) and text[i] != "[":
        raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected a JSON list of objects like "
                            '[{"input": "France", "output": "Paris"}] or an object mapping input -> output like '
                            '{"France": "Paris"}')
    out: list[tuple[int, Any]] = []
    i = _skip_ws(text, i + 1)
    if i >= len(text) or text[i] == "]":
        return out
    while True:
        obj, end = _decode(text, i, where)
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


def _decode(text: str, i: int, where: str) -> tuple[Any, int]:
    try:
        return json.JSONDecoder().raw_decode(text, i)
    except json.JSONDecodeError as err:
        raise TaskFileError(f"{where}: line {err.lineno}: invalid JSON ({err.msg}); fix the syntax") from None


def _read_json_object(text: str, where: str, i: int) -> list[tuple[int, Any]]:
    """The entries of a JSON object ``{input: output, ...}`` as rows (:class:`_MappingEntry`), in file order."""
    first = _line_of(text, i)
    out: list[tuple[int, Any]] = []
    i = _skip_ws(text, i + 1)
    if text[i:i + 1] == "}":
        i = _skip_ws(text, i + 1)
    else:
        while True:
            if text[i:i + 1] != '"':
                raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected an input in double quotes (a key "
                                    "of the object mapping input -> output)")
            line = _line_of(text, i)
            key, i = _decode(text, i, where)
            i = _skip_ws(text, i)
            if text[i:i + 1] != ":":
                raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected ':' after the input {key!r}")
            value, i = _decode(text, _skip_ws(text, i + 1), where)
            out.append((line, _MappingEntry(input=key, output=value)))
            i = _skip_ws(text, i)
            if text[i:i + 1] == ",":
                i = _skip_ws(text, i + 1)
            elif text[i:i + 1] == "}":
                i = _skip_ws(text, i + 1)
                break
            else:
                raise TaskFileError(f"{where}: line {_line_of(text, i)}: expected ',' or '}}' after the output of "
                                    f"{key!r}")
    if i < len(text):
        raise TaskFileError(f"{where}: line {_line_of(text, i)}: text after the closing '}}'; remove it")
    keys = {rec["input"] for _, rec in out}
    if out and "input" in keys and keys <= _ROW_FIELDS:
        raise TaskFileError(f"{where}: line {first}: expected a JSON list of rows, but this object is one row "
                            f"(fields {', '.join(repr(k) for k in sorted(keys))}): wrap the rows in [ ] (an object "
                            "file maps each input to its output instead)")
    return out


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
    what = f"field {field!r}"
    if isinstance(rec, _MappingEntry):  # {"x": y}: the value is the output (or label)
        field, what = ("input", "the input") if field == "input" else ("output", f"the {field} of {rec['input']!r}")
    if rec.get(field) is None:
        raise TaskFileError(f"{where}: line {line}: missing {what}; add it")
    v = rec[field]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise TaskFileError(f"{where}: line {line}: {what} must be a string or a number, got {_short(v)}")
    s = str(v).strip()
    if not s:
        raise TaskFileError(f"{where}: line {line}: {what} is empty; give it a value or drop the row")
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


def load_task_file(path: str | Path, name: str | None = None, kind: str | None = None,
                   on_conflict: str = "error", **params: Any) -> Task:
    """Load a task from a JSON list (Todd et al.'s format), a JSON object mapping input -> output (Hendel et al.'s
    format), a JSONL or a CSV file.

    Args:
        path: the file; its extension picks the format.
        name: task name (default: the file's stem).
        kind: ``"knowledge"`` (fields ``input``/``output``) or ``"categorization"`` (``input``/``label``);
            inferred from the first row when ``None`` (a JSON object file is knowledge unless told).
        on_conflict: an input repeated with a different output (label): ``"error"`` (a :class:`TaskFileError`
            naming the line and the input), ``"keep_first"`` (the first row wins) or ``"drop_both"`` (every row of
            that input is dropped). Exact duplicate rows are merged whatever the policy.
        params: knowledge: ``single_token_answers``, ``n_demos``, ``description``; categorization: ``labels``,
            ``use_file_labels``, ``n_demos``, ``shuffle_labels``, ``description``.

    The task's ``file_stats`` (also in its ``params()``) count the file's ``rows``, the ``duplicates_merged``, the
    conflicting inputs (``conflicts``) and the ``conflict_rows_dropped``, with the ``on_conflict`` policy.

    Raises :class:`TaskFileError` for a malformed file (empty, missing field, empty value, conflicting duplicate
    under ``on_conflict="error"``, not exactly two labels) and :class:`ConfigError` for a bad ``kind``,
    ``on_conflict`` or parameter.
    """
    where = str(path)
    name = name or Path(path).stem
    if kind not in (None, "knowledge", "categorization"):
        raise ConfigError(f"kind must be 'knowledge' or 'categorization', got {kind!r}")
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}, got {on_conflict!r}")
    records = read_records(path)
    if not records:
        raise TaskFileError(f"{where}: no rows; add rows with fields 'input' and 'output' (or 'label')")
    first = records[0][1]
    kind = kind or ("knowledge" if isinstance(first, _MappingEntry) else _infer_kind(first, records[0][0], where))
    unknown = set(params) - _PARAMS[kind]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {sorted(unknown)} for a {kind} file; "
                          f"use {sorted(_PARAMS[kind])}")
    field = "output" if kind == "knowledge" else "label"
    seen, stats = _resolve_rows(records, field, where, on_conflict)
    if kind == "knowledge":
        if len(seen) < 2:
            raise TaskFileError(f"{where}: only {len(seen)} distinct row(s){_after(stats)}; a task needs at least 2")
        task: Task = KnowledgeTask(name, [(x, y) for x, (y, _) in seen.items()], source=where, **params)
        task.file_stats = stats
        return task
    classes: list[str] = []
    for x, (y, line) in seen.items():
        if y not in classes:
            if len(classes) == 2:
                raise TaskFileError(f"{where}: line {line}: a third label {y!r} (after {classes[0]!r}, "
                                    f"{classes[1]!r}); a categorization file needs exactly two labels")
            classes.append(y)
    if len(classes) < 2:
        only = f"only one label {classes[0]!r}" if classes else "no rows"
        raise TaskFileError(f"{where}: {only}{_after(stats)}; a categorization file needs exactly two labels")
    rows = [(x, classes.index(y)) for x, (y, _) in seen.items()]
    task = FileCategorizationTask(name, rows, (classes[0], classes[1]), source=where, **params)
    task.file_stats = stats
    return task


def _after(stats: dict) -> str:
    dropped = stats["conflict_rows_dropped"]
    return f" after dropping {dropped} conflicting row(s) (on_conflict={stats['on_conflict']!r})" if dropped else ""


def _resolve_rows(records: list[tuple[int, Any]], field: str, where: str,
                  on_conflict: str) -> tuple[dict[str, tuple[str, int]], dict]:
    """``{input: (output, line)}`` in file order, with exact duplicates merged and conflicts (an input under two
    different outputs) handled by ``on_conflict``; and the counts for the run record."""
    shared_lines = len({line for line, _ in records}) < len(records)  # e.g. a JSON file written on one line

    def at(k: int) -> str:  # where record k is: its line, and its entry number where lines do not tell
        return f"line {records[k][0]}" + (f" (entry {k + 1})" if shared_lines else "")

    groups: dict[str, list[tuple[str, int]]] = {}
    duplicates = 0
    first_conflict: tuple[int, str, str] | None = None  # (record, input, output) of the first contradicting row
    for k, (line, rec) in enumerate(records):
        x, y = _field(rec, "input", line, where), _field(rec, field, line, where)
        entries = groups.setdefault(x, [])
        if any(y == seen_y for seen_y, _ in entries):
            duplicates += 1
            continue
        if entries and first_conflict is None:
            first_conflict = (k, x, y)
        entries.append((y, k))
    conflicts = {x: e for x, e in groups.items() if len(e) > 1}
    if conflicts and on_conflict == "error":
        k, x, y = first_conflict  # type: ignore[misc]
        y0, k0 = groups[x][0]
        more = f" ({len(conflicts)} inputs conflict in all)" if len(conflicts) > 1 else ""
        raise TaskFileError(f"{where}: {at(k)}: input {x!r} repeats {at(k0)} with a different {field} "
                            f"({y0!r} vs {y!r}){more}; keep one, or set on_conflict (the CLI's --on-conflict) "
                            "to 'keep_first' or 'drop_both'")
    if on_conflict == "drop_both":
        kept = {x: e[0] for x, e in groups.items() if len(e) == 1}
        dropped = sum(len(e) for e in conflicts.values())
    else:
        kept = {x: e[0] for x, e in groups.items()}
        dropped = sum(len(e) - 1 for e in conflicts.values())
    stats = {"rows": len(records), "duplicates_merged": duplicates, "conflicts": len(conflicts),
             "conflict_rows_dropped": dropped, "on_conflict": on_conflict}
    return {x: (y, records[k][0]) for x, (y, k) in kept.items()}, stats
