"""A self-contained HTML page: sections of text, tables and figures (PNG embedded, SVG saved beside it)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444} h2{margin-top:2em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:0.85em} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3} .figs{display:flex;flex-wrap:wrap;gap:1em} .figs img{max-width:560px;width:100%}
.note{color:#555;font-size:0.9em} td.supported{background:#d9f2d9} td.not-supported{background:#f8d7d7}
td.inconclusive{background:#f3f3f3;color:#555} td.left,th.left{text-align:left}
"""


def _close(fig: Figure) -> None:
    """Release a figure made with pyplot (a bare :class:`Figure` needs nothing)."""
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> list[Path]:
    """Save ``fig`` as ``path.png`` and ``path.svg``, close it, return both paths."""
    path = Path(path)
    files = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for f in files:
        fig.savefig(f, dpi=dpi)
    _close(fig)
    return files


class Page:
    """Collects HTML parts; figures are saved as PNG + SVG under ``figures/`` and embedded as PNG."""

    def __init__(self, title: str, figures_dir: Path):
        self.title, self.parts, self.figures_dir = title, [], Path(figures_dir)
        self.figures_dir.mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def table(self, df: pd.DataFrame, floatfmt: str = "{:.2f}") -> None:
        html_table = df.to_html(index=False, float_format=lambda x: floatfmt.format(x), na_rep="–", border=0)
        self.parts.append(f'<div class="scroll">{html_table}</div>')

    def raw(self, markup: str) -> None:
        """Append HTML the caller has escaped."""
        self.parts.append(markup)

    def figures(self, figs: list[tuple[str, Figure]]) -> None:
        imgs = []
        for name, fig in figs:
            fig.savefig(self.figures_dir / f"{name}.svg", bbox_inches="tight")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            fig.savefig(self.figures_dir / f"{name}.png", dpi=110, bbox_inches="tight")
            _close(fig)
            data = base64.b64encode(buf.getvalue()).decode()
            imgs.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        self.parts.append('<div class="figs">' + "".join(imgs) + "</div>")

    def images(self, paths: list[Path]) -> None:
        """Embed PNG files that already exist (e.g. an analysis run's figures)."""
        imgs = [f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                f'{base64.b64encode(p.read_bytes()).decode()}">' for p in paths]
        self.parts.append('<div class="figs">' + "".join(imgs) + "</div>")

    def write(self, path: Path) -> Path:
        body = "\n".join(self.parts)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'>"
                        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(self.title)}</title>"
                        f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{body}</body></html>")
        return path
