"""Type stubs for the compiled probe (rust/probe/src/bindings.rs); keep the two in step."""

from typing import Literal, Optional

__version__: str

_Severity = Literal["restart_required", "changed_pure_python", "benign", "preexisting", "probe_degraded"]

SEVERITIES: tuple[_Severity, ...]

class ProbeError(Exception):
    """Base class of the errors the probe raises."""

class UnreadableFileError(ProbeError):
    """A file the probe was asked to read could not be read."""

class Finding:
    """One distribution whose files on disk no longer match what this process loaded (frozen:
    compared and hashed by value)."""

    @property
    def distribution(self) -> str: ...
    @property
    def loaded_version(self) -> Optional[str]: ...
    @property
    def disk_version(self) -> Optional[str]: ...
    @property
    def change(self) -> str: ...
    @property
    def paths(self) -> list[str]: ...
    @property
    def severity(self) -> _Severity: ...
    def __init__(
        self,
        distribution: str,
        loaded_version: Optional[str],
        disk_version: Optional[str],
        change: str,
        paths: Optional[list[str]] = None,
        severity: _Severity = "restart_required",
    ) -> None: ...
    def to_dict(self) -> dict[str, object]: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class Report:
    """What one check found (frozen)."""

    @property
    def findings(self) -> tuple[Finding, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...

class Probe:
    def __init__(
        self, maps_path: Optional[str] = None, exclude: list[str] = ..., always_read_maps: bool = False
    ) -> None: ...
    def observe(self) -> None: ...
    def check(self) -> Report: ...
    def loaded_distributions(self) -> dict[str, str]: ...

def build_id(path: str) -> Optional[str]: ...
def loaded_build_ids() -> list[tuple[str, str]]: ...
