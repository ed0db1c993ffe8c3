"""What a verdict is, for both papers' claims: the three verdicts, the interval tests that give them, and the parts
and controls a verdict row is made of."""
from __future__ import annotations

import math
from dataclasses import dataclass

from taskvec.stats import Z95

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def greater(low: float, high: float, threshold: float) -> str:
    """Verdict for "statistic > threshold" from its interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if low > threshold:
        return SUPPORTED
    if high <= threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def less(low: float, high: float, threshold: float) -> str:
    """Verdict for "statistic < threshold" from its interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if high < threshold:
        return SUPPORTED
    if low >= threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def combine(*parts: str) -> str:
    """All parts supported -> supported; any part not supported -> not supported; else inconclusive."""
    if parts and all(p == SUPPORTED for p in parts):
        return SUPPORTED
    if any(p == NOT_SUPPORTED for p in parts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def fmt_ci(est: float, low: float, high: float) -> str:
    """``est [low, high]`` to two decimals."""
    return f"{est:.2f} [{low:.2f}, {high:.2f}]"


def one_sided_p(ci: tuple[float, float, float], threshold: float, direction: str) -> float:
    """Approximate one-sided p-value of "statistic > threshold" (``direction=">"``; ``">="``, ``"<"``, ``"<="``
    alike) from its 95% interval (normal approximation: se = (high − low) / 3.92). A zero-width interval is
    decided by its estimate (``">"`` needs it strictly above, ``">="`` on or above). NaN when not finite."""
    est, low, high = ci
    if not all(math.isfinite(x) for x in ci):
        return float("nan")
    sign = 1.0 if direction.startswith(">") else -1.0
    se = (high - low) / (2 * Z95)
    if se <= 0:
        gap = sign * (est - threshold)
        return 0.0 if (gap > 0 or (gap == 0 and direction.endswith("="))) else 1.0
    return 0.5 * math.erfc(sign * (est - threshold) / se / math.sqrt(2))


@dataclass
class Part:
    """One interval test of a claim: ``statistic <direction> threshold``."""

    label: str
    ci: tuple[float, float, float]
    threshold: float
    direction: str = ">"

    @property
    def verdict(self) -> str:
        return (greater if self.direction == ">" else less)(self.ci[1], self.ci[2], self.threshold)

    def p(self, against: bool = False) -> float:
        """One-sided p of the claim's side, or (``against``) of the other side (``≤`` for ``>``, ``≥`` for ``<``)."""
        other = "<=" if self.direction == ">" else ">="
        return one_sided_p(self.ci, self.threshold, other if against else self.direction)

    def text(self) -> str:
        return f"{self.label} {fmt_ci(*self.ci)} {self.direction} {self.threshold:g}"


@dataclass
class Control:
    """A control reported beside a verdict: a positive control has to pass (else the verdict is inconclusive);
    a null control is what an artefact would give, shown with its value."""

    text: str
    passed: bool | None = None
