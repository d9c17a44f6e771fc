"""Is this a Transformer Builder export? Advice that says "export the model again" fits only
those; any other code gets advice about the error itself.

An export is recognised by what the exporter writes (design/LESSONS.md, "The exported code"):
a ``config.json`` with a ``nodes`` list or an ``exporter`` key, or model code defining
``class CustomTransformer(nn.Module)`` with submodules named ``{nodeType}_{index}``
(``embedding_0_token``, ``mhsa_0``, ``layernorm_0``, ``ffn_0``, …).
"""

from __future__ import annotations

import re
from typing import Any, Optional

_CLASS = re.compile(r"^class\s+CustomTransformer\s*\(", re.MULTILINE)
_NODE_ATTR = re.compile(
    r"\bself\.(?:embedding|mhsa|attention|layernorm|ffn|positional|residual|dropout|linear|input|output)_\d+"
)


def recognise(code: Optional[str], config: Optional[dict[str, Any]] = None) -> bool:
    """True when the code or the config carries the exporter's marks."""
    config = config or {}
    if isinstance(config.get("nodes"), list) or "exporter" in config:
        return True
    return bool(code and _CLASS.search(code) and _NODE_ATTR.search(code))


def again(export: bool) -> str:
    """The export-specific tail of a fix, or nothing."""
    return " (or export the model again from Transformer Builder)" if export else ""
