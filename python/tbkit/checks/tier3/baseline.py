"""The ``baseline`` check (Tier 3)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.restore import preserved
from tbkit.checks.spec import Option, Threshold
from tbkit.checks.tier3.common import data_option, synthetic_label, why_not_trainable
from tbkit.devices import seed_forked
from tbkit.training.config import TrainConfig
from tbkit.training.copies import copy_loaded
from tbkit.training.data import training_data, uniform_cross_entropy, unigram_cross_entropy
from tbkit.training.evaluation import evaluate
from tbkit.training.fit import fit

if TYPE_CHECKING:  # numpy and torch are imported lazily; these are annotations only
    import numpy as np
    import numpy.typing as npt
    import torch
    from torch import nn

    from tbkit.sources.loaded import LoadedModel

# baseline: the reference must have a parameter count within this ratio of the model's
PARAM_MATCH_TOL = 0.10


# A model counts as worse than the reference only when the paired test says so (p < ALPHA) AND
# the gap is practically relevant: with 3 seeds, tiny but consistent differences in the 3rd
# decimal are "significant" and mean nothing.
ALPHA = 0.05


PRACTICAL_GAP = 0.01  # share of the reference's loss


@register(
    "baseline",
    tier=3,
    summary="vs uniform, unigram and a parameter-matched reference decoder (>=3 seeds, paired t-test)",
    needs=("lightning",),
    applies=why_not_trainable,
    thresholds=(
        Threshold("alpha", float, ALPHA, "p-value", "paired t-test significance level"),
        Threshold("practical_gap", float, PRACTICAL_GAP, "share", "loss gap to the reference that matters"),
        Threshold("param_match_tol", float, PARAM_MATCH_TOL, "share", "reference parameter count tolerance"),
    ),
    options=(
        Option("seeds", int, 3, "", "training seeds per model (at least 3)", positive=True),
        Option("steps", int, 150, "", "training steps per seed", positive=True),
    ),
)
def check_baseline(ctx: CheckContext) -> Iterator[Row]:
    """Validation loss after the same training budget (``baseline_steps``, >= 3 seeds) against the
    uniform prediction (ln V), the add-one unigram, and a parameter-matched plain reference decoder
    (nn.TransformerEncoder + explicit causal mask). The model trains on itself inside
    ``restore.preserved`` (or a fresh instance when its constructor rebuilds the same architecture).

    Why: a new design is only worth it when it beats a plain transformer of the same size on the
    same budget. Thresholds: FAIL when the paired t-test over seeds gives p < ``alpha`` (0.05) AND
    the gap exceeds ``practical_gap`` (1 %) of the reference's loss; WARN when not better than the
    unigram; reference parameter count within ``param_match_tol`` (10 %) of the model's, else WARN.
    Fix: compare the design against the reference on real data before scaling it."""
    import numpy as np

    setup = _baseline_setup(ctx)
    label, V = setup["label"], ctx.model.vocab_size
    yield ctx.row(Status.PASS, "uniform_loss", round(setup["uniform"], 4), "", f"{label}ln V, V = {V}")
    why = f"{label}cross entropy on validation of the add-one-smoothed unigram distribution of the training tokens"
    yield ctx.row(Status.PASS, "unigram_loss", round(setup["unigram"], 4), "", why)
    model_losses, ref_losses = _baseline_losses(ctx, setup)
    m, r = np.array(model_losses), np.array(ref_losses)
    yield from _baseline_rows(ctx, setup, m, r)


def _baseline_setup(ctx: CheckContext) -> dict[str, Any]:
    data, synthetic = data_option(ctx)
    model = ctx.model
    # the same tokens, blocks and split as tbkit.train on this data
    td, train_data, val_data, block = training_data(
        model,
        data,
        max_len=ctx.run_option("max_len"),
        val_fraction=0.1,
        synthetic=synthetic,
        seed=ctx.seed,
        level="char",
    )
    n_params = sum(p.numel() for p in model.module.parameters())
    return dict(
        seeds=[ctx.seed + i for i in range(max(3, int(ctx.option("seeds"))))],
        steps=int(ctx.option("steps")),
        batch=int(ctx.run_option("batch_size")),
        lr=float(ctx.run_option("lr")),
        block=block,
        train=train_data,
        val=val_data,
        label=synthetic_label(td.synthetic),
        uniform=uniform_cross_entropy(model.vocab_size),
        unigram=unigram_cross_entropy(train_data, val_data, model.vocab_size),
        n_params=n_params,
        ref_cfg=match_reference(n_params, model.vocab_size, block),
        fresh=_fresh_builder(model.module),
    )


def _baseline_losses(ctx: CheckContext, setup: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Validation losses per seed of the model and of the reference, trained on the same budget."""
    model, fresh, cfg = ctx.model, setup["fresh"], dict(setup["ref_cfg"])
    cfg.pop("params", None)
    model_losses: list[float] = []
    ref_losses: list[float] = []
    for seed in setup["seeds"]:
        seed_forked(seed, ctx.device)
        if fresh:
            model_losses.append(_train_and_evaluate(ctx, setup, copy_loaded(model, module=fresh()), seed))
        else:  # the model itself, put back exactly after each seed: every seed starts from its weights
            with preserved(model.module):
                own = copy_loaded(model, module=model.module)
                model_losses.append(_train_and_evaluate(ctx, setup, own, seed))
        seed_forked(seed, ctx.device)
        reference = copy_loaded(model, module=ReferenceDecoder(model.vocab_size, setup["block"], **cfg))
        ref_losses.append(_train_and_evaluate(ctx, setup, reference, seed))
    return model_losses, ref_losses


