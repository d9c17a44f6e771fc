"""The tiered checks. Importing a tier module registers its checks in ``base.REGISTRY``."""

from __future__ import annotations

from collections.abc import Iterable

from tbkit.checks.base import REGISTRY, CheckContext, Row, Status, register, verdict_of
from tbkit.checks.options import validate_options
from tbkit.checks.spec import ALIASES, RUN_OPTIONS, TIER_MODULES, CheckSpec, Option, Threshold


def checks_for(tiers: Iterable[int | str]) -> list[CheckSpec]:
    """The registered checks of the given tiers, in registration order (importing the tier modules)."""
    import importlib

    for t in tiers:
        importlib.import_module(TIER_MODULES[int(t)])
    wanted = {int(t) for t in tiers}
    return [spec for spec in REGISTRY.values() if spec.tier in wanted]


__all__ = [
    "REGISTRY",
    "CheckContext",
    "CheckSpec",
    "Row",
    "Status",
    "register",
    "verdict_of",
    "checks_for",
    "Threshold",
    "Option",
    "RUN_OPTIONS",
    "TIER_MODULES",
    "ALIASES",
    "validate_options",
]
