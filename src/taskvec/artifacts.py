"""The run-directory schema: every file name a run, its report or a model directory uses, defined once, and
:class:`Tables`, the lazy ``{name: DataFrame}`` that each kind's ``tables(run_dir)`` returns.

A run directory (``tv.run(cfg, out)``) holds ``config.json`` (the kind, the resolved config, versions) and
``results.jsonl`` (the run store, :class:`taskvec.runs.RunStore`): the store is the source. Every other file is an
export written from it (a CSV or Parquet table for other tools, ``report.html`` and ``figures/`` for people), and
nothing reads an export back: the reports and the claims read a kind's tables (``KINDS[kind].tables(run_dir)``),
which are built from the store. Each kind declares the entries it may write (``KINDS[kind].artifacts``);
``tests/test_kinds_contract.py`` checks them against what a run writes, and ``tests/test_artifacts.py`` that no other
module spells a file name itself::

    import taskvec.artifacts as A
    run_dir / A.RESULTS                              # runs/x/results.jsonl
    tv.KINDS["dpca"].tables(run_dir)["per_layer"]    # the table dpca_per_layer.csv exports

The base floor: imports nothing of taskvec (``tests/test_layout.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# ------------------------------------------------------------------------------------------ every run
CONFIG = "config.json"            # {"kind", "config", "versions", "config_hashes", ...}, written atomically
RESULTS = "results.jsonl"         # the run store: one record {"unit", "rows", "config_hash", ...} per finished unit
RANK_RESULTS = "results.rank{rank}.jsonl"  # rank R > 0 of a torchrun world, until merged (:func:`rank_results`)
FAILED = "FAILED"                 # the run stopped on an error
LOCK = ".lock"                    # the pid of the process writing the run
TAKEN = ".taken"                  # torchrun ranks' work queue (World.take), removed when the run ends
REPORT = "report.html"            # written from the directory alone (``tv.write_report``)
FIGURES = "figures"               # PNG + SVG of the report (and of the analyses' runners)

# ------------------------------------------------------------------------------------------ study
VECTORS = "vectors"               # safetensors of the source vectors, saved before the units that read them
ANALYSES = "analyses"             # a study's --with-analyses runs: analyses/saliency, analyses/dpca, analyses/heads
SUMMARY = "summary.csv"           # the verdicts (also a comparison's aggregate table)
EVALUATION = "evaluation.csv"     # evaluation-split accuracy per condition
METHODS = "methods.csv"           # every vector method side by side
RESULTS_PARQUET = "results.parquet"  # the store's rows, one table

# ------------------------------------------------------------------------------------------ saliency
SALIENCY = "saliency.parquet"                 # per (task, prompt, layer): the four flows
SALIENCY_PER_LAYER = "saliency_per_layer.csv"  # per (task, layer): mean flow with its interval

# ------------------------------------------------------------------------------------------ dPCA
DPCA_PER_LAYER = "dpca_per_layer.csv"
DPCA_ABLATION = "dpca_ablation.parquet"
DPCA_ABLATION_SUMMARY = "dpca_ablation_summary.csv"
DPCA_PROBES = "dpca_probes.csv"
DPCA_BASELINES = "dpca_baselines.json"
DPCA_C8 = "dpca_c8.json"

# ------------------------------------------------------------------------------------------ heads
HEADS = "heads.parquet"
HEADS_SUMMARY = "heads_summary.csv"
HEADS_TOP = "heads_top.csv"
HEADS_LOCAL = "heads_local.parquet"
HEADS_LOCAL_SUMMARY = "heads_local_summary.csv"
HEADS_LOCAL_TOP = "heads_local_top.csv"
HEADS_LOCAL_BASELINES = "heads_local_baselines.csv"
HEADS_FUNCTION_VECTOR = "heads_function_vector.csv"
HEADS_OVERLAP = "heads_overlap.csv"

# ------------------------------------------------------------------------------------------ from scratch
LOG_CSV = "log.csv"               # training: the store's rows, an export for other tools (never read back)
LOG_JSONL = "log.jsonl"           # training: every logged row as it happens (for ``tail -f``)
TENSORBOARD = "tb"                # training: TensorBoard event files
CHECKPOINTS = "checkpoints"       # training: ``step-NNNNNNN/`` (model + ``trainer.pt``)
TRAINER_STATE = "trainer.pt"      # a checkpoint's step and optimizer state
MODEL = "model"                   # training: the final model directory
EVAL_RESULTS = "results.json"     # evaluation: ``{label: evaluate_model(...)}``
VERDICTS = "verdicts.csv"         # comparison: the verdicts of the scratch claims
MODELS = "models"                 # comparison: one training run directory per model

# ------------------------------------------------------------------------------------------ model directories
MODEL_CONFIG = "config.json"                 # a Hugging Face model directory's config (not a run's)
MODEL_WEIGHTS = "model.safetensors"
MODEL_SOURCE = "taskvec_source.json"         # where a converted named model came from
SHA256_MEMO = "sha256.json"                  # the cache's memo of weight hashes

RUN_OUTPUT = (RESULTS, VECTORS, CHECKPOINTS)
"""Entries that only a run writes: a directory holding one of them (or a rank file) but no ``config.json`` is a
damaged run, never adopted as a fresh one."""


def rank_results(rank: int) -> str:
    """The results file of ``rank`` (``results.jsonl`` for rank 0, ``results.rank{R}.jsonl`` above)."""
    return RESULTS if rank == 0 else RANK_RESULTS.format(rank=rank)


class Tables(Mapping[str, "pd.DataFrame"]):
    """A run directory's tables by name, each built on first access and then kept: ``Tables({"per_layer": fn})``
    calls ``fn()`` (returns a ``pandas.DataFrame``) only when ``tables["per_layer"]`` is read, so asking for one
    table reads only what that one needs. A table that does not apply to a run (e.g. the writers of a heads run
    without ``--modes writers``) is an empty DataFrame."""

    def __init__(self, makers: Mapping[str, Callable[[], "pd.DataFrame"]]):
        self._makers = dict(makers)
        self._made: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> "pd.DataFrame":
        if name not in self._made:
            self._made[name] = self._makers[name]()  # KeyError for a name the kind does not have
        return self._made[name]

    def __contains__(self, name: object) -> bool:
        return name in self._makers  # without building the table (Mapping's would)

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __repr__(self) -> str:
        return f"Tables({', '.join(self._makers)})"
