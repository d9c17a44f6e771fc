"""``tbkit.run``: load (or take) a model, run the chosen checks one by one, stream the rows into
a Report, and never lose a finished row.

What the runner guarantees, whatever a check does:
- a check that raises becomes an ERROR row with the traceback; the next check still runs;
- a check that yields nothing becomes an ERROR row too (silence must not read as success);
- report.json is rewritten atomically after every row; Ctrl-C writes the partial report
  (marked interrupted) and re-raises;
- checks with ``needs`` go through the install gate first (``tbkit.guard.gate.ensure``); a refusal
  is one SKIP row carrying the gate's reason;
- the model's train/eval flags and device are restored afterwards, and torch's global random
  state is forked, so the caller's process is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, Protocol, Union

from tbkit.checks import report_folder, run_guard
from tbkit.checks.base import REGISTRY, CheckContext, Row, Status
from tbkit.checks.measure import establish, not_measured
from tbkit.checks.numeric import describe_error
from tbkit.checks.options import validate_options
from tbkit.checks.progress import Progress
from tbkit.checks.report import Report, environment
from tbkit.checks.spec import TIER_MODULES, CheckSpec
from tbkit.devices import resolve_device, rng_devices, seed_forked
from tbkit.errors import TbkitError, UsageError, mask_credentials
from tbkit.sources.coerce import as_loaded
from tbkit.sources.loaded import LoadedModel

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch
    from torch import nn

DEFAULT_OUT_DIR = "tbkit-report"

Tiers = Union[int, str, Iterable[Union[int, str]]]  # (1,), "1,2", [1, 3]
# a module and its train flag, as found before the run (``_model_on``)
Flags = list[tuple["nn.Module", bool]]


class Listener(Protocol):
    """What ``execute`` tells about the progress of a run (``Progress``, or the CLI worker's events;
    one that also has ``body(check_id)`` is told when a check's own time starts)."""

    def started(self, index: int, check_id: str) -> None: ...

    def finished(self, index: int, check_id: str, statuses: list[str], seconds: float) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------
# choosing what to run
# ------------------------------------------------------------------------------------------
def parse_tiers(tiers: Tiers) -> tuple[int, ...]:
    """(1,), "1,2", [1, 3] → a sorted tuple of valid tier numbers; UsageError otherwise."""
    if isinstance(tiers, (int, str)):
        tiers = str(tiers).split(",")
    out: set[int] = set()
    for t in tiers:
        text = str(t).strip()
        if not text.isdigit() or int(text) not in TIER_MODULES:
            raise UsageError(f"unknown tier {text!r}", f"Use tiers from {sorted(TIER_MODULES)}, e.g. --tier 1,2.")
        out.add(int(text))
    if not out:
        raise UsageError("no tier given", "Use e.g. --tier 1 or tiers=(1, 2).")
    return tuple(sorted(out))


def _import_tier(tier: int) -> None:
    import importlib

    name = TIER_MODULES[tier]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise UsageError(
            f"Tier {tier} is not part of this tbkit installation", "Run the other tiers, or upgrade tbkit."
        ) from None


def select_checks(tiers: Tiers = (1,), checks: Union[None, str, Iterable[str]] = None) -> list[CheckSpec]:
    """The CheckSpecs to run, in run order (``run_order``). ``checks`` picks ids from any tier
    (``tiers`` is then not used); unknown ids → UsageError listing the valid ones."""
    if checks is None:
        wanted = parse_tiers(tiers)
        for t in wanted:
            _import_tier(t)
        return run_order(s for s in REGISTRY.values() if s.tier in wanted)
    ids = [c.strip() for c in (checks.split(",") if isinstance(checks, str) else checks) if str(c).strip()]
    if not ids:
        raise UsageError("no check id given", "Name checks like --checks causal,padding, or leave the option out.")
    for t in TIER_MODULES:
        try:
            _import_tier(t)
        except UsageError:
            pass  # a tier that is not installed simply offers no ids
    unknown = [c for c in ids if c not in REGISTRY]
    if unknown:
        by_tier: dict[int, list[str]] = {}
        for s in REGISTRY.values():
            by_tier.setdefault(s.tier, []).append(s.id)
        valid = "; ".join(f"tier {t}: {', '.join(v)}" for t, v in sorted(by_tier.items()))
        raise UsageError(
            f"unknown check id{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
            f"Valid ids are {valid}.",
        )
    return run_order(s for s in REGISTRY.values() if s.id in ids)


def run_order(specs: Iterable[CheckSpec]) -> list[CheckSpec]:
    """By tier; within a tier tbkit's own checks in their declared order, then checks registered
    by the user in the order they were registered. Registration order alone is not enough: a
    check registered before tbkit imported its tiers would otherwise run before ``summary``."""
    position = {check_id: i for i, check_id in enumerate(REGISTRY)}

    def key(spec: CheckSpec) -> tuple[int, bool, int]:
        own = spec.func.__module__.startswith("tbkit.checks.")
        return spec.tier, not own, position[spec.id]

    return sorted(specs, key=key)


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------
def run(
    source_or_model: Any = None,
    tiers: Tiers = (1,),
    checks: Union[None, str, Iterable[str]] = None,
    kind: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    out_dir: Union[str, os.PathLike[str], None] = None,
    seed: int = 0,
    options: Optional[dict[str, Any]] = None,
    progress: bool = True,
    stream: Optional[IO[str]] = None,
    load_options: Optional[dict[str, Any]] = None,
    config: Union[str, os.PathLike[str], dict[str, Any], None] = None,
    check_timeout: Optional[float] = None,
) -> Report:
    """Run the checks of ``tiers`` (or the ``checks`` named, from any tier) and return a Report.

    ``source_or_model``: anything ``tbkit.load`` accepts (None = the bundled example), or a
    LoadedModel. ``out_dir``: the folder that receives report.json, report.html and plots/ (written
    into a fresh sibling folder and swapped in when done, so the previous report stays whole until
    then); None (the default) writes no files — the Report holds the rows and plots in memory.
    ``options`` reach the checks by their declared names (docs/checks.md): a check's threshold or
    option ``"<check id>.<name>"`` (``{"memory.budget_mb": 512}``, ``{"batch_equivalence.pass_rel": 1e-4}``)
    or a run-level one (``data``, ``max_len``, …); the older names ``memory_budget_mb``,
    ``latency_budget_ms``, … are aliases. An unknown name or a value of the wrong type is a
    UsageError before anything loads or is written. ``stream`` receives the provenance and
    messages (default stdout); progress goes to stderr (a bar in a terminal or notebook, a line per
    check otherwise). ``load_options`` go to ``tbkit.load`` when a source is given; ``config`` is ``tbkit.load``'s (a config
    file's path, or a dict of keys over it). ``check_timeout``:
    seconds one check may take (main thread only; default none), an ERROR row when exceeded.

    A model that calls ``sys.exit`` or raises ``KeyboardInterrupt`` inside a check gets an ERROR row;
    the caller's random states and torch globals are left as they were."""
    stream = stream if stream is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    specs = select_checks(tiers, checks)  # usage errors before any model code runs
    options = validate_options(options, [s.id for s in specs])  # canonical names, declared types
    load_options = _load_options(source_or_model, load_options, config)
    out = report_folder.resolve_out(out_dir) if out_dir is not None else None  # before any model code
    with run_guard.caller_state(), run_guard.user_interrupts():
        lm = as_loaded(source_or_model, kind, log=say, load_options=load_options)
        staging = report_folder.make_staging(out) if out is not None else None
        try:
            report = execute(lm, specs, device, staging, seed, options, stream, progress, check_timeout)
        except KeyboardInterrupt:
            kept = _settle(staging, out, interrupted=True)
            say(f"tbkit: interrupted; the finished rows were kept{f' in {kept}' if kept else ''}")
            raise
        except BaseException:
            report_folder.discard(staging)  # the previous report stays as it was
            raise
        _settle(staging, out, interrupted=False)
        if out is not None and staging is not None:  # staging is made exactly when out is given
            _rebase(report, staging, out)
        return report


def _load_options(
    source_or_model: Any,
    load_options: Optional[dict[str, Any]],
    config: Union[str, os.PathLike[str], dict[str, Any], None],
) -> Optional[dict[str, Any]]:
    """``tbkit.load``'s keywords for this run (``config`` among them); a usage error for a model
    that is already loaded."""
    if config is not None:
        load_options = {**(load_options or {}), "config": config}
    if load_options and isinstance(source_or_model, LoadedModel):
        raise UsageError(
            "load_options and config apply only when tbkit.run loads the source itself",
            "Pass them to tbkit.load instead, or pass the source to tbkit.run.",
        )
    return load_options


def _rebase(report: Report, staging: Path, out: Path) -> None:
    """After the swap the files live in ``out``: the Report (and its plots) point there."""
    report.out_dir = out
    for figure in report.figures:
        if figure.path is not None:
            try:
                figure.path = out / Path(figure.path).relative_to(staging)
            except ValueError:
                pass


def _settle(staging: Optional[Path], out: Optional[Path], interrupted: bool) -> Optional[Path]:
    """Swap a staged report in (a partial one only when it was written, marked interrupted);
    the report.json it put in place, if any."""
    if staging is None or out is None:  # both None, or neither (staging is made exactly when out is given)
        return None
    if interrupted and not (staging / "report.html").is_file():
        report_folder.discard(staging)
        return None
    report_folder.swap_in(staging, out)
    return out / "report.json"


def execute(
    lm: LoadedModel,
    specs: Sequence[CheckSpec],
    device: Union[str, torch.device, None],
    folder: Optional[Path],
    seed: int,
    options: Optional[dict[str, Any]],
    stream: IO[str],
    progress: bool = True,
    check_timeout: Optional[float] = None,
    listener: Optional[Listener] = None,
) -> Report:
    """Run ``specs`` on a loaded model, writing the report into ``folder`` (None: no files). On the
    user's interrupt the partial report is finished, marked interrupted, and KeyboardInterrupt re-raised."""
    dev = resolve_device(device, lm.module)
    report, ctx = _start_report(lm, dev, specs, folder, seed, options)
    listener = listener if listener is not None else Progress(len(specs), sys.stderr, enabled=progress)
    try:
        with _model_on(lm.module, dev) as flags:
            measuring = time.perf_counter()
            report.model = ctx.model = _establish(ctx, check_timeout)  # once, before any check
            # no check's row holds this time: the report says it, so the rows' sum plus it is the run
            report.run["conventions_seconds"] = round(time.perf_counter() - measuring, 4)
            _run_specs(specs, ctx, report, flags, listener, stream, check_timeout)
        _render_figures(report)
    except KeyboardInterrupt:
        report.finish(interrupted=True, ended=run_guard.interrupt_reason())  # plots drawn so far are kept
        raise
    finally:
        listener.close()
    report.finish()
    return report


def _start_report(
    lm: LoadedModel,
    dev: torch.device,
    specs: Sequence[CheckSpec],
    out: Optional[Path],
    seed: int,
    options: Optional[dict[str, Any]],
) -> tuple[Report, CheckContext]:
    """The Report (its JSON written at once) and the CheckContext the checks share."""
    params = list(lm.module.parameters())
    dtype = params[0].dtype if params else None
    plain = {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in (options or {}).items()
    }
    run_facts = {"tiers": sorted({s.tier for s in specs}), "checks": [s.id for s in specs], "seed": seed}
    report = Report(lm, out, environment(dev, dtype), run={**run_facts, "options": plain})
    ctx = CheckContext(
        model=lm, device=dev, out_dir=out, seed=seed, options=dict(options or {}), figures=report.figures
    )
    ctx.defer_figures = True  # rendered after the checks: a check's seconds are its own work
    report.write_json()
    return report, ctx


@contextlib.contextmanager
def _model_on(module: nn.Module, dev: torch.device) -> Iterator[Flags]:
    """Move a model that lives on one device to ``dev`` for the run (a model spread over several
    devices stays where it is), fork torch's random state, and afterwards put flags and device back."""
    import torch

    params = list(module.parameters())
    home = {p.device for p in params}
    flags = [(m, m.training) for m in module.modules()]
    moved = len(home) == 1 and home != {dev}
    if moved:
        module.to(dev)
    try:
        with torch.random.fork_rng(devices=rng_devices(dev)):
            yield flags
    finally:
        for m, flag in flags:
            m.training = flag
        if moved:
            module.to(next(iter(home)))


def _render_figures(report: Report) -> None:
    for figure in report.figures:
        figure.render()


def _run_specs(
    specs: Sequence[CheckSpec],
    ctx: CheckContext,
    report: Report,
    flags: Flags,
    listener: Listener,
    stream: IO[str],
    check_timeout: Optional[float],
) -> None:
    seed_forked(ctx.seed, ctx.device)
    builtins_kept = run_guard.snapshot_builtins()
    for index, spec in enumerate(specs):
        listener.started(index, spec.id)
        ctx.check_id, ctx.tier = spec.id, spec.tier
        first = len(report.rows)
        started = time.perf_counter()
        for row in _run_one(spec, ctx, stream, check_timeout, getattr(listener, "body", None)):
            report.add(row)
        report.write_json()
        run_guard.restore_builtins(builtins_kept)  # a model that replaced open() must not break the report
        for m, flag in flags:  # a check that forgot to restore modes must not affect the next
            m.training = flag
        statuses = [r.status.value for r in report.rows[first:]]
        listener.finished(index, spec.id, statuses, time.perf_counter() - started)


class _Stamper:
    """Gives each row the seconds since the previous one (the first: since the check started)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def __call__(self, row: Row) -> Row:
        now = time.perf_counter()
        row.seconds = round(now - self.last, 4)
        self.last = now
        return row

    def resume(self) -> None:
        """Restart the clock after the consumer has handled a row (report.json is rewritten per
        row): that time is the report's, not the check's."""
        self.last = time.perf_counter()


def _establish(ctx: CheckContext, check_timeout: Optional[float]) -> LoadedModel:
    """The model's conventions, measured once before the checks and under the same time limit: a
    probe that the model makes hang, exit or interrupt is cut off, and the checks run on what could
    be established (they meet the model's behaviour themselves and report it as their ERROR)."""
    builtins_kept = run_guard.snapshot_builtins()
    try:
        with run_guard.CheckLimit(check_timeout):
            return establish(ctx)
    except UsageError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt, run_guard.CheckTimeout) as exc:
        detail = run_guard.escape_detail(exc) if not isinstance(exc, Exception) else describe_error(exc)
        if detail is None:  # the user's own Ctrl-C
            raise
        return not_measured(ctx, f"the probe was cut off ({detail})")
    finally:
        run_guard.restore_builtins(builtins_kept)  # a model that replaced open() must not break the report


def _run_one(
    spec: CheckSpec,
    ctx: CheckContext,
    stream: IO[str],
    check_timeout: Optional[float] = None,
    on_body: Optional[Callable[[str], object]] = None,
) -> Iterator[Row]:
    """Yield the rows of one check with their timings; exceptions become rows."""
    stamp = _Stamper()
    if spec.applies is not None:
        reason = spec.applies(ctx)
        if reason:
            yield stamp(ctx.row(Status.SKIP, detail=reason))
            return
    if spec.needs:
        refusal = _requirements(spec, ctx, stream)
        if refusal is not None:
            yield stamp(refusal)
            return
    if on_body is not None:  # the time limit starts here: installing the requirements is not the check's time
        on_body(spec.id)
    yield from _check_rows(spec, ctx, stamp, check_timeout)


def _requirements(spec: CheckSpec, ctx: CheckContext, stream: IO[str]) -> Optional[Row]:
    """Get the check's ``needs`` through the install gate; a row when they could not be had."""
    try:
        # the gate (pip, importlib.metadata, subprocess) loads only when a check needs something:
        # a run of Tier 1, and every usage error, never pays for it (benchmarks/bench_cli.py)
        from tbkit.guard import gate

        with contextlib.redirect_stdout(stream):
            gate.ensure(*spec.needs)
    except KeyboardInterrupt:
        raise
    except TbkitError as err:
        # Refused by the gate, or not installable here (offline, no such version): either way
        # the check could not run and the model is not at fault, so SKIP with the gate's
        # reason and fix, never an ERROR that reads as a model bug.
        return ctx.row(Status.SKIP, "requirements", " ".join(spec.needs), "", str(err))
    except Exception:
        why = "getting the requirements failed:\n" + traceback.format_exc()
        return ctx.row(Status.ERROR, "requirements", " ".join(spec.needs), "", why)
    return None


def _check_rows(
    spec: CheckSpec, ctx: CheckContext, stamp: _Stamper, check_timeout: Optional[float] = None
) -> Iterator[Row]:
    produced: Optional[Row] = None
    with run_guard.CheckLimit(check_timeout) as limit:
        try:
            for row in spec.func(ctx):
                limit.pause()  # storing the row is the report's time, never interrupted
                produced = stamp(row)
                yield produced
                stamp.resume()
                limit.resume()
        except Exception:
            limit.pause()
            yield stamp(ctx.row(Status.ERROR, "crashed", None, "", mask_credentials(traceback.format_exc())))
            return
        except BaseException as exc:  # sys.exit, the model's own KeyboardInterrupt, the time limit
            limit.pause()
            detail = run_guard.escape_detail(exc)
            if detail is None:
                raise
            metric = "time limit" if isinstance(exc, run_guard.CheckTimeout) else type(exc).__name__
            yield stamp(ctx.row(Status.ERROR, metric, None, "", f"{detail}\n{traceback.format_exc(limit=-8)}"))
            return
    if produced is not None:
        # work after the last row (saving a plot) belongs to the check: add it to its last row,
        # which the caller has already stored (it rewrites report.json after the check)
        produced.seconds = round(produced.seconds + time.perf_counter() - stamp.last, 4)
    else:
        why = f"check {spec.id!r} finished without producing a row ({time.perf_counter() - stamp.start:.2f} s)"
        yield stamp(ctx.row(Status.ERROR, "no result", None, "", why))


__all__ = ["run", "execute", "select_checks", "parse_tiers", "resolve_device", "DEFAULT_OUT_DIR"]
