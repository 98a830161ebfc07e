"""The HTML page shell and its pieces: escaping, tables, key-value lists, figure slots, and the page
with its CSS and scripts (assets/, package data) and plotly.js inlined, so it opens offline."""
from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
e = html.escape  # every text that reaches the page goes through it


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """A file of report/assets (page.css, errors.js, page.js)."""
    return (ASSETS / name).read_text(encoding="utf-8")

def attrs(**kw) -> str:
    return "".join(f' data-{k.replace("_", "-")}="{e(str(v))}"' for k, v in kw.items())


def kv(pairs) -> str:
    return "<dl class=kv>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in pairs) + "</dl>"


def table(headers, rows, cls="", left=(), row_classes=None, titles=None) -> str:
    """rows: lists of cells; a cell is text or (text, sort_value); titles: header tooltips."""
    titles = titles or {}
    head = "".join(f"<th{' class=l' if i in left else ''}"
                   + (f' title="{e(titles[h])}"' if h in titles else "") + f">{e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        tds = []
        for i, cell in enumerate(row):
            text, value = cell if isinstance(cell, tuple) else (cell, None)
            attr = f' data-v="{e(str(value))}"' if value is not None else ""
            tds.append(f"<td{' class=l' if i in left else ''}{attr}>{e(str(text))}</td>")
        rc = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{rc}>{''.join(tds)}</tr>")
    return (f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def fig_div(fig_id: str, figures: dict, fig: dict, height: int | None = None) -> str:
    figures[fig_id] = fig
    h = height or fig["layout"].get("height", 360)
    return f'<div id="{fig_id}" class="fig" style="min-height:{h}px"></div>'


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs  # lazy: only when a report is written

    return get_plotlyjs()


def json_for_script(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def page(title: str, subtitle: str, sections: list[str], figures: dict, rank: dict | None) -> str:
    payload = {"figures": figures, "rank_map": rank}
    return "".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>{e(title)}</title><style>{asset('page.css')}</style><script>{asset('errors.js')}</script></head>",
        f'<body data-ready="0" data-errors="0"><main><h1>{e(title)}</h1><p class=sub>{e(subtitle)}</p>',
        *sections,
        '<p class=note>Written by llmlaunch; charts by plotly.js (inlined, works offline).</p></main>',
        f"<script>{_plotly_js()}</script>",
        f'<script type="application/json" id="report-data">{json_for_script(payload)}</script>',
        f"<script>{asset('page.js')}</script></body></html>"])
