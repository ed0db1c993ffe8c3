"""Run directories: a saved config, append-only results, and resume after a kill.

Layout of a run directory::

    config.json      the resolved config + versions + seed (written once)
    results.jsonl    one JSON object per finished unit: {"unit": id, "rows": [...], ...} (flushed and fsynced)
    vectors/         safetensors files
    report.html, figures/

A unit is the smallest piece of work whose result is kept. On resume, units already in ``results.jsonl`` are
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
    """

    def __init__(self, path: str | Path, config: dict, resume: bool = False, extra: dict | None = None,
                 additive: tuple[str, ...] = ()):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))
        cfg_file = self.path / "config.json"
        if RunStore.check(self.path, self.config, resume, additive):
            saved = json.loads(cfg_file.read_text())
            if any(saved["config"].get(k) != self.config.get(k) for k in additive):  # e.g. analyses added later
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
        return self.path / "results.jsonl"

    def _records(self) -> list[dict]:
        if not self.results_file.exists():
            return []
        out = []
        for line in self.results_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write: that unit is redone
        return out

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
