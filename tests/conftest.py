"""Shared fixtures. Tests run offline on the real smollm2-135m (converted once into the cache)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


@pytest.fixture(scope="session")
def smol():
    """The real SmolLM2-135M (float32, CPU)."""
    import taskvec

    return taskvec.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def capital_trials():
    """Eight hand-written country -> capital trials of seven demonstrations each."""
    from taskvec.tasks.base import Example, Trial

    pairs = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
    return [Trial(tuple(Example(a, b) for a, b in pairs[:i] + pairs[i + 1:]), Example(*pairs[i]))
            for i in range(len(pairs))]


SMALL_STUDY = dict(model="smollm2-135m", tasks=["antonyms", "simple_string"], n_trials=4, n_select=4, n_eval=6,
                   n_local_select=3, n_local_eval=4, n_demos=4, demo_counts=[0, 2], spans=["single", "from"],
                   kofn_subsets=1, fv_n_cie=2, fv_k=3, fv_n_tokens=3)
"""A small real study (a knowledge and a categorization task, both spans): every unit, figure and verdict."""


@pytest.fixture(scope="session")
def small_study(smol, tmp_path_factory):
    """The run directory of :data:`SMALL_STUDY` on smollm2-135m, run once per test session (the study tests read
    its tables, the browser test its report)."""
    from taskvec.kinds import run_study
    from taskvec.study import StudyConfig

    out = tmp_path_factory.mktemp("study") / "run"
    run_study(StudyConfig(**SMALL_STUDY), out, lm=smol)
    return out
