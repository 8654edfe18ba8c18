"""Self-contained HTML pages (inline CSS, no scripts, no network): the pieces of mgr's reports.

A page references only images beside it (relative names), so a report folder can be
copied anywhere and opened from disk.
"""

from __future__ import annotations

import html as _html
from typing import Any, Sequence

__all__ = ["esc", "fmt", "table", "img", "section", "stats", "page", "image_names"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1f3b57;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;opacity:.85;font-size:13px}
main{padding:8px 28px 40px;max-width:1150px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:18px 0;padding:14px 18px}
h2{font-size:17px;margin:2px 0 10px;color:#1f3b57}
p.note{color:#55606d;font-size:13px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e4e8ec;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef2f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.stats{display:flex;flex-wrap:wrap;gap:12px}
.stat{background:#eef2f6;border-radius:6px;padding:8px 14px;min-width:120px}
.stat b{display:block;font-size:20px} .stat span{font-size:12px;color:#55606d}
code{background:#eef2f6;padding:1px 4px;border-radius:3px;font-size:12px}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``."""
    return _html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, *, digits: int = 3) -> str:
    """A number for a person: thousands separators, ``digits`` significant decimals, ``–`` for None."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()) -> str:
    """An HTML table; columns whose index is in ``numeric`` are right-aligned and formatted."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            if i in numeric:
                cells.append(f'<td class="num">{esc(fmt(v))}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(name: str, alt: str) -> str:
    """An image beside the page (``name``: a file name, no folders)."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"report images are files beside the page, got {name!r}")
    return f'<img src="{esc(name)}" alt="{esc(alt)}">'


def section(title: str, *parts: str, note: str | None = None) -> str:
    """A titled block of the page (``parts``: HTML fragments)."""
    lead = f'<p class="note">{esc(note)}</p>' if note else ""
    return f"<section><h2>{esc(title)}</h2>{lead}{''.join(parts)}</section>"


def stats(items: Sequence[tuple[str, Any]]) -> str:
    """A row of big figures with their captions."""
    cells = "".join(f'<div class="stat"><b>{esc(fmt(v))}</b><span>{esc(k)}</span></div>' for k, v in items)
    return f'<div class="stats">{cells}</div>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """A complete HTML document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )


def image_names(document: str) -> list[str]:
    """The ``src`` of every ``<img>`` of ``document`` (what must exist beside it)."""
    import re

    return [_html.unescape(m) for m in re.findall(r'<img[^>]*\ssrc="([^"]*)"', document)]
