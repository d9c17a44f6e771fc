#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, builds the extension
# from source, and runs the whole suite — Rust (cargo test) and Python (pytest).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k probe`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# PostgreSQL (Debian's) for the distributed hyperparameter-search tests; the tests start and stop
# their own server. Installed only when missing, and only where we may (root with apt).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing postgresql (Debian) for the HPO tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "== postgresql not available: its tests will skip with the reason"
  fi
fi

# Python dependencies and an editable build of the extension (maturin, from source). pip leaves
# already-installed packages alone, so torch is downloaded once per machine, not per run.
# A distribution named `tbkit` (this project's name before 0.1.0 was published as tbkit-ml, or the
# unrelated tight-binding package) owns the same import package `tbkit/`: it must not sit beside ours.
if "$PY" -m pip show -q tbkit >/dev/null 2>&1; then
  echo "== removing the distribution 'tbkit' (it shares the import package tbkit/ with tbkit-ml)"
  "$PY" -m pip uninstall -y -q tbkit
fi

echo "== pip install -e .[test,all]  (builds tbkit._probe from source)"
"$PY" -m pip install -q --disable-pip-version-check "maturin>=1.9.4,<2" -e ".[test,all]"

# The release wheel, for the tests that install tbkit into fresh venvs the way users get it.
echo "== maturin build --release"
rm -rf target/wheels
# maturin's script sits beside the interpreter, or (venv over system site-packages) on PATH.
MATURIN="$("$PY" -c 'import os, shutil, sysconfig; p = os.path.join(sysconfig.get_path("scripts"), "maturin"); print(p if os.path.exists(p) else shutil.which("maturin") or "maturin")')"
"$MATURIN" build --release --quiet --out target/wheels
export TBKIT_WHEEL="$(ls "$PWD"/target/wheels/tbkit_ml-*.whl | head -n 1)"  # absolute: tests chdir

echo "== fetching test wheels once per machine (tests install only from this local wheelhouse)"
"$PY" tests/support/wheelhouse.py

echo "== ruff (lint + format)"
"$PY" -m ruff check python tests benchmarks
"$PY" -m ruff format --check python tests benchmarks

echo "== mypy --strict on tbkit/guard (the part that must never break the live process)"
"$PY" -m mypy --strict python/tbkit/guard

echo "== cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings -W clippy::too_many_lines

echo "== cargo test"
cargo test --workspace --quiet

echo "== pytest"
"$PY" -m pytest -q -ra "$@"
