"""Input builders shared by every tier: token ids, padding, lengths and forward modes.

Everything here draws from the *real* model facts on the ``LoadedModel`` (``vocab_size`` from the
input embedding, ``max_len`` from the positional table) and from a seeded generator, so a check
sees the same inputs on every run. torch is imported inside functions: ``tbkit.tiers`` must stay
importable without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Optional

from tbkit.devices import seeded_fork

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tbkit.sources.loaded import LoadedModel

# A model with no positional table we could find has no hard limit; checks then use this length
# and say so in their rows (``length_note``), rather than trying ever longer inputs.
DEFAULT_MAX_LEN = 128

MODES = ("grad", "no_grad", "inference_mode")

# Names under which models take a padding mask, with the convention the name suggests (the
# conventions probe measures the real one: tbkit.sources.conventions, checks/conventions.py).
# (MASK_ARGUMENTS is re-exported: checks read it as ``inputs.MASK_ARGUMENTS``)
from tbkit.sources.conventions import MASK_ARGUMENTS as MASK_ARGUMENTS  # noqa: E402
from tbkit.sources.conventions import MASK_WORDS, Conventions  # noqa: E402


def usable_max_len(model: LoadedModel, cap: int = DEFAULT_MAX_LEN) -> int:
    """The longest input a check should build: the model's max_len, or ``cap`` when unknown."""
    return int(model.max_len) if model.max_len else int(cap)


def length_note(model: LoadedModel, cap: int = DEFAULT_MAX_LEN) -> str:
    """Text for a row's detail when the length was not the model's own (empty when it was)."""
    if model.max_len:
        return ""
    return f"no maximum length found on the model; used {cap} tokens as the longest input"


def clamp_len(model: LoadedModel, length: int) -> int:
    """``length`` limited to [1, usable max length]."""
    return max(1, min(int(length), usable_max_len(model)))


def token_ids(
    model: LoadedModel,
    batch: int,
    length: int,
    generator: torch.Generator,
    device: Optional[torch.device] = None,
    *,
    avoid_pad: bool = True,
) -> torch.Tensor:
    """Random token ids of shape (batch, length) in [0, vocab), drawn on CPU from ``generator``
    (so the draw does not depend on the device), then moved to ``device``.

    ``avoid_pad`` keeps the pad token out of real positions, so a model that treats the pad id
    specially is not tripped by random data (vocabularies of size 1 keep it)."""
    import torch

    vocab = int(model.vocab_size)
    ids = torch.randint(0, vocab, (int(batch), int(length)), generator=generator, dtype=torch.long)
    if avoid_pad and vocab > 1:
        pad = int(model.pad_token_id) % vocab
        ids = torch.where(ids == pad, (ids + 1) % vocab, ids)
    return ids.to(device) if device is not None else ids


