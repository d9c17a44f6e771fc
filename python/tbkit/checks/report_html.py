"""report.html from a report's dict (``Report.to_dict()`` or a report.json read back): a
self-contained page with the plots embedded. Built from the dict alone so that a supervisor that
never loaded the model (and never imports torch) can render a report a dead run left behind.
Built by hand, so no template engine (jinja2) is needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

COLUMNS = ["tier", "check", "status", "metric", "value", "threshold", "detail", "seconds"]
COLOURS = {"PASS": "#d4edda", "WARN": "#fff3cd", "FAIL": "#f8d7da", "ERROR": "#f5c6cb", "SKIP": "#e2e3e5"}
BANNER = {"PASS": "#28a745", "WARN": "#d39e00", "FAIL": "#c82333"}


def banner_html(d: dict[str, Any]) -> str:
    v = d["verdict"]
    counts = ", ".join(f"{n} {k}" for k, n in d["counts"].items() if n)
    state = ""
    if not d["finished"]:
        state = " — interrupted, partial" if d["interrupted"] else " — running"
    if d.get("ended"):
        state += f" ({d['ended']})"
    return (
        f'<div style="background:{BANNER[v]};color:white;padding:10px;font-size:20px;font-weight:bold">'
        f"tbkit verdict: {v}{html.escape(state)}"
        f'<span style="font-size:14px;font-weight:normal"> &nbsp; {html.escape(counts)}</span></div>'
    )


def figures_html(d: dict[str, Any], folder: Optional[Path]) -> str:
    """The plots that exist on disk, embedded as PNG data (paths in ``d`` are relative to ``folder``)."""
    parts = []
    for f in d["figures"]:
        if f["path"] is None:
            continue
        path = Path(f["path"]) if folder is None else Path(folder) / f["path"]
        if path.is_symlink() or not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure style="display:inline-block;margin:8px"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(f["name"])}"/><figcaption>{html.escape(f["check"])}: {html.escape(f["name"])}'
            "</figcaption></figure>"
        )
    return "".join(parts)


def render(d: dict[str, Any], folder: Optional[Path]) -> str:
    m = d["model"]
    env_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in d["environment"].items()
    )
    facts = (
        f"{m['class']}: kind {m['kind']} ({m['kind_reason']}), vocab {m['vocab_size']}, "
        f"max length {m['max_len'] if m['max_len'] else 'not found'}"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in m["notes"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tbkit report: {d["verdict"]}</title></head>
<body style="font-family:sans-serif;margin:16px">
{banner_html(d)}
<h2>Model</h2><p>{html.escape(facts)}</p>{f"<ul>{notes}</ul>" if notes else ""}
<pre style="background:#f6f8fa;padding:8px">{html.escape(m["provenance_text"])}</pre>
<h2>Results</h2>{rows_html(d["rows"])}
<h2>Plots</h2>{figures_html(d, folder) or "<p>no plots</p>"}
<h2>Environment</h2><table border="1" cellpadding="4" style="border-collapse:collapse">{env_rows}</table>
<p style="color:#666">tbkit {html.escape(d["tbkit_version"])}, report schema {d["schema_version"]}, created {d["created_at"]}</p>
</body></html>
"""


def rows_html(records: Iterable[Mapping[Any, Any]], columns: Sequence[Hashable] = COLUMNS) -> str:
    """An HTML table of row dicts, each row coloured by its status (escaped, no template engine)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for d in records:
        colour = COLOURS.get(str(d.get("status")), "#ffffff")
        cells = []
        for c in columns:
            v = d.get(c)
            if c == "value" and isinstance(v, float):
                v = f"{v:.4g}"
            elif c == "seconds" and isinstance(v, (int, float)):
                v = f"{v:.2f}"
            text = html.escape("" if v is None else str(v))
            if c == "detail":
                text = f'<div style="white-space:pre-wrap;max-width:60em">{text}</div>'
            cells.append(f"<td>{text}</td>")
        body.append(f'<tr style="background:{colour}">{"".join(cells)}</tr>')
    return (
        '<table style="border-collapse:collapse;font-size:13px" border="1" cellpadding="4">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
