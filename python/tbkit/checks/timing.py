"""Timing that measures the model, not the machine: a minimum number of timings, a time budget,
the median with a distribution-free confidence interval.

A spread of one sample is not a measurement, so a point never has fewer than ``min_timings``
timings (the budget can only add more). The confidence interval of the median comes from order
statistics (the number of timings below the true median is Binomial(n, 1/2)), which needs no
assumption about the shape of the noise: on a busy machine the interval widens, and that is
reported in the row's detail, never turned into a WARN.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Timing:
    times: list[float]  # seconds, in the order measured

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def median_ci(self, level: float = 0.95) -> tuple[float, float]:
        """(low, high) order-statistic confidence interval of the median; (min, max) when n is
        too small for the level (their coverage is then stated by ``ci_coverage``)."""
        xs = sorted(self.times)
        k = _order_index(len(xs), level)
        return xs[k], xs[len(xs) - 1 - k]

    def ci_coverage(self, level: float = 0.95) -> float:
        """The exact coverage of ``median_ci`` (>= level when n allows it)."""
        n = len(self.times)
        return 1 - 2 * _binom_cdf(_order_index(n, level), n)


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    outcomes: int = 2**n  # n >= 0: an int (mypy types int ** int as Any)
    return sum(math.comb(n, i) for i in range(k + 1)) / outcomes


def _order_index(n: int, level: float) -> int:
    """The largest 0-based k with P(X <= k) <= (1 - level) / 2, X ~ Binomial(n, 1/2): the median
    lies below the sorted sample's x_k with probability P(X <= k), so (x_k, x_{n-1-k}) covers it
    with probability 1 - 2 P(X <= k). 0 (min, max) when n is too small for the level."""
    alpha = (1 - level) / 2
    k = 0
    while k + 1 < (n - 1) / 2 and _binom_cdf(k + 1, n) <= alpha:
        k += 1
    return k


def measure(step: Callable[[], object], min_timings: int, budget_s: float, max_timings: int = 10**6) -> Timing:
    """Time ``step`` at least ``min_timings`` times, then keep going while the budget lasts (the
    budget bounds the time; ``max_timings`` only bounds memory). The caller warms ``step`` up first."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_timings:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if len(times) >= min_timings and time.perf_counter() - start >= budget_s:
            break
    return Timing(times)


def measure_interleaved(
    steps: Sequence[Callable[[], object]], min_timings: int, budget_s: float, max_timings: int = 10**6
) -> list[Timing]:
    """Time several steps in rounds (a, b, a, b, ...): at least ``min_timings`` rounds, more while
    ``budget_s`` per step lasts. Interleaving makes a burst of other work hit every step alike, so
    comparisons between the steps (round by round) stay fair on a busy machine."""
    times: list[list[float]] = [[] for _ in steps]
    start = time.perf_counter()
    while len(times[0]) < max_timings:
        for i, step in enumerate(steps):
            t = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - t)
        if len(times[0]) >= min_timings and time.perf_counter() - start >= budget_s * len(steps):
            break
    return [Timing(ts) for ts in times]


def machine_load() -> str:
    """One line about what else the machine is doing (for details and the report's environment)."""
    import os

    try:
        one, five, _ = os.getloadavg()
    except (AttributeError, OSError):  # Windows has no load average
        return f"{os.cpu_count()} CPUs; load average not available"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"
