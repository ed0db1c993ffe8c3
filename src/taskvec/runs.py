"""Run directories: a saved config, append-only results, and resume after a kill.

Layout of a run directory::

    config.json              the resolved config + versions + seed, and the hashes of every config the run has
                             had (written by rank 0, atomically)
    results.jsonl            one JSON object per finished unit: {"unit": id, "rows": [...], "config_hash": h, ...}
                             (flushed, fsynced)
    results.rank{R}.jsonl    the same, of rank R > 0 of a torchrun world (docs/distributed.md), until merged
    .lock                    the pid of the process writing the run (a second one on the same --out is refused)
    FAILED                   the run stopped on an error: a rerun without --resume replaces it, --resume continues it
    vectors/                 safetensors files
    report.html, figures/

A unit is the smallest piece of work whose result is kept. On resume, units already in any results file are
skipped; a run directory whose config differs from the new one is refused, and so is one whose records were
produced under another config (each record carries the hash of the config it was produced under), one with
results but no ``config.json``, and one whose ``config.json`` or results are damaged. A line cut by a kill
mid-write (the last line of a results file) is tolerated, and cut off the file when the run is resumed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from taskvec.artifacts import CONFIG, FAILED, LOCK, RESULTS, RUN_OUTPUT, rank_results
from taskvec.errors import ConfigError



def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import torch
    import transformers

    from taskvec.version import __version__

    return {"taskvec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def slug(name: str) -> str:
    """A file-name-safe form of a task name (the study's per-task files) (``file:/data/my task.csv`` -> ``file_data_my_task.csv``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


# ------------------------------------------------------------------------------------------------ files
def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so a reader sees the old file or the new one, never a torn one (a temp
    file in the same directory, flushed and fsynced, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as f:
            f.write(json.dumps(data, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write a file so that ``path`` holds the old file or the whole new one, never a torn one, even when the
    process is killed mid-write: yields a temp path beside ``path`` (same suffix, so writers that pick the format
    from it, like matplotlib's ``savefig``, still do) to write to; once the block ends the file is fsynced and
    renamed onto ``path`` (``os.replace``). On an error the temp file is removed and ``path`` is untouched; a temp
    file left by a killed process is removed by :func:`remove_stale_temps`.

        with atomic_path(run_dir / "summary.csv") as tmp:
            table.to_csv(tmp, index=False)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically (:func:`atomic_path`) as Parquet (``.parquet``) or CSV without the index (any other
    suffix); returns ``path``."""
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".parquet":
            table.to_parquet(tmp)
        else:
            table.to_csv(tmp, index=False)
    return Path(path)


_TEMP = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]+)?$")


def remove_stale_temps(directory: str | Path) -> int:
    """Remove the temp files (of :func:`atomic_path` and :func:`write_json_atomic`) that a process killed
    mid-write left in ``directory``: those whose process is gone. Returns how many were removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for f in directory.iterdir():
        m = _TEMP.match(f.name)
        if m and f.is_file() and not _pid_alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def config_hash(config: dict) -> str:
    """The hash of a resolved config that a run's records carry. ``config.json`` lists every config the run has
    had (``config_hashes``: the first, then one per resume that changed an additive key)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_saved(path: str | Path) -> dict:
    """The parsed ``config.json`` of the run directory ``path``; a torn or garbage file is a one-line
    :class:`ConfigError` saying what is wrong with it."""
    file = Path(path) / CONFIG
    fix = f"restore it, or move {path} away and start a new run"
    try:
        data = json.loads(file.read_bytes().decode())
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not text (garbage): {fix}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file} is torn or not JSON ({err.msg} at line {err.lineno}): {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{file} is not a taskvec run config (no 'config' mapping): {fix}")
    return data


def _parse(line: bytes) -> dict | None:
    """A whole result record, or ``None``."""
    try:
        rec = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("unit"), str) and isinstance(rec.get("rows"), list)
    return rec if ok else None


def read_records(file: str | Path) -> tuple[list[dict], int]:
    """``(records, skipped)`` of a results file: every whole record, and 1 if its last line was cut by a kill
    mid-write (tolerated: that unit is redone). A bad line anywhere else is a one-line :class:`ConfigError`."""
    file = Path(file)
    if not file.exists():
        return [], 0
    lines = [(i + 1, line) for i, line in enumerate(file.read_bytes().split(b"\n")) if line.strip()]
    out = []
    for at, (number, line) in enumerate(lines):
        rec = _parse(line)
        if rec is None and at == len(lines) - 1:
            return out, 1
        if rec is None:
            raise ConfigError(f"{file} line {number} is not a result record (garbage in the middle of the run's "
                              "results): delete that line (its unit is redone on --resume) or start a new --out")
        out.append(rec)
    return out, 0


def cut_torn_tail(file: str | Path) -> int:
    """Cut a last line that a kill left half-written off ``file`` (fsynced), so the file holds whole records only
    (``pandas.read_json(file, lines=True)`` reads it); a whole last record lacking its newline gets one. Returns
    the number of bytes cut."""
    file = Path(file)
    if not file.exists():
        return 0
    data = file.read_bytes()
    body = data.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    if not body[start:].strip():
        return 0
    whole = _parse(body[start:]) is not None
    if whole and data.endswith(b"\n"):
        return 0
    with file.open("r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return 0 if whole else len(data) - start


def _rank_files(path: Path) -> list[Path]:
    ranks = {f: f.name[len("results.rank"):-len(".jsonl")] for f in path.glob("results.rank*.jsonl")}
    return sorted((f for f, r in ranks.items() if r.isdigit()), key=lambda f: int(ranks[f]))


def skipped_lines(run_dir: str | Path) -> int:
    """How many torn last lines the results files of ``run_dir`` hold (ignored when read; a resume cuts them)."""
    path = Path(run_dir)
    return sum(read_records(f)[1] for f in [path / RESULTS, *_rank_files(path)])


# ------------------------------------------------------------------------------------------------ lock
_held: dict[str, int] = {}  # run directories this process holds the lock of -> how many stores hold it


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (Linux), ``None`` where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started, to tell a live owner from a reused pid; ``None`` if unknown."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(owner: dict) -> bool:
    """Whether the process that wrote a lock still runs (on another host: assumed to)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: dead
        return False
    start = _start_time(pid)
    return start is None or owner.get("start") in (None, start)


def lock_owner(path: str | Path) -> dict | None:
    """The live process (``{"pid", "host", ...}``) other than this one that holds the lock of run directory
    ``path``, or ``None`` (no lock, a stale lock of a dead process, or this process's own)."""
    try:
        owner = json.loads((Path(path) / LOCK).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not _alive(owner):
        return None
    mine = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
    return None if mine else owner


def _in_use(path: Path, owner: dict) -> ConfigError:
    where = f" on {owner.get('host')}" if owner.get("host") != socket.gethostname() else ""
    return ConfigError(f"{path} is in use by another taskvec process (pid {owner.get('pid')}{where}); wait for it "
                       f"to finish or choose another --out (if that process is gone, delete {path / LOCK})")


def acquire_lock(path: str | Path) -> None:
    """Hold the lock of run directory ``path`` for this process (re-entrant); a live other owner is a one-line
    :class:`ConfigError`, a stale lock of a dead process is taken over."""
    path = Path(path)
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        return
    path.mkdir(parents=True, exist_ok=True)
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())})
    for _ in range(2):
        owner = lock_owner(path)
        if owner is not None:
            raise _in_use(path, owner)
        (path / LOCK).unlink(missing_ok=True)  # stale (or ours from before)
        try:
            fd = os.open(path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process took it between our look and our write: look again
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        _held[key] = 1
        return
    raise _in_use(path, lock_owner(path) or {})


def release_lock(path: str | Path) -> None:
    """Let go of this process's hold on the lock of ``path`` (the file goes with the last hold)."""
    key = str(Path(path).resolve())
    if key not in _held:
        return
    _held[key] -= 1
    if _held[key] <= 0:
        del _held[key]
        if lock_owner(path) is None:  # ours (or gone): never remove another process's lock
            (Path(path) / LOCK).unlink(missing_ok=True)


def mark_failed(path: str | Path, err: BaseException) -> None:
    """Mark the run in ``path`` as failed (the ``FAILED`` file says why): a rerun without ``--resume`` replaces
    it, ``--resume`` continues it."""
    from taskvec.errors import one_line

    write_json_atomic(Path(path) / FAILED, {"error": f"{type(err).__name__}: {one_line(err)}", "pid": os.getpid()})


def mark_held_failed(err: BaseException) -> None:
    """Mark every run directory this process is writing (holds the lock of) as failed: the command line calls
    this when a command stops on an error."""
    for key in list(_held):
        if (Path(key) / CONFIG).exists():
            mark_failed(key, err)


def _replace_failed(path: Path) -> None:
    """Remove what a failed run wrote in ``path`` (every entry but those that were there before it started), so
    a new run starts clean."""
    import shutil

    before = set(read_saved(path).get("entries_before", []))
    for entry in path.iterdir():
        if entry.name in before or entry.name == LOCK:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# ------------------------------------------------------------------------------------------------ store
class RunStore:
    """A run directory. ``RunStore(path, config, resume=...)``.

    Args:
        path: the directory (created if missing).
        config: the JSON-serialisable resolved config (what decides the results).
        resume: continue a run in ``path``; its saved config must equal ``config``.
            Without ``resume``, a non-empty run directory is refused (nothing is overwritten), unless its run
            failed (a ``FAILED`` marker): then it is replaced.
        rank: this process's rank in a torchrun world. Rank 0 writes ``config.json`` and appends to
            ``results.jsonl``; a rank R > 0 opens a run that rank 0 has made (its config must match) and appends
            to ``results.rank{R}.jsonl``. Every rank reads every rank's file: a unit finished by any rank is done.
        writer: this store runs the experiment: take the directory's lock now (rank 0; a second process on the
            same directory is refused), cut a torn last line off this rank's results file, and clear a
            ``FAILED`` marker on resume. Without it (a reader, e.g. a report of a running study) the lock is
            taken at the first write only.
    """

    def __init__(self, path: str | Path, config: dict, resume: bool = False, extra: dict | None = None,
                 additive: tuple[str, ...] = (), rank: int = 0, writer: bool = False):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))
        self.rank = rank
        self._hashes: set[str] | None = None  # the configs this run has had (None: a run from before hashes)
        self._locked = self._recovered = False
        self._finalizer: weakref.finalize | None = None
        if rank and not (self.path / CONFIG).exists():
            raise ConfigError(f"{path} has no config.json: rank 0 writes it before rank {rank} opens the run")
        self._continuing = RunStore.check(path, self.config, resume or rank > 0, additive, rank=rank,
                                          writer=writer)
        try:
            if writer:
                self._writable()
            self._open(extra, tuple(additive))
        except BaseException:
            self.close()
            raise
        self._done = {r["unit"] for r in self._records()}

    def _open(self, extra: dict | None, additive: tuple[str, ...]) -> None:
        """Continue the run in :attr:`path`, or make a new one (replacing a failed one)."""
        if self._continuing:
            saved = read_saved(self.path)
            self._hashes = set(saved["config_hashes"]) if "config_hashes" in saved else None
            if self.rank == 0 and any(saved["config"].get(k) != self.config.get(k) for k in additive):
                saved["config"] = self.config  # e.g. analyses added: the saved config grows
                self._write_saved(saved)
            return
        self._writable()
        if (self.path / CONFIG).exists():  # a failed run (check passed it): replaced
            _replace_failed(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        before = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        self._write_saved({"config": self.config, "versions": versions(), **(extra or {}), "entries_before": before})

    def _write_saved(self, saved: dict) -> None:
        """Write ``config.json`` (atomically), its config added to the run's ``config_hashes``."""
        self._writable()
        on_disk = read_saved(self.path).get("config_hashes", []) if (self.path / CONFIG).exists() else []
        hashes = list(dict.fromkeys([*on_disk, *saved.get("config_hashes", []), config_hash(saved["config"])]))
        write_json_atomic(self.path / CONFIG, {**saved, "config_hashes": hashes})
        self._hashes = set(hashes)

    def _writable(self) -> None:
        """Before the first write: hold the lock (rank 0) and cut a torn last line off this rank's file."""
        if self.rank == 0 and not self._locked:
            acquire_lock(self.path)
            self._locked = True
            self._finalizer = weakref.finalize(self, release_lock, str(self.path))
        if not self._recovered and self._continuing:
            self._recovered = True
            cut_torn_tail(self.results_file)
            if self.rank == 0:
                (self.path / FAILED).unlink(missing_ok=True)  # resumed: no longer a failed run
                saved = read_saved(self.path)
                if "config_hashes" not in saved:  # a run from before record hashes: its records carry none
                    self._write_saved(saved)

    def close(self) -> None:
        """Let go of the directory's lock (also done when the store is garbage collected or the process ends)."""
        if self._finalizer is not None:
            self._finalizer()
        self._locked = False

    @staticmethod
    def check(path: str | Path, config: dict, resume: bool = False, additive: tuple[str, ...] = (),
              rank: int = 0, writer: bool = True) -> bool:
        """Whether ``path`` already holds a run that ``config`` may continue; raise :class:`ConfigError` if it holds
        one and ``resume`` is off, or if its saved config differs in any key but the ``additive`` ones (keys that
        only add work, such as running the analyses too; the saved config is updated). Also refused, each in one
        line: ``path`` is ``''`` or a file; another live process writes the run (checked for a ``writer`` of rank
        0); results but no ``config.json``; a torn or garbage ``config.json``; a garbage line amid the results;
        records produced under another config. A failed run (``FAILED``) without ``resume`` is not a run to
        continue: ``False``, and the store replaces it. Cheap: call it before loading a model."""
        if not str(path).strip():
            raise ConfigError("the run directory is empty (''): give one, e.g. --out runs/NAME")
        path = Path(path)
        _check_dir(path, rank == 0 and writer)
        if not (path / CONFIG).exists():
            return False
        config = json.loads(json.dumps(config))
        saved = read_saved(path)
        if not resume and (path / FAILED).exists():
            return False
        if not resume:
            raise ConfigError(f"{path} already holds a run; pass --resume to continue it or choose another --out")
        diff = sorted(k for k in set(saved["config"]) | set(config)
                      if k not in additive and saved["config"].get(k) != config.get(k))
        if diff:
            raise ConfigError(f"{path} holds a run with a different config (differs in: {', '.join(diff)}); "
                              "use another --out or the same settings")
        _check_records(path, saved)
        return True

    @property
    def results_file(self) -> Path:
        """The file this rank appends to."""
        return self.path / rank_results(self.rank)

    def rank_files(self) -> list[Path]:
        """The results files of ranks > 0, in rank order."""
        return _rank_files(self.path)

    @staticmethod
    def _read(file: Path) -> list[dict]:
        """The whole records of a results file (a torn last line is skipped; garbage elsewhere is refused)."""
        return read_records(file)[0]

    def _records(self) -> list[dict]:
        """Every rank's records (``results.jsonl`` first, then rank order), each unit once."""
        out, seen = [], set()
        for rec in (r for f in [self.path / RESULTS, *self.rank_files()] for r in self._read(f)):
            if rec["unit"] not in seen:  # two ranks that both needed one control task's vectors record them twice
                seen.add(rec["unit"])
                out.append(rec)
        _check_hashes(self.path, out, self._hashes)
        return out

    def merge(self, groups: list[str]) -> None:
        """Fold the rank files into ``results.jsonl`` and remove them, so that a run made by several ranks reads
        like one made by a single process. Records are ordered by the position of their group (the unit's first
        path part: the task) in ``groups``; a record of an unlisted group (a control task's vectors) stays after
        the record before it in its file; each unit is kept once. Call on rank 0 once every rank has finished.

        Safe to kill: ``results.jsonl`` is replaced atomically, and rank files left behind hold only repeats."""
        rank_files = self.rank_files()
        if not rank_files:
            return
        self._writable()
        order = {g: i for i, g in enumerate(groups)}
        keyed = []
        for file in [self.path / RESULTS, *rank_files]:
            at = -1
            for rec in self._read(file):
                at = order.get(rec["unit"].split("/")[0], at)
                keyed.append((at, rec))
        tmp, seen = self.path / f"{RESULTS}.merging", set()
        with tmp.open("w") as f:
            for _, rec in sorted(keyed, key=lambda x: x[0]):  # stable: a file's own order within a group
                if rec["unit"] not in seen:
                    seen.add(rec["unit"])
                    f.write(json.dumps(rec, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / RESULTS)
        for file in rank_files:
            file.unlink()

    def done(self, unit: str) -> bool:
        return unit in self._done

    def append(self, unit: str, rows: list[dict], **info: Any) -> None:
        """Record a finished unit (flushed and fsynced before returning), tagged with the config's hash."""
        self._writable()
        record = {"unit": unit, "rows": rows, **info, "config_hash": config_hash(self.config)}
        line = json.dumps(record, default=float)
        with self.results_file.open("a+b") as f:
            if f.tell() > 0:  # a line cut by a kill mid-write must not swallow this one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write((line + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self._done.add(unit)

    def run_unit(self, unit: str, fn: Callable[[], list[dict]], **info: Any) -> bool:
        """Run ``fn`` unless ``unit`` is done; append its rows with the wall time it took (``seconds``).
        Returns whether it ran. A unit that raises marks the run failed (:func:`mark_failed`)."""
        return self.run_units([unit], lambda: {unit: fn()}, **info)

    def run_units(self, units: list[str], fn: Callable[[], dict[str, list[dict]]], **info: Any) -> bool:
        """One computation that makes several units (e.g. one analysis, one table per unit): run ``fn`` unless
        every unit is done, and append the rows ``fn()[unit]`` of each unit not done yet, the first with the wall
        time (``seconds``), the others with 0. Returns whether it ran. A unit that raises marks the run failed."""
        todo = [u for u in units if not self.done(u)]
        if not todo:
            return False
        start = time.perf_counter()
        try:
            rows = fn()
        except Exception as err:
            mark_failed(self.path, err)
            raise
        seconds = round(time.perf_counter() - start, 3)
        for i, unit in enumerate(todo):
            self.append(unit, rows[unit], seconds=seconds if i == 0 else 0.0, **info)
        return True

    def timings(self) -> dict[str, float]:
        """``{unit: seconds}`` of the units run through :meth:`run_unit`."""
        return {r["unit"]: r["seconds"] for r in self._records() if "seconds" in r}

    def table(self) -> pd.DataFrame:
        """All result rows, each tagged with its unit."""
        rows = [dict(row, unit=r["unit"]) for r in self._records() for row in r["rows"]]
        return pd.DataFrame(rows)


def store_table(run_dir: str | Path) -> pd.DataFrame:
    """Every result row of the run in ``run_dir`` (every rank's file), each tagged with its ``unit``: one row per
    element of a record's ``rows`` (``RunStore(run_dir, saved config, resume=True).table()``; reading takes no
    lock). An empty DataFrame (no columns) before the first unit finishes. The source every kind's
    ``tables(run_dir)`` is built from (:mod:`taskvec.artifacts`)."""
    return RunStore(run_dir, read_saved(run_dir)["config"], resume=True).table()


def _check_dir(path: Path, locking: bool) -> None:
    """Refuse, in one line, a run directory that is a file, is in use by another process (when ``locking``), or
    holds results but no ``config.json``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a directory: choose a directory for the run")
    owner = lock_owner(path) if locking else None
    if owner is not None:
        raise _in_use(path, owner)
    if path.is_dir() and not (path / CONFIG).exists():
        found = [name for name in RUN_OUTPUT if (path / name).exists()] + [f.name for f in _rank_files(path)]
        if found:
            raise ConfigError(f"{path} holds run output ({', '.join(found)}) but no config.json, so which config "
                              "produced it is unknown: it is not adopted; restore config.json or choose another --out")


def _check_records(path: Path, saved: dict) -> None:
    """``config.json`` holds a config this run has had, and every record of the run parses (but a torn last line)
    and was produced under one of its configs."""
    records = [r for f in [path / RESULTS, *_rank_files(path)] for r in read_records(f)[0]]
    if "config_hashes" not in saved:  # a run from before record hashes: nothing to compare
        return
    if config_hash(saved["config"]) not in saved["config_hashes"]:
        raise ConfigError(f"{path / CONFIG} was edited: its config is not one this run has had, so its results "
                          "were produced under another; restore it or choose another --out")
    _check_hashes(path, records, set(saved["config_hashes"]))


def _check_hashes(path: Path, records: list[dict], known: set[str] | None) -> None:
    """Every record with a ``config_hash`` was produced under one of the run's configs (``known``)."""
    for rec in records:
        if known is not None and rec.get("config_hash") not in known | {None}:
            raise ConfigError(f"{path}: the result of unit {rec['unit']!r} was produced under another config "
                              f"(hash {rec['config_hash']}, not one of config.json's): results from another run "
                              "or a replaced config.json; restore it or choose another --out")
