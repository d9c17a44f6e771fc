"""How long masking credentials takes on hostile untrusted text (issue 23 item 1): the error path
must stay linear on a 2 MB config string (the old backtracking pattern took 17 s on 130 000 'a's).

For each input, prints the median of N calls of ``mask_credentials`` and of a full ``TbkitError``
(mask + shorten), and the ratio to the reference in the same run: one ``str.count`` pass over the
same text (the floor of any linear scan). Run: python benchmarks/bench_mask.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from tbkit.errors import TbkitError, mask_credentials

SIZE = 2_000_000
INPUTS = {
    "a * 2M": "a" * SIZE,
    "'a://' * 500k": "a://" * (SIZE // 4),
    "'@' * 2M": "@" * SIZE,
    "http:// + '@' * 2M": "http://" + "@" * SIZE,
    "'?token=' * 285k": "?token=" * (SIZE // 7),
    "URLs with passwords": "http://u:p@h/ " * (SIZE // 14),
}


def median_s(func, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"{'input':<22} {'count (ref)':>12} {'mask':>10} {'TbkitError':>11} {'mask/ref':>9}")
    for name, text in INPUTS.items():
        ref = median_s(lambda t=text: t.count("@"), runs)
        mask = median_s(lambda t=text: mask_credentials(t), runs)
        err = median_s(lambda t=text: TbkitError(t, t), runs)
        print(f"{name:<22} {ref * 1e3:>10.2f}ms {mask * 1e3:>8.1f}ms {err * 1e3:>9.1f}ms {mask / ref:>8.1f}x")


if __name__ == "__main__":
    main()
