#!/usr/bin/env bash
# The one test command (README, .ci/run): in a project-local virtual environment, installs what the
# tests need, builds the extension from source, and runs the whole suite — linters, Rust (cargo test)
# and Python (pytest). Extra arguments go to pytest, e.g. `bash scripts/test.sh -k probe`.
#
# It keeps to itself: the interpreter that starts it (python3, or $PYTHON) only creates the venv
# ($TBKIT_VENV, default .venv/ here) and is never installed into or upgraded. Everything after that
# runs with the venv's python. Heavy downloads are cached per machine, outside the clone: wheels in
# uv's cache (torch is linked from it, not fetched again), the test wheels in ~/.cache/tbkit-tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${TBKIT_VENV:-$PWD/.venv}"
unset PYTHONPATH  # the tests must import this checkout's build, not whatever a shell exported

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

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating the venv $VENV (from $("$PY" -c 'import sys; print(sys.executable)'))"
  "$PY" -m venv "$VENV"  # stdlib venv: nothing is installed into the starting interpreter
fi
VPY="$VENV/bin/python"
export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"  # maturin, tbkit and the kernels' tools: the venv's

# uv at the pinned version (requirements/tools.txt), installed with the venv's own pip, once.
UV_PIN="$(grep -E '^uv==' requirements/tools.txt)"
if ! "$VPY" -m uv --version 2>/dev/null | grep -qx "uv ${UV_PIN#uv==}\( .*\)\?"; then
  echo "== $UV_PIN into the venv"
  "$VPY" -m pip install -q --disable-pip-version-check "$UV_PIN"
fi
UV=("$VPY" -m uv)

# A distribution named `tbkit` (this project's name before 0.1.0 was published as tbkit-ml, or the
# unrelated tight-binding package) owns the same import package `tbkit/`: it must not sit beside ours.
if "${UV[@]}" pip show -q --python "$VPY" tbkit >/dev/null 2>&1; then
  echo "== removing the distribution 'tbkit' (it shares the import package tbkit/ with tbkit-ml)"
  "${UV[@]}" pip uninstall -q --python "$VPY" tbkit
fi

# The dependencies of .[test,all] and the pinned tools; uv leaves satisfied packages alone and links
# new ones from its cache. Offline first: even with nothing to install, an online resolve re-fetches
# the index pages (about 64 MB for torch and its CUDA wheels); the network is used only for what the
# cache lacks, so a second run (or a second clone) downloads nothing.
echo "== uv pip install: dependencies of .[test,all] + requirements/tools.txt"
UV_INSTALL=("${UV[@]}" pip install -q --python "$VPY" -r pyproject.toml --extra test --extra all -r requirements/tools.txt)
if ! "${UV_INSTALL[@]}" --offline 2>/dev/null; then
  "${UV_INSTALL[@]}"
fi

echo "== maturin develop --release (builds tbkit._probe from source into the venv, editable)"
"$VENV/bin/maturin" develop --release --uv --quiet

# The release wheel, for the tests that install tbkit into fresh venvs the way users get it.
echo "== maturin build --release"
rm -rf target/wheels
"$VENV/bin/maturin" build --release --quiet --out target/wheels
export TBKIT_WHEEL="$(ls "$PWD"/target/wheels/tbkit_ml-*.whl | head -n 1)"  # absolute: tests chdir

echo "== fetching test wheels once per machine (tests install only from this local wheelhouse)"
"$VPY" tests/support/wheelhouse.py

echo "== ruff (lint + format)"
"$VPY" -m ruff check python tests benchmarks
"$VPY" -m ruff format --check python tests benchmarks

echo "== mypy --strict on the tbkit package"
"$VPY" -m mypy --strict python/tbkit

echo "== cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings -W clippy::too_many_lines

echo "== cargo test"
cargo test --workspace --quiet

echo "== pytest"
"$VPY" -m pytest -q -ra "$@"
