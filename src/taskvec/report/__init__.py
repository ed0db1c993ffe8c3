"""Reports: one self-contained ``report.html`` per run directory, written by one HTML writer
(:class:`taskvec.report.html.Page`) with figures that never touch the user's matplotlib backend.

:func:`write_report` is the one entry point (``taskvec report RUN_DIR``): it reads the run directory's
``config.json`` (and ``results.json``) and dispatches on the run's kind.
"""
from __future__ import annotations

import json
from pathlib import Path

ANALYSIS_KINDS = ("saliency", "dpca", "heads")


def run_kind(run_dir: str | Path) -> str:
    """What ran in ``run_dir``: ``"study"``, ``"saliency"``, ``"dpca"``, ``"heads"``, ``"evaluation"`` (from-scratch
    models, ``taskvec evaluate``), ``"training"`` (``taskvec train``) or ``"comparison"`` (``taskvec compare``).
    Raises :class:`ConfigError` (one line)
    for a directory that holds no taskvec run."""
    from taskvec.errors import ConfigError

    run_dir = Path(run_dir)
    not_a_run = (f"{run_dir} is not a study run directory or any other taskvec run (no config.json or "
                 "results.json): give the --out directory of a study, analysis, train or evaluate command")
    if not run_dir.is_dir():
        raise ConfigError(not_a_run)
    saved: dict = {}
    if (run_dir / "config.json").exists():
        try:
            saved = json.loads((run_dir / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{run_dir / 'config.json'} is not valid JSON ({err}); is {run_dir} a taskvec run?") \
                from None
    if not isinstance(saved, dict):
        raise ConfigError(not_a_run)
    cfg = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    kind = str(saved.get("kind") or cfg.get("analysis") or "").lower()
    if kind in ANALYSIS_KINDS:
        return kind
    if kind == "scratch-comparison":
        return "comparison"
    if kind == "study" or (not kind and {"tasks", "n_select", "n_eval"} <= set(cfg)):
        return "study"
    if "eval" in kind or (run_dir / "results.json").exists() or (not kind and {"models", "analyses"} <= set(cfg)):
        return "evaluation"
    if "train" in kind or (run_dir / "log.csv").exists() or (run_dir / "log.jsonl").exists():
        return "training"
    raise ConfigError(not_a_run)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` for any run (a study, an analysis, a from-scratch evaluation or training)
    from the files in the directory alone; returns its path. Also mid-run: it shows what has finished (a line
    cut by a kill is skipped; :func:`taskvec.runs.skipped_lines` counts them)."""
    from taskvec.runs import skipped_lines

    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    skipped_lines(run_dir)  # damaged results (a garbage line amid them) are a one-line error, not a report
    if kind == "study":
        from taskvec.report.local_global import write_report as study_report

        return study_report(run_dir)
    from taskvec.report import runs

    if kind in ANALYSIS_KINDS:
        return runs.write_analysis_report(run_dir, kind)
    if kind == "evaluation":
        return runs.write_evaluation_report(run_dir)
    if kind == "comparison":
        from taskvec.scratch.comparison_report import write_comparison_report

        return write_comparison_report(run_dir)
    return runs.write_training_report(run_dir)


__all__ = ["write_report", "run_kind"]
