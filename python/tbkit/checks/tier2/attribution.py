"""The ``attribution`` check (Tier 2)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.numeric import kind_guess_note
from tbkit.checks.restore import preserved
from tbkit.checks.spec import Threshold
from tbkit.checks.tier2.common import grad_mode_failure

if TYPE_CHECKING:  # torch is imported lazily; these are annotations only
    import torch
    from torch import nn

    from tbkit.sources.loaded import LoadedModel

ATTR_BATCH, ATTR_LEN = 2, 16


ATTR_REL_DELTA = 0.05  # relative IG convergence delta above which 50 steps are not enough


ATTR_STEPS = (50, 200)


ATTR_LEAK_TOL = 1e-6  # share of |attribution| allowed on tokens after the target (float noise)


@register(
    "attribution",
    tier=2,
    summary="captum LayerIntegratedGradients on the input embedding; decoders: no attribution to future tokens",
    needs=("captum>=0.9",),
    thresholds=(
        Threshold("rel_delta", float, ATTR_REL_DELTA, "relative", "IG convergence delta above it retries at 200 steps"),
        Threshold("future_share", float, ATTR_LEAK_TOL, "share", "share of |attribution| allowed on later tokens"),
    ),
)
def check_attribution(ctx: CheckContext) -> Iterator[Row]:
    """captum ``LayerIntegratedGradients`` on the input embedding (plain IG on token ids cannot
    work), baseline all pad tokens, target: the output unit the model ranks first at the middle
    position; 50 steps, retried at 200 when the integral has not converged. Runs on the model
    itself inside ``restore.preserved``.

    Why: which tokens a prediction rests on; for decoders, any attribution to a later token is a
    causal leak measured through the gradients. Thresholds: relative convergence delta
    |delta| / |F(x) - F(baseline)| > ``rel_delta`` (0.05) WARN; decoders: share of |attribution|
    after the target > ``future_share`` (1e-6) FAIL (the row says when the kind was inferred).
    Fix: the causal mask; a better baseline when the delta stays high."""
    try:
        from captum.attr import LayerIntegratedGradients  # noqa: F401
    except ImportError as err:  # the runner obtains captum first; called directly, say what to do
        why = (
            f"captum is not importable ({err}); install it through the gate with tbkit.ensure('captum>=0.9') or "
            "run the checks with tbkit.run, which does"
        )
        yield ctx.row(Status.SKIP, "attribution", None, "", why)
        return
    embedding, how_found = find_input_embedding(ctx.model)
    if embedding is None:
        yield ctx.row(Status.SKIP, "attribution", None, "", how_found)
        return
    setup = _attribution_setup(ctx)
    with preserved(ctx.model.module), inputs.eval_mode(ctx.model.module):
        broken = _attribution_grad_failure(ctx, setup)
        if broken is None:
            attr, attempts = _integrate(ctx, setup, embedding)
    if broken is not None:
        yield broken
        return
    per_token = attr.float().sum(dim=-1).detach()  # (B, T): one score per input token
    total = per_token.abs().sum(dim=1).clamp_min(1e-30)
    yield _attribution_convergence(ctx, setup, attempts, how_found)
    yield _attribution_target_share(ctx, setup, per_token, total)
    if ctx.model.kind == "decoder" and setup["target_pos"] < setup["length"] - 1:
        yield _attribution_future(ctx, setup, per_token, total)


def _attribution_setup(ctx: CheckContext) -> dict[str, Any]:
    import torch

    model = ctx.model
    length = inputs.clamp_len(model, ATTR_LEN)
    ids = inputs.token_ids(model, ATTR_BATCH, length, ctx.generator(301), ctx.device)
    decoder_ids = None
    if model.kind == "seq2seq":
        decoder_ids = inputs.token_ids(model, ATTR_BATCH, length, ctx.generator(302), ctx.device)
    return dict(
        ids=ids,
        mask=torch.ones_like(ids),
        baseline=torch.full_like(ids, int(model.pad_token_id)),
        length=length,
        target_pos=length // 2 if length > 1 else 0,
        decoder_ids=decoder_ids,
    )


def _attribution_grad_failure(ctx: CheckContext, setup: dict[str, Any]) -> Optional[Row]:
    """Integrated gradients need autograd: a model that cannot run in grad mode is the finding."""
    import torch

    try:
        with torch.enable_grad():
            ctx.model.forward(setup["ids"], attention_mask=setup["mask"], decoder_input_ids=setup["decoder_ids"])
    except RuntimeError as err:
        broken = grad_mode_failure(ctx, err, "integrated gradients")
        if broken is None:
            raise
        return broken
    return None


def _integrate(
    ctx: CheckContext, setup: dict[str, Any], embedding: nn.Module
) -> tuple[torch.Tensor, list[tuple[int, float]]]:
    """(attributions, [(steps, relative delta), ...]): 50 steps, then 200 if not converged."""
    import torch
    from captum.attr import LayerIntegratedGradients

    model, batch, target_pos = ctx.model, ATTR_BATCH, setup["target_pos"]
    ids, mask, baseline, decoder_ids = setup["ids"], setup["mask"], setup["baseline"], setup["decoder_ids"]
    with torch.no_grad():
        out = model.forward(ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    # The scalar explained: the output unit the model itself ranks first at the target position
    # (the predicted next token for an LM head, the largest feature for hidden states).
    target_unit = out[:, target_pos].argmax(dim=-1)

    def score(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[0]
        dec = None if decoder_ids is None else decoder_ids.repeat(n // batch, 1)
        o = model.forward(input_ids, attention_mask=attention_mask, decoder_input_ids=dec)
        return o[torch.arange(n, device=o.device), target_pos, target_unit.repeat(n // batch)]

    lig = LayerIntegratedGradients(score, embedding)
    attempts: list[tuple[int, float]] = []
    for steps in ATTR_STEPS:
        attr, delta = lig.attribute(
            ids, baselines=baseline, additional_forward_args=(mask,), n_steps=steps, return_convergence_delta=True
        )
        with torch.no_grad():
            gap = (score(ids, mask) - score(baseline, mask)).abs()
        attempts.append((steps, float((delta.abs() / gap.clamp_min(1e-6)).max())))
        if attempts[-1][1] <= ctx.threshold("rel_delta"):
            break
    return attr, attempts


def _attribution_convergence(
    ctx: CheckContext, setup: dict[str, Any], attempts: list[tuple[int, float]], how_found: str
) -> Row:
    limit = ctx.threshold("rel_delta")
    steps, rel = attempts[-1]
    tried = ", ".join(f"{s} steps: {r:.3g}" for s, r in attempts)
    status = Status.PASS if rel <= limit else Status.WARN
    detail = (
        f"LayerIntegratedGradients on {how_found}, baseline all pad tokens ({int(ctx.model.pad_token_id)}), "
        f"target: output unit ranked first at position {setup['target_pos']} of {setup['length']}; relative delta "
        f"|delta| / |F(x) − F(baseline)| ({tried})"
    )
    if status is not Status.PASS:
        detail += "; the integral has not converged, so per-token scores are approximate (a very sharp model or a poor baseline)"
    return ctx.row(status, "convergence_delta_rel", rel, f"<= {limit}", detail)


def _attribution_target_share(
    ctx: CheckContext, setup: dict[str, Any], per_token: torch.Tensor, total: torch.Tensor
) -> Row:
    share_self = float((per_token[:, setup["target_pos"]].abs() / total).mean())
    top = per_token[0].abs().argsort(descending=True)[:5].tolist()
    own = (
        "source token at the target's index (seq2seq: the decoder input is held fixed)"
        if ctx.model.kind == "seq2seq"
        else "target position's own token"
    )
    detail = (
        f"share of |attribution| on the {own} (mean over {ATTR_BATCH} sequences); most attributed positions in "
        f"sequence 0: {top}"
    )
    return ctx.row(Status.PASS, "target_token_share", round(share_self, 4), "info", detail)


def _attribution_future(ctx: CheckContext, setup: dict[str, Any], per_token: torch.Tensor, total: torch.Tensor) -> Row:
    tol, target_pos, length = ctx.threshold("future_share"), setup["target_pos"], setup["length"]
    after = per_token[:, target_pos + 1 :].abs()
    leak = float((after.sum(dim=1) / total).max())
    if leak <= tol:
        detail = f"no attribution to the {length - target_pos - 1} tokens after position {target_pos}"
        return ctx.row(Status.PASS, "future_attribution_share", leak, f"<= {tol:g}", detail)
    where = (after.amax(dim=0) > tol * float(total.min())).nonzero().flatten()
    positions = [int(p) + target_pos + 1 for p in where.tolist()]
    detail = (
        f"the prediction at position {target_pos} depends on later tokens (positions {positions[:10]}): "
        f"{leak:.3g} of the attribution lies after the target. A decoder must not see the future: fix the causal "
        "mask" + kind_guess_note(ctx.model)
    )
    return ctx.row(Status.FAIL, "future_attribution_share", leak, f"<= {tol:g}", detail)


def find_input_embedding(model: LoadedModel) -> tuple[Optional[nn.Module], str]:
    """(the input nn.Embedding, how it was found) or (None, why not)."""
    import torch

    module = model.module
    getter = getattr(module, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, torch.nn.Module):
            return emb, f"{type(emb).__name__} from get_input_embeddings()"
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Embedding) and int(m.num_embeddings) == int(model.vocab_size):
            return m, f"the input embedding {name} ({m.num_embeddings}×{m.embedding_dim})"
    return None, (
        f"no input embedding found: the model has no get_input_embeddings() and no nn.Embedding "
        f"with {model.vocab_size} rows (the vocabulary size), so integrated gradients cannot be taken "
        "on token embeddings; expose get_input_embeddings() on the model"
    )
