"""check() against a pure-Python implementation of the same comparisons, in one process with
torch, pandas and numpy imported (the notebook situation). Prints medians and the ratio.

Targets (issue 2): check() median <= 1 ms and >= 4x faster than the pure-Python reference.

    python3 benchmarks/bench_probe.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time


class PurePythonProbe:
    """The same comparisons as the Rust probe, written plainly in Python: new modules from
    sys.modules (dict reads only), identity of top-level and extension module files against the
    first sight, /proc/self/maps parsed for deleted / stashed mappings under site directories,
    site directories relisted when their stamp moves, dist-info versions compared."""

    def __init__(self, always_read_maps: bool = False):
        self.always_read_maps = always_read_maps
        self.seen = set()
        self.tracked = {}  # path -> (dev, ino) or None
        self.roots = {}  # canonical root -> (stamp, dist-info names)
        self.sys_path = None
        self.versions = {}  # top module -> __version__
        self.watched = set()
        self.stamps = {}

    def _roots(self):
        if self.sys_path != sys.path:
            self.sys_path = list(sys.path)
            self.entries = []
            for p in self.sys_path:
                try:
                    real = os.path.realpath(p or ".")
                except OSError:
                    continue
                if os.path.isdir(real):
                    self.entries.append((p or ".", real))
                    self.roots.setdefault(real, (None, {}))
        return self.entries

    def check(self):
        findings = []
        entries = self._roots()
        new_modules = False
        for name, mod in list(sys.modules.items()):
            if mod is None or id(mod) in self.seen or not isinstance(mod, type(sys)):
                continue
            self.seen.add(id(mod))
            new_modules = True
            d = mod.__dict__
            f = d.get("__file__")
            if not isinstance(f, str):
                continue
            for raw, _real in entries:
                if f.startswith(raw + os.sep):
                    if "." not in name or f.endswith((".so", ".pyd")):
                        try:
                            st = os.stat(f)
                            self.tracked[f] = (st.st_dev, st.st_ino)
                        except OSError:
                            self.tracked[f] = None
                    if "." not in name and isinstance(d.get("__version__"), str):
                        self.versions[name] = d["__version__"]
                    break
        for path, ident in self.tracked.items():
            try:
                st = os.stat(path)
                now = (st.st_dev, st.st_ino)
            except OSError:
                now = None
            if now != ident:
                findings.append(("identity", path))
        roots = list(self.roots)
        # the same gating as the Rust probe: read maps only when a module is new or a watched
        # directory (site dirs, directories of mapped libraries) changed its stamp
        stamps = {}
        for d in self.watched:
            try:
                st = os.stat(d)
                stamps[d] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                stamps[d] = None
        if self.always_read_maps or new_modules or stamps != self.stamps or not self.watched:
            self.stamps = stamps
            with open("/proc/self/maps", "rb") as fh:
                maps = fh.read().decode("utf-8", "surrogateescape")
            for line in maps.splitlines():
                parts = line.split(None, 5)
                if len(parts) < 6 or not parts[5].startswith("/"):
                    continue
                path = parts[5]
                deleted = path.endswith(" (deleted)")
                for r in roots:
                    if path.startswith(r + "/"):
                        first = path[len(r) + 1 :].split("/", 1)[0]
                        if deleted or first.startswith("~"):
                            findings.append(("mapped", path))
                        d = os.path.dirname(path)
                        while d.startswith(r) and d not in self.watched:
                            self.watched.add(d)
                            d = os.path.dirname(d)
                        break
        for r, (stamp, infos) in list(self.roots.items()):
            try:
                st = os.stat(r)
                now = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                continue
            if now != stamp:
                infos = {}
                for e in os.listdir(r):
                    if e.endswith(".dist-info") and "-" in e:
                        name, version = e[: -len(".dist-info")].split("-", 1)
                        infos[re.sub(r"[-_.]+", "-", name).lower()] = version
                self.roots[r] = (now, infos)
            for top, version in self.versions.items():
                disk = infos.get(re.sub(r"[-_.]+", "-", top).lower())
                if disk is not None and _norm(disk) != _norm(version):
                    findings.append(("version", top))
        return findings


def _norm(version):
    """2026.05.20 == 2026.5.20; 2.15.0+cu132 == 2.15.0 (as the Rust side compares)."""
    parts = re.findall(r"\d+|[a-z]+", version.split("+")[0].lower())
    parts = [str(int(x)) if x.isdigit() else x for x in parts]
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return parts


def median_us(fn, repeat):
    fn()  # first call builds caches; medians are of steady-state calls
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    from tbkit.guard import integrity

    print(f"sys.modules entries: {len(sys.modules)}")
    # 1. as shipped: maps re-read only when a module is new or a watched directory moved
    # 2. no shortcut: maps read and parsed on every check (the cost right after an import/install)
    for label, always in (("as shipped", False), ("maps read every check", True)):
        probe = integrity.new_probe(always_read_maps=always)
        ref = PurePythonProbe(always_read_maps=always)
        report = integrity.report_of(probe)
        assert report.ok, report
        found = ref.check()
        assert found == [], f"the reference must agree that nothing changed: {found}"
        rust, py = [], []
        for _ in range(5):  # interleaved, so machine noise hits both alike
            rust.append(median_us(probe.check, args.repeat // 5))
            py.append(median_us(ref.check, args.repeat // 5))
        r, p = statistics.median(rust), statistics.median(py)
        print(f"[{label}]")
        print(f"  tbkit probe check()          median {r:8.1f} us")
        print(f"  pure-Python reference check  median {p:8.1f} us")
        print(f"  ratio (reference / check)           {p / r:8.2f}x")
        print(
            f"  targets: check <= 1000 us: {'met' if r <= 1000 else 'NOT met'}; "
            f">= 4x: {'met' if p / r >= 4 else 'NOT met'}"
        )
    r = median_us(integrity.check, args.repeat)
    print(f"tbkit.guard.integrity.check() (process-wide probe, Python report objects included) median {r:.1f} us")


if __name__ == "__main__":
    main()
