"""How often each check reads a tensor back to the host: on a GPU, each read waits for every queued
kernel (a CUDA sync), so a check that reads once per parameter pays one wait per parameter.

    python benchmarks/bench_host_reads.py [--size 7m|gpt2-small|small|example] [--tiers 1,2]

Counted on any device (the CPU is enough) by tests/support/host_reads.py, a ``TorchFunctionMode``
that sees every ``item()``, ``float()``, ``int()``, ``bool()``, ``tolist()``, ``numpy()`` and
``.cpu()`` call on a tensor during one ``tbkit.run``; each is attributed to the check whose
rows were being produced ("(run)" is the runner's own work: the conventions measurement before
the checks, the report). The counts are exact, not timings, so they do not depend on the machine's
load; compare two commits by running this script on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUTSIDE = "(run)"


def attributing(spec: Any, current: list[str]) -> Any:
    """``spec`` with its function wrapped so that reads while it runs count against its id."""
    func = spec.func

    def run(ctx: Any) -> Iterator[Any]:
        previous, current[0] = current[0], spec.id
        try:
            yield from func(ctx)
        finally:
            current[0] = previous

    return dataclasses.replace(spec, func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7m", choices=["small", "7m", "gpt2-small", "example"])
    parser.add_argument("--tiers", default="1,2", help="comma-separated, from 1 and 2")
    args = parser.parse_args(argv)
    tiers = [int(t) for t in args.tiers.split(",")]

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "tests" / "support")]
    from bench_tier1 import build

    import tbkit
    import tbkit.checks.tier1
    import tbkit.checks.tier2  # the tiers register their checks on import: before they are wrapped
    from host_reads import CountReads
    from tbkit.checks import base

    current = [OUTSIDE]
    for check_id, spec in list(base.REGISTRY.items()):
        base.REGISTRY[check_id] = attributing(spec, current)
    lm = build(args.size)
    n_params = sum(1 for _ in lm.module.parameters())
    out = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    try:
        with CountReads(lambda: current[0]) as counter:
            report = tbkit.run(lm, tiers=tiers, device="cpu", out_dir=out, progress=False, stream=io.StringIO())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"model {args.size}: {n_params} parameter tensors; tiers {args.tiers}; verdict {report.verdict.value}")
    print(f"{'check':<22} {'host reads':>10}")
    counts = counter.counts
    for check_id, n in counts.most_common():
        print(f"{check_id:<22} {n:>10}")
    print(f"{'total':<22} {sum(counts.values()):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
