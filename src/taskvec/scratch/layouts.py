"""Token layouts of an ICL sequence (docs/spec.md B.2).

=========  ====================  =====================  ======================
layout     one example           prediction of y read    task-vector slot
=========  ====================  =====================  ======================
``x→y``    ``x  →  y``            at ``→``                at ``→``
``*xy``    ``*  x  y``            at ``x``                at ``*`` (cannot see x)
``xy``     ``x  y``               at ``x``                none
=========  ====================  =====================  ======================

A :class:`Plan` lists, for ``n`` examples, what sits at every position as an index into the stacked pieces
``[x_0..x_{n-1}, y_0..y_{n-1}, →, *]`` (so the model can build the embedding sequence with one gather), and
where predictions and task-vector slots are. The last example may be a *query* (no ``y``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from taskvec.errors import ConfigError

LAYOUTS = ("x→y", "*xy", "xy")
_ALIASES = {"x->y": "x→y", "x→y": "x→y", "*xy": "*xy", "xy": "xy"}


def canonical(layout: str) -> str:
    """``"x->y"`` → ``"x→y"``; raise :class:`ConfigError` for an unknown layout."""
    if layout not in _ALIASES:
        raise ConfigError(f"unknown layout {layout!r}; choose one of x→y (or x->y), *xy, xy")
    return _ALIASES[layout]


@dataclass(frozen=True)
class Plan:
    """Where everything sits in a sequence of ``n`` examples (the last one a query if ``query``).

    Attributes:
        layout: canonical layout name.
        n: number of examples (including the query).
        gather: ``[T]`` long — position t holds piece ``gather[t]`` of ``[x_0..x_{n-1}, y_0..y_{n-1}, →, *]``.
        pred: ``[n]`` long — position whose output predicts ``y_i``.
        slot: ``[n]`` long task-vector slot of example i, or ``None`` if the layout has none.
        x_pos: ``[n]`` long — position of ``x_i``.
    """

    layout: str
    n: int
    gather: torch.Tensor
    pred: torch.Tensor
    slot: torch.Tensor | None
    x_pos: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.gather.numel())

    def require_slot(self) -> torch.Tensor:
        """The task-vector slots, or a :class:`ConfigError` for a layout without one."""
        if self.slot is None:
            raise ConfigError(
                f"layout {self.layout!r} has no task-vector slot (TVP needs x→y or *xy)"
            )
        return self.slot


@lru_cache(maxsize=256)
def plan(layout: str, n: int, query: bool = True) -> Plan:
    """Plan a sequence of ``n`` examples; if ``query`` the last example has no ``y`` token.

    Example: ``plan("x→y", 2)`` → gather ``[x0, →, y0, x1, →]`` with ``pred = slot = [1, 4]``.
    """
    layout = canonical(layout)
    if n < 1:
        raise ConfigError(f"a sequence needs at least one example, got n={n}")
    arrow, star = 2 * n, 2 * n + 1
    gather: list[int] = []
    pred, slot, x_pos = [], [], []
    for i in range(n):
        last = query and i == n - 1
        if layout == "x→y":
            x_pos.append(len(gather))
            gather.append(i)
            pred.append(len(gather))
            slot.append(len(gather))
            gather.append(arrow)
        elif layout == "*xy":
            slot.append(len(gather))
            gather.append(star)
            x_pos.append(len(gather))
            pred.append(len(gather))
            gather.append(i)
        else:  # xy
            x_pos.append(len(gather))
            pred.append(len(gather))
            gather.append(i)
        if not last:
            gather.append(n + i)
    as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return Plan(layout, n, as_t(gather), as_t(pred), as_t(slot) if layout != "xy" else None, as_t(x_pos))


def query_plan(layout: str) -> Plan:
    """The query-only sequence used by TVP: ``[x_q, →]`` (``x→y``) or ``[*, x_q]`` (``*xy``)."""
    return plan(layout, 1, query=True)
