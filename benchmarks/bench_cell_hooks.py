"""Per-cell overhead of `%load_ext tbkit` (input transformer + post_run_cell integrity check).

One IPython InteractiveShell, NumPy imported (so the probe has a real native distribution to watch),
the same cells run alternately with and without the extension in interleaved blocks, so drift on a
shared machine hits both sides alike. Prints medians per cell and the overhead; target ≤ 1 ms/cell.

    python3 benchmarks/bench_cell_hooks.py [--cells 200] [--rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def time_cells(ip, cells, n):
    out = []
    for i in range(n):
        code = cells[i % len(cells)]
        t0 = time.perf_counter_ns()
        ip.run_cell(code, store_history=False, silent=False)
        out.append(time.perf_counter_ns() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="cells per block")
    parser.add_argument("--rounds", type=int, default=10, help="with/without blocks, interleaved")
    args = parser.parse_args()

    import numpy  # noqa: F401  (a loaded native distribution, as in every notebook that uses tbkit)
    from IPython.core.interactiveshell import InteractiveShell

    import tbkit
    from tbkit.guard import integrity

    ip = InteractiveShell.instance()
    cells = [
        "x = 1",
        "y = [i * i for i in range(10)]\nz = sum(y)",
        "def f(a):\n    return a + 1\n_ = f(2)",
        "s = 'pip install is only mentioned in a string'",
    ]
    base, hooked = [], []
    time_cells(ip, cells, 50)  # warm up both paths
    ip.run_line_magic("load_ext", "tbkit")
    time_cells(ip, cells, 50)
    ip.run_line_magic("unload_ext", "tbkit")
    for _ in range(args.rounds):
        base += time_cells(ip, cells, args.cells)
        ip.run_line_magic("load_ext", "tbkit")
        hooked += time_cells(ip, cells, args.cells)
        ip.run_line_magic("unload_ext", "tbkit")

    # the hooks alone, to show where the time goes
    from tbkit.guard.notebook import NotebookGate

    ext = NotebookGate(ip)
    lines = [c + "\n" for c in cells[1].split("\n")]
    t_transform = []
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        ext.transform(lines)
        t_transform.append(time.perf_counter_ns() - t0)
    t_check = []
    for _ in range(500):
        t0 = time.perf_counter_ns()
        integrity.check()
        t_check.append(time.perf_counter_ns() - t0)

    med_base, med_hooked = statistics.median(base), statistics.median(hooked)
    us = 1e-3
    print(
        f"tbkit {tbkit.__version__}, python {sys.version.split()[0]}, {len(sys.modules)} modules loaded, "
        f"{len(base)} cells per side"
    )
    print(f"run_cell median without extension: {med_base * us:8.1f} us")
    print(f"run_cell median with extension:    {med_hooked * us:8.1f} us")
    print(
        f"overhead per cell (median diff):   {(med_hooked - med_base) * us:8.1f} us   "
        f"ratio with/without {med_hooked / med_base:.3f}   target <= 1000 us"
    )
    print(f"  input transformer alone:         {statistics.median(t_transform) * us:8.2f} us")
    print(f"  integrity.check() alone:         {statistics.median(t_check) * us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
