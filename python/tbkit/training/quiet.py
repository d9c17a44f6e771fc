"""Lightning without its banner: "GPU available: …", tips, and advice that does not apply here."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


@contextlib.contextmanager
def quiet_lightning(resuming: bool = False) -> Iterator[None]:
    """Lightning's INFO lines and the warnings below are silenced; real warnings and errors still show."""
    loggers = [logging.getLogger(n) for n in LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # DataLoader workers do not suit notebooks (fork + CUDA): we keep 0 on purpose
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*number of training batches.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # lightning's own deprecation
            warnings.filterwarnings("ignore", message=r".*litlogger.*")
            # max_steps can end a run mid-epoch, before any validation: our own evaluate() covers it
            warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
            if resuming:  # a folder holding checkpoints is the point of resuming
                warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
