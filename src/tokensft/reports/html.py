"""HTML building blocks of the report: one self-contained page (inline CSS, PNGs as data URIs).

No JavaScript, no fonts, no CDN: the page works from a file:// URL on a machine with no
network. Every string that comes from the data goes through `esc`.
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #23395d; color: white; padding: 14px 28px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; opacity: 0.85; font-size: 13px; }
nav { position: sticky; top: 0; background: #eef1f5; padding: 8px 28px; border-bottom: 1px solid #d5dae1; z-index: 20; }
nav a { margin-right: 16px; color: #23395d; text-decoration: none; font-size: 14px; }
main { padding: 8px 28px 40px; max-width: 1150px; }
section { background: white; border: 1px solid #e1e4e8; border-radius: 6px; padding: 8px 20px 16px; margin: 18px 0; }
h2 { font-size: 18px; color: #23395d; } h3 { font-size: 15px; margin-bottom: 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e6e6e6; padding: 3px 10px; text-align: right; vertical-align: top; }
th { background: #f3f5f8; } td.text, th.text { text-align: left; max-width: 420px; overflow-wrap: anywhere; }
img.plot { max-width: 100%; display: block; margin: 8px 0; }
.guidance { background: #f4f8fc; border-left: 4px solid #3b6ea8; padding: 8px 14px; margin: 10px 0; }
.muted { color: #777; font-size: 13px; }
.big { font-size: 26px; font-weight: 600; color: #23395d; margin-right: 24px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
.example { border: 1px solid #e1e4e8; border-radius: 4px; padding: 8px 12px; margin: 12px 0; }
.tokens { font-family: Menlo, Consolas, monospace; font-size: 13px; white-space: pre-wrap; line-height: 1.9; }
.context { color: #999; }
.tok { position: relative; border-radius: 2px; cursor: help; padding: 1px 0; }
.tok:hover { outline: 1px solid #23395d; }
.tok:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.6em; z-index: 30; background: #1e2329;
  color: #fff; padding: 5px 8px; border-radius: 4px; white-space: pre; font-size: 12px; line-height: 1.4;
  pointer-events: none; }
.legend span { display: inline-block; width: 34px; text-align: center; font-size: 11px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A table cell: ints with separators, floats to 4 significant digits, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return f"{int(value):,}"
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        value = float(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def table(frame: pd.DataFrame, columns: list[str] | None = None, text: tuple[str, ...] = ("id", "mask", "class", "spec",
                                                                                             "token", "name", "value")) -> str:
    """An HTML table of `frame` (optionally only `columns`); text columns are left-aligned."""
    frame = frame if columns is None else frame[columns]
    head = "".join(f'<th class="{"text" if c in text else ""}">{esc(c)}</th>' for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = "".join(f'<td class="{"text" if c in text else ""}">{esc(fmt(v))}</td>' for c, v in zip(frame.columns, record))
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def key_values(pairs: list[tuple[str, object]]) -> str:
    """A two-column table of name / value."""
    return table(pd.DataFrame({"name": [k for k, _ in pairs], "value": [fmt(v) for _, v in pairs]}))


def img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: header, a nav bar linking every section, the sections (anchor, title, body)."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>'
            f"<main>{body}</main></body></html>")
