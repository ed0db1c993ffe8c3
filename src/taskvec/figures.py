"""Saving figures: matplotlib :class:`~matplotlib.figure.Figure` objects built without pyplot (so a user's
backend, e.g. a notebook's, survives importing and using taskvec), each written as PNG + SVG.

This is the engine floor's one plotting helper: the analyses save their figures with it, and the reports (a floor
above) embed them (:mod:`taskvec.report.html`).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def close(fig: Figure) -> None:
    """Release a figure made with pyplot (a bare :class:`Figure` needs nothing; pyplot is never imported here)."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``path.png`` and ``path.svg`` (cropped to what is drawn, so no title is cut off), close
    it, return both paths."""
    path = Path(path)
    files = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for f in files:
        fig.savefig(f, dpi=dpi, bbox_inches="tight")
    close(fig)
    return files
