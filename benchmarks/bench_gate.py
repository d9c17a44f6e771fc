"""What the install gate costs next to plain pip, from a local wheelhouse (no network).

In a throwaway venv (uv) with NumPy 2.0.2 and pip 25.3, NumPy imported, tbkit from this checkout:

* refuse:    the gate plans `numpy==2.2.6` and refuses it (NumPy is loaded)   vs  plain `pip install numpy==2.2.6`
* install:   the gate plans and installs a small new package (verified)        vs  plain `pip install` of it
* satisfied: the gate answers an installed requirement (no pip at all)          vs  plain `pip install` of it
* parse:     pip's own parser in a child interpreter, as one notebook cell does (`!pip install -qU six`)

Each side runs in the same interpreter, interleaved, state reset between rounds outside the timing.
Prints medians and the ratio gate/pip.

    python3 benchmarks/bench_gate.py [--rounds 5]      (wheels: python3 tests/support/wheelhouse.py)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

CHILD = textwrap.dedent("""
    import json, os, statistics, subprocess, sys, time
    import numpy  # loaded: the gate must keep it
    import tbkit
    from tbkit.guard import gate
    from tbkit.guard.gate import pip_cli
    from tbkit.errors import InstallRefused

    wheels, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
    links = ["--no-index"] + [a for w in wheels for a in ("--find-links", w)]
    kw = dict(no_index=True, find_links=wheels, quiet=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def plain(*args):
        subprocess.run([*pip, "install", *links, *args], check=True, capture_output=True)

    def reset(*args):
        subprocess.run([*pip, *args], check=True, capture_output=True)

    def refuse():
        try:
            gate.ensure("numpy==2.2.6", **kw)
        except InstallRefused:
            return
        raise SystemExit("the gate did not refuse")

    def parse():
        cmd = pip_cli.shell_command("pip install -qU six")
        (parsed,) = pip_cli.parse_pip([(pip_cli.pip_argv(cmd), cmd.env)])
        pip_cli.install_request(cmd, parsed)

    out = {k: [] for k in ("refuse", "refuse_pip", "install", "install_pip", "satisfied", "satisfied_pip", "parse")}
    for _ in range(rounds):
        out["refuse"].append(timed(refuse))
        out["refuse_pip"].append(timed(lambda: plain("numpy==2.2.6")))
        reset("install", *links, "numpy==2.0.2")  # outside the timing: back to the loaded version
        out["install"].append(timed(lambda: gate.ensure("tinybench", **kw)))
        reset("uninstall", "-y", "tinybench")
        out["install_pip"].append(timed(lambda: plain("tinybench")))
        out["satisfied"].append(timed(lambda: gate.ensure("tinybench", **kw)))
        out["satisfied_pip"].append(timed(lambda: plain("tinybench")))
        reset("uninstall", "-y", "tinybench")
        out["parse"].append(timed(parse))
    print("RESULT " + json.dumps({k: statistics.median(v) for k, v in out.items()}))
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import wheelhouse
    from checkout_venv import checkout_venv
    from tiny_wheels import make_wheel

    house = wheelhouse.ensure()
    with tempfile.TemporaryDirectory(prefix="tbkit-bench-gate-") as tmp:
        local = Path(tmp) / "wheels"
        make_wheel(local, "tinybench", "1.0")
        python = checkout_venv(Path(tmp) / "venv", house, "numpy==2.0.2", "pip==25.3", "packaging==25.0")
        proc = subprocess.run(
            [str(python), "-c", CHILD, json.dumps([str(house), str(local)]), str(args.rounds)],
            capture_output=True,
            text=True,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    r = json.loads(lines[-1][len("RESULT ") :])
    print(f"python {sys.version.split()[0]}, pip 25.3 in the venv, NumPy 2.0.2 loaded, {args.rounds} rounds, medians")
    rows = [
        ("plan + refuse numpy==2.2.6", "refuse", "plain pip install numpy==2.2.6", "refuse_pip"),
        ("plan + install + verify a new package", "install", "plain pip install of it", "install_pip"),
        ("already satisfied (no pip)", "satisfied", "plain pip install (already satisfied)", "satisfied_pip"),
    ]
    for label, gate_key, ref_label, ref_key in rows:
        print(
            f"{label:40s} {r[gate_key] * 1e3:8.0f} ms   {ref_label:38s} {r[ref_key] * 1e3:8.0f} ms   "
            f"ratio gate/pip {r[gate_key] / r[ref_key]:.2f}"
        )
    print(f"{'notebook line: pip parser in a child':40s} {r['parse'] * 1e3:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
