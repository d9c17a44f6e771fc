"""Is what this process has loaded still what is on disk?

The Python face of the compiled probe ``tbkit._probe`` (Rust; see docs/probe.md). ``import tbkit``
calls :func:`take_baseline`; :func:`check` compares memory with disk and returns an
:class:`IntegrityReport`. Nothing here imports a module or calls ``getattr`` on one: the probe
reads ``sys.modules`` entries' ``__dict__`` from Rust, ``/proc/self/maps``, ``stat`` results and
``*.dist-info`` files. Every failure to look becomes a ``probe_degraded`` finding, never an
exception.
"""

from __future__ import annotations

import os
import sys
from typing import Literal, Optional, Protocol, Union

from tbkit import _probe
from tbkit._probe import Finding, ProbeError

__all__ = [
    "Finding",
    "IntegrityReport",
    "ProbeError",
    "ProbeUnavailableError",
    "Severity",
    "check",
    "first_restart_report",
    "loaded_distributions",
    "new_probe",
    "report_of",
    "take_baseline",
]

Severity = Literal["restart_required", "changed_pure_python", "benign", "preexisting", "probe_degraded"]
SEVERITIES: tuple[Severity, ...] = (
    "restart_required",
    "changed_pure_python",
    "benign",
    "preexisting",
    "probe_degraded",
)

# Test hook (and an escape hatch for odd systems): read this file instead of /proc/self/maps.
MAPS_ENV = "TBKIT_PROBE_MAPS"

RESTART_ADVICE = (
    "Restart the Python process (in Colab: Runtime > Restart session; in Jupyter/VS Code: restart "
    "the kernel) before importing anything else, then run your cells again."
)


class ProbeUnavailableError(ProbeError, RuntimeError):
    """The process-wide probe could not start (a RuntimeError too, as before)."""


class IntegrityReport:
    """The result of one check: findings (any severity) and notes on what was skipped.

    Findings are ``tbkit._probe.Finding`` objects (frozen; the probe builds them)."""

    def __init__(self, findings: Optional[list[Finding]] = None, notes: Optional[list[str]] = None) -> None:
        self.findings: list[Finding] = list(findings or [])
        self.notes: list[str] = list(notes or [])  # what the probe skipped or could not see

    def __repr__(self) -> str:
        return f"IntegrityReport(findings={self.findings!r}, notes={self.notes!r})"

    def of_severity(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    @property
    def ok(self) -> bool:
        """No findings of any severity."""
        return not self.findings

    @property
    def restart_findings(self) -> list[Finding]:
        """The findings that require a restart (what the install gate and the banner act on)."""
        return self.of_severity("restart_required")

    @property
    def preexisting_findings(self) -> list[Finding]:
        """Leftovers older than this process (e.g. a stash of a crashed pip): name, folder, fix."""
        return self.of_severity("preexisting")

    @property
    def restart_required(self) -> bool:
        return bool(self.restart_findings)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "restart_required": self.restart_required,
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }

    def headline(self) -> str:
        if self.restart_required:
            return "RESTART REQUIRED: this process runs code that is no longer what is installed on disk."
        if self.ok:
            return "OK: everything loaded in this process matches what is installed on disk."
        if all(f.severity == "benign" for f in self.findings):
            return "OK (benign changes): reinstalled at the same version with identical builds."
        if all(f.severity in ("benign", "preexisting") for f in self.findings):
            return "OK (leftovers from before this process): remove them as shown; no restart needed."
        return "CHANGED: installed files changed under this process; no restart needed for what is listed."

    def __str__(self) -> str:
        lines = [f"tbkit integrity: {self.headline()}"]
        for f in self.findings:
            lines.append(f"  {f}")
            lines.extend(f"      {p}" for p in f.paths[:5])
            if len(f.paths) > 5:
                lines.append(f"      ... and {len(f.paths) - 5} more")
        if not self.ok:  # notes explain what was skipped; they matter when something was found
            lines.extend(f"  note: {n}" for n in self.notes)
        if self.restart_required:
            lines.append(RESTART_ADVICE)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        colour = "#b00020" if self.restart_required else ("#1b5e20" if self.ok else "#8a6d00")
        parts = [f'<div><b style="color:{colour}">tbkit integrity: {escape(self.headline())}</b>']
        if self.findings:
            parts.append(
                "<table><tr><th>distribution</th><th>loaded</th><th>on disk</th><th>change</th><th>severity</th></tr>"
            )
            for f in self.findings:
                cells = (f.distribution, f.loaded_version, f.disk_version, f.change, f.severity)
                parts.append("<tr>" + "".join(f"<td>{escape(x or '')}</td>" for x in cells) + "</tr>")
            parts.append("</table>")
        for n in self.notes:
            parts.append(f"<div><i>note: {escape(n)}</i></div>")
        if self.restart_required:
            parts.append(f"<div>{escape(RESTART_ADVICE)}</div>")
        parts.append("</div>")
        return "".join(parts)


