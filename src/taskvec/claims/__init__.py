"""Both papers' claims as verdicts computed from a run, never written by hand: one floor, three modules.

* :mod:`~taskvec.claims.rules`: what a verdict is (``supported`` / ``not supported`` / ``inconclusive`` from an
  interval and a threshold), the parts and controls a verdict row is made of;
* :mod:`~taskvec.claims.local_global`: Part A, the local-vs-global paper's C1–C8 on a study's evaluation split
  (C7 from the saliency rows, C8 from the dPCA's statistics), adjusted as a family per model;
* :mod:`~taskvec.claims.from_scratch`: Part B, the from-scratch paper's B0–B5 over the seeds of a vanilla-vs-TVP-loss
  comparison.

The rules sit above the methods that compute the numbers and below the experiments that run them: an experiment's
report and its claims read the same tables (docs/architecture.md#floors).

Example::

    from taskvec.claims import verdicts           # Part A
    verdicts(study_table, n_layers=18)            # claim, task, statistic, estimate, low, high, verdict, ...
    from taskvec.claims import scratch_verdicts   # Part B
    scratch_verdicts(seed_table, layouts=["x→y"], vanilla="vanilla", tvp_arms=["tvp-l2"])
"""
from taskvec.claims.from_scratch import CLAIMS as SCRATCH_CLAIMS
from taskvec.claims.from_scratch import MIN_ICL_GAIN, ScratchClaimRules
from taskvec.claims.from_scratch import verdicts as scratch_verdicts
from taskvec.claims.local_global import (CLAIMS, COLUMNS, ClaimRules, TaskResults, adjust, geometry_summary,
                                         verdict_grid, verdicts)
from taskvec.claims.rules import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Control, Part, combine, greater, less,
                                  one_sided_p)

__all__ = ["CLAIMS", "COLUMNS", "ClaimRules", "TaskResults", "adjust", "geometry_summary", "verdict_grid", "verdicts",
           "SCRATCH_CLAIMS", "MIN_ICL_GAIN", "ScratchClaimRules", "scratch_verdicts", "SUPPORTED", "NOT_SUPPORTED",
           "INCONCLUSIVE", "Control", "Part", "combine", "greater", "less", "one_sided_p"]
