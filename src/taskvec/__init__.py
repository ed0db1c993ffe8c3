"""taskvec: task vectors in in-context learning, on real transformers.

The everyday API is this one namespace (docs/api.md has a runnable example for each name)::

    import taskvec as tv

    lm = tv.load_model("smollm2-135m")                          # or "gemma3-270m", a checkpoint dir, an HF id
    task = tv.task_for("antonyms", lm.tokenizer)
    trials = task.sample_trials(8, n_demos=6, seed=0)
    icl = tv.build_prompts(lm, trials)                          # token ids + query/answer positions + targets
    g, local = tv.read_icl_states(lm, icl)                      # [P, L, d] at the query, [P, L, n, d] at answers
    table = tv.patch_layers(lm, tv.build_prompts(lm, tv.zero_shot(trials)), g.mean(0), positions="query")
    table.groupby("layer").correct.mean()                       # accuracy per patched layer

    tv.run_study(tv.StudyConfig(model="smollm2-135m", tasks=["antonyms"], quick=True), "runs/demo")

Names are imported on first use, so ``import taskvec`` stays cheap.
"""
from __future__ import annotations

import importlib

from taskvec.errors import (AlignmentError, ChoiceError, ConfigError, DeviceError, EagerAttentionError,
                            EmptyInputError, LayerError, LayerSkippingWarning, ModelNotFoundError, NonFiniteError,
                            ParseError, PositionError, RangeError, RankError, TaskFileError, TaskvecError,
                            TokenizationError, TooFewTrialsError, WidthError)

from taskvec.version import __version__

_LAZY = {
    # models
    "load_model": "taskvec.models", "LM": "taskvec.models", "NAMED_MODELS": "taskvec.models",
    "DEFAULT_MODEL": "taskvec.models",
    # tasks and prompts
    "get_task": "taskvec.tasks", "task_for": "taskvec.tasks", "list_tasks": "taskvec.tasks",
    "register_task": "taskvec.tasks",
    "build_prompts": "taskvec.prompts", "zero_shot": "taskvec.prompts", "dummy_trials": "taskvec.prompts",
    "check_aligned": "taskvec.prompts", "Template": "taskvec.prompts", "Prompt": "taskvec.prompts",
    # reading states and vectors
    "read_states": "taskvec.intervene", "read_icl_states": "taskvec.vectors", "global_vector": "taskvec.vectors",
    "local_vectors": "taskvec.vectors", "pos_avg": "taskvec.vectors", "trial_avg": "taskvec.vectors",
    "mean_state": "taskvec.vectors", "norm_matched_random": "taskvec.vectors", "save_vectors": "taskvec.vectors",
    "load_vectors": "taskvec.vectors",
    # patching, hooks, scoring
    "patch_layers": "taskvec.sweep", "run_variants": "taskvec.sweep", "run_variants_naive": "taskvec.sweep",
    "score_variants": "taskvec.sweep", "Variant": "taskvec.sweep",
    "Edits": "taskvec.intervene", "patched_logits": "taskvec.intervene",
    "Hooks": "taskvec.hooks", "HookSites": "taskvec.hooks",
    "score": "taskvec.scoring", "targets_of": "taskvec.scoring", "read_ids": "taskvec.scoring",
    "read_logprobs": "taskvec.scoring",
    # experiments: config -> units -> run store -> report
    # (the run functions are the registry's, taskvec.kinds: they run and write report.html)
    "run": "taskvec.kinds", "KINDS": "taskvec.kinds", "run_kind": "taskvec.kinds", "write_report": "taskvec.kinds",
    "StudyConfig": "taskvec.study", "run_study": "taskvec.kinds",
    "SaliencyConfig": "taskvec.analysis.runners", "run_saliency": "taskvec.kinds",
    "DPCAConfig": "taskvec.analysis.runners", "run_dpca": "taskvec.kinds",
    "HeadsConfig": "taskvec.analysis.runners", "run_heads": "taskvec.kinds",
    "TrainConfig": "taskvec.scratch.train", "train": "taskvec.kinds",
    "EvalConfig": "taskvec.scratch.evaluate", "run_evaluation": "taskvec.kinds",
    "ComparisonConfig": "taskvec.scratch.comparison", "run_comparison": "taskvec.kinds",
    "config_from": "taskvec.experiment", "RunStore": "taskvec.runs",
    # statistics
    "wilson": "taskvec.stats", "mean_ci": "taskvec.stats", "bootstrap_ci": "taskvec.stats", "t_ci": "taskvec.stats",
    "welch_ci": "taskvec.stats",
}

ERRORS = [AlignmentError, ChoiceError, ConfigError, DeviceError, EagerAttentionError, EmptyInputError, LayerError,
          ModelNotFoundError, NonFiniteError, ParseError, PositionError, RangeError, RankError, TaskFileError,
          TaskvecError, TokenizationError, TooFewTrialsError, WidthError]
__all__ = sorted([*_LAZY, "__version__", "LayerSkippingWarning", *(e.__name__ for e in ERRORS)])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'taskvec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