_PROBE: Optional[_probe.Probe] = None  # the process-wide probe, created by take_baseline()
_FIRST_RESTART: Optional[IntegrityReport] = None


def _stdlib_dirs() -> list[str]:
    """The standard library's directories: their modules belong to no distribution."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = set()
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        for lib in {getattr(sys, "platlibdir", "lib"), "lib"}:  # sys attribute: no import involved
            dirs.add(os.path.join(prefix, lib, version))
        dirs.add(os.path.join(prefix, "Lib"))  # Windows
        dirs.add(os.path.join(prefix, "DLLs"))
    return sorted(d for d in dirs if os.path.isdir(d))


# Set to 1 to read /proc/self/maps on every check instead of only when a module is new or a
# watched directory changed (docs/probe.md, "Speed").
ALWAYS_MAPS_ENV = "TBKIT_PROBE_ALWAYS_READ_MAPS"


def new_probe(maps_path: Optional[str] = None, always_read_maps: Optional[bool] = None) -> _probe.Probe:
    """A fresh probe with its own baseline (the process-wide one is made by take_baseline)."""
    if maps_path is None:
        maps_path = os.environ.get(MAPS_ENV) or None
    if always_read_maps is None:
        always_read_maps = os.environ.get(ALWAYS_MAPS_ENV) == "1"
    return _probe.Probe(maps_path, _stdlib_dirs(), always_read_maps)


_START_ERROR: Optional[str] = None  # why the process-wide probe could not start, if it could not

# A Rust panic surfaces as pyo3's PanicException, a BaseException: catch those too, but never
# swallow an interrupt or an exit.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def take_baseline() -> None:
    """Record the identity of every loaded module file, mapped library and dist-info directory.
    Cheap; called by ``import tbkit``. Later checks extend it with modules imported since."""
    global _PROBE, _START_ERROR
    try:
        if _PROBE is None:
            _PROBE = new_probe()
        _PROBE.observe()
    except _PASS_THROUGH:
        raise
    except BaseException as err:
        _START_ERROR = repr(err)


class _Checkable(Protocol):
    def check(self) -> _probe.Report: ...


def report_of(probe: Union[_probe.Probe, _Checkable]) -> IntegrityReport:
    """Run one probe's check and wrap the result; never raises."""
    try:
        raw = probe.check()
    except _PASS_THROUGH:
        raise
    except BaseException as err:
        return IntegrityReport(
            findings=[Finding("(probe)", None, None, f"the integrity probe failed: {err!r}", [], "probe_degraded")]
        )
    return IntegrityReport(findings=list(raw.findings), notes=list(raw.notes))


def check() -> IntegrityReport:
    """Compare what is loaded with what is on disk now (see docs/probe.md for the signals)."""
    global _FIRST_RESTART
    if _PROBE is None:
        take_baseline()
    if _PROBE is None:
        report = IntegrityReport(
            findings=[
                Finding(
                    "(probe)", None, None, f"the integrity probe could not start ({_START_ERROR})", [], "probe_degraded"
                )
            ]
        )
    else:
        report = report_of(_PROBE)
    if report.restart_required and _FIRST_RESTART is None:
        _FIRST_RESTART = report
    return report


def first_restart_report() -> Optional[IntegrityReport]:
    """The first report in this process that required a restart (sticky), or None."""
    return _FIRST_RESTART


def loaded_distributions() -> dict[str, str]:
    """Canonical distribution name -> version, for every installed distribution with at least one
    module in ``sys.modules``. The version is spelled as the dist-info's METADATA spells it (what
    pip compares pins with) whenever it agrees with the loaded ``__version__``; otherwise the
    loaded version (and ``check()`` then reports the mismatch). Reads dist-info files only;
    imports nothing."""
    if _PROBE is None:
        take_baseline()
    if _PROBE is None:
        raise ProbeUnavailableError(f"the integrity probe could not start ({_START_ERROR})")
    return dict(_PROBE.loaded_distributions())