def different_tokens(model: LoadedModel, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Ids of the same shape where every entry differs from ``ids`` (and from the pad token when
    the vocabulary allows it): the perturbation used by causal and padding checks."""
    import torch

    vocab = int(model.vocab_size)
    if vocab < 2:
        raise ValueError("a vocabulary of one token cannot be perturbed")
    shift = torch.randint(1, vocab, ids.shape, generator=generator, dtype=torch.long).to(ids.device)
    out = (ids + shift) % vocab
    if vocab > 2:
        pad = int(model.pad_token_id) % vocab
        bad = out == pad
        out = torch.where(bad, (out + 1) % vocab, out)
        out = torch.where(out == ids, (out + 1) % vocab, out)
    return out


def attention_mask(lengths: Sequence[int], total: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(B, total) mask, 1 for real tokens then 0 for right padding (the HF convention)."""
    import torch

    positions = torch.arange(int(total)).unsqueeze(0)
    mask = (positions < torch.tensor([int(n) for n in lengths]).unsqueeze(1)).long()
    return mask.to(device) if device is not None else mask


def right_pad(
    model: LoadedModel, ids: torch.Tensor, lengths: Sequence[int], fill: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad each row of ``ids`` after ``lengths[i]`` real tokens.

    The padded positions get the pad token, or the entries of ``fill`` (same shape) when given:
    changing what sits under the padding must not change the real positions.
    Returns (padded ids, attention mask)."""
    import torch

    mask = attention_mask(lengths, ids.shape[1], device=ids.device)
    if fill is None:
        fill = torch.full_like(ids, int(model.pad_token_id))
    return torch.where(mask.bool(), ids, fill), mask


@contextlib.contextmanager
def grad_mode(mode: str) -> Iterator[None]:
    """``"grad"`` (autograd on), ``"no_grad"`` or ``"inference_mode"``: fused fast paths (e.g. the
    native TransformerEncoderLayer path) run only in the last two, so masking bugs can hide there."""
    import torch

    ctx: contextlib.AbstractContextManager[None]
    if mode == "grad":
        ctx = torch.enable_grad()
    elif mode == "no_grad":
        ctx = torch.no_grad()
    elif mode == "inference_mode":
        ctx = torch.inference_mode()
    else:
        raise ValueError(f"unknown grad mode {mode!r}; use one of {MODES}")
    with ctx:
        yield


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards (a user's
    model may deliberately keep some submodules in another mode)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def mask_argument(model: LoadedModel) -> Optional[str]:
    """The parameter of the model's forward that takes the padding mask, or None."""
    conv: Optional[Conventions] = model.conventions
    if conv is not None:
        return conv.mask_name
    import inspect

    try:
        params = inspect.signature(model.module.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in MASK_ARGUMENTS if name in params), None)


def mask_convention(model: LoadedModel) -> str:
    """How the mask is passed, in words for a row's detail: name, dtype, polarity and how known."""
    conv: Optional[Conventions] = model.conventions
    name = mask_argument(model)
    fact = conv.mask if conv is not None else None
    encoding = fact.value if fact is not None else MASK_ARGUMENTS.get(name or "", "int-keep")
    how = fact.how if fact is not None else "from the parameter's name"
    return f"`{name}=`, {MASK_WORDS[encoding]}, {how}"


def _call(
    model: LoadedModel, ids: torch.Tensor, mask: Optional[torch.Tensor], decoder_ids: Optional[torch.Tensor]
) -> torch.Tensor:
    """``model.forward``: the mask goes under the model's own name, dtype and polarity."""
    out: torch.Tensor = model.forward(ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    return out


def forward(
    model: LoadedModel,
    ids: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    decoder_ids: Optional[torch.Tensor] = None,
    mode: str = "no_grad",
    seed: Optional[int] = None,
) -> torch.Tensor:
    """One forward through the model's contract (``LoadedModel.forward``) in the given grad mode.

    With ``seed``, torch's random state is forked and reseeded for this forward only: checks that
    compare two forwards (causal, padding) then see the same random draws in both, so a model that
    is random in eval is judged by ``determinism`` alone, and the caller's RNG state is untouched.
    The result is detached and cloned out of inference mode so callers can compare tensors freely."""
    if seed is None:
        with grad_mode(mode):
            out = _call(model, ids, mask, decoder_ids)
    else:
        with seeded_fork(seed, ids.device), grad_mode(mode):
            out = _call(model, ids, mask, decoder_ids)
    out = out.detach()
    if mode == "inference_mode":
        out = out.clone()  # inference tensors cannot be used in ordinary autograd-tracked code later
    return out


def output_is_logits(model: LoadedModel, out: torch.Tensor) -> bool:
    """True when the last dim is the vocabulary (an LM head), False for hidden states."""
    return int(out.shape[-1]) == int(model.vocab_size)


def lm_loss(
    model: LoadedModel, ids: torch.Tensor, out: torch.Tensor, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, str]:
    """A loss for one backward and the name of what it is.

    decoders and seq2seq (decoder side = ``ids``): next-token cross-entropy. Encoders with a
    vocabulary-sized output: cross-entropy against the input token at the same position (what a
    masked-LM head predicts). Hidden-state outputs have no LM head: a fixed random projection
    to the vocabulary (drawn from ``generator``) stands in for one, and the name says so. (The
    mean square of the output would not do: after a final LayerNorm it is ~1 whatever the input,
    so almost no gradient reaches the embeddings.)"""
    import torch
    import torch.nn.functional as F

    if output_is_logits(model, out):
        if model.kind in ("decoder", "seq2seq") and out.shape[1] > 1:
            logits = out[:, :-1].reshape(-1, out.shape[-1]).float()
            return F.cross_entropy(logits, ids[:, 1:].reshape(-1)), "next-token cross-entropy"
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), ids.reshape(-1)), "same-position cross-entropy"
    width = int(out.shape[-1])
    proj = torch.randn(width, int(model.vocab_size), generator=generator).to(out.device) / width**0.5
    logits = out.float().reshape(-1, width) @ proj
    return F.cross_entropy(
        logits, ids.reshape(-1)
    ), "same-position cross-entropy through a fixed random projection (no LM head)"
