"""The report: rows as they arrive → a DataFrame, report.json (rewritten atomically after every
row, so a crash or Ctrl-C keeps what finished), a self-contained report.html with the plots
embedded, and the verdict computed from the rows — never printed unconditionally.

pandas is imported only when ``.df`` is asked for; the HTML is built by hand so no template
engine (jinja2) is needed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tbkit import __version__
from tbkit.checks import report_html
from tbkit.checks.base import Figure, Row, Status, verdict_of
from tbkit.checks.report_folder import atomic_write
from tbkit.checks.report_html import COLUMNS, rows_html

if TYPE_CHECKING:  # torch and pandas are imported lazily; these are annotations only
    import pandas as pd
    import torch

    from tbkit.sources.loaded import LoadedModel

SCHEMA_VERSION = 1
SUMMARY_DETAIL_CHARS = 240  # a terminal line, not a 20 MB traceback
# CSI/OSC sequences, lone escapes and other control characters: a model's text must not drive the terminal
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|[\x00-\x08\x0b-\x1f\x7f\x9b]")


def environment(device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> dict[str, Any]:
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


def _load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


def model_facts(model: LoadedModel) -> dict[str, Any]:
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


class Report:
    """Rows of one run plus everything needed to read them later.

    ``rows`` (list of Row), ``figures`` (saved plots), ``df``, ``verdict``, ``to_dict()``;
    ``json_path`` / ``html_path`` when the run has an output folder."""

    def __init__(self, model: LoadedModel, out_dir: Optional[Path], env: dict[str, Any], run: dict[str, Any]) -> None:
        self.model = model
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.environment = env
        self.run = run
        self.tbkit_version = __version__
        self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.rows: list[Row] = []
        self.figures: list[Figure] = []  # shared with the CheckContext, filled by ctx.save_figure
        self.finished = False
        self.interrupted = False
        self.ended: Optional[str] = None  # why an unfinished run stopped (SIGTERM, a check over its limit, …)

    # ---- reading -------------------------------------------------------------------------
    @property
    def verdict(self) -> Status:
        return verdict_of(r.status for r in self.rows)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for r in self.rows:
            out[Status(r.status).value] += 1
        return out

    @property
    def df(self) -> pd.DataFrame:
        """A pandas DataFrame of the rows (columns ``COLUMNS``); in a notebook its rows are
        coloured by status. Everything else is plain pandas."""
        return _status_frame_class()([r.to_dict() for r in self.rows], columns=COLUMNS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tbkit_version": self.tbkit_version,
            "created_at": self.created_at,
            "finished": self.finished,
            "interrupted": self.interrupted,
            "ended": self.ended,
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
            atomic_write(self.json_path, self.to_json().encode("utf-8"))

    def finish(self, interrupted: bool = False, ended: Optional[str] = None) -> None:
        """Mark the run finished (or interrupted) and write report.json and report.html."""
        self.finished = not interrupted
        self.interrupted = interrupted
        self.ended = ended
        self.write_json()
        if self.html_path is not None:
            atomic_write(self.html_path, self.to_html().encode("utf-8"))

    # ---- text ------------------------------------------------------------------------------
    def summary_text(self) -> str:
        """Verdict, counts, every FAIL/ERROR/WARN row in one line, and where the files are."""
        return summary_of(self.to_dict(), self.html_path, self.json_path)

    # ---- HTML --------------------------------------------------------------------------------
    def _rel(self, path: Optional[Path]) -> Optional[str]:
        if path is None:
            return None
        p = Path(path)
        try:
            return str(p.relative_to(self.out_dir)) if self.out_dir else str(p)
        except ValueError:
            return str(p)

    def rows_table_html(self) -> str:
        return rows_html([r.to_dict() for r in self.rows])

    def to_html(self) -> str:
        return report_html.render(self.to_dict(), self.out_dir)

    def _repr_html_(self) -> str:
        """What a notebook shows for a Report: verdict banner, coloured rows and the plots."""
        d = self.to_dict()
        figures = report_html.figures_html(d, self.out_dir)
        return f"<div>{report_html.banner_html(d)}{self.rows_table_html()}{figures}</div>"


def terminal_text(text: object, limit: int = SUMMARY_DETAIL_CHARS) -> str:
    """Model-made text fit for one terminal line: control characters gone, cut to ``limit``."""
    from tbkit.errors import mask_credentials, shorten

    text = str(text)[: limit * 50]  # bounded before any pattern runs on it
    return shorten(mask_credentials(" ".join(_CONTROL.sub("", text).split())), limit)


def summary_of(d: dict[str, Any], html_path: Optional[Path] = None, json_path: Optional[Path] = None) -> str:
    """The terminal summary of a report dict: verdict, counts and "N rows from M checks", each
    problem row on one cut line, and where the files are."""
    counts = ", ".join(f"{v} {k}" for k, v in d["counts"].items() if v)
    n_checks = len(dict.fromkeys(r["check"] for r in d["rows"]))
    n_rows = len(d["rows"])
    lines = [
        f"verdict: {d['verdict']} ({counts or 'no rows'}) — {n_rows} row{'s' * (n_rows != 1)} from "
        f"{n_checks} check{'s' * (n_checks != 1)}"
    ]
    if d["interrupted"]:
        why = f" ({terminal_text(d['ended'])})" if d.get("ended") else ""
        lines.append(f"interrupted{why}: only the checks that finished are included")
    for r in d["rows"]:
        if r["status"] in ("FAIL", "ERROR", "WARN"):
            first = (r["detail"] or "").strip().splitlines()
            line = first[-1 if r["status"] == "ERROR" else 0] if first else ""
            where = f"{terminal_text(r['check'], 80)}: {terminal_text(r['metric'], 120)}"
            lines.append(f"  {r['status']:<5} {where}: {terminal_text(line)}")
    if html_path is not None:
        lines.append(f"report: {html_path} (rows in {json_path})")
    return "\n".join(lines)


_STATUS_FRAME: Optional[type[pd.DataFrame]] = None


def _status_frame_class() -> type[pd.DataFrame]:
    """A DataFrame subclass whose notebook display colours rows by status (pandas' Styler would
    need jinja2, which Tier 1 does not require). Built on first use so pandas loads lazily."""
    global _STATUS_FRAME
    if _STATUS_FRAME is None:
        import pandas as pd

        class StatusFrame(pd.DataFrame):
            @property
            def _constructor(self) -> type[StatusFrame]:
                return StatusFrame

            def _repr_html_(self) -> Optional[str]:
                if "status" not in self.columns or len(self) > 500:
                    # pandas-stubs do not declare DataFrame._repr_html_ (pandas has it)
                    text: Optional[str] = super()._repr_html_()  # type: ignore[misc]
                    return text
                return rows_html(self.to_dict("records"), list(self.columns))

        _STATUS_FRAME = StatusFrame
    return _STATUS_FRAME


def salvage(folder: Path, ended: str, row: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """Close the report a dead or killed run left in ``folder``: add ``row`` (the check it was in),
    mark it interrupted with the reason, and write report.json and report.html from the JSON alone.
    None when the run had not written its report yet (it died while loading)."""
    try:
        d = load_json(folder / "report.json")
    except (OSError, ValueError):
        return None
    if row is not None:
        d["rows"].append(row)
    d.update(finished=False, interrupted=True, ended=ended)
    d["counts"] = {s.value: sum(r["status"] == s.value for r in d["rows"]) for s in Status}
    d["verdict"] = verdict_of(Status(r["status"]) for r in d["rows"]).value
    atomic_write(folder / "report.json", json.dumps(d, indent=2, default=str).encode("utf-8"))
    atomic_write(folder / "report.html", report_html.render(d, folder).encode("utf-8"))
    return d


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report.json back (for tools and tests)."""
    d: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return d


__all__ = ["Report", "SCHEMA_VERSION", "COLUMNS", "environment", "model_facts", "load_json", "summary_of"]
