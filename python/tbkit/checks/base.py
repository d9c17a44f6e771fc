"""What every check shares: the row it yields, the context it runs in, and the registry.

A check is a function ``check(ctx) -> Iterable[Row]`` registered with ``@register``. It builds
rows with ``ctx.row(...)`` (tier and check id are filled in), saves plots with
``ctx.save_figure(...)`` and never prints. The runner times it, turns an exception into an
``ERROR`` row with the traceback, and streams rows to the report as they come.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

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

    def to_dict(self) -> dict:
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
    path: Path


@dataclass
class CheckContext:
    """Everything a check may use. One context per run; ``check_id``/``tier`` set per check."""

    model: LoadedModel
    device: torch.device
    out_dir: Optional[Path] = None
    seed: int = 0
    options: dict = field(default_factory=dict)  # user options: memory budget, training data, …
    figures: list = field(default_factory=list)  # Figure entries, in order
    check_id: str = ""
    tier: int = 0

    def row(self, status: Status, metric: str = "", value: Any = None, threshold: str = "", detail: str = "") -> Row:
        return Row(self.tier, self.check_id, Status(status), metric, value, threshold, detail)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed, so every check draws the same inputs each run."""
        import torch

        g = torch.Generator()
        g.manual_seed(self.seed + offset)
        return g

    def save_figure(self, fig, name: str) -> Optional[Path]:
        """Save a ``matplotlib.figure.Figure`` (build it without pyplot) as PNG; returns the path.

        Without an out_dir the figure is kept in memory only (returned None)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.check_id}_{name}")
        path = None
        if self.out_dir is not None:
            plots = Path(self.out_dir) / "plots"
            plots.mkdir(parents=True, exist_ok=True)
            path = plots / f"{safe}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
        self.figures.append(Figure(self.check_id, name, path))
        return path


CheckFunc = Callable[[CheckContext], Iterable[Row]]


@dataclass(frozen=True)
class CheckSpec:
    id: str
    tier: int
    func: CheckFunc
    summary: str
    needs: tuple = ()  # requirement strings obtained through tbkit.ensure before the check runs
    # ``applies(ctx) -> None | str``: a reason to SKIP, asked before ``needs`` are installed, so
    # that a check which cannot run (no training data, wrong model kind) never costs an install.
    applies: Optional[Callable[[CheckContext], Optional[str]]] = None


REGISTRY: dict[str, CheckSpec] = {}


def register(id: str, tier: int, summary: str, needs: tuple = (), applies=None) -> Callable[[CheckFunc], CheckFunc]:
    def deco(func: CheckFunc) -> CheckFunc:
        if id in REGISTRY:
            raise RuntimeError(f"check id {id!r} registered twice")
        REGISTRY[id] = CheckSpec(id, tier, func, summary, tuple(needs), applies)
        return func

    return deco
