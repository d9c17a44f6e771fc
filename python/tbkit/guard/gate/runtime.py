"""Facts about where we run that change what we tell the user: Colab or not, notebook or not.

Detection never imports anything: Colab is recognised by ``google.colab`` already being in
``sys.modules`` or by the ``COLAB_RELEASE_TAG`` variable its runtime sets.
"""

from __future__ import annotations

import os
import sys


def in_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def in_kernel() -> bool:
    return "ipykernel" in sys.modules


def restart_hint() -> str:
    """How to get a fresh process here, in the words of the front end the user is looking at."""
    if in_colab():
        return "Restart the runtime: in Colab, Runtime → Restart session, then run the notebook again from the top."
    if in_kernel():
        return (
            "Restart the kernel (Jupyter: Kernel → Restart Kernel; VS Code: the Restart button in the "
            "notebook toolbar), then run the notebook again from the top."
        )
    return "Start a new Python process (exit this one and run it again)."
