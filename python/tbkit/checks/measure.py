"""Measure the conventions a model uses before any check judges it (see design/CHECKS.md,
"Conventions are measured, not assumed").

``establish(ctx)`` runs once per run, before the checks, and returns the run's LoadedModel with
its ``conventions`` (``tbkit.sources.conventions.Conventions``) and measured ``max_len``:
- layout: declared (run option / ``config.json`` key ``layout``), else batch-first unless the model
  holds sequence-first attention (``nn.MultiheadAttention(batch_first=False)``, the default of
  ``nn.Transformer`` and its layers); then one probe decides: changing token [0, 0] of a (3, 5)
  input moves only row 0 (batch-first) or only column 0 (sequence-first). Two forwards, only for
  those models.
- maximum length: declared (run option ``max_len``), else the model's facts (position table
  rows, minus a pad offset (RoBERTa: positions start after ``padding_idx``), capped by a
  ``position_ids`` buffer) tried with one forward; a length that raises an index error is bisected
  down to the longest accepted, and the row says so (WARN: the model states more than it takes).
  Every nn.Embedding checks its indices first, so no out-of-range index ever reaches CUDA.
- mask: declared (run option / key ``mask_convention``), else the name's convention tried first
  on the padding check's own no_grad inputs (shared, so no extra forward when it holds), then the
  other dtypes / polarities, the first one under which padding leaves real positions unchanged.
A probe that cannot decide leaves the convention assumed (``Fact.established`` False); the
``conventions`` row then says what could not be established and how to declare it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional, cast

from tbkit.checks import inputs as inp
from tbkit.checks.numeric import describe_error, fmt, max_abs_diff, output_scale
from tbkit.errors import UsageError
from tbkit.sources.conventions import (
    LAYOUTS,
    MASK_ARGUMENTS,
    MASK_ENCODINGS,
    Conventions,
    Fact,
    default_conventions,
)

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from tbkit.checks.base import CheckContext
    from tbkit.sources.loaded import LoadedModel

# Errors that mean "this length is too long" (and only those are bisected: a model that fails at
# every length has a bug, which the checks must see, not a shorter limit).
_LENGTH_ERRORS = ("out of range", "out of bounds", "index", "size of tensor", "must match the size", "exceed")


def declared(ctx: CheckContext, key: str) -> Optional[tuple[Any, str]]:
    """(value, where) for a convention the user declared: run option, then ``config.json`` key."""
    value = ctx.options.get(key)
    if value is not None:
        return value, f"declared: run option {key}"
    value = (ctx.model.config or {}).get(key) if isinstance(ctx.model.config, dict) else None
    if value is not None:
        return value, f"declared: config.json key {key!r}"
    return None


# The mask convention is measured on the padding check's own inputs and forwards (no extra forward
# when the first convention holds); the padding module hands its probe over when it is imported,
# so this module never imports a check (no import cycle).
_MASK_PROBE: list[Callable[[CheckContext], list[str]]] = []


def register_mask_probe(probe: Callable[[CheckContext], list[str]]) -> None:
    """``probe(ctx) -> list`` of what each tried encoding gave (tbkit.checks.tier1.padding)."""
    _MASK_PROBE[:] = [probe]


def establish(ctx: CheckContext) -> LoadedModel:
    """The run's LoadedModel with its conventions measured or declared (``ctx.model`` is replaced
    by the caller). Bad declared values are UsageErrors; a probe that crashes never stops the run."""
    lm = ctx.model
    if lm.conventions is not None:
        return lm
    conv = default_conventions(lm._forward_params())
    lm = dataclasses.replace(lm, conventions=conv)
    ctx.model = lm
    lm.pad_token_id, conv.pad = _pad_id(lm)
    conv.layout = _layout(ctx)
    unbounded = not lm.max_len
    conv.max_len = _max_len(ctx)
    stays_unbounded = unbounded and conv.max_len.value == inp.DEFAULT_MAX_LEN and "max_len" not in ctx.options
    lm.max_len = None if stays_unbounded else conv.max_len.value  # (no limit, and the default length accepted)
    if conv.mask_name is not None and _MASK_PROBE:
        try:
            conv.mask_tries = _MASK_PROBE[0](ctx)
        except UsageError:
            raise
        except Exception as err:  # the padding check reports the model's own error
            why = f"could not be established (the probe raised {describe_error(err)})"
            conv.mask = Fact(MASK_ARGUMENTS[conv.mask_name], why, established=False)
    return lm


def not_measured(ctx: CheckContext, why: str) -> LoadedModel:
    """The run's LoadedModel when the measurement itself was cut off (the model hung, exited or
    raised outside a forward's usual errors): what was established stays, the rest is marked as
    not measured with ``why``, and the checks then meet the model's behaviour themselves."""
    lm = ctx.model
    if lm.conventions is None:
        lm = dataclasses.replace(lm, conventions=default_conventions(lm._forward_params()))
    conv: Conventions = lm.conventions
    if conv.max_len is None:
        conv.max_len = Fact(lm.max_len or inp.DEFAULT_MAX_LEN, f"not measured: {why}", established=False)
    if conv.mask is not None and not conv.mask_tries and conv.mask.established:
        conv.mask = Fact(conv.mask.value, f"not measured: {why}", established=False)
    return lm


