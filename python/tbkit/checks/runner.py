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
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union

from tbkit.checks.base import REGISTRY, CheckContext, Row, Status
from tbkit.devices import resolve_device
from tbkit.errors import TbkitError, UsageError
from tbkit.sources.coerce import as_loaded

DEFAULT_OUT_DIR = "tbkit-report"


# ------------------------------------------------------------------------------------------
# choosing what to run
# ------------------------------------------------------------------------------------------
def parse_tiers(tiers) -> tuple:
    """(1,), "1,2", [1, 3] → a sorted tuple of valid tier numbers; UsageError otherwise."""
    from tbkit.checks import TIER_MODULES

    if isinstance(tiers, (int, str)):
        tiers = str(tiers).split(",")
    out = set()
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

    from tbkit.checks import TIER_MODULES

    name = TIER_MODULES[tier]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise UsageError(
            f"Tier {tier} is not part of this tbkit installation", "Run the other tiers, or upgrade tbkit."
        ) from None


def select_checks(tiers=(1,), checks: Union[None, str, Iterable[str]] = None) -> list:
    """The CheckSpecs to run, in registry order. ``checks`` picks ids from any tier (``tiers`` is
    then not used); unknown ids → UsageError listing the valid ones."""
    from tbkit.checks import TIER_MODULES

    if checks is None:
        wanted = parse_tiers(tiers)
        for t in wanted:
            _import_tier(t)
        return [s for s in REGISTRY.values() if s.tier in wanted]
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
        by_tier = {}
        for s in REGISTRY.values():
            by_tier.setdefault(s.tier, []).append(s.id)
        valid = "; ".join(f"tier {t}: {', '.join(v)}" for t, v in sorted(by_tier.items()))
        raise UsageError(
            f"unknown check id{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
            f"Valid ids are {valid}.",
        )
    return [s for s in REGISTRY.values() if s.id in ids]


# ------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------
def run(
    source_or_model=None,
    tiers=(1,),
    checks=None,
    kind: Optional[str] = None,
    device=None,
    out_dir=None,
    seed: int = 0,
    options: Optional[dict] = None,
    progress: bool = True,
    stream=None,
    load_options: Optional[dict] = None,
):
    """Run the checks of ``tiers`` (or the ``checks`` named, from any tier) and return a Report.

    ``source_or_model``: anything ``tbkit.load`` accepts (None = the bundled example), or a
    LoadedModel. ``out_dir`` (default ./tbkit-report) receives report.json, report.html and
    plots/. ``options`` reach the checks (e.g. ``{"memory_budget_mb": 512}``,
    ``{"latency_budget_ms": 50}``, or a threshold ``{"batch_equivalence.pass_rel": 1e-4}``).
    ``stream`` receives the provenance and messages (default stdout); the progress bar goes to
    stderr. ``load_options`` go to ``tbkit.load`` (e.g. ``{"revision": sha}``) when a source is given."""
    from tbkit.sources.loaded import LoadedModel

    stream = stream if stream is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    specs = select_checks(tiers, checks)  # usage errors before any model code runs
    if load_options and isinstance(source_or_model, LoadedModel):
        raise UsageError(
            "load_options apply only when tbkit.run loads the source itself",
            "Pass them to tbkit.load instead, or pass the source to tbkit.run.",
        )
    lm = as_loaded(source_or_model, kind, log=say, load_options=load_options)
    dev = resolve_device(device, lm.module)
    report, ctx = _start_report(
        lm, dev, specs, Path(out_dir if out_dir is not None else DEFAULT_OUT_DIR), seed, options
    )
    try:
        with _model_on(lm.module, dev) as flags:
            _run_specs(specs, ctx, report, flags, progress, stream)
        _render_figures(report)
    except KeyboardInterrupt:
        report.finish(interrupted=True)  # the plots drawn so far are kept; the rest are skipped
        say(f"tbkit: interrupted; {len(report.rows)} finished rows kept in {report.json_path}")
        raise
    report.finish()
    return report


def _start_report(lm, dev, specs, out: Path, seed: int, options: Optional[dict]):
    """The Report (its JSON written at once) and the CheckContext the checks share."""
    from tbkit.checks.report import Report, environment

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
def _model_on(module, dev):
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
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            yield flags
    finally:
        for m, flag in flags:
            m.training = flag
        if moved:
            module.to(next(iter(home)))


def _render_figures(report) -> None:
    for figure in report.figures:
        figure.render()


def _run_specs(specs, ctx: CheckContext, report, flags, progress: bool, stream) -> None:
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(ctx.seed)
    bar = tqdm(total=len(specs), disable=not progress, desc="tbkit", unit="check", leave=True)
    try:
        for spec in specs:
            bar.set_postfix_str(spec.id)
            ctx.check_id, ctx.tier = spec.id, spec.tier
            for row in _run_one(spec, ctx, stream):
                report.add(row)
            report.write_json()
            for m, flag in flags:  # a check that forgot to restore modes must not affect the next
                m.training = flag
            bar.update(1)
    finally:
        bar.close()


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


def _run_one(spec, ctx: CheckContext, stream):
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
    yield from _check_rows(spec, ctx, stamp)


def _requirements(spec, ctx: CheckContext, stream) -> Optional[Row]:
    """Get the check's ``needs`` through the install gate; a row when they could not be had."""
    try:
        from tbkit.guard.gate import ensure

        with contextlib.redirect_stdout(stream):
            ensure(*spec.needs)
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


def _check_rows(spec, ctx: CheckContext, stamp: _Stamper):
    produced = None
    try:
        for row in spec.func(ctx):
            produced = stamp(row)
            yield produced
            stamp.resume()
    except KeyboardInterrupt:
        raise
    except Exception:
        yield stamp(ctx.row(Status.ERROR, "crashed", None, "", traceback.format_exc()))
        return
    if produced is not None:
        # work after the last row (saving a plot) belongs to the check: add it to its last row,
        # which the caller has already stored (it rewrites report.json after the check)
        produced.seconds = round(produced.seconds + time.perf_counter() - stamp.last, 4)
    else:
        why = f"check {spec.id!r} finished without producing a row ({time.perf_counter() - stamp.start:.2f} s)"
        yield stamp(ctx.row(Status.ERROR, "no result", None, "", why))


__all__ = ["run", "select_checks", "parse_tiers", "resolve_device", "DEFAULT_OUT_DIR"]
