"""The registry of run kinds: the top floor, and the only module that imports both the experiments and the reports.

Every kind of run — the study, the three analyses, and the from-scratch training, evaluation and comparison — has
one name used everywhere (the ``kind`` in ``config.json``, the CLI command, this registry, the report), one config
class, one function that runs it into a directory, the entries that directory may hold (its ``artifacts``, named in
:mod:`taskvec.artifacts`), one function that reads the directory's tables from its run store (``tables``: what the
report and the claims read), and one function that writes its ``report.html`` from the directory alone::

    import taskvec as tv

    cfg = tv.SaliencyConfig(model="smollm2-135m", tasks=["antonyms"], n_trials=4)
    run_dir = tv.run(cfg, "runs/saliency")        # the kind is the config's; report.html written at the end
    tv.write_report(run_dir)                      # again, from the directory alone
    tv.KINDS["saliency"].config                   # SaliencyConfig
    tv.KINDS["saliency"].tables(run_dir)["per_layer"]   # DataFrame, from results.jsonl

The experiments (:mod:`taskvec.study`, :mod:`taskvec.analysis.runners`, :mod:`taskvec.scratch`) write tables and
never import a report; the reports (:mod:`taskvec.report`) read run directories and never run anything. Only here
are the two joined, so the package's imports point one way (``tests/test_layout.py`` walks them).
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import taskvec.artifacts as A
from taskvec.errors import ConfigError


def _load(ref: str) -> Any:
    """``"module:attr"`` -> the object (imported on first use, so ``import taskvec`` stays cheap)."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Kind:
    """One kind of run: its ``name`` (config, CLI, report), ``config`` class, ``run(cfg, out, *, resume, ...) ->
    run directory`` (writes no report), ``report(run_dir) -> report.html``, ``tables(run_dir) -> {name:
    DataFrame}`` (lazy, from the run store: what the report and the claims read), ``artifacts`` (the names of the
    entries its run and report may write at the top of the directory; hidden files such as ``.lock`` aside) and
    ``aliases`` (kinds that older ``config.json`` files name)."""

    name: str
    config_ref: str
    run_ref: str
    report_ref: str
    tables_ref: str
    artifacts: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    takes_lm: bool = True

    @property
    def config(self) -> type:
        return _load(self.config_ref)

    def run(self, cfg, out: str | Path, *, resume: bool = False, lm=None, **options: Any) -> Path:
        """Run ``cfg`` into ``out``; returns the run directory (no report)."""
        fn = _load(self.run_ref)
        if lm is not None:
            if not self.takes_lm:
                raise ConfigError(f"a {self.name} run loads its own models: do not pass lm=")
            options["lm"] = lm
        path = fn(cfg, out, resume=resume, **options)
        return Path(out) if self.name == "train" else Path(path)  # train returns its model directory

    def report(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/report.html`` from the directory alone; returns its path."""
        return _load(self.report_ref)(Path(run_dir))

    def tables(self, run_dir: str | Path) -> A.Tables:
        """The tables of the run in ``run_dir`` by name (each a ``pandas.DataFrame``, built from its run store when
        first read)."""
        return _load(self.tables_ref)(Path(run_dir))


_EVERY_RUN = (A.CONFIG, A.RESULTS, A.REPORT, A.FAILED)
"""What every kind's directory may hold (``FAILED``: the run stopped on an error)."""

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("study", "taskvec.study:StudyConfig", "taskvec.study:run_study", "taskvec.report.local_global:study_report",
         "taskvec.study_tables:study_tables",
         (*_EVERY_RUN, A.VECTORS, A.FIGURES, A.ANALYSES, A.RESULTS_PARQUET, A.SUMMARY, A.EVALUATION, A.METHODS)),
    Kind("saliency", "taskvec.analysis.runners:SaliencyConfig", "taskvec.analysis.runners:run_saliency",
         "taskvec.report.runs:saliency_report", "taskvec.analysis.tables:saliency_tables",
         (*_EVERY_RUN, A.FIGURES, A.SALIENCY, A.SALIENCY_PER_LAYER)),
    Kind("dpca", "taskvec.analysis.runners:DPCAConfig", "taskvec.analysis.runners:run_dpca",
         "taskvec.report.runs:dpca_report", "taskvec.analysis.tables:dpca_tables",
         (*_EVERY_RUN, A.FIGURES, A.DPCA_PER_LAYER, A.DPCA_ABLATION, A.DPCA_ABLATION_SUMMARY, A.DPCA_PROBES,
          A.DPCA_BASELINES, A.DPCA_C8)),
    Kind("heads", "taskvec.analysis.runners:HeadsConfig", "taskvec.analysis.runners:run_heads",
         "taskvec.report.runs:heads_report", "taskvec.analysis.tables:heads_tables",
         (*_EVERY_RUN, A.FIGURES, A.HEADS, A.HEADS_SUMMARY, A.HEADS_TOP, A.HEADS_LOCAL, A.HEADS_LOCAL_SUMMARY,
          A.HEADS_LOCAL_TOP, A.HEADS_LOCAL_BASELINES, A.HEADS_FUNCTION_VECTOR, A.HEADS_OVERLAP)),
    Kind("train", "taskvec.scratch.train:TrainConfig", "taskvec.scratch.train:train",
         "taskvec.report.runs:write_training_report", "taskvec.scratch.train:train_tables",
         (*_EVERY_RUN, A.FIGURES, A.LOG_CSV, A.LOG_JSONL, A.TENSORBOARD, A.CHECKPOINTS, A.MODEL),
         aliases=("training",), takes_lm=False),
    Kind("evaluate", "taskvec.scratch.evaluate:EvalConfig", "taskvec.scratch.evaluate:run_evaluation",
         "taskvec.report.runs:write_evaluation_report", "taskvec.scratch.evaluate:evaluation_tables",
         (*_EVERY_RUN, A.FIGURES, A.EVAL_RESULTS), aliases=("scratch-evaluate", "evaluation"), takes_lm=False),
    Kind("compare", "taskvec.scratch.comparison:ComparisonConfig", "taskvec.scratch.comparison:run_comparison",
         "taskvec.report.comparison:write_comparison_report", "taskvec.scratch.comparison:comparison_tables",
         (*_EVERY_RUN, A.FIGURES, A.MODELS, A.SUMMARY, A.VERDICTS), aliases=("scratch-comparison", "comparison"),
         takes_lm=False),
)}
_BY_ALIAS = {alias: k for k in KINDS.values() for alias in (k.name, *k.aliases)}


