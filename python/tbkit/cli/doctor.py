"""`tbkit doctor [--json] [--cuda]`: is what this interpreter has loaded still what is on disk, does
another distribution share the `tbkit` package, plus the facts a user needs when asking for help
(Python, platform, versions of tbkit, torch and NumPy).

The integrity report is taken FIRST, before anything else is imported. Versions come from the
installed metadata (plain file reads), so doctor answers in well under a second: torch is imported
only with ``--cuda`` (for the CUDA facts), and never when the report requires a restart (importing
torch pulls in NumPy submodules, which is exactly what breaks in a half-replaced install).

Exit code: 0 when all is well, 1 when a restart is required or another distribution owns files of
the `tbkit` package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from tbkit._probe import __version__  # the compiled module: right even if tbkit/__init__.py was replaced
from tbkit.guard import integrity, ownership
from tbkit.guard.integrity import IntegrityReport
from tbkit.guard.ownership import OwnershipReport


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--cuda", action="store_true", help="also import torch and report CUDA (takes seconds)")


def main(args: argparse.Namespace) -> int:
    report = integrity.check()  # before any import below
    owners = ownership.check(thorough=True)
    facts = collect_facts(report, owners, cuda=getattr(args, "cuda", False))
    note = shared_name_note(report, owners)
    if getattr(args, "json", False):
        payload = {"integrity": report.to_dict(), "ownership": owners.to_dict(), "facts": facts}
        if note:
            payload["ownership"]["note"] = note
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(str(report))
        print(owners.advice())
        if note:
            print(note)
        print()
        for key, value in facts.items():
            print(f"{key:>24}: {value}")
    return 1 if report.restart_required or not owners.ok else 0


def shared_name_note(report: IntegrityReport, owners: OwnershipReport) -> str:
    """The probe matches the loaded `tbkit` module with the dist-info named `tbkit` (the other project),
    so a second owner also shows up as a version mismatch: say where that finding comes from."""
    names = {o.name.lower() for o in owners.owners}
    if any((f.distribution or "").lower() in names for f in report.findings):
        return (
            "note: the integrity finding for `tbkit` above compares this tbkit with the other distribution's "
            "metadata; it goes away once that distribution is removed as shown."
        )
    return ""


def collect_facts(report: IntegrityReport, owners: OwnershipReport, cuda: bool = False) -> dict[str, object]:
    import platform

    loaded = integrity.loaded_distributions()
    facts: dict[str, object] = {
        "tbkit": __version__,
        "tbkit-ml installed": owners.version or f"no dist-info beside {owners.site} (source checkout?)",
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "numpy loaded": loaded.get("numpy", "not loaded"),
        "numpy on disk": installed_version("numpy") or "not installed",
        "torch on disk": installed_version("torch") or "not installed",
    }
    if cuda:
        facts.update(torch_facts(report))
    else:
        facts["cuda"] = "not checked (`tbkit doctor --cuda` imports torch to report it)"
    return facts


def torch_facts(report: IntegrityReport) -> dict[str, object]:
    if report.restart_required and "torch" not in sys.modules:
        return {"torch": "not imported: restart required first (importing it now could crash)"}
    try:
        import torch
    except Exception as err:
        return {"torch": f"not importable ({type(err).__name__}: {err})"}
    facts: dict[str, object] = {"torch": torch.__version__, "cuda available": torch.cuda.is_available()}
    facts["cuda (torch built with)"] = torch.version.cuda or "none (CPU build)"
    if torch.cuda.is_available():
        facts["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return facts


def installed_version(name: str) -> Optional[str]:
    """The version in the first ``<name>-*.dist-info/METADATA`` on sys.path: plain file reads, no
    import (NumPy on disk may be the half-replaced thing we are diagnosing)."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for item in names:
            if item.lower().startswith(prefix) and item.endswith(".dist-info"):
                try:
                    with open(os.path.join(entry or ".", item, "METADATA"), encoding="utf-8", errors="replace") as fh:
                        for line in fh:
                            if not line.strip():
                                break
                            if line.lower().startswith("version:"):
                                return line.split(":", 1)[1].strip()
                except OSError:
                    return item[len(prefix) : -len(".dist-info")]
    return None
