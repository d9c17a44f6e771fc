"""Tier 1: the critical checks. torch, numpy and matplotlib only; nothing here ever installs.

Each check is a generator of rows (see checks/base.py), named ``check_<id>`` and made of one small
function per property, joined with ``yield from``. Rules every check keeps:
- the model runs in eval mode (``inputs.eval_mode`` restores each submodule's own flag), except
  ``gradient_flow``, which trains one step on the model itself inside ``restore.preserved``:
  weights, buffers, gradients, flags and random states come back bit for bit;
- inputs come from ``checks.inputs`` (real vocabulary and length, seeded by the run seed); the
  plain eval batches and their forwards are shared between checks (``checks.shared``);
- tolerances are for fp32 and widen by the dtype's machine epsilon for half-precision models;
- thresholds are declared with each check (``register(thresholds=...)``) and overridable with the
  run option ``"<check id>.<name>"``.
Each check's criteria are its docstring and declared thresholds (docs/checks.md is generated from
them); where a number was changed from a first cut, the reason is written beside it.
"""

# Importing a check module registers it: the order below is the run order (and the docs' order).
# isort: off
from tbkit.checks.tier1 import summary  # noqa: F401
from tbkit.checks.tier1 import conventions  # noqa: F401
from tbkit.checks.tier1 import shape  # noqa: F401
from tbkit.checks.tier1 import batch_equivalence  # noqa: F401
from tbkit.checks.tier1 import causal  # noqa: F401
from tbkit.checks.tier1 import padding  # noqa: F401
from tbkit.checks.tier1 import stability  # noqa: F401
from tbkit.checks.tier1 import determinism  # noqa: F401
from tbkit.checks.tier1 import init  # noqa: F401
from tbkit.checks.tier1 import gradient_flow  # noqa: F401
from tbkit.checks.tier1 import memory  # noqa: F401
from tbkit.checks.tier1 import speed  # noqa: F401
# isort: on
