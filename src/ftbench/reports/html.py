"""Self-contained HTML and Markdown pieces: figures as base64 PNG, tables from pandas, and a
report's sections made of them.

Nothing here needs the network: styles are inline and every image is embedded in the page.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ftbench.files import check_folder_target

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img.plot { max-width: 100%; display: block; margin: 1em 0; }
.wide { overflow-x: auto; } .note { color: #555; font-size: .9em; }
.slower { color: #b00; font-weight: bold; } .faster { color: #070; }
"""


def png_base64(figure: Figure, dpi: int = 100) -> str:
    """The figure as a base64-encoded PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_html(figure: Figure, alt: str) -> str:
    """An <img> holding the figure as an embedded PNG."""
    return (
        f'<img class="plot" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{png_base64(figure)}">'
    )


def table_html(table: pd.DataFrame) -> str:
    """The table as HTML, scrolling sideways when wider than the page."""
    inner = table.to_html(index=False, border=0, na_rep="n/a", escape=True)
    return f'<div class="wide">{inner}</div>'


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pipes escaped; missing values as n/a)."""

    def cell(value: object) -> str:
        return "n/a" if pd.isna(value) else str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "|".join(" --- " for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def is_page(path: str | os.PathLike[str], title: str) -> bool:
    """Whether the file `path` is a page that `page` wrote with `title`."""
    try:
        with open(path, "rb") as file:
            start = file.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    return start.startswith("<!DOCTYPE html>") and f"<title>{html.escape(title)}</title>" in start


def check_site_folder(
    folder: str | os.PathLike[str],
    page_name: str,
    title: str,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Refuse to write a site (a page `page_name` titled `title`, with what goes beside it) into
    a folder that holds things other than its `inputs` (`files.check_folder_target`). A folder
    whose `page_name` is such a page was written by the same command: it is renewed."""
    check_folder_target(
        folder, f"the {title}", force, inputs=inputs,
        written_before=lambda path: is_page(Path(path) / page_name, title),
    )  # fmt: skip


@dataclass(frozen=True)
class Section:
    """One part of a report, as HTML and as Markdown."""

    title: str
    html: str
    markdown: str


def section(
    title: str,
    source: str,
    summary: str,
    figures: Sequence[str],
    tables: Sequence[pd.DataFrame],
    note: str = "",
) -> Section:
    """A report section: its title, the file it shows, a summary line, an optional note (why a
    file is shown only as a table), the figures (`figure_html`), then the tables."""
    notes = [html.escape(text) for text in (source, note) if text]
    body = (
        f"<h2>{html.escape(title)}</h2>"
        + "".join(f"<p class=note>{text}</p>" for text in notes)
        + f"<p>{html.escape(summary)}</p>{''.join(figures)}"
        + "".join(table_html(table) for table in tables)
    )
    parts = [f"## {title}", source, *([f"Note: {note}"] if note else []), summary]
    markdown = "\n\n".join([*parts, *(markdown_table(table) for table in tables)]) + "\n"
    return Section(title, body, markdown)


def page(title: str, sections: Iterable[str], head: str = "") -> str:
    """A complete HTML document."""
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style>{head}</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n</body></html>\n"
    )
