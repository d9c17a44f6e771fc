"""The release workflow is validated by two linters: the GitHub workflow JSON schema
(check-jsonschema's vendored copy, offline) and zizmor (offline audits)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed; `pip install -e .[test]` (scripts/test.sh) installs it")
    return path


def test_workflows_exist():
    assert [p.name for p in WORKFLOWS] == ["wheels.yml"]


def test_workflows_match_the_github_schema():
    subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)], check=True
    )


def test_workflows_pass_zizmor():
    result = subprocess.run(
        [_tool("zizmor"), "--offline", "--config", str(ROOT / ".github" / "zizmor.yml"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheels_cover_every_platform_and_the_sdist():
    text = WORKFLOWS[0].read_text()
    for needle in (
        "x86_64",
        "aarch64",
        "macos-13",
        "macos-14",
        "windows-latest",
        "command: sdist",
        "tbkit doctor",
        "-m quick",
    ):
        assert needle in text, needle
