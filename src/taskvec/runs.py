"""Run directories: a saved config, append-only results, and resume after a kill.

Layout of a run directory::

    config.json              the resolved config + versions + seed (written once, by rank 0)
    results.jsonl            one JSON object per finished unit: {"unit": id, "rows": [...], ...} (flushed, fsynced)
    results.rank{R}.jsonl    the same, of rank R > 0 of a torchrun world (docs/distributed.md), until merged
    vectors/                 safetensors files
    report.html, figures/

A unit is the smallest piece of work whose result is kept. On resume, units already in any results file are
skipped; a run directory whose config differs from the new one is refused.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from taskvec.errors import ConfigError


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import torch
    import transformers

    import taskvec

    return {"taskvec": taskvec.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


class RunStore:
    """A run directory. ``RunStore(path, config, resume=...)``.

    Args:
        path: the directory (created if missing).
        config: the JSON-serialisable resolved config (what decides the results).
        resume: continue a run in ``path``; its saved config must equal ``config``.
            Without ``resume``, a non-empty run directory is refused (nothing is overwritten).
        rank: this process's rank in a torchrun world. Rank 0 writes ``config.json`` and appends to
            ``results.jsonl``; a rank R > 0 opens a run that rank 0 has made (its config must match) and appends
            to ``results.rank{R}.jsonl``. Every rank reads every rank's file: a unit finished by any rank is done.
    """

    def __init__(self, path: str | Path, config: dict, resume: bool = False, extra: dict | None = None,
                 additive: tuple[str, ...] = (), rank: int = 0):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))
        self.rank = rank
        cfg_file = self.path / "config.json"
        if rank and not cfg_file.exists():
            raise ConfigError(f"{path} has no config.json: rank 0 writes it before rank {rank} opens the run")
        if RunStore.check(self.path, self.config, resume or rank > 0, additive):
            saved = json.loads(cfg_file.read_text())
            if rank == 0 and any(saved["config"].get(k) != self.config.get(k) for k in additive):  # e.g. analyses
                saved["config"] = self.config
                cfg_file.write_text(json.dumps(saved, indent=2))
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            cfg_file.write_text(json.dumps({"config": self.config, "versions": versions(), **(extra or {})}, indent=2))
        self._done = {r["unit"] for r in self._records()}

    @staticmethod
    def check(path: str | Path, config: dict, resume: bool = False, additive: tuple[str, ...] = ()) -> bool:
        """Whether ``path`` already holds a run that ``config`` may continue; raise :class:`ConfigError` if it holds
        one and ``resume`` is off, or if its saved config differs in any key but the ``additive`` ones (keys that
        only add work, such as running the analyses too; the saved config is updated). Cheap: call it before
        loading a model."""
        cfg_file = Path(path) / "config.json"
        if not cfg_file.exists():
            return False
        config = json.loads(json.dumps(config))
        saved = json.loads(cfg_file.read_text())
        if not resume:
            raise ConfigError(f"{path} already holds a run; pass --resume to continue it or choose another --out")
        diff = sorted(k for k in set(saved.get("config", {})) | set(config)
                      if k not in additive and saved.get("config", {}).get(k) != config.get(k))
        if diff:
            raise ConfigError(f"{path} holds a run with a different config (differs in: {', '.join(diff)}); "
                              "use another --out or the same settings")
        return True

    @property
    def results_file(self) -> Path:
        """The file this rank appends to."""
        return self.path / ("results.jsonl" if self.rank == 0 else f"results.rank{self.rank}.jsonl")

    def rank_files(self) -> list[Path]:
        """The results files of ranks > 0, in rank order."""
        ranks = {f: f.name[len("results.rank"):-len(".jsonl")] for f in self.path.glob("results.rank*.jsonl")}
        return sorted((f for f, r in ranks.items() if r.isdigit()), key=lambda f: int(ranks[f]))

    @staticmethod
    def _read(file: Path) -> list[dict]:
        if not file.exists():
            return []
        out = []
        for line in file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write: that unit is redone
        return out

    def _records(self) -> list[dict]:
        """Every rank's records (``results.jsonl`` first, then rank order), each unit once."""
        out, seen = [], set()
        for rec in (r for f in [self.path / "results.jsonl", *self.rank_files()] for r in self._read(f)):
            if rec["unit"] not in seen:  # two ranks that both needed one control task's vectors record them twice
                seen.add(rec["unit"])
                out.append(rec)
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
        order = {g: i for i, g in enumerate(groups)}
        keyed = []
        for file in [self.path / "results.jsonl", *rank_files]:
            at = -1
            for rec in self._read(file):
                at = order.get(rec["unit"].split("/")[0], at)
                keyed.append((at, rec))
        tmp, seen = self.path / "results.jsonl.merging", set()
        with tmp.open("w") as f:
            for _, rec in sorted(keyed, key=lambda x: x[0]):  # stable: a file's own order within a group
                if rec["unit"] not in seen:
                    seen.add(rec["unit"])
                    f.write(json.dumps(rec, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / "results.jsonl")
        for file in rank_files:
            file.unlink()

    def done(self, unit: str) -> bool:
        return unit in self._done

    def append(self, unit: str, rows: list[dict], **info: Any) -> None:
        """Record a finished unit (flushed and fsynced before returning)."""
        line = json.dumps({"unit": unit, "rows": rows, **info}, default=float)
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
        Returns whether it ran."""
        if self.done(unit):
            return False
        start = time.perf_counter()
        rows = fn()
        self.append(unit, rows, seconds=round(time.perf_counter() - start, 3), **info)
        return True

    def timings(self) -> dict[str, float]:
        """``{unit: seconds}`` of the units run through :meth:`run_unit`."""
        return {r["unit"]: r["seconds"] for r in self._records() if "seconds" in r}

    def table(self) -> pd.DataFrame:
        """All result rows, each tagged with its unit."""
        rows = [dict(row, unit=r["unit"]) for r in self._records() for row in r["rows"]]
        return pd.DataFrame(rows)
