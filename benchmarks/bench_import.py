"""What `import tbkit` costs: medians over fresh subprocesses of `python -c "import tbkit"` against
`python -c pass`, measured interleaved in one run, and which heavy libraries it imports (none may).

Target (issue 2): `import tbkit` adds <= 30 ms and imports none of torch, pandas, matplotlib.

    python3 benchmarks/bench_import.py [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "pandas", "matplotlib", "numpy")


def once(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    once("import tbkit")  # warm the page cache
    base, tb = [], []
    for _ in range(args.runs):  # interleaved so machine noise hits both alike
        base.append(once("pass"))
        tb.append(once("import tbkit"))
    b, t = statistics.median(base) * 1e3, statistics.median(tb) * 1e3
    probe = subprocess.run(
        [sys.executable, "-c", f"import sys, tbkit; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"python -c pass          median {b:7.1f} ms")
    print(f"python -c 'import tbkit' median {t:7.1f} ms")
    print(f"added by import tbkit          {t - b:7.1f} ms  (target <= 30 ms: {'met' if t - b <= 30 else 'NOT met'})")
    print(f"heavy modules imported: {probe or 'none'}")
    # The same cost seen from inside: CPython's own import timer (less sensitive to machine load)
    cumul = []
    for _ in range(min(args.runs, 10)):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import tbkit"], capture_output=True, text=True, check=True
        ).stderr
        line = [ln for ln in err.splitlines() if ln.rstrip().endswith("| tbkit")][-1]
        cumul.append(int(line.split("|")[1]) / 1e3)
    print(f"-X importtime: tbkit cumulative median {statistics.median(cumul):.1f} ms (includes the baseline)")


if __name__ == "__main__":
    main()
