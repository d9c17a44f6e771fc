"""Python face of the compiled probe (being written: see issue 2)."""
from __future__ import annotations


def take_baseline() -> None:
    """Record the identity of every loaded module file. Cheap; called by `import tbkit`."""
