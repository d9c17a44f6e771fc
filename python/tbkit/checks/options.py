"""A run's options checked against the declared specs (``checks/spec.py``) before any model code
is loaded or anything is written: an unknown name or a value of the wrong type is one paragraph
naming the valid ones, so an override can never do nothing without a word."""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from tbkit.checks.base import REGISTRY
from tbkit.checks.spec import ALIASES, RUN_OPTIONS, TIER_MODULES, Option, canonical
from tbkit.errors import UsageError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def declared_for(check_ids: Iterable[str]) -> dict[str, Option]:
    """Every option name a run of these checks accepts: the run-level ones, then each check's."""
    names = dict(RUN_OPTIONS)
    for check_id in check_ids:
        names.update(REGISTRY[check_id].declared())
    return names


def validate_options(options: Optional[Mapping[str, Any]], check_ids: Iterable[str]) -> dict[str, Any]:
    """``options`` under their canonical names, each checked against the declared spec of the run
    or of one of ``check_ids`` (registered checks); UsageError for an unknown name or a bad value."""
    ids = list(check_ids)
    given = canonical(options)
    allowed = declared_for(ids)
    unknown = [name for name in given if name not in allowed]
    if unknown:
        raise UsageError(_unknown(unknown, ids, allowed), _ALIAS_NOTE)
    for name, value in given.items():
        _check_value(name, allowed[name], value)
    return given


_ALIAS_NOTE = (
    "Set a check's threshold or option as '<check id>.<name>' (CLI: --option NAME=VALUE); docs/checks.md "
    "lists them all, with the older names (memory_budget_mb, latency_budget_ms, …) that are their aliases."
)


def _unknown(unknown: list[str], ids: list[str], allowed: Mapping[str, Option]) -> str:
    _register_every_tier()  # to tell "not in this run" from "no such check" (only on this error path)
    elsewhere = []
    for name in unknown:
        owner = name.split(".", 1)[0]
        if owner in REGISTRY and owner not in ids:
            elsewhere.append(f"{name!r} belongs to check {owner!r}, which this run does not include")
    listed = ", ".join(sorted(allowed))
    return (
        f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the checks of "
        f"this run{' (' + '; '.join(elsewhere) + ')' if elsewhere else ''}. Valid option names: {listed}"
    )


def _register_every_tier() -> None:
    for module in TIER_MODULES.values():
        try:
            importlib.import_module(module)
        except ImportError:  # a tier this installation lacks declares nothing
            pass


def _check_value(name: str, spec: Option, value: Any) -> None:
    fault = _type_fault(spec, value)
    if fault is None and spec.choices and value not in spec.choices:
        fault = f"one of {', '.join(map(repr, spec.choices))}"
    if fault is None and spec.positive and value <= 0:
        fault = "a number > 0"
    if fault is not None:
        raise UsageError(
            f"option {name!r} must be {fault}, not {value!r} ({type(value).__name__})",
            f"{name}: {spec.help or 'see docs/checks.md'}" + (f" (unit: {spec.unit})" if spec.unit else ""),
        )


def _type_fault(spec: Option, value: Any) -> Optional[str]:
    """What the value should have been, or None when it is of the declared type."""
    if spec.type is object:
        return None
    if spec.type is bool:
        return None if isinstance(value, bool) else "True or False"
    if spec.type is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "an int"
    if spec.type is float:
        return None if isinstance(value, numbers.Real) and not isinstance(value, bool) else "a number"
    return None if isinstance(value, spec.type) else f"a {spec.type.__name__}"


def parse_cli_option(text: str, check_ids: Iterable[str]) -> tuple[str, Any]:
    """``--option NAME=VALUE``: the canonical name and the value converted to its declared type."""
    name, sep, raw = text.partition("=")
    name = ALIASES.get(name.strip(), name.strip())
    if not sep or not name:
        raise UsageError(f"--option {text!r} is not NAME=VALUE", "Write e.g. --option causal.max_change=1e-5.")
    ids = list(check_ids)
    allowed = declared_for(ids)
    if name not in allowed:
        raise UsageError(_unknown([name], ids, allowed), _ALIAS_NOTE)
    return name, _convert(name, allowed[name], raw.strip())


def _convert(name: str, spec: Option, raw: str) -> Any:
    try:
        if spec.type is bool:
            if raw.lower() not in _TRUE + _FALSE:
                raise ValueError(raw)
            return raw.lower() in _TRUE
        if spec.type in (int, float):
            return spec.type(raw)
    except ValueError:
        kind = {bool: "true or false", int: "an int", float: "a number"}[spec.type]
        raise UsageError(
            f"--option {name}={raw!r}: {name} must be {kind}",
            f"{name}: {spec.help or 'see docs/checks.md'}" + (f" (unit: {spec.unit})" if spec.unit else ""),
        ) from None
    return raw


__all__ = ["validate_options", "parse_cli_option", "declared_for"]