def _train_and_evaluate(ctx: CheckContext, setup: dict[str, Any], lm: LoadedModel, seed: int) -> float:
    lm.module.to(ctx.device)
    steps = setup["steps"]
    config = TrainConfig(
        epochs=10**6,
        max_steps=steps,
        batch_size=setup["batch"],
        lr=setup["lr"],
        weight_decay=0.01,
        warmup_steps=max(1, steps // 10),
        device=ctx.device,
        seed=seed,
    )
    fit(lm, setup["train"], setup["val"], config, save_checkpoints=False)
    return evaluate(lm, setup["val"], setup["batch"], device=ctx.device)


def _baseline_rows(
    ctx: CheckContext, setup: dict[str, Any], m: npt.NDArray[np.float64], r: npt.NDArray[np.float64]
) -> Iterator[Row]:
    import numpy as np

    label, n_params, cfg = setup["label"], setup["n_params"], setup["ref_cfg"]
    ref_params, tol = cfg["params"], ctx.threshold("param_match_tol")
    how_seeded = (
        "each seed rebuilds the model with its own constructor (fresh init)"
        if setup["fresh"]
        else "the model's constructor needs arguments, so each seed starts from its current weights "
        "and differs only in data order"
    )
    budget = f"{setup['steps']} steps of batch {setup['batch']}, AdamW lr {setup['lr']} with warmup + cosine, seeds {setup['seeds']}"
    detail = f"{label}validation loss per seed {np.round(m, 4).tolist()}; {budget}; {how_seeded}"
    yield ctx.row(Status.PASS, "model_loss", round(float(m.mean()), 4), "", detail)
    match = ref_params / n_params
    detail = (
        f"{label}per seed {np.round(r, 4).tolist()}; reference decoder (nn.TransformerEncoder + causal mask) "
        f"d_model {cfg['d_model']}, {cfg['layers']} layers, {cfg['nhead']} heads: {ref_params:,} "
        f"parameters vs the model's {n_params:,} (ratio {match:.3f}, tolerance {tol:.0%})"
    )
    status = Status.PASS if abs(match - 1) <= tol else Status.WARN
    yield ctx.row(status, "reference_loss", round(float(r.mean()), 4), "", detail)
    yield _baseline_test_row(ctx, setup, m, r)
    better = float(m.mean()) < setup["unigram"]
    detail = f"{label}model {m.mean():.4f} vs unigram {setup['unigram']:.4f} nats/token" + (
        "" if better else ": the model has not learned more than token frequencies on this budget"
    )
    status = Status.PASS if better else Status.WARN
    yield ctx.row(status, "model_vs_unigram", round(float(m.mean()) - setup["unigram"], 4), "< 0", detail)


def _baseline_test_row(
    ctx: CheckContext, setup: dict[str, Any], m: npt.NDArray[np.float64], r: npt.NDArray[np.float64]
) -> Row:
    alpha, gap = ctx.threshold("alpha"), ctx.threshold("practical_gap")
    test = paired_t_test(m, r)
    worse = test["p"] < alpha and test["mean"] > gap * float(r.mean())
    detail = (
        f"{setup['label']}paired t-test over {len(setup['seeds'])} seeds (model - reference validation loss): mean "
        f"{test['mean']:+.4f}, t = {test['t']:.3f}, df = {test['df']}, two-sided p = {test['p']:.4f}, "
        f"95% CI [{test['lo']:+.4f}, {test['hi']:+.4f}]"
        + ("; the model is significantly worse than a plain reference of the same size" if worse else "")
    )
    threshold = f"FAIL if p < {alpha} and gap > {gap:.0%} of reference loss"
    return ctx.row(
        Status.FAIL if worse else Status.PASS, "model_minus_reference", round(test["mean"], 4), threshold, detail
    )


def _fresh_builder(module: nn.Module) -> Optional[type[nn.Module]]:
    """A zero-argument constructor for the model's class when calling it rebuilds the SAME
    architecture (every parameter of the same shape), else None: then seeds cannot re-init it.
    A constructor whose defaults differ from how this model was built (sizes from a config) would
    silently compare another model, so it is tried once and checked."""
    import torch

    cls = type(module)
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    if not all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    try:
        with torch.random.fork_rng(devices=[]):
            trial = cls()
    except Exception:  # a constructor we cannot call on our own: the row says seeds keep the weights
        return None

    def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    return cls if shapes(trial) == shapes(module) else None


# ---- the reference decoder -------------------------------------------------------------------
def _reference_class() -> type[nn.Module]:
    import torch
    import torch.nn as nn

    class _Ref(nn.Module):
        """A plain causal decoder: token + learned position embeddings, nn.TransformerEncoder
        (pre-norm, GELU) with an explicit causal mask (never ``is_causal`` alone: fused paths drop
        it under no_grad), final LayerNorm, untied LM head."""

        def __init__(self, vocab: int, max_len: int, d_model: int, nhead: int, layers: int) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Embedding(max_len, d_model)
            layer = nn.TransformerEncoderLayer(
                d_model, nhead, 4 * d_model, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.ln = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)
            # nn.TransformerEncoder deep-copies one layer: give every layer its own init
            for lyr in self.encoder.layers:
                lyr.self_attn._reset_parameters()
                for lin in (lyr.linear1, lyr.linear2):
                    lin.reset_parameters()

        def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
            # right padding only: with the causal mask real positions never see padded keys, so no
            # key-padding mask is needed (and none can fully mask a row into NaN)
            T = input_ids.shape[1]
            x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
            causal = nn.Transformer.generate_square_subsequent_mask(T, device=input_ids.device)
            logits: torch.Tensor = self.head(self.ln(self.encoder(x, mask=causal)))
            return logits

    return _Ref


def ReferenceDecoder(vocab: int, max_len: int, d_model: int, nhead: int, layers: int, params: int = 0) -> nn.Module:
    return _reference_class()(vocab, max_len, d_model, nhead, layers)


def reference_param_count(vocab: int, max_len: int, d: int, layers: int) -> int:
    per_layer = 4 * d * d + 4 * d + 2 * (4 * d * d) + 4 * d + d + 4 * d  # attn in/out, ffn, 2 norms
    return vocab * d + max_len * d + layers * per_layer + 2 * d + d * vocab + vocab


def match_reference(n_params: int, vocab: int, max_len: int) -> dict[str, int]:
    """Reference sizes (d_model multiple of 4 heads, 1-6 layers) whose count is nearest ``n_params``."""
    best: Optional[tuple[tuple[float, int, float], dict[str, int]]] = None
    for layers in range(1, 7):
        for d in range(8, 2049, 4):
            count = reference_param_count(vocab, max_len, d, layers)
            gap = abs(count - n_params) / n_params
            # prefer the closer count; among near-ties (< 1%), prefer 2 layers (a typical small shape)
            key = (round(gap, 2), abs(layers - 2), gap)
            if best is None or key < best[0]:
                best = (key, {"d_model": d, "nhead": 4, "layers": layers, "params": count})
    assert best is not None  # the loops above ran
    return dict(best[1])


# ---- statistics (numpy only, no scipy) -----------------------------------------------------------
def paired_t_test(a: npt.ArrayLike, b: npt.ArrayLike) -> dict[str, float]:
    """Paired t-test of a - b: mean, t, df, two-sided p and a 95% confidence interval."""
    import numpy as np

    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    df = n - 1
    tcrit = t_quantile(0.975, df)
    if sd == 0.0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
        return {"mean": mean, "t": t, "df": df, "p": p, "lo": mean, "hi": mean}
    se = sd / math.sqrt(n)
    t = mean / se
    return {
        "mean": mean,
        "t": t,
        "df": df,
        "p": 2.0 * t_sf(abs(t), df),
        "lo": mean - tcrit * se,
        "hi": mean + tcrit * se,
    }


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (t >= 0), via the regularized
    incomplete beta function: P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    x = df / (df + t * t)
    return 0.5 * _betainc(df / 2.0, 0.5, x)


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q > 0.5) of Student's t, by bisection on ``t_sf``."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(ln_front) * h / a
