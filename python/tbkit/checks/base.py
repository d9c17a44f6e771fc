"""What every check shares: the row it yields, the context it runs in, and the registry.

A check is a function ``check_<id>(ctx) -> Iterable[Row]`` registered with ``@register``. Its
docstring is its documentation (docs/checks.md is generated from the registry by
``python -m tbkit.checks.catalogue``): what it checks, why it matters, its thresholds and the fix.
Its thresholds and options are declared in ``register(..., thresholds=(Threshold(...),),
options=(Option(...),))`` (checks/spec.py) and read with ``ctx.threshold(name)`` /
``ctx.option(name)``; a run sets one with the option ``"<check id>.<name>"``. It builds
rows with ``ctx.row(...)`` (tier and check id are filled in), saves plots with
``ctx.save_figure(...)`` and never prints. The runner times it, turns an exception into an
``ERROR`` row with the traceback, and streams rows to the report as they come.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from tbkit.checks.spec import RUN_OPTIONS, CheckSpec, Option, Threshold, canonical, options_of, thresholds_of

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch

    from tbkit.sources.loaded import LoadedModel


class Status(str, enum.Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    ERROR = "ERROR"  # the check itself crashed: the traceback is in `detail`
    SKIP = "SKIP"  # not applicable, or a dependency the gate refused: `detail` says why and what to do

    def __str__(self) -> str:  # so f-strings and DataFrames show "PASS", not "Status.PASS"
        return self.value


def verdict_of(statuses: Iterable[Status]) -> Status:
    """FAIL if any FAIL or ERROR, else WARN if any WARN, else PASS. SKIP never raises or lowers it."""
    seen = {Status(s) for s in statuses}
    if Status.FAIL in seen or Status.ERROR in seen:
        return Status.FAIL
    if Status.WARN in seen:
        return Status.WARN
    return Status.PASS


@dataclass
class Row:
    tier: int
    check: str
    status: Status
    metric: str = ""
    value: Any = None  # a float, int, str or None; non-finite floats are kept (they are findings)
    threshold: str = ""
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        v = self.value
        if isinstance(v, float) and not math.isfinite(v):
            d["value"] = str(v)  # JSON has no NaN/Inf; keep them visible as text
        elif v is not None and not isinstance(v, (int, float, str, bool)):
            d["value"] = str(v)
        return d


@dataclass
class Figure:
    check: str
    name: str
    path: Optional[Path]
    figure: Any = field(default=None, repr=False)  # the matplotlib Figure until rendered
    draw: Any = field(default=None, repr=False)  # or a function that builds it, called at render time

    def render(self) -> None:
        """Build the figure if it was given as a function, write the PNG (when there is a path),
        and drop the figure object."""
        if self.figure is None and self.draw is not None:
            self.figure, self.draw = self.draw(), None
        if self.figure is not None and self.path is not None:
            from tbkit.checks.report_folder import output_error

            tmp = self.path.with_name(f".{self.path.name}.part")
            try:  # a PNG appears whole or not at all (Ctrl-C while drawing)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
                os.replace(tmp, self.path)
            except OSError as err:
                raise output_error(err, self.path) from None
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
        self.figure = None

    @property
    def pending(self) -> bool:
        """Not drawn yet (the runner draws after the checks)."""
        return self.figure is not None or self.draw is not None


@dataclass
class CheckContext:
    """Everything a check may use. One context per run; ``check_id``/``tier`` set per check."""

    model: LoadedModel
    device: torch.device
    out_dir: Optional[Path] = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # run options by canonical name (checks/spec.py)
    figures: list[Figure] = field(default_factory=list)  # Figure entries, in order
    check_id: str = ""
    tier: int = 0
    # per-run memo shared by the checks (shared input batches and their forwards, see
    # checks/shared.py); valid because every check leaves the model as it found it
    cache: dict[Any, Any] = field(default_factory=dict)
    # the runner renders figures after the checks (so a check's seconds are its own work);
    # checks called directly render at once
    defer_figures: bool = False

    def __post_init__(self) -> None:
        self.options = canonical(self.options)  # older flat names → "<check id>.<name>"

    def threshold(self, name: str) -> Any:
        """The check's threshold ``name``: the run option ``"<check id>.<name>"`` when given, else
        the value declared with the check."""
        key = f"{self.check_id}.{name}"
        if key in self.options:
            return self.options[key]
        return REGISTRY[self.check_id].thresholds[name].default

    def option(self, name: str) -> Any:
        """The check's option ``name`` (declared with ``register(options=...)``): the run option
        ``"<check id>.<name>"`` when given, else its declared default."""
        key = f"{self.check_id}.{name}"
        if key in self.options:
            return self.options[key]
        return REGISTRY[self.check_id].options[name].default

    def run_option(self, name: str) -> Any:
        """A run-level option (``spec.RUN_OPTIONS``: data, batch_size, max_len, …) or its default."""
        if name in self.options:
            return self.options[name]
        return RUN_OPTIONS[name].default

    def row(self, status: Status, metric: str = "", value: Any = None, threshold: str = "", detail: str = "") -> Row:
        return Row(self.tier, self.check_id, Status(status), metric, value, threshold, detail)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed, so every check draws the same inputs each run."""
        import torch

        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return g

    def save_figure(self, fig: Any, name: str) -> Optional[Path]:
        """Save a ``matplotlib.figure.Figure`` (build it without pyplot) as PNG; returns the path.
        ``fig`` may also be a function that builds the figure: under the runner it is then called
        after the checks, so drawing is not counted as the check's time.

        Without an out_dir the figure is kept in memory only (returned None)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.check_id}_{name}")
        path = None
        if self.out_dir is not None:
            path = Path(self.out_dir) / "plots" / f"{safe}.png"
        drawn = not callable(fig) or hasattr(fig, "savefig")
        entry = Figure(self.check_id, name, path, fig if drawn else None, None if drawn else fig)
        self.figures.append(entry)
        if not self.defer_figures:
            entry.render()
        return path


CheckFunc = Callable[[CheckContext], Iterable[Row]]


REGISTRY: dict[str, CheckSpec] = {}


def register(
    id: str,
    tier: int,
    summary: str,
    needs: tuple[str, ...] = (),
    applies: Optional[Callable[[CheckContext], Optional[str]]] = None,
    thresholds: Union[None, dict[str, Any], Iterable[Threshold]] = None,
    options: Optional[Iterable[Option]] = None,
) -> Callable[[CheckFunc], CheckFunc]:
    """Register ``check_<id>`` under its public ``id``. ``thresholds`` are its named, overridable
    limits (``Threshold``s, see ``CheckContext.threshold``), ``options`` its other settings
    (``Option``s, see ``CheckContext.option``)."""

    def deco(func: CheckFunc) -> CheckFunc:
        if id in REGISTRY:
            raise RuntimeError(f"check id {id!r} registered twice")
        declared = thresholds_of(thresholds)
        REGISTRY[id] = CheckSpec(id, tier, func, summary, tuple(needs), applies, declared, options_of(options))
        return func

    return deco
