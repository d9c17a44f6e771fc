"""`tbkit doctor [--json]`: is what this interpreter has loaded still what is on disk, plus the
facts a user needs when asking for help (Python, platform, torch and CUDA, NumPy loaded vs on disk).

The integrity report is taken FIRST, before anything else is imported. torch is imported only
afterwards, and only when the report does not require a restart (importing torch pulls in NumPy
submodules, which is exactly what breaks in a half-replaced install).

Exit code: 0 when no restart is required, 1 when it is.
"""

from __future__ import annotations

import json
import os
import sys


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def main(args) -> int:
    from tbkit.guard import integrity

    report = integrity.check()  # before any import below
    facts = collect_facts(report)
    if getattr(args, "json", False):
        print(json.dumps({"integrity": report.to_dict(), "facts": facts}, indent=2, default=str))
    else:
        print(str(report))
        print()
        for key, value in facts.items():
            print(f"{key:>24}: {value}")
    return 1 if report.restart_required else 0


def collect_facts(report) -> dict:
    import platform

    from tbkit import __version__
    from tbkit.guard import integrity

    loaded = integrity.loaded_distributions()
    facts = {
        "tbkit": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "numpy loaded": loaded.get("numpy", "not loaded"),
        "numpy on disk": installed_version("numpy") or "not installed",
    }
    facts.update(torch_facts(report))
    return facts


def torch_facts(report) -> dict:
    if report.restart_required and "torch" not in sys.modules:
        return {"torch": "not imported: restart required first (importing it now could crash)"}
    try:
        import torch
    except Exception as err:
        return {"torch": f"not importable ({type(err).__name__}: {err})"}
    facts = {"torch": torch.__version__, "cuda available": torch.cuda.is_available()}
    facts["cuda (torch built with)"] = torch.version.cuda or "none (CPU build)"
    if torch.cuda.is_available():
        facts["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return facts


def installed_version(name: str):
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