def kind_named(name: str) -> Kind:
    """The kind called ``name`` (or one of its older names); a one-line :class:`ConfigError` otherwise."""
    try:
        return _BY_ALIAS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown run kind {name!r}: one of {', '.join(KINDS)}") from None


def kind_of_config(cfg) -> Kind:
    """The kind whose config class ``cfg`` is an instance of."""
    for k in KINDS.values():
        if type(cfg).__name__ == k.config_ref.split(":")[1] and isinstance(cfg, k.config):
            return k
    raise ConfigError(f"{type(cfg).__name__} is not the config of a run kind: give one of "
                      f"{', '.join(k.config_ref.split(':')[1] for k in KINDS.values())}")


def run_kind(run_dir: str | Path) -> str:
    """The kind of the run in ``run_dir`` (its name in :data:`KINDS`): the ``kind`` in its ``config.json``, which
    every kind writes (:func:`taskvec.experiment.open_store` and the scratch runs' stores). Directories of older
    versions (no ``kind``) are recognized by :func:`_older_kind`. A one-line :class:`ConfigError` for a directory
    that holds no taskvec run."""
    run_dir = Path(run_dir)
    not_a_run = (f"{run_dir} is not a study run directory or any other taskvec run (no config.json or "
                 "results.json): give the --out directory of a study, analysis, train or evaluate command")
    if not run_dir.is_dir():
        raise ConfigError(not_a_run)
    saved: Any = {}
    if (run_dir / A.CONFIG).exists():
        try:
            saved = json.loads((run_dir / A.CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{run_dir / A.CONFIG} is not valid JSON ({err}); is {run_dir} a taskvec run?") \
                from None
    if not isinstance(saved, dict):
        raise ConfigError(not_a_run)
    if str(saved.get("kind") or "").lower() in _BY_ALIAS:  # every run this taskvec writes
        return _BY_ALIAS[str(saved["kind"]).lower()].name
    return _older_kind(run_dir, saved, not_a_run)


def _older_kind(run_dir: Path, saved: dict, not_a_run: str) -> str:
    """The kind of a run directory written before every kind saved its ``kind`` in ``config.json``, guessed from
    its fields and files. For old directories only: nothing written today reaches this."""
    cfg = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    name = str(saved.get("kind") or cfg.get("analysis") or "").lower()
    if name in _BY_ALIAS:  # analyses once named themselves in their config
        return _BY_ALIAS[name].name
    if not name and {"tasks", "n_select", "n_eval"} <= set(cfg):
        return "study"
    if (run_dir / A.EVAL_RESULTS).exists() or (not name and {"models", "analyses"} <= set(cfg)):
        return "evaluate"
    if (run_dir / A.LOG_CSV).exists() or (run_dir / A.LOG_JSONL).exists():
        return "train"
    raise ConfigError(not_a_run)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` for any run from the files in the directory alone; returns its path. Also
    mid-run: it shows what has finished (a line cut by a kill is skipped; a garbage line amid the results is a
    one-line error, :func:`taskvec.runs.skipped_lines`)."""
    from taskvec.runs import skipped_lines

    kind = KINDS[run_kind(run_dir)]
    skipped_lines(Path(run_dir))
    return kind.report(run_dir)


def _rank0() -> bool:
    """Whether this process writes reports: the only one, or rank 0 under ``torchrun``."""
    return os.environ.get("RANK", "0") == "0"


def run(cfg, out: str | Path, *, resume: bool = False, lm=None, report: bool = True, **options: Any) -> Path:
    """Run ``cfg`` (its kind is its config class) into ``out`` and write ``report.html``; returns the run directory.

    Args:
        cfg: a run kind's config (:data:`KINDS`).
        out: the run directory; with ``resume=True`` an interrupted run there is continued.
        lm: an already loaded model (the study and the analyses).
        report: write ``report.html`` at the end (rank 0 only under ``torchrun``).
        options: the kind's own options (``progress``, ``workers``, ``device``, ...).
    """
    kind = kind_of_config(cfg)
    path = kind.run(cfg, out, resume=resume, lm=lm, **options)
    if report and _rank0():
        kind.report(path)
    return path


def _named(kind: str, doc: str) -> Callable[..., Path]:
    def fn(cfg, out: str | Path, resume: bool = False, lm=None, report: bool = True, **options: Any) -> Path:
        if not isinstance(cfg, KINDS[kind].config):
            raise ConfigError(f"run_{kind} takes a {KINDS[kind].config.__name__}, got {type(cfg).__name__}")
        return run(cfg, out, resume=resume, lm=lm, report=report, **options)
    fn.__name__ = fn.__qualname__ = f"run_{kind}"
    fn.__doc__ = doc + " Writes ``report.html`` unless ``report=False``; returns the run directory (:func:`run`)."
    return fn


run_study = _named("study", "The local-vs-global study (:func:`taskvec.study.run_study`).")
run_saliency = _named("saliency", "Saliency flows (:func:`taskvec.analysis.runners.run_saliency`).")
run_dpca = _named("dpca", "dPCA with subspace ablation (:func:`taskvec.analysis.runners.run_dpca`).")
run_heads = _named("heads", "Head attribution (:func:`taskvec.analysis.runners.run_heads`).")
run_evaluation = _named("evaluate", "From-scratch evaluation (:func:`taskvec.scratch.evaluate.run_evaluation`).")
run_comparison = _named("compare", "From-scratch comparison (:func:`taskvec.scratch.comparison.run_comparison`).")


def train(cfg, out_dir: str | Path, resume: bool = False, report: bool = True, **options: Any) -> Path:
    """Train a from-scratch model (:func:`taskvec.scratch.train.train`) and write its ``report.html`` (rank 0);
    returns the final model's directory (``out_dir/model``), as :func:`taskvec.scratch.train.train` does."""
    from taskvec.scratch.train import train as train_model

    if not isinstance(cfg, KINDS["train"].config):
        raise ConfigError(f"train takes a TrainConfig, got {type(cfg).__name__}")
    final = train_model(cfg, out_dir, resume=resume, **options)
    if report and _rank0():
        KINDS["train"].report(out_dir)
    return final


__all__ = ["KINDS", "Kind", "kind_named", "kind_of_config", "run", "run_kind", "write_report", "run_study",
           "run_saliency", "run_dpca", "run_heads", "run_evaluation", "run_comparison", "train"]
