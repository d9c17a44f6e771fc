"""What `tbkit doctor` costs as a whole process: medians over fresh subprocesses, interleaved with
`python -c pass` measured in the same run, and the ratio between them (issue 13: doctor reads versions
from metadata and imports torch only with --cuda; before, every doctor imported torch: 7-11 s here).

Bytecode is cached under a temporary PYTHONPYCACHEPREFIX (as an installed wheel has its .pyc files),
even where PYTHONDONTWRITEBYTECODE is set, so that compiling tbkit's sources is not what is measured.

    python3 benchmarks/bench_doctor.py [--runs 15] [--cuda-runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import tbkit'": ["-c", "import tbkit"],
    "tbkit --version": ["-m", "tbkit", "--version"],
    "tbkit doctor": ["-m", "tbkit", "doctor"],
    "tbkit doctor --json": ["-m", "tbkit", "doctor", "--json"],
}
CUDA = ["-m", "tbkit", "doctor", "--cuda"]  # imports torch: the old default, kept as the reference


def once(args: list, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def torch_imported_by_doctor(env: dict) -> bool:
    code = "import sys\nfrom tbkit.cli import main\nmain(['doctor', '--json'])\nprint('TORCH', 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    return "TORCH True" in out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--cuda-runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        for case in CASES.values():  # warm the page cache and write the bytecode once
            once(case, env)
        times: dict = {name: [] for name in CASES}
        for _ in range(args.runs):  # interleaved so machine noise hits every case alike
            for name, case in CASES.items():
                times[name].append(once(case, env))
        cuda = [once(CUDA, env) for _ in range(args.cuda_runs)]
        torch_loaded = torch_imported_by_doctor(env)

    base = statistics.median(times["python -c pass"])
    print(f"{'command':<28} {'median':>10} {'x python -c pass':>18}   ({args.runs} runs each, interleaved)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<28} {med * 1e3:8.1f} ms {med / base:17.1f}x")
    med = statistics.median(cuda)
    print(
        f"{'tbkit doctor --cuda':<28} {med * 1e3:8.1f} ms {med / base:17.1f}x   ({args.cuda_runs} runs; imports torch)"
    )
    doctor = statistics.median(times["tbkit doctor"])
    print(f"doctor without torch vs with: {doctor * 1e3:.0f} ms vs {med * 1e3:.0f} ms ({med / doctor:.1f}x faster)")
    print(f"torch imported by `tbkit doctor`: {'YES (regression)' if torch_loaded else 'no'}")


if __name__ == "__main__":
    main()
