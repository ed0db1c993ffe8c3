"""Analyses of where task information lives and flows.

* :mod:`~taskvec.analysis.saliency` — attention x gradient information flow (docs/spec.md A.5);
* :mod:`~taskvec.analysis.dpca` — the dPCA experiment (A.6), made of :mod:`~taskvec.analysis.demix` (dPCA
  numerics), :mod:`~taskvec.analysis.geometry` (Mahalanobis, crossnobis), :mod:`~taskvec.analysis.subspaces`
  (ablation), :mod:`~taskvec.analysis.probes` (linear probes, one layer's analysis) and
  :mod:`~taskvec.analysis.dpca_c8` (the numbers claim C8 reads); figures in :mod:`taskvec.report.dpca_figures`;
* :mod:`~taskvec.analysis.heads` — per-head mean-ablation and ICL -> dummy patching at the query (B.7);
  :mod:`~taskvec.analysis.local_heads` — the heads that write and read the local vectors, and top-set overlaps;
* :mod:`~taskvec.analysis.function_vectors` — Todd et al.'s function vectors (head means, indirect effects);
* :mod:`~taskvec.analysis.runners` — the same into a run directory; :mod:`~taskvec.analysis.cli` — their commands.

Submodules are imported lazily (dPCA pulls in numba).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "SaliencyResult": "taskvec.analysis.saliency",
    "plot_flows": "taskvec.analysis.saliency", "eager_attention": "taskvec.analysis.saliency",
    "EagerAttentionError": "taskvec.analysis.saliency",
    "dpca_analysis": "taskvec.analysis.dpca", "DPCAResult": "taskvec.analysis.dpca",
    "plot_dpca": "taskvec.report.dpca_figures", "TooFewTrialsError": "taskvec.analysis.dpca",
    "c8_statistics": "taskvec.analysis.dpca", "ablation_summary": "taskvec.analysis.dpca",
    "probe_accuracy": "taskvec.analysis.dpca",
    "head_effects": "taskvec.analysis.heads", "attention_to_answers": "taskvec.analysis.heads",
    "summarize": "taskvec.analysis.heads", "top_heads": "taskvec.analysis.heads", "plot_heads": "taskvec.analysis.heads",
    "writer_effects": "taskvec.analysis.local_heads", "reader_effects": "taskvec.analysis.local_heads",
    "head_overlap": "taskvec.analysis.local_heads",
    "run_saliency": "taskvec.analysis.runners", "run_dpca": "taskvec.analysis.runners",
    "run_heads": "taskvec.analysis.runners",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taskvec.analysis' has no attribute {name!r}")
