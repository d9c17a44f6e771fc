"""The wheel and release workflows are validated by two linters: the GitHub workflow JSON schema
(check-jsonschema's vendored copy, offline) and zizmor (offline audits); the release workflow's
promises (reuse of the wheel matrix, gating, trusted publishing) are read from its YAML."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
WHEELS = ROOT / ".github" / "workflows" / "wheels.yml"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed; scripts/test.sh installs it (the test extra) into its venv")
    return path


def test_workflows_exist():
    assert [p.name for p in WORKFLOWS] == ["release.yml", "wheels.yml"]


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
    text = WHEELS.read_text()
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


def _load(path: Path) -> dict:
    import yaml

    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def test_release_runs_on_version_tags_and_reuses_the_wheel_workflow():
    release, wheels = _load(RELEASE), _load(WHEELS)
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert "workflow_call" in wheels["on"]
    assert "tags" not in wheels["on"]["push"], "a tag would build twice: release.yml calls wheels.yml"
    jobs = release["jobs"]
    assert jobs["build"]["uses"].endswith("/.github/workflows/wheels.yml")
    assert "steps" not in jobs["build"], "the matrix is called, not copied"
    assert "tbkit_ml-*.whl" in RELEASE.read_text()


def test_release_publishes_only_after_the_wheel_tests_with_trusted_publishing():
    release = _load(RELEASE)
    jobs = release["jobs"]
    assert release["permissions"] == {"contents": "read"}
    assert jobs["build"]["needs"] == ["version"]  # the tag must match rust/probe/Cargo.toml first
    assert "build" in jobs["github-release"]["needs"] and "build" in jobs["pypi"]["needs"]
    assert jobs["github-release"]["permissions"] == {"contents": "write"}
    pypi = jobs["pypi"]
    assert pypi["permissions"] == {"id-token": "write"}
    assert pypi["environment"]["name"] == "pypi"
    (publish,) = [s for s in pypi["steps"] if "gh-action-pypi-publish" in s.get("uses", "")]
    assert not {"password", "user"} & set(publish.get("with", {})), "trusted publishing needs no token"
    others = [name for name, job in jobs.items() if name != "pypi" and "id-token" in job.get("permissions", {})]
    assert not others, f"only the publishing job may request an OIDC token: {others}"
    assert "secrets." not in RELEASE.read_text()
