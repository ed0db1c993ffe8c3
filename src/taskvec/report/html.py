"""The one HTML writer of every report: a self-contained page of sections, text, tables and figures.

Figures are matplotlib :class:`~matplotlib.figure.Figure` objects built without pyplot (so a user's backend, e.g.
a notebook's, survives importing and using taskvec); each is saved as PNG + SVG under ``figures/`` and embedded
in the page as PNG. The page is laid out for a laptop browser: a centred column at most 1240 px wide (1208 px of
content), images scaled down to the column (never up), wide tables scrolling inside their own box, long details
collapsed.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from taskvec.figures import close
from taskvec.runs import atomic_path, write_text_atomic

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1240px;margin:1.5em auto;padding:0 16px;
     color:#222;line-height:1.4}
h1{border-bottom:2px solid #444;font-size:1.7em} h2{margin-top:1.8em;border-bottom:1px solid #ccc}
h3{margin-top:1.3em}
p{overflow-wrap:anywhere}
.note{color:#555;font-size:0.9em}
nav.toc{font-size:0.9em;margin:0.5em 0 1em} nav.toc a{margin-right:0.8em;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%;margin:0.5em 0}
.scroll.tall{max-height:32em;overflow-y:auto}
table{border-collapse:collapse;font-size:0.85em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.left,th.left{text-align:left}
td.supported{background:#d9f2d9} td.not-supported{background:#f8d7d7} td.inconclusive{background:#f3f3f3;color:#555}
td .stat,th .stat{display:block;font-size:0.85em;color:#444;white-space:nowrap}
th .stat{white-space:normal;font-weight:normal}
td .ci{color:#666;font-size:0.85em;white-space:nowrap}
.figs{display:flex;flex-wrap:wrap;gap:1em 1.5em;align-items:flex-start}
figure{margin:0;max-width:100%;display:table}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:0.85em;color:#555;display:table-caption;caption-side:bottom}
details{margin:0.8em 0} summary{cursor:pointer;font-weight:600}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:0.8em;background:#f7f7f7;padding:0.5em}
"""


def anchor(text: str) -> str:
    """An HTML id for a heading."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


def _img(alt: str, png: bytes, caption: str = "", href: str = "") -> str:
    """A figure: the PNG embedded; with ``href`` (the SVG beside the report) a click opens it full size."""
    data = base64.b64encode(png).decode()
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    img = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    if href:
        img = f'<a href="{html.escape(href)}" title="full size (SVG)">{img}</a>'
    return f"<figure>{img}{cap}</figure>"


def table_html(df: pd.DataFrame, floatfmt: str = "{:.2f}", tall: bool = False) -> str:
    """``df`` as an HTML table in its own horizontally scrolling box (``tall``: a vertically scrolling one too).
    Columns of whole numbers (e.g. layers, counts with missing values) are written without decimals."""
    df = df.copy()
    for col in df.columns:
        s = df[col]
        if s.dtype.kind == "f" and s.notna().any() and (s.dropna() % 1 == 0).all() and col in _INT_LIKE:
            df[col] = s.astype("Int64")
    markup = df.to_html(index=False, float_format=lambda x: floatfmt.format(x), na_rep="–", border=0)
    return f'<div class="scroll{" tall" if tall else ""}">{markup}</div>'


_INT_LIKE = {"layer", "n", "k", "dim", "head", "n_layers", "best_layer", "prompt", "step", "n_demos", "count",
             "tasks", "queries_per_task", "tokens_full_icl", "tokens_compressed"}


class Page:
    """Collects HTML parts; figures are saved as PNG + SVG under ``figures_dir`` and embedded as PNG.

    Example::

        page = Page("My run", run_dir / "figures")
        page.heading("Results")
        page.table(df)
        page.figures([("accuracy", fig)])            # fig: a matplotlib.figure.Figure (no pyplot needed)
        page.write(run_dir / "report.html")
    """

    def __init__(self, title: str, figures_dir: Path, dpi: int = 100):
        self.title, self.parts, self.figures_dir, self.dpi = title, [], Path(figures_dir), dpi
        self.figures_dir.mkdir(parents=True, exist_ok=True)

    def heading(self, text: str, level: int = 2, id: str | None = None) -> str:
        """Add a heading; returns its ``id`` (for :meth:`toc` links)."""
        hid = id or anchor(text)
        self.parts.append(f'<h{level} id="{html.escape(hid)}">{html.escape(text)}</h{level}>')
        return hid

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>")

    def toc(self, links: list[tuple[str, str]], label: str = "Jump to") -> None:
        """A line of links ``(text, id)`` to headings on the page."""
        items = "".join(f'<a href="#{html.escape(i)}">{html.escape(t)}</a>' for t, i in links)
        self.parts.append(f'<nav class="toc">{html.escape(label)}: {items}</nav>')

    def table(self, df: pd.DataFrame, floatfmt: str = "{:.2f}", tall: bool = False) -> None:
        self.parts.append(table_html(df, floatfmt, tall))

    def raw(self, markup: str) -> None:
        """Append HTML the caller has escaped."""
        self.parts.append(markup)

    @contextmanager
    def collapsed(self, summary: str, open: bool = False):
        """Everything added inside the ``with`` block goes into a ``<details>`` box titled ``summary``."""
        self.parts.append(f"<details{' open' if open else ''}><summary>{html.escape(summary)}</summary>")
        try:
            yield self
        finally:
            self.parts.append("</details>")

    def figures(self, figs: list[tuple[str, Figure] | tuple[str, Figure, str]]) -> None:
        """Save and embed figures side by side (wrapping to the page width): ``(name, fig)`` or
        ``(name, fig, caption)``. One figure = one idea; put small multiples in one figure."""
        items = []
        for name, fig, *caption in figs:
            with atomic_path(self.figures_dir / f"{name}.svg") as tmp:  # a kill never leaves a torn figure
                fig.savefig(tmp, bbox_inches="tight")
            with atomic_path(self.figures_dir / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=self.dpi, bbox_inches="tight")
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
            close(fig)
            items.append(_img(name, buf.getvalue(), caption[0] if caption else "", self._href(name + ".svg")))
        if items:
            self.parts.append('<div class="figs">' + "".join(items) + "</div>")

    def images(self, paths: list[Path], captions: list[str] | None = None) -> None:
        """Embed PNG files that already exist (e.g. an analysis run's figures)."""
        captions = captions or [""] * len(paths)
        items = [_img(Path(p).stem, Path(p).read_bytes(), c,
                      self._href(Path(p).with_suffix(".svg")) if Path(p).with_suffix(".svg").exists() else "")
                 for p, c in zip(paths, captions)]
        if items:
            self.parts.append('<div class="figs">' + "".join(items) + "</div>")

    def _href(self, target: str | Path) -> str:
        """``target`` (a name in ``figures_dir`` or a path) relative to the report, which sits beside
        ``figures_dir``."""
        target = self.figures_dir / target if isinstance(target, str) else Path(target)
        try:
            return Path(os.path.relpath(target.resolve(), self.figures_dir.parent.resolve())).as_posix()
        except ValueError:  # another drive (Windows)
            return ""

    def render(self) -> str:
        body = "\n".join(self.parts)
        title = html.escape(self.title)
        return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
                "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>{title}</title><style>{STYLE}</style></head>\n"
                f"<body><h1>{title}</h1>\n{body}\n</body></html>\n")

    def write(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.render())  # a kill mid-write leaves the old report, never a torn one
