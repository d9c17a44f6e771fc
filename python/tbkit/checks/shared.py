"""Input batches and eval forwards shared by the Tier 1 checks of one run.

shape, batch_equivalence, stability, determinism, init and speed all need "random ids of shape
(B, T) through the model in eval mode". Each used to draw its own batch and run its own forward;
here every (B, T) batch is a slice ``master[:B, :T]`` of one seeded tensor, and its eval
``no_grad`` forward (seeded, so a model random in eval gives the same draws every time) is run
once per run and kept in ``ctx.cache``. This is valid because every check leaves the model exactly
as it found it (checks that train use ``restore.preserved``).

The forwards at max_len with batch 1 and 2 are also ``memory``'s sweep points: they run once, in
grad mode, with the activation memory measured (``activation_bytes``), and their detached output
serves ``shape`` and ``stability``. A model that raises in grad mode gets a plain no_grad forward
for those checks instead, and ``memory`` reports the grad-mode error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from tbkit.checks import inputs as inp
from tbkit.checks.numeric import max_abs_diff
from tbkit.devices import seeded_fork

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tbkit.checks.base import CheckContext
    from tbkit.sources.loaded import LoadedModel

MAX_BATCH = 7  # the largest batch Tier 1 builds (shape: batch {1, 2, 7})
MASTER_OFFSET = 100  # generator offset of the master batch (checks use 1..20 for their own draws)
MEASURED_BATCHES = (1, 2)  # at max_len: measured in grad mode (memory's sweep), shared with shape


def probe_length(ctx: CheckContext) -> int:
    """The odd middle length most checks share (17, or less for short models)."""
    longest = inp.usable_max_len(ctx.model)
    return min(longest, 17) if longest >= 3 else longest


def _masters(ctx: CheckContext) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    key = ("master",)
    if key not in ctx.cache:
        lm = ctx.model
        longest = inp.usable_max_len(lm)
        gen = ctx.generator(MASTER_OFFSET)
        ids = inp.token_ids(lm, MAX_BATCH, longest, gen, ctx.device)
        enc = inp.token_ids(lm, MAX_BATCH, longest, gen, ctx.device) if lm.kind == "seq2seq" else None
        ctx.cache[key] = (ids, enc)
    masters: tuple[torch.Tensor, Optional[torch.Tensor]] = ctx.cache[key]
    return masters


def batch(ctx: CheckContext, B: int, T: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(ids, encoder ids or None) of shape (B, T): the token ids a check perturbs or pads, and for
    seq2seq the fixed encoder input (other kinds feed ``ids`` alone)."""
    ids, enc = _masters(ctx)
    if ids.shape[0] < B or ids.shape[1] < T:
        raise ValueError(f"shared batches go up to ({ids.shape[0]}, {ids.shape[1]}); asked for ({B}, {T})")
    # contiguous, as a user's own batch would be: models often .view() their inputs (nanoGPT's targets)
    return ids[:B, :T].contiguous(), None if enc is None else enc[:B, :T].contiguous()


