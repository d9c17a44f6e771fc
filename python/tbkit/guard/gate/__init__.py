"""The install gate: no pip run may break the process it runs in.

    validate → already satisfied? (no pip at all) → integrity.check() → plan (pip dry run, loaded
    versions pinned) → refuse, or install exactly the plan with --no-deps → verify (integrity.check()
    again, import the new modules in a fresh subprocess)

Public: ``ensure(*requirements, ...)`` (what Tier 2/3 call), ``install(...)`` (the same gate, for
explicit use, chatty when nothing is needed), ``plan(...)`` (the dry run alone). Refusals raise
``tbkit.errors.InstallRefused``; pip failures ``tbkit.errors.InstallFailed``; both read as one
paragraph with the fix. The flow itself is in ``gate/flow.py``; this module only re-exports it.
"""

from __future__ import annotations

from tbkit.guard.gate.flow import (
    InstallFailed,
    InstallRefused,
    InstallResult,
    Plan,
    Prepared,
    Req,
    Request,
    carry_out,
    check_process,
    ensure,
    install,
    loaded_distributions,
    loaded_now,
    plan,
    prepare,
    printer,
    request,
    run_request,
)

__all__ = [
    "ensure",
    "install",
    "plan",
    "prepare",
    "carry_out",
    "Request",
    "Prepared",
    "InstallResult",
    "Plan",
    "Req",
    "InstallRefused",
    "InstallFailed",
    "request",
    "check_process",
    "loaded_distributions",
    "loaded_now",
    "printer",
    "run_request",
]
