"""taskvec: task vectors in in-context learning, on real transformers.

The front door is this one namespace, about twenty names, one per concept (docs/api.md has a runnable example for
each; everything else is imported from its module, ``from taskvec.sweep import score_variants``)::

    import taskvec as tv

    lm = tv.load_model("smollm2-135m")                          # or "gemma3-270m", a checkpoint dir, an HF id
    task = tv.task_for("antonyms", lm.tokenizer)
    trials = task.sample_trials(8, n_demos=6, seed=0)
    icl = tv.build_prompts(lm, trials)                          # token ids + query/answer positions + targets
    g, local = tv.read_icl_states(lm, icl)                      # [P, L, d] at the query, [P, L, n, d] at answers
    table = tv.patch_layers(lm, tv.build_prompts(lm, tv.zero_shot(trials)), g.mean(0), positions="query")
    table.groupby("layer").correct.mean()                       # accuracy per patched layer

    tv.run(tv.StudyConfig(model="smollm2-135m", tasks=["antonyms"], quick=True), "runs/demo")   # any kind of run

Errors are ``tv.errors.*`` (all subclasses of ``tv.TaskvecError``). Names that left the front door still resolve,
with a ``FutureWarning`` that says which module to import them from. Names are imported on first use, so
``import taskvec`` stays cheap.
"""
from __future__ import annotations

import importlib
import warnings

from taskvec import errors
from taskvec.errors import TaskvecError
from taskvec.version import __version__

_LAZY = {
    # models, tasks, prompts
    "load_model": "taskvec.models",
    "list_tasks": "taskvec.tasks", "task_for": "taskvec.tasks", "register_task": "taskvec.tasks",
    "build_prompts": "taskvec.prompts", "zero_shot": "taskvec.prompts", "dummy_trials": "taskvec.prompts",
    # the vectors (paper A's global vector, local vectors, Pos Avg, Trial Avg) and patching them
    "read_icl_states": "taskvec.vectors", "global_vector": "taskvec.vectors", "pos_avg": "taskvec.vectors",
    "trial_avg": "taskvec.vectors",
    "patch_layers": "taskvec.sweep", "run_variants": "taskvec.sweep", "Variant": "taskvec.sweep",
    # experiments: config -> units of work -> run store -> report, one registry of kinds
    "run": "taskvec.kinds", "write_report": "taskvec.kinds", "KINDS": "taskvec.kinds",
    "config_from": "taskvec.experiment",
    "StudyConfig": "taskvec.study", "SaliencyConfig": "taskvec.analysis.runners",
    "DPCAConfig": "taskvec.analysis.runners", "HeadsConfig": "taskvec.analysis.runners",
    "TrainConfig": "taskvec.scratch.train", "EvalConfig": "taskvec.scratch.evaluate",
    "ComparisonConfig": "taskvec.scratch.comparison",
}

_MOVED = {
    "LM": "taskvec.models", "NAMED_MODELS": "taskvec.models", "DEFAULT_MODEL": "taskvec.models",
    "get_task": "taskvec.tasks", "check_aligned": "taskvec.prompts", "Template": "taskvec.prompts",
    "Prompt": "taskvec.prompts", "read_states": "taskvec.intervene", "local_vectors": "taskvec.vectors",
    "mean_state": "taskvec.vectors", "norm_matched_random": "taskvec.vectors", "save_vectors": "taskvec.vectors",
    "load_vectors": "taskvec.vectors", "run_variants_naive": "taskvec.sweep", "score_variants": "taskvec.sweep",
    "Edits": "taskvec.intervene", "patched_logits": "taskvec.intervene", "Hooks": "taskvec.hooks",
    "HookSites": "taskvec.hooks", "score": "taskvec.scoring", "targets_of": "taskvec.scoring",
    "read_ids": "taskvec.scoring", "read_logprobs": "taskvec.scoring", "run_kind": "taskvec.kinds",
    "run_study": "taskvec.kinds", "run_saliency": "taskvec.kinds", "run_dpca": "taskvec.kinds",
    "run_heads": "taskvec.kinds", "train": "taskvec.kinds", "run_evaluation": "taskvec.kinds",
    "run_comparison": "taskvec.kinds", "RunStore": "taskvec.runs", "wilson": "taskvec.stats",
    "mean_ci": "taskvec.stats", "bootstrap_ci": "taskvec.stats", "t_ci": "taskvec.stats", "welch_ci": "taskvec.stats",
    **{name: "taskvec.errors" for name in errors.__all__ if name != "TaskvecError"},
}
"""Names of the old front door, still resolved (with a FutureWarning naming their module)."""

__all__ = ["TaskvecError", "__version__", "errors", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        warnings.warn(f"tv.{name} left the front door: use `from {_MOVED[name]} import {name}` (docs/api.md)",
                      FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'taskvec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
