"""Which optional inputs of forward reach parameters whose modules never ran (for gradient_flow).

A decoder with cross-attention run on its own, global attention without a global mask, entity
embeddings without entity ids: their modules do run, under inputs tbkit did not give. Parameters
are dead only when no input of forward's signature can reach them; this module tries the inputs it
can synthesise in one extra forward (only when some modules never ran) and names the others.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from tbkit.checks import inputs as inp
from tbkit.sources.conventions import DECODER_INPUTS, MASK_ARGUMENTS, SYNTHESISED

if TYPE_CHECKING:
    import torch

    from tbkit.checks.base import CheckContext
    from tbkit.sources.loaded import LoadedModel

# Optional parameters that feed no parameters of their own (masks, labels, caches, flags, the
# alternative to input_ids): a module that never ran is not waiting for them.
_NO_NEW_PATH = {
    *MASK_ARGUMENTS,
    *DECODER_INPUTS,
    *SYNTHESISED,
    "labels",
    "targets",
    "target",
    "past_key_values",
    "past",
    "inputs_embeds",
    "decoder_inputs_embeds",
    "head_mask",
    "decoder_head_mask",
    "cross_attn_head_mask",
    "encoder_attention_mask",
    "decoder_attention_mask",
    "cache_position",
    "use_cache",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "logits_to_keep",
    "num_items_in_batch",
    "encoder_outputs",
    "decoder_position_ids",
}


def candidate_inputs(model: LoadedModel) -> list[str]:
    """Optional (default None) parameters of forward that could open a path tbkit did not take."""
    try:
        params = inspect.signature(model.module.forward).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.default is None and n not in _NO_NEW_PATH]


def _hidden_width(model: LoadedModel) -> int:
    cfg = getattr(model.module, "config", None)
    for key in ("cross_attention_hidden_size", "hidden_size", "d_model", "n_embd"):
        value = getattr(cfg, key, None) if cfg is not None else None
        value = value if value is not None else (model.config or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    from tbkit.sources.inspect_model import guess_input_embedding

    guess = guess_input_embedding(model.module)
    return guess[1].embedding_dim if guess else 1


def _synthesised(model: LoadedModel, names: list[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Values for the optional inputs tbkit knows how to build, by name."""
    import torch

    B, T = ids.shape
    out: dict[str, torch.Tensor] = {}
    if "encoder_hidden_states" in names:
        dtype = next((p.dtype for p in model.module.parameters() if p.is_floating_point()), torch.float32)
        out["encoder_hidden_states"] = torch.randn(B, T, _hidden_width(model), device=ids.device, dtype=dtype)
    if "global_attention_mask" in names:
        g = torch.zeros_like(ids)
        g[:, 0] = 1
        out["global_attention_mask"] = g
    if "entity_ids" in names:
        out["entity_ids"] = torch.ones(B, 1, dtype=torch.long, device=ids.device)
        if "entity_position_ids" in names:
            out["entity_position_ids"] = torch.zeros(B, 1, 1, dtype=torch.long, device=ids.device)
        if "entity_attention_mask" in names:
            out["entity_attention_mask"] = torch.ones(B, 1, dtype=torch.long, device=ids.device)
    return out


def reached_by(ctx: CheckContext, owners: set[str]) -> tuple[dict[str, str], list[str]]:
    """({module name: input names that made it run}, [candidate inputs not tried]).

    One eval forward with every synthesisable optional input at once, hooks recording which of
    ``owners`` (modules that never ran) run then."""
    import torch

    from tbkit.sources.conventions import call

    lm = ctx.model
    names = candidate_inputs(lm)
    ids = inp.token_ids(lm, 2, min(8, inp.usable_max_len(lm)), ctx.generator(10), ctx.device)
    extra = _synthesised(lm, names, ids)
    untried = [n for n in names if n not in extra and not n.startswith("entity_")]
    if not extra:
        return {}, untried
    ran: set[str] = set()
    modules = dict(lm.module.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: ran.add(n)) for n in owners if n in modules]
    try:
        with inp.eval_mode(lm.module), torch.no_grad():
            call(lm, ids, extra=extra)
    except Exception:  # these inputs could not be given: the parameters' reachability is unknown
        return {}, untried + list(extra)
    finally:
        for h in hooks:
            h.remove()
    given = ", ".join(extra)
    return dict.fromkeys(ran, given), untried
