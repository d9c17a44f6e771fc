"""Progress of a run, fit for where it is read: a bar in a terminal or notebook (tqdm when it is
installed), one plain line per finished check when stderr is a log file or pipe (a bar there is one
endless line of carriage returns), and plain lines too when tqdm is missing (a bare local kernel).
Imports neither torch nor tqdm until a bar is drawn, so the CLI's supervisor can use it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any, Optional


def _interactive(stream: IO[str]) -> bool:
    if "ipykernel" in sys.modules and stream in (sys.stderr, sys.__stderr__, sys.stdout):
        return True  # a notebook cell: the widget bar
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """``started(i, id)`` / ``finished(i, id, statuses, seconds)`` / ``close()`` for ``total`` checks."""

    def __init__(self, total: int, stream: Optional[IO[str]] = None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.bar: Optional[Any] = None
        if enabled and _interactive(self.stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional: plain lines
                pass
            else:
                self.bar = tqdm(total=total, desc="tbkit", unit="check", leave=True, file=self.stream)

    def started(self, index: int, check_id: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(check_id)

    def finished(self, index: int, check_id: str, statuses: Sequence[str], seconds: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        counts = Counter(statuses)
        what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no rows"
        width = len(str(self.total))
        line = f"tbkit: [{index + 1:>{width}}/{self.total}] {check_id}: {what} ({seconds:.1f} s)"
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr must not end the run
            self.enabled = False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
