"""Tier 3 — does the design learn, which settings suit it, and is it better than a plain reference?

Four checks (ids are public, see docs/checks.md):

- ``overfit``  plain torch, no install: memorise one fixed batch, on the model itself, restored after.
- ``train``    `tbkit.train` (lightning) on the user's data; synthetic only when asked, labelled so.
- ``hpo``      `tbkit.search` (optuna TPE + median pruner through the Lightning pruning callback).
- ``baseline`` uniform, unigram and a parameter-matched reference decoder on the same budget,
               several seeds, a paired t-test over seeds.

``train``, ``hpo`` and ``baseline`` need data: the run option ``data`` (a text file or token ids)
or ``synthetic=True``; without either they are SKIP rows that say how to give it. The options
they read are declared with each check (``train.epochs``, ``hpo.trials``, …) and, for those they
share (``batch_size``, ``lr``, ``max_len``), in ``checks/spec.RUN_OPTIONS``; docs/checks.md lists them.
"""

# Importing a check module registers it: the order below is the run order (and the docs' order).
# isort: off
from tbkit.checks.tier3 import overfit  # noqa: F401
from tbkit.checks.tier3 import train  # noqa: F401
from tbkit.checks.tier3 import hpo  # noqa: F401
from tbkit.checks.tier3 import baseline  # noqa: F401
# isort: on
