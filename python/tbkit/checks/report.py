"""The report: rows as they arrive → a DataFrame, report.json (rewritten atomically after every
row, so a crash or Ctrl-C keeps what finished), a self-contained report.html with the plots
embedded, and the verdict computed from the rows — never printed unconditionally.

pandas is imported only when ``.df`` is asked for; the HTML is built by hand so no template
engine (jinja2) is needed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Optional

from tbkit import __version__
from tbkit.checks.base import Row, Status, verdict_of

SCHEMA_VERSION = 1
COLUMNS = ["tier", "check", "status", "metric", "value", "threshold", "detail", "seconds"]
COLOURS = {"PASS": "#d4edda", "WARN": "#fff3cd", "FAIL": "#f8d7da", "ERROR": "#f5c6cb", "SKIP": "#e2e3e5"}
BANNER = {"PASS": "#28a745", "WARN": "#d39e00", "FAIL": "#c82333"}


def environment(device=None, dtype=None) -> dict:
    """Facts that explain a number: interpreter, platform, library versions, device."""
    import numpy
    import torch

    cuda = None
    if device is not None and getattr(device, "type", None) == "cuda":
        cuda = torch.cuda.get_device_name(device)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        # not platform.platform(): on Linux it runs `uname -p` in a subprocess, and Tier 1 starts none
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": str(device) if device is not None else None,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "cuda_name": cuda,
        "torch_threads": torch.get_num_threads(),
        # what else the machine was doing: timings are read against it, never judged by it
        "cpu_count": os.cpu_count(),
        "load_average": _load_average(),
    }


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


def model_facts(model) -> dict:
    prov = model.provenance
    return {
        "class": type(model.module).__name__,
        "kind": model.kind,
        "kind_reason": model.kind_reason,
        "vocab_size": model.vocab_size,
        "max_len": model.max_len,
        "pad_token_id": model.pad_token_id,
        "notes": [str(n) for n in model.notes],
        "provenance": prov.to_dict() if hasattr(prov, "to_dict") else str(prov),
        "provenance_text": str(prov),
    }


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Report:
    """Rows of one run plus everything needed to read them later.

    ``rows`` (list of Row), ``figures`` (saved plots), ``df``, ``verdict``, ``to_dict()``;
    ``json_path`` / ``html_path`` when the run has an output folder."""

    def __init__(self, model, out_dir: Optional[Path], env: dict, run: dict) -> None:
        self.model = model
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.environment = env
        self.run = run
        self.tbkit_version = __version__
        self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.rows: list = []
        self.figures: list = []  # shared with the CheckContext, filled by ctx.save_figure
        self.finished = False
        self.interrupted = False

    # ---- reading -------------------------------------------------------------------------
    @property
    def verdict(self) -> Status:
        return verdict_of(r.status for r in self.rows)

    def counts(self) -> dict:
        out = {s.value: 0 for s in Status}
        for r in self.rows:
            out[Status(r.status).value] += 1
        return out

    @property
    def df(self):
        """A pandas DataFrame of the rows (columns ``COLUMNS``); in a notebook its rows are
        coloured by status. Everything else is plain pandas."""
        return _status_frame_class()([r.to_dict() for r in self.rows], columns=COLUMNS)

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "tbkit_version": self.tbkit_version,
            "created_at": self.created_at,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "verdict": self.verdict.value,
            "counts": self.counts(),
            "model": model_facts(self.model),
            "environment": self.environment,
            "run": self.run,
            "rows": [r.to_dict() for r in self.rows],
            "figures": [
                {"check": f.check, "name": f.name, "path": self._rel(f.path)}
                for f in self.figures
                if not getattr(f, "pending", False)
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @property
    def json_path(self) -> Optional[Path]:
        return self.out_dir / "report.json" if self.out_dir else None

    @property
    def html_path(self) -> Optional[Path]:
        return self.out_dir / "report.html" if self.out_dir else None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        c = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return f"<tbkit Report: {self.verdict.value} ({c or 'no rows'}){'' if self.finished else ', unfinished'}>"

    # ---- writing -------------------------------------------------------------------------
    def add(self, row: Row) -> None:
        """Append a row and rewrite report.json at once (atomically)."""
        self.rows.append(row)
        self.write_json()

    def write_json(self) -> None:
        if self.json_path is not None:
            _atomic_write(self.json_path, self.to_json().encode("utf-8"))

    def finish(self, interrupted: bool = False) -> None:
        """Mark the run finished (or interrupted) and write report.json and report.html."""
        self.finished = not interrupted
        self.interrupted = interrupted
        self.write_json()
        if self.html_path is not None:
            _atomic_write(self.html_path, self.to_html().encode("utf-8"))

    # ---- text ------------------------------------------------------------------------------
    def summary_text(self) -> str:
        """Verdict, counts, every FAIL/ERROR/WARN row in one line, and where the files are."""
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items() if v)
        lines = [f"verdict: {self.verdict.value} ({counts or 'no rows'})"]
        if self.interrupted:
            lines.append("interrupted: only the checks that finished are included")
        for r in self.rows:
            if r.status in (Status.FAIL, Status.ERROR, Status.WARN):
                first = (r.detail or "").strip().splitlines()
                lines.append(
                    f"  {r.status.value:<5} {r.check}: {r.metric}: {first[-1 if r.status is Status.ERROR else 0] if first else ''}"
                )
        if self.html_path is not None:
            lines.append(f"report: {self.html_path} (rows in {self.json_path})")
        return "\n".join(lines)

    # ---- HTML --------------------------------------------------------------------------------
    def _rel(self, path) -> Optional[str]:
        if path is None:
            return None
        p = Path(path)
        try:
            return str(p.relative_to(self.out_dir)) if self.out_dir else str(p)
        except ValueError:
            return str(p)

    def rows_table_html(self) -> str:
        return rows_html([r.to_dict() for r in self.rows])

    def _banner_html(self) -> str:
        v = self.verdict.value
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n)
        state = "" if self.finished else (" — interrupted, partial" if self.interrupted else " — running")
        return (
            f'<div style="background:{BANNER[v]};color:white;padding:10px;font-size:20px;font-weight:bold">'
            f"tbkit verdict: {v}{html.escape(state)}"
            f'<span style="font-size:14px;font-weight:normal"> &nbsp; {html.escape(counts)}</span></div>'
        )

    def _figures_html(self) -> str:
        parts = []
        for f in self.figures:
            if f.path is None or not Path(f.path).is_file():
                continue
            data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
            parts.append(
                f'<figure style="display:inline-block;margin:8px"><img src="data:image/png;base64,{data}" '
                f'alt="{html.escape(f.name)}"/><figcaption>{html.escape(f.check)}: {html.escape(f.name)}'
                "</figcaption></figure>"
            )
        return "".join(parts)

    def to_html(self) -> str:
        m = model_facts(self.model)
        env_rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in self.environment.items()
        )
        facts = (
            f"{m['class']}: kind {m['kind']} ({m['kind_reason']}), vocab {m['vocab_size']}, "
            f"max length {m['max_len'] if m['max_len'] else 'not found'}"
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in m["notes"])
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tbkit report: {self.verdict.value}</title></head>
<body style="font-family:sans-serif;margin:16px">
{self._banner_html()}
<h2>Model</h2><p>{html.escape(facts)}</p>{f"<ul>{notes}</ul>" if notes else ""}
<pre style="background:#f6f8fa;padding:8px">{html.escape(m["provenance_text"])}</pre>
<h2>Results</h2>{self.rows_table_html()}
<h2>Plots</h2>{self._figures_html() or "<p>no plots</p>"}
<h2>Environment</h2><table border="1" cellpadding="4" style="border-collapse:collapse">{env_rows}</table>
<p style="color:#666">tbkit {html.escape(self.tbkit_version)}, report schema {SCHEMA_VERSION}, created {self.created_at}</p>
</body></html>
"""

    def _repr_html_(self) -> str:
        """What a notebook shows for a Report: verdict banner, coloured rows and the plots."""
        return f"<div>{self._banner_html()}{self.rows_table_html()}{self._figures_html()}</div>"


def rows_html(records: list, columns: list = COLUMNS) -> str:
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


_STATUS_FRAME = None


def _status_frame_class():
    """A DataFrame subclass whose notebook display colours rows by status (pandas' Styler would
    need jinja2, which Tier 1 does not require). Built on first use so pandas loads lazily."""
    global _STATUS_FRAME
    if _STATUS_FRAME is None:
        import pandas as pd

        class StatusFrame(pd.DataFrame):
            @property
            def _constructor(self):
                return StatusFrame

            def _repr_html_(self):
                if "status" not in self.columns or len(self) > 500:
                    return super()._repr_html_()
                return rows_html(self.to_dict("records"), list(self.columns))

        _STATUS_FRAME = StatusFrame
    return _STATUS_FRAME


def load_json(path) -> dict:
    """Read a report.json back (for tools and tests)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


__all__ = ["Report", "SCHEMA_VERSION", "COLUMNS", "environment", "model_facts", "load_json"]
