"""The tiered checks. Importing a tier module registers its checks in ``base.REGISTRY``."""

from __future__ import annotations

from tbkit.checks.base import REGISTRY, CheckContext, CheckSpec, Row, Status, register, verdict_of

TIER_MODULES = {1: "tbkit.checks.tier1", 2: "tbkit.checks.tier2", 3: "tbkit.checks.tier3"}


def checks_for(tiers) -> list:
    """The registered checks of the given tiers, in registration order (importing the tier modules)."""
    import importlib

    for t in tiers:
        importlib.import_module(TIER_MODULES[int(t)])
    wanted = {int(t) for t in tiers}
    return [spec for spec in REGISTRY.values() if spec.tier in wanted]


__all__ = ["REGISTRY", "CheckContext", "CheckSpec", "Row", "Status", "register", "verdict_of", "checks_for"]
