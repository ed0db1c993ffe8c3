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
