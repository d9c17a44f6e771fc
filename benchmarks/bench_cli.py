"""How fast `tbkit run` answers a wrong path, as a whole process (issue 13 item 4).

Measures the median wall time of N runs of each command, in this process's interpreter:
  python -c pass                      the floor: starting Python
  python -c "import tbkit"            tbkit's import (the probe baseline)
  python -m tbkit run ./no_such_folder  the error path (must not import torch)
and prints medians and the ratios to the floor. Run: python benchmarks/bench_cli.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(argv: list, runs: int, cwd: str, env: dict) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import tbkit'": [sys.executable, "-c", "import tbkit"],
        "tbkit run ./no_such_folder": [sys.executable, "-m", "tbkit", "run", "./no_such_folder"],
        "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    }
    with tempfile.TemporaryDirectory() as cwd:
        medians = {name: median_wall(argv, runs, cwd, env) for name, argv in commands.items()}
    floor = medians["python -c pass"]
    print(f"median wall time of {runs} runs each (ratio to `python -c pass`)")
    for name, value in medians.items():
        print(f"  {name:<40} {value * 1000:8.1f} ms  x{value / floor:5.1f}")


if __name__ == "__main__":
    main()
