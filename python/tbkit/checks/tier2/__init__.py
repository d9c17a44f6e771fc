"""Tier 2 — what the model looks at, and how fragile it is.

Four checks (ids are public, see docs/checks.md):

- ``attention``   per-head weights (tiers/attention_capture.py), entropy, sparsity, redundant heads,
                  heatmaps; for decoders, weight on future keys is a FAIL.
- ``attribution`` captum LayerIntegratedGradients on the input embedding; for decoders, attribution
                  to tokens after the target position is a FAIL. Needs captum, obtained by the runner
                  through the install gate (``needs=``); a refusal becomes a SKIP row there.
- ``robustness``  token substitution at 1/5/10/20 % of positions: KL and top-1 agreement at the
                  positions that were not substituted; degradation curve.
- ``capacity``    effective rank of weight matrices and of per-layer hidden states.

Every check runs the model in eval mode (restoring the user's flags afterwards) on seeded inputs
from tiers/inputs.py. torch, captum and matplotlib are imported inside the checks.
"""

# Importing a check module registers it: the order below is the run order (and the docs' order).
# isort: off
from tbkit.checks.tier2 import attention  # noqa: F401
from tbkit.checks.tier2 import attribution  # noqa: F401
from tbkit.checks.tier2 import robustness  # noqa: F401
from tbkit.checks.tier2 import capacity  # noqa: F401
# isort: on