def _pad_id(lm: LoadedModel) -> tuple[int, str]:
    """(pad id, where it comes from): the model's config, else its input embedding's padding_idx,
    else 0. Random ids avoid it, and padding fills with it (RoBERTa counts positions from it)."""
    from tbkit.sources.inspect_model import guess_input_embedding

    cfg = getattr(lm.module, "config", None)
    for where, value in (
        ("the model's config pad_token_id", getattr(cfg, "pad_token_id", None)),
        ("config.json pad_token_id", (lm.config or {}).get("pad_token_id") if isinstance(lm.config, dict) else None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < lm.vocab_size:
            return value, where
    guess = guess_input_embedding(lm.module)
    if guess is not None and guess[1].padding_idx is not None and 0 <= guess[1].padding_idx < lm.vocab_size:
        return int(guess[1].padding_idx), f"padding_idx of {guess[0]}"
    return int(lm.pad_token_id), "none found; 0 assumed"


# ---- layout --------------------------------------------------------------------------------
def _layout(ctx: CheckContext) -> Fact:
    import torch.nn as nn

    said = declared(ctx, "layout")
    if said is not None:
        value, where = said
        if value not in LAYOUTS:
            raise UsageError(f"layout {value!r} is not a layout", f"Use one of {', '.join(LAYOUTS)}.")
        return Fact(value, where)
    suspects = [n for n, m in ctx.model.module.named_modules() if isinstance(m, nn.MultiheadAttention)]
    suspects = [n for n in suspects if not getattr(ctx.model.module.get_submodule(n), "batch_first", False)]
    if not suspects:
        return Fact("batch_first", "no sequence-first attention (no nn.MultiheadAttention with batch_first=False)")
    try:
        found = _layout_probe(ctx)
    except Exception as err:  # the checks will show the model's error; the layout stays unknown
        found = f"the probe raised {describe_error(err)}"
    where = f"{suspects[0]} is nn.MultiheadAttention(batch_first=False)"
    if found == "seq_first":
        how = f"measured: {where}, and changing token [0, 0] moved only column 0: inputs transposed to (T, B)"
        return Fact("seq_first", how)
    if found == "batch_first":
        return Fact("batch_first", f"measured: {where}, but changing token [0, 0] moved only row 0 (batch-first)")
    how = (
        f"could not be established ({where}; {found or 'changing token [0, 0] moved both or neither rows'}): "
        "batch-first assumed. Declare it with the run option layout='seq_first' (--layout) or the config.json "
        'key "layout"'
    )
    return Fact("batch_first", how, established=False)


def _layout_probe(ctx: CheckContext) -> Optional[str]:
    """Change token [0, 0] of a (3, T) input (T = 5 or less) fed as it is: a batch-first model moves
    row 0 only, a sequence-first model (reading dim 0 as positions) column 0 only."""
    lm = ctx.model
    T = min(5, inp.usable_max_len(lm))
    if T < 3:  # a sequence-first model reads the 3 rows as positions
        return None
    gen = ctx.generator(7)
    ids = inp.token_ids(lm, 3, T, gen, ctx.device)
    alt = ids.clone()
    alt[0, 0] = inp.different_tokens(lm, ids, gen)[0, 0]
    enc = inp.token_ids(lm, 3, T, gen, ctx.device) if lm.kind == "seq2seq" else None
    outs: list[torch.Tensor] = []
    with inp.eval_mode(lm.module):
        for x in (ids, alt):  # seq2seq: the encoder side is perturbed, decoder fixed
            first, dec = (x, enc) if enc is not None else (x, None)
            outs.append(inp.forward(lm, first, decoder_ids=dec, seed=ctx.seed))
    a, b = outs
    if a.dim() != 3 or a.shape[:2] != b.shape[:2]:
        return None
    moved = (a.float() - b.float()).abs().amax(dim=-1) > 1e-6 * output_scale(a)
    rows, cols = bool(moved[1:].any()), bool(moved[:, 1:].any())
    if rows and not cols:
        return "seq_first"
    if cols and not rows:
        return "batch_first"
    return None


# ---- maximum length ------------------------------------------------------------------------
def _max_len(ctx: CheckContext) -> Fact:
    lm = ctx.model
    said = declared(ctx, "max_len") if "max_len" in ctx.options else None
    if said is not None:
        value, where = said
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"max_len {value!r} is not a length", "Give a positive whole number of tokens.")
        return Fact(int(value), where)
    start, facts = _length_facts(lm)
    if start is None:
        start, facts = inp.DEFAULT_MAX_LEN, f"no limit found on the model; {inp.DEFAULT_MAX_LEN} tokens tried"
    try:
        ok, err = _accepts_shared(ctx, start)
    except Exception as probe_err:  # never stop the run over a probe
        return Fact(start, f"{facts} (the length probe itself raised {describe_error(probe_err)})", False)
    if ok:
        return Fact(start, f"measured: {facts}; length {start} accepted")
    err = cast(Exception, err)  # not ok: _accepts_shared returned the model's error with it
    if not any(word in str(err).lower() for word in _LENGTH_ERRORS):
        return Fact(start, f"{facts}; length {start} raised {describe_error(err)} (not a length error)", False)
    longest = _bisect(ctx, 2, start)
    how = (
        f"measured: {facts}, but length {start} raises {describe_error(err)}; longest accepted {longest}. If "
        f"{longest} is intended, declare it (run option max_len={longest}, --max-len); if not, the stated limit "
        "is wrong"
    )
    return Fact(longest, how, established=False)


def _length_facts(lm: LoadedModel) -> tuple[Optional[int], str]:
    """(length the model's own facts give, those facts in words)."""
    import torch.nn as nn

    if not lm.max_len:
        return None, ""
    start, words = int(lm.max_len), [f"stated {lm.max_len}"]
    for name, emb in lm.module.named_modules():
        if not isinstance(emb, nn.Embedding) or emb.num_embeddings < start or emb.padding_idx is None:
            continue
        if "position" in name.lower() and emb.num_embeddings == start:
            # RoBERTa-style: positions count from padding_idx + 1, so rows - padding_idx - 1 usable
            start = emb.num_embeddings - emb.padding_idx - 1
            words = [f"table {name} of {emb.num_embeddings} rows, offset {emb.padding_idx + 1} (pad id)"]
            break
    for name, buf in lm.module.named_buffers():
        if name.rsplit(".", 1)[-1] == "position_ids" and buf.dim() >= 1 and 0 < buf.shape[-1] < start:
            start = int(buf.shape[-1])
            words.append(f"buffer {name} of {start} positions")
    return start, ", ".join(words)


@contextlib.contextmanager
def bounds_checked(module: nn.Module) -> Iterator[None]:
    """Every nn.Embedding raises IndexError for an out-of-range index before the lookup: on CUDA
    the lookup itself would be a device-side assert that breaks the process."""
    import torch
    import torch.nn as nn

    def check(mod: nn.Embedding, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.numel() and not x.is_floating_point():
            lo, hi = int(x.min()), int(x.max())
            if lo < 0 or hi >= mod.num_embeddings:
                raise IndexError(
                    f"index {hi if hi >= mod.num_embeddings else lo} out of range ({mod.num_embeddings} rows)"
                )

    hooks = [m.register_forward_pre_hook(check) for m in module.modules() if isinstance(m, nn.Embedding)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _accepts(ctx: CheckContext, T: int) -> tuple[bool, Optional[Exception]]:
    """(True, None) when a (1, T) eval no_grad forward runs, else (False, the error)."""
    lm = ctx.model
    gen = ctx.generator(9)
    ids = inp.token_ids(lm, 1, T, gen, ctx.device)
    dec = inp.token_ids(lm, 1, T, gen, ctx.device) if lm.kind == "seq2seq" else None
    try:
        with inp.eval_mode(lm.module), bounds_checked(lm.module):
            inp.forward(lm, ids, decoder_ids=dec, seed=ctx.seed)
    except Exception as err:  # the model's answer to this length
        return False, err
    return True, None


def _accepts_shared(ctx: CheckContext, T: int) -> tuple[bool, Optional[Exception]]:
    """``_accepts`` through the run's shared (1, T) forward at the maximum length (the one memory
    measures and shape and stability read): the probe then costs no forward of its own."""
    from tbkit.checks import shared

    ctx.model.max_len = T
    try:
        with bounds_checked(ctx.model.module):
            shared.forward(ctx, 1, T)
    except Exception as err:  # the model's answer to this length
        return False, err
    return True, None


def _bisect(ctx: CheckContext, lo: int, hi: int) -> int:
    """Longest length in [lo, hi) accepted, given lo accepted (the load-time forward) and hi not."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _accepts(ctx, mid)[0]:
            lo = mid
        else:
            hi = mid
    return lo


# ---- mask ----------------------------------------------------------------------------------
def mask_order(ctx: CheckContext) -> list[str]:
    """Encodings to try, the declared one alone, else the name's first. ``attention_mask`` keeps
    its documented polarity (1 = keep): only its dtype is retried."""
    lm = ctx.model
    name = lm.conventions.mask_name
    said = declared(ctx, "mask_convention")
    if said is not None:
        value, where = said
        if value not in MASK_ENCODINGS:
            raise UsageError(
                f"mask_convention {value!r} is not a mask convention", f"Use one of {', '.join(MASK_ENCODINGS)}."
            )
        lm.conventions.mask = Fact(value, where)
        return [value]
    first = MASK_ARGUMENTS[name]
    rest = [e for e in MASK_ENCODINGS if e != first]
    if name == "attention_mask":
        rest = [e for e in rest if e.endswith("keep") or e == "additive"]
    return [first, *rest]


def measure_mask(
    ctx: CheckContext,
    outputs: Callable[[CheckContext], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    tol: float,
) -> list[str]:
    """Try each encoding (``outputs(ctx)`` = (alone, padded, repadded) real positions under the
    current one); set the first that keeps real positions unchanged as measured. Returns what
    each try gave, in words (empty when the first held)."""
    conv: Conventions = ctx.model.conventions
    order = mask_order(ctx)
    if conv.mask is not None and conv.mask.how.startswith("declared"):
        return []
    tried: list[str] = []
    for encoding in order:
        conv.mask = Fact(encoding, "being measured", established=False)
        try:
            alone, out, out2 = outputs(ctx)
        except Exception as err:
            tried.append(f"{encoding}: raised {describe_error(err)}")
            continue
        rel = max(max_abs_diff(out, alone), max_abs_diff(out2, out)) / output_scale(alone)
        if rel == rel and rel <= tol:  # not NaN
            how = "measured: real positions unchanged by padding"
            conv.mask = Fact(encoding, how + (f" (tried first: {'; '.join(tried)})" if tried else ""))
            return tried
        tried.append(f"{encoding}: real positions moved by {fmt(rel)}")
    conv.mask = Fact(order[0], "no convention tried keeps real positions unchanged", established=False)
    return tried
