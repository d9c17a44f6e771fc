"""The conventions a model is called under, and the one call that applies them.

A check is only as trustworthy as the inputs it feeds the model, so the conventions a model uses
are facts with a source: measured by a probe (``checks/conventions.py``), declared by the user
(run option or ``config.json`` key), or assumed (the default, said as such). ``call`` is the
single place that turns tbkit's contract — ``(B, T)`` token ids, a ``(B, T)`` mask with 1 for real
tokens, decoder ids for seq2seq — into the model's own: sequence-first transposition, the mask's
name, dtype and polarity, the decoder input's name, and inputs tbkit can synthesise (zero segment
ids, position ids, ``use_cache=False``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import torch

    from tbkit.sources.loaded import LoadedModel

LAYOUTS = ("batch_first", "seq_first")

# Decoder inputs under the names people publish them with (HF, fairseq, attention-is-all-you-need
# repositories, tutorials); a declared seq2seq model may use any name as its 2nd positional.
DECODER_INPUTS = (
    "decoder_input_ids",
    "tgt",
    "tgt_ids",
    "target_ids",
    "decoder_ids",
    "decoder_inputs",
    "tgt_input_ids",
    "trg_seq",
    "tgt_seq",
    "trg",
    "trg_ids",
    "trg_input",
    "tgt_input",
    "dec_input",
    "dec_inputs",
    "decoder_input",
    "tgt_tokens",
    "prev_output_tokens",
)
# Required inputs tbkit can synthesise: segment / token-type ids (all zero: one segment) and
# position ids (0..T-1). Given only when forward requires them: an optional one is built better by
# the model itself (RoBERTa derives positions from the pad id).
SEGMENT_INPUTS = ("token_type_ids", "segment_info", "segment_ids", "segment_label", "token_types", "segments")
POSITION_INPUTS = ("position_ids", "pos_ids")
START_INPUTS = ("start_pos",)  # Meta's Llama reference code: forward(tokens, start_pos), 0 without a cache
SYNTHESISED = SEGMENT_INPUTS + POSITION_INPUTS + START_INPUTS

# Mask encodings: how a (B, T) keep-mask (1 = real token) is handed over. "keep"/"pad" is what a
# True / 1 means; "additive" is 0 for real tokens and a large finite negative for padding.
MASK_ENCODINGS = ("int-keep", "bool-keep", "bool-pad", "int-pad", "float-keep", "additive")
MASK_WORDS = {
    "int-keep": "int, 1 = keep",
    "bool-keep": "bool, True = keep",
    "bool-pad": "bool, True = padding",
    "int-pad": "int, 1 = padding",
    "float-keep": "float, 1.0 = keep",
    "additive": "float, additive (0 = keep, -1e9 = padding)",
}
# Parameter names that take a (B, T) padding mask, with the encoding their name suggests.
MASK_ARGUMENTS = {
    "attention_mask": "int-keep",
    "mask": "int-keep",
    "input_mask": "int-keep",
    "key_padding_mask": "bool-pad",
    "src_key_padding_mask": "bool-pad",
    "padding_mask": "bool-pad",
    "pad_mask": "bool-pad",
}


@dataclass
class Fact:
    """One convention: its value and how it was established, in words for the report."""

    value: Any
    how: str
    established: bool = True  # False: assumed, could not be measured (the row says how to declare it)


@dataclass
class Conventions:
    max_len: Optional[Fact] = None
    layout: Fact = field(default_factory=lambda: Fact("batch_first", "assumed: no sequence-first attention modules"))
    mask_name: Optional[str] = None
    mask: Optional[Fact] = None  # value: one of MASK_ENCODINGS
    mask_tries: list[str] = field(default_factory=list)  # what each other encoding gave, in words
    inputs: list[str] = field(default_factory=list)  # words for each input tbkit synthesises
    pad: str = ""  # where the pad id comes from

    @property
    def seq_first(self) -> bool:
        return bool(self.layout.value == "seq_first")


def default_conventions(params: Mapping[str, inspect.Parameter]) -> Conventions:
    """What a signature alone says: the mask parameter by name and the inputs tbkit supplies."""
    conv = Conventions()
    conv.mask_name = next((n for n in MASK_ARGUMENTS if n in params), None)
    if conv.mask_name is not None:
        encoding = MASK_ARGUMENTS[conv.mask_name]
        conv.mask = Fact(encoding, f"assumed from the parameter's name `{conv.mask_name}`", established=False)
    conv.inputs = [f"{n}=zeros (one segment)" for n in required(params) if n in SEGMENT_INPUTS]
    conv.inputs += [f"{n}=0..T-1" for n in required(params) if n in POSITION_INPUTS]
    conv.inputs += [f"{n}=0" for n in required(params) if n in START_INPUTS]
    if "use_cache" in params:
        conv.inputs.append("use_cache=False")
    return conv


def required(params: Mapping[str, inspect.Parameter]) -> list[str]:
    P = inspect.Parameter
    return [n for n, p in params.items() if p.default is P.empty and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL)]


def decoder_input_name(params: Mapping[str, inspect.Parameter], seq2seq_declared: bool = False) -> Optional[str]:
    """The parameter that takes the decoder input: a known name, else (declared seq2seq) the 2nd
    positional parameter."""
    name = next((n for n in params if n in DECODER_INPUTS), None)
    if name is None and seq2seq_declared:
        P = inspect.Parameter
        positional = [n for n, p in params.items() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        masks = set(MASK_ARGUMENTS) | set(SYNTHESISED)
        rest = [n for n in positional[1:] if n not in masks]
        name = rest[0] if rest else None
    return name


def encode_mask(keep: torch.Tensor, encoding: str) -> torch.Tensor:
    """A (B, T) keep-mask (1 = real token) in ``encoding``."""

    keep = keep.bool()
    if encoding == "int-keep":
        return keep.long()
    if encoding == "bool-keep":
        return keep
    if encoding == "bool-pad":
        return ~keep
    if encoding == "int-pad":
        return (~keep).long()
    if encoding == "float-keep":
        return keep.float()
    if encoding == "additive":
        return (~keep).float() * -1e9  # finite: -inf turns fully masked rows into NaN
    raise ValueError(f"unknown mask convention {encoding!r}; use one of {', '.join(MASK_ENCODINGS)}")


def _seq_first(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else x.transpose(0, 1).contiguous()


def call(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    decoder_input_ids: Optional[torch.Tensor] = None,
    decoder_attention_mask: Optional[torch.Tensor] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> torch.Tensor:
    """Call ``lm.module`` under its conventions and return one (B, T, V|H) tensor. ``extra``:
    further keyword inputs, passed as they are (batch-first)."""
    import torch

    params = lm._forward_params()
    conv: Conventions = lm.conventions if lm.conventions is not None else default_conventions(params)
    lay: Callable[[Optional[torch.Tensor]], Optional[torch.Tensor]] = _seq_first if conv.seq_first else (lambda x: x)
    kwargs: dict[str, Any] = dict(extra or {})
    if attention_mask is not None and conv.mask_name is not None:
        kwargs[conv.mask_name] = encode_mask(attention_mask, conv.mask.value if conv.mask else "int-keep")
    targets = input_ids
    if lm.kind == "seq2seq":
        targets = input_ids if decoder_input_ids is None else decoder_input_ids
        name = decoder_input_name(params, seq2seq_declared=True)
        if name is None:
            raise TypeError("seq2seq model's forward takes no decoder input argument")
        kwargs[name] = lay(targets)
        if decoder_attention_mask is not None and "decoder_attention_mask" in params:
            kwargs["decoder_attention_mask"] = decoder_attention_mask
    for name in required(params)[1:]:
        if name in SEGMENT_INPUTS and name not in kwargs:
            kwargs[name] = lay(torch.zeros_like(input_ids))
        elif name in POSITION_INPUTS and name not in kwargs:
            kwargs[name] = lay(torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids))
        elif name in START_INPUTS and name not in kwargs:
            kwargs[name] = 0
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if lm.targets_argument:
        kwargs[lm.targets_argument] = lay(targets)
    out = unwrap_output(lm.module(lay(input_ids), **kwargs))
    return out.transpose(0, 1) if conv.seq_first and out.dim() >= 2 else out


def unwrap_output(out: Any) -> torch.Tensor:
    """A tensor from a tensor, tuple/list (first element), dict or object with ``logits`` /
    ``last_hidden_state`` (HF-style outputs)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        if isinstance(out, dict) and key in out:
            named: torch.Tensor = out[key]  # taken unchecked, as before (HF ModelOutput is a dict of tensors)
            return named
        value = getattr(out, key, None) if not isinstance(out, dict) else None
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        tensors = [v for v in out.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
    raise TypeError(
        f"the model returned {type(out).__name__}, which holds no logits tensor; return a tensor, "
        "a tuple whose first item is the logits, or an object with .logits / .last_hidden_state"
    )
