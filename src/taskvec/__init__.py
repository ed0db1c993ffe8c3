"""taskvec: task vectors in in-context learning, on real transformers.

Quick start::

    import taskvec
    lm = taskvec.load_model("smollm2-135m")
"""
from __future__ import annotations

__version__ = "0.1.0"

from taskvec.errors import TaskvecError  # noqa: E402
from taskvec.models import LM, load_model  # noqa: E402

__all__ = ["LM", "TaskvecError", "load_model", "__version__"]
