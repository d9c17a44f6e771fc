"""The ``conventions`` check (Tier 1): each convention the run uses, once, with how it was
established (measured by ``checks/measure.py``, declared, or assumed)."""

from __future__ import annotations

from collections.abc import Iterator

from tbkit.checks.base import CheckContext, Row, register
from tbkit.checks.tier1.common import PASS, WARN
from tbkit.sources.conventions import MASK_WORDS, Conventions, Fact

_DECLARE = {
    "maximum length": "declare it with the run option max_len (--max-len)",
    "layout": "declare it with the run option layout='batch_first'|'seq_first' (--layout) or config.json \"layout\"",
    "mask": (
        "declare it with the run option mask_convention (--mask-convention: int-keep, bool-keep, bool-pad, int-pad, "
        'float-keep, additive) or config.json "mask_convention"'
    ),
}


@register("conventions", tier=1, summary="the length, layout, mask and inputs the checks use, and how each is known")
def check_conventions(ctx: CheckContext) -> Iterator[Row]:
    """The conventions every other check feeds the model under, each measured or declared:
    the maximum length (the model's tables and buffers, then a forward at that length, bisected
    down when it raises an index error), the layout (batch-first or sequence-first: attention
    modules, then a probe), the padding mask (name, dtype, polarity: tried on padded inputs) and the
    inputs tbkit synthesises (segment ids, position ids, decoder input).

    Why: a check is only as trustworthy as its inputs; a FAIL under a convention the model does not
    use is a false alarm. Thresholds: none; a convention that could not be established is a WARN
    saying how to declare it (the checks then use the assumed one). Fix: declare it (run options
    max_len, layout, mask_convention, or the config.json keys layout / mask_convention)."""
    from tbkit.checks.measure import establish

    lm = establish(ctx)
    conv: Conventions = lm.conventions
    if conv.max_len is not None:
        yield _row(ctx, "maximum length", conv.max_len.value, conv.max_len)
    words = "sequence-first (T, B): inputs transposed" if conv.seq_first else "batch-first (B, T)"
    yield _row(ctx, "layout", conv.layout.value, conv.layout, words)
    if conv.mask is not None:
        value = f"{conv.mask_name}= {MASK_WORDS[conv.mask.value]}"
        yield _row(ctx, "mask", conv.mask.value, conv.mask, value)
    given = list(conv.inputs)
    if lm.kind == "seq2seq":
        from tbkit.sources.conventions import decoder_input_name

        given.insert(0, f"decoder input as {decoder_input_name(lm._forward_params(), True)}=")
    if lm.targets_argument:
        given.append(f"{lm.targets_argument}=<the input ids> (for every position's logits)")
    detail = "tbkit supplies " + "; ".join(given) if given else "token ids (and the mask) only"
    detail += f"; pad id {lm.pad_token_id} ({conv.pad}): random ids avoid it, padding uses it"
    yield ctx.row(PASS, "inputs", len(given), "", detail)


def _row(ctx: CheckContext, metric: str, value: object, fact: Fact, words: str = "") -> Row:
    detail = f"{words}; {fact.how}" if words else fact.how
    if fact.established:
        return ctx.row(PASS, metric, value, "", detail)
    return ctx.row(WARN, metric, value, "", f"{detail}. {_DECLARE[metric][0].upper()}{_DECLARE[metric][1:]}")