def model_inputs(ids: torch.Tensor, enc: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(first positional input, decoder ids) for ``inputs.forward``: seq2seq feeds the encoder
    ids first and ``ids`` as the decoder input; other kinds feed ``ids`` alone."""
    return (ids, None) if enc is None else (enc, ids)


def forward(ctx: CheckContext, B: int, T: int) -> torch.Tensor:
    """The seeded eval forward of ``batch(ctx, B, T)``, run once per run (no_grad, or grad mode
    with the activations measured for memory's points). Raises what the model raises (the cache
    keeps the exception, so every check sees it)."""
    key = ("forward", B, T)
    if key not in ctx.cache:
        if inp.usable_max_len(ctx.model) == T and B in MEASURED_BATCHES:
            _measure(ctx, B, T)
        if key not in ctx.cache:
            first, dec = model_inputs(*batch(ctx, B, T))
            try:
                with inp.eval_mode(ctx.model.module):
                    ctx.cache[key] = inp.forward(ctx.model, first, decoder_ids=dec, seed=ctx.seed)
            except Exception as err:  # the model's own error: every check that asks sees it
                ctx.cache[key] = err
    value: torch.Tensor | Exception = ctx.cache[key]
    if isinstance(value, Exception):
        raise value
    return value


def activation_bytes(ctx: CheckContext, B: int, T: int) -> int:
    """Activation memory of a grad-mode eval forward of ``batch(ctx, B, T)`` (see
    ``measure_activations``); raises what the model raises in grad mode."""
    key = ("activations", B, T)
    if key not in ctx.cache:
        _measure(ctx, B, T)
    value: int | Exception = ctx.cache[key]
    if isinstance(value, Exception):
        raise value
    return value


def _measure(ctx: CheckContext, B: int, T: int) -> None:
    first, dec = model_inputs(*batch(ctx, B, T))
    try:
        with inp.eval_mode(ctx.model.module), seeded_fork(ctx.seed, ctx.device):
            nbytes, out = measure_activations(ctx.model, first, dec, ctx.device)
    except Exception as err:  # memory reports it; shape and stability get a no_grad forward instead
        ctx.cache[("activations", B, T)] = err
        return
    ctx.cache[("activations", B, T)] = nbytes
    ctx.cache.setdefault(("forward", B, T), out)


def measure_activations(
    lm: LoadedModel, first: torch.Tensor, dec: Optional[torch.Tensor], device: torch.device
) -> tuple[int, torch.Tensor]:
    """(activation bytes, detached output) of one forward in grad mode (what training keeps alive).

    CUDA: peak allocated during the forward above what was allocated before it.
    Elsewhere: the bytes of every distinct storage autograd saves for backward
    (``torch.autograd.graph.saved_tensors_hooks``), excluding the parameters and buffers, plus
    the output."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.enable_grad():
            out = lm.forward(first, decoder_input_ids=dec)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), out.detach()
    resident = {t.untyped_storage().data_ptr() for t in (*lm.module.parameters(), *lm.module.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in resident:
            seen[s.data_ptr()] = s.nbytes()
        # detached (same storage, no copy): a saved *output* handed back with its grad_fn would
        # hold its own graph alive in a cycle that Python's collector cannot see, and every run
        # would keep the forward's activations (about 0.5 MB a run for the bundled example)
        return t.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = lm.forward(first, decoder_input_ids=dec)
    seen.setdefault(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
    return int(sum(seen.values())), out.detach()


def repeat_difference(ctx: CheckContext) -> float:
    """max |a - b| between the shared forward of (1, probe length) and a second eval forward of the
    same input under another random state (seed + 1, forked): > 0 means something random stays on
    in eval. Shared by determinism and batch_equivalence (which names randomness as the cause)."""
    key = ("repeat",)
    if key not in ctx.cache:
        T = probe_length(ctx)
        first, dec = model_inputs(*batch(ctx, 1, T))
        a = forward(ctx, 1, T)
        with inp.eval_mode(ctx.model.module):
            b = inp.forward(ctx.model, first, decoder_ids=dec, seed=ctx.seed + 1)
        ctx.cache[key] = max_abs_diff(a, b)
    diff: float = ctx.cache[key]
    return diff


def weight_drift(ctx: CheckContext) -> list[str]:
    """Names of the parameters one eval forward changed: a model that updates its own weights when
    called gives different outputs for identical calls, which must be named as such (not read as
    a causal leak or randomness). Cached per run."""
    key = ("drift",)
    if key not in ctx.cache:
        T = probe_length(ctx)
        first, dec = model_inputs(*batch(ctx, 1, T))
        names = [name for name, _ in ctx.model.module.named_parameters()]
        before = _fingerprints(ctx.model.module)
        with inp.eval_mode(ctx.model.module):
            inp.forward(ctx.model, first, decoder_ids=dec, seed=ctx.seed)
        after = _fingerprints(ctx.model.module)
        ctx.cache[key] = [names[i] for i in _changed_rows(before, after)]
    drifted: list[str] = ctx.cache[key]
    return drifted


def _fingerprints(module: nn.Module) -> Optional[torch.Tensor]:
    """(parameters, 2): each parameter's sum and sum of |values|, accumulated in float64 (float32
    on MPS) without a float64 copy, on the parameter's own device; None for a module without parameters.
    One stacked tensor, so comparing two of them reads one result back to the host instead of two
    per parameter (a CUDA sync each)."""
    import torch

    params = [torch.view_as_real(p.detach()) if p.is_complex() else p.detach() for p in module.parameters()]
    if not params:
        return None
    with torch.no_grad():
        rows = [torch.stack([p.sum(dtype=_wide(p)), torch.linalg.vector_norm(p, 1, dtype=_wide(p))]) for p in params]
        devices = {r.device for r in rows}
        return torch.stack(rows if len(devices) == 1 else [r.cpu().double() for r in rows])  # split across devices


def _wide(t: torch.Tensor) -> torch.dtype:
    """The accumulation dtype of a fingerprint: float64, or float32 on MPS (which has no float64)."""
    import torch

    return torch.float32 if t.device.type == "mps" else torch.float64


def _changed_rows(before: Optional[torch.Tensor], after: Optional[torch.Tensor]) -> list[int]:
    """Indices of the parameters whose fingerprints differ (a NaN that stays NaN is unchanged)."""
    if before is None or after is None or before.shape != after.shape:
        return []
    same = (before == after) | (before.isnan() & after.isnan())
    changed: list[int] = (~same.all(dim=1)).nonzero().flatten().tolist()
    return changed


def rows_independent(ctx: CheckContext) -> bool:
    """Whether a row's output is the same alone and in a batch (the shared forwards of (1, T) and
    (2, T), which shape has already run): checks may stack their variants as rows of one batch only
    then. False also when those forwards raise or hold NaN (then every variant runs alone)."""
    key = ("rows_independent",)
    if key not in ctx.cache:
        T = probe_length(ctx)
        try:
            alone = forward(ctx, 1, T)
            d = max_abs_diff(forward(ctx, 2, T)[:1], alone)
            # exactly equal: a GEMM may round a row differently by where it sits in the batch, and
            # causal judges changes of 1e-6 between rows of one call
            ctx.cache[key] = d == 0
        except Exception:  # the model's error is reported by the checks that judge it
            ctx.cache[key] = False
    independent: bool = ctx.cache[key]
    return independent
