"""The declared, typed spec of a check and of a run: every option a run accepts is named here or
beside the check that reads it, with its type, default and meaning.

A check declares its ``Threshold``s (limits a verdict is measured against) and ``Option``s
(settings that change what it does) in ``register(...)``; each is set for one run with the option
``"<check id>.<name>"``. Settings that several checks share are run-level, in ``RUN_OPTIONS``.
``ALIASES`` maps the older flat names (``memory_budget_mb``, …) onto the canonical ones; the
validation that uses all of this is ``tbkit.checks.options``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

from tbkit.errors import UsageError

if TYPE_CHECKING:
    from tbkit.checks.base import CheckContext, Row

# the tier packages; importing one registers its checks (base.REGISTRY)
TIER_MODULES = {1: "tbkit.checks.tier1", 2: "tbkit.checks.tier2", 3: "tbkit.checks.tier3"}


@dataclass(frozen=True)
class Option:
    """One named setting: its type (``int``, ``float``, ``str``, ``bool`` or ``object``), its default
    (None: not set, the check decides), the unit its value is in, and one line of help."""

    name: str
    type: type
    default: Any = None
    unit: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()  # for str options: the only accepted values
    positive: bool = False  # numbers: must be > 0


@dataclass(frozen=True)
class Threshold(Option):
    """A limit the check's verdict is measured against (a FAIL or WARN line)."""


@dataclass(frozen=True)
class CheckSpec:
    id: str
    tier: int
    func: Callable[[CheckContext], Iterable[Row]]
    summary: str
    needs: tuple[str, ...] = ()  # requirement strings obtained through tbkit.ensure before the check runs
    # ``applies(ctx) -> None | str``: a reason to SKIP, asked before ``needs`` are installed, so
    # that a check which cannot run (no training data, wrong model kind) never costs an install.
    applies: Optional[Callable[[CheckContext], Optional[str]]] = None
    # name -> Threshold; each overridable with the run option "<id>.<name>"
    thresholds: Mapping[str, Threshold] = field(default_factory=dict)
    # name -> Option (settings that are not limits), set with the run option "<id>.<name>"
    options: Mapping[str, Option] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    def declared(self) -> dict[str, Option]:
        """Every option this check accepts, by canonical name ``<id>.<name>``."""
        return {f"{self.id}.{o.name}": o for o in (*self.thresholds.values(), *self.options.values())}


def thresholds_of(declared: Union[None, Mapping[str, Any], Iterable[Threshold]]) -> dict[str, Threshold]:
    """``register``'s thresholds as name -> Threshold; a plain ``{name: default}`` dict (the older
    spelling) gets float thresholds."""
    if declared is None:
        return {}
    if isinstance(declared, Mapping):
        return {n: d if isinstance(d, Threshold) else Threshold(n, float, d) for n, d in declared.items()}
    return {t.name: t for t in declared}


def options_of(declared: Optional[Iterable[Option]]) -> dict[str, Option]:
    return {o.name: o for o in declared or ()}


_MEASURE = "declare when tbkit cannot measure it"

# Settings of the run that more than one check reads (``tbkit.run``'s own arguments — seed,
# device, tiers — are not options).
RUN_OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("data", object, None, "", "training text file (or token ids) for train, hpo and baseline"),
        Option("synthetic", bool, False, "", "train on synthetic data (labelled so in the report)"),
        Option("batch_size", int, 16, "", "training batch size for train, hpo and baseline", positive=True),
        Option("lr", float, 1e-3, "", "learning rate for train and baseline", positive=True),
        Option(
            "max_len",
            int,
            None,
            "tokens",
            f"the model's maximum sequence length (Tier 3 trains on blocks of it); {_MEASURE}",
            positive=True,
        ),
        Option(
            "layout",
            str,
            None,
            "",
            f"where the batch dimension is in the model's inputs; {_MEASURE}",
            choices=("batch_first", "seq_first"),
        ),
        Option(
            "mask_convention",
            str,
            None,
            "",
            f"what the model's attention mask values mean; {_MEASURE}",
            choices=("int-keep", "bool-keep", "bool-pad", "int-pad", "float-keep", "additive"),
        ),
    )
}

# The older flat option names, each the documented spelling of one canonical name.
ALIASES: dict[str, str] = {
    "memory_budget_mb": "memory.budget_mb",
    "speed_seconds_per_point": "speed.seconds_per_shape",
    "latency_budget_ms": "speed.latency_budget_ms",
    "train_epochs": "train.epochs",
    "train_max_steps": "train.max_steps",
    "devices": "train.devices",
    "strategy": "train.strategy",
    "num_nodes": "train.num_nodes",
    "hpo_trials": "hpo.trials",
    "hpo_epochs": "hpo.epochs",
    "storage": "hpo.storage",
    "study_name": "hpo.study_name",
    "baseline_seeds": "baseline.seeds",
    "baseline_steps": "baseline.steps",
}


def canonical(options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """``options`` with every alias replaced by its canonical name and None values (= not set, the
    default holds) left out. An alias and its canonical name given different values is a
    UsageError: neither may silently win."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if not isinstance(key, str):
            raise UsageError(f"option name {key!r} is not a string", "Name options like 'causal.max_change'.")
        if value is None:
            continue
        name = ALIASES.get(key, key)
        if name in out and out[name] != value:
            raise UsageError(
                f"option {name!r} was given twice with different values ({out[name]!r} and {value!r}, once as {key!r})",
                f"Give it once, as {name!r} ({', '.join(sorted(a for a, c in ALIASES.items() if c == name))} "
                "is its older spelling).",
            )
        out[name] = value
    return out
