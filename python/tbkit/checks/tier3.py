"""Tier 3 — does the design learn, which settings suit it, and is it better than a plain reference?

Four checks (ids are public, see CHECKS.md):

- ``overfit``  plain torch, no install: memorise one fixed batch, on the model itself, restored after.
- ``train``    `tbkit.train` (lightning) on the user's data; synthetic only when asked, labelled so.
- ``hpo``      `tbkit.search` (optuna TPE + median pruner through the Lightning pruning callback).
- ``baseline`` uniform, unigram and a parameter-matched reference decoder on the same budget,
               several seeds, a paired t-test over seeds.

``train``, ``hpo`` and ``baseline`` need data: ``ctx.options["data"]`` (a text file or token ids)
or ``ctx.options["synthetic"] = True``; without either they are SKIP rows that say how to give it.
Options read (all optional): batch_size, max_len, train_epochs, train_max_steps, hpo_trials,
hpo_epochs, storage, study_name, baseline_seeds, baseline_steps, lr.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from tbkit.checks import inputs
from tbkit.checks.base import CheckContext, Row, Status, register
from tbkit.checks.numeric import kind_guess_note

# overfit (CHECKS.md): one fixed batch 2 x 64, Adam 1e-3, at most 300 steps, clip 1.0
OVERFIT_BATCH, OVERFIT_LEN, OVERFIT_STEPS, OVERFIT_LR = 2, 64, 300, 1e-3
OVERFIT_DROP = 0.90  # PASS when the loss falls by more than this fraction of its start
# baseline: the reference must have a parameter count within this ratio of the model's
PARAM_MATCH_TOL = 0.10
# A model counts as worse than the reference only when the paired test says so (p < ALPHA) AND
# the gap is practically relevant: with 3 seeds, tiny but consistent differences in the 3rd
# decimal are "significant" and mean nothing.
ALPHA = 0.05
PRACTICAL_GAP = 0.01  # share of the reference's loss

NO_DATA = (
    "no training data given: pass data=… or --data FILE (or synthetic=True to try it on synthetic data, labelled so)"
)


def _opt(ctx: CheckContext, key: str, default):
    value = ctx.options.get(key)
    return default if value is None else value


def _why_not_trainable(ctx: CheckContext) -> Optional[str]:
    """The SKIP reason for checks that train, or None. The runner asks before installing their
    requirements, so a run without data never installs lightning just to say so."""
    if ctx.options.get("data") is None and not ctx.options.get("synthetic", False):
        return NO_DATA
    if ctx.model.kind != "decoder":
        return (
            f"trains a causal language model; this model is a {ctx.model.kind} ({ctx.model.kind_reason}). "
            "Declare kind='decoder' if it is one"
        )
    return None


def _why_not_searchable(ctx: CheckContext) -> Optional[str]:
    """hpo trains copies of the model (tbkit.search): a model whose copies would still run the
    original's submodules (a stored lambda closing over them) cannot be searched that way."""
    why = _why_not_trainable(ctx)
    if why is not None:
        return why
    from tbkit.training.trainer import closures_over_own_submodules

    leaks = closures_over_own_submodules(ctx.model.module)
    if leaks:
        return (
            f"each trial trains a copy, and a copy of this model still runs the original's {', '.join(leaks[:5])} "
            "(a stored lambda closes over them). Search with tbkit.search(lambda: MyModel(), ...) or call "
            "the submodule from a method"
        )
    return None


def _data(ctx: CheckContext):
    """(data, synthetic) for checks that train (``_why_not_trainable`` has passed)."""
    return ctx.options.get("data"), bool(ctx.options.get("synthetic", False))


def _label(synthetic: bool) -> str:
    return "[SYNTHETIC DATA, asked for] " if synthetic else ""


# ---------------------------------------------------------------------------------------------
# overfit
# ---------------------------------------------------------------------------------------------
@register(
    "overfit",
    tier=3,
    summary="memorise one fixed batch (2x64, Adam 1e-3, <=300 steps): loss must fall >90%",
    thresholds={"loss_drop": OVERFIT_DROP, "steps": OVERFIT_STEPS, "lr": OVERFIT_LR},
)
def check_overfit(ctx: CheckContext) -> Iterator[Row]:
    """Memorise one fixed batch of 2 x 64 seeded random ids (Adam at learning rate ``lr`` (1e-3),
    clip 1.0, eval mode so dropout
    is off, at most ``steps`` (300) steps) on the model itself inside ``restore.preserved``:
    weights, buffers, .grad, flags and random states come back bit for bit.

    Why: a model that cannot fit one batch cannot learn anything (output blind to the input, broken
    gradients). Thresholds: PASS when the loss falls by more than ``loss_drop`` (0.9) of its start;
    decoders: teacher-forced argmax must reproduce the sequence; non-finite loss FAIL. Fix: check
    that the output depends on the input and that gradients reach all layers (gradient_flow)."""
    import torch

    from tbkit.checks.restore import preserved

    model = ctx.model
    length = inputs.clamp_len(model, OVERFIT_LEN)
    if length < 2:
        yield ctx.row(Status.SKIP, detail=f"the model's maximum length {length} leaves no next token to predict")
        return
    ids = inputs.token_ids(model, OVERFIT_BATCH, length, ctx.generator(301), ctx.device)
    with torch.no_grad(), inputs.eval_mode(model.module):
        probe = model.forward(ids)
    if not inputs.output_is_logits(model, probe):
        why = (
            f"the model returns hidden states of width {probe.shape[-1]}, not logits over its {model.vocab_size} "
            "token vocabulary: there is no token loss to overfit"
        )
        yield ctx.row(Status.SKIP, detail=why)
        return
    with preserved(model.module):
        losses, hits, total = _memorise(ctx, ids)
    yield from _overfit_rows(ctx, losses, hits, total, length)
    _overfit_figure(ctx, losses)


def _memorise(ctx: CheckContext, ids) -> tuple:
    """(losses per step, hits, total) of Adam on the fixed batch (inside ``preserved``)."""
    import torch
    import torch.nn.functional as F

    model, module = ctx.model, ctx.model.module
    next_token = model.kind in ("decoder", "seq2seq")

    def loss_and_hits():
        out = model.forward(ids).float()
        # encoders with an LM head: reconstruct the token at each position
        logits, target = (out[:, :-1], ids[:, 1:]) if next_token else (out, ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        hits = logits.argmax(-1) == target
        return loss, int(hits.sum()), hits.numel()

    torch.manual_seed(ctx.seed)
    for p in module.parameters():
        p.grad = None
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=ctx.threshold("lr"))
    losses, steps, drop = [], int(ctx.threshold("steps")), ctx.threshold("loss_drop")
    # eval mode: dropout off, so the check measures whether the model CAN fit, not the noise
    with inputs.eval_mode(module):
        for step in range(steps + 1):
            loss, hits, total = loss_and_hits()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            if step == steps or (losses[-1] < (1 - drop) * losses[0] and hits == total):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
    return losses, hits, total


def _overfit_rows(ctx: CheckContext, losses: list, hits: int, total: int, length: int) -> Iterator[Row]:
    next_token = ctx.model.kind in ("decoder", "seq2seq")
    limit = ctx.threshold("loss_drop")
    steps = len(losses) - 1
    first, last = losses[0], losses[-1]
    drop = (first - last) / first if first > 0 and math.isfinite(last) else float("nan")
    how = "teacher-forced argmax at each position" if next_token else "argmax reconstruction of each input token"
    setup = (
        f"batch {OVERFIT_BATCH}x{length} of seeded random ids, Adam {ctx.threshold('lr')}, clip 1.0, eval mode "
        f"(dropout off), on the model itself, restored afterwards"
    )
    if not math.isfinite(last):
        why = f"loss became non-finite ({last}) after {steps} steps; {setup}"
        yield ctx.row(Status.FAIL, "loss_drop", drop, f"> {limit}", why)
        return
    status = Status.PASS if drop > limit else Status.FAIL
    why = (
        ""
        if status is Status.PASS
        else "; the model cannot fit one fixed batch: check that its output depends on its input and that "
        "gradients reach all layers (Tier 1 gradient_flow)"
    )
    detail = f"loss {first:.3f} -> {last:.3f} in {steps} steps; {setup}{why}"
    yield ctx.row(status, "loss_drop", round(drop, 4), f"> {limit}", detail)
    label = "reproduces_sequence" if next_token else "reproduces_tokens"
    rep = Status.PASS if hits == total else Status.FAIL
    detail = f"{how} matches {hits} of {total} target tokens after {steps} steps"
    if rep is Status.FAIL:
        detail += kind_guess_note(ctx.model)  # what is reproduced depends on the kind
    yield ctx.row(rep, label, f"{hits}/{total}", "all", detail)


def _overfit_figure(ctx: CheckContext, losses) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(len(losses)), losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss on the fixed batch")
    ax.set_title("overfit one batch")
    fig.tight_layout()
    ctx.save_figure(fig, "loss")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
@register(
    "train",
    tier=3,
    summary="fine-tune with lightning on the user's data: val loss / perplexity per epoch",
    needs=("lightning",),
    applies=_why_not_trainable,
)
def check_train(ctx: CheckContext) -> Iterator[Row]:
    """Fine-tune with ``lightning.pytorch`` on the user's data (a text file or token ids; synthetic
    only when asked, and labelled so), AMP on GPU, checkpoints; validation loss and perplexity per
    epoch. Trains the model itself inside ``restore.preserved``, so it comes back as it was (the
    checkpoints keep the trained weights).

    Why: the real test of a design is whether it learns on real data. Thresholds: best validation
    loss not finite FAIL, not below its value before training WARN. Fix: learning rate, data, or the
    problems the other checks name."""
    from tbkit.checks.restore import preserved
    from tbkit.training import trainer as training

    data, synthetic = _data(ctx)
    ckdir = None if ctx.out_dir is None else Path(ctx.out_dir) / "checkpoints" / "train"
    with preserved(ctx.model.module):
        result = _train(ctx, training, data, synthetic, ckdir)
    yield from _train_rows(ctx, result)
    ctx.save_figure(training.loss_curve_figure(result), "loss_curve")


def _train(ctx: CheckContext, training, data, synthetic: bool, ckdir):
    return training.train(
        ctx.model,
        data,
        in_place=True,
        synthetic=synthetic,
        epochs=int(_opt(ctx, "train_epochs", 2)),
        batch_size=int(_opt(ctx, "batch_size", 16)),
        lr=float(_opt(ctx, "lr", 1e-3)),
        max_len=ctx.options.get("max_len"),
        max_steps=ctx.options.get("train_max_steps"),
        checkpoint_dir=ckdir,
        resume=False,
        device=ctx.device,
        seed=ctx.seed,
        # several devices / machines (tbkit run --devices/--strategy/--num-nodes); None = one device
        devices=ctx.options.get("devices"),
        strategy=ctx.options.get("strategy"),
        num_nodes=ctx.options.get("num_nodes"),
    )


def _train_rows(ctx: CheckContext, result) -> Iterator[Row]:
    label = _label(result.synthetic)
    for note in result.notes:
        yield ctx.row(Status.PASS, "data", None, "", label + note)
    for rec in result.metrics.to_dict("records"):
        val = rec.get("val_loss")
        if val is None or val != val:
            continue
        yield ctx.row(
            Status.PASS,
            f"val_loss_epoch_{int(rec['epoch'])}",
            round(val, 4),
            "",
            f"{label}perplexity {rec['val_ppl']:.2f}, train loss {rec['train_loss']:.4f}, step {int(rec['step'])}",
        )
    start, best = result.initial_val_loss, result.best_val_loss
    if not math.isfinite(best):
        status, why = Status.FAIL, "validation loss is not finite"
    elif best >= start:
        status, why = Status.WARN, "validation loss never went below its value before training"
    else:
        status, why = Status.PASS, "validation loss fell"
    yield ctx.row(
        status,
        "best_val_loss",
        round(best, 4),
        f"< {start:.4f} (before training)",
        f"{label}{why}: {start:.4f} -> best {best:.4f}, final {result.final_val_loss:.4f} after "
        f"{result.global_step} steps on {result.distribution} ({result.precision}); checkpoints in {result.checkpoints[0].parent if result.checkpoints else 'none'}",
    )


# ---------------------------------------------------------------------------------------------
# hpo
# ---------------------------------------------------------------------------------------------
@register(
    "hpo",
    tier=3,
    summary="Optuna TPE + median pruning (Lightning callback): trials, best params, plots",
    needs=("optuna", "optuna-integration", "lightning"),
    applies=_why_not_searchable,
)
def check_hpo(ctx: CheckContext) -> Iterator[Row]:
    """Optuna TPE sampler + median pruner, pruning through the Lightning callback
    (``optuna_integration``); storage in memory, a SQLite file, or any Optuna RDB URL for several
    workers. Trials table, best parameters, history and importance plots. Each trial trains its own
    copy (``tbkit.search``); the user's model is not trained.

    Why: which learning rate, dropout and batch size suit the design. Thresholds: at least one trial
    must complete, else FAIL. Fix: widen the search space or the budget."""
    from tbkit.training import search as hpo

    data, synthetic = _data(ctx)
    res = hpo.search(
        ctx.model,
        data,
        synthetic=synthetic,
        n_trials=int(_opt(ctx, "hpo_trials", 6)),
        epochs=int(_opt(ctx, "hpo_epochs", 3)),
        batch_size=int(_opt(ctx, "batch_size", 16)),
        max_len=ctx.options.get("max_len"),
        storage=ctx.options.get("storage"),
        study_name=ctx.options.get("study_name"),
        device=ctx.device,
        seed=ctx.seed,
    )
    label = _label(res.synthetic)
    status = Status.PASS if res.n_complete >= 1 else Status.FAIL
    yield ctx.row(
        status,
        "trials_completed",
        res.n_complete,
        ">= 1",
        f"{label}{res.n_complete} completed, {res.n_pruned} pruned, {res.n_failed} failed of "
        f"{len(res.trials_df)} trials in study {res.study.study_name!r} ({res.storage_display})"
        + (f"; failures: {res.failures[0]}" if res.failures else ""),
    )
    yield ctx.row(
        Status.PASS,
        "trials_pruned",
        res.n_pruned,
        "",
        f"{label}MedianPruner through optuna_integration.PyTorchLightningPruningCallback on val_loss per epoch",
    )
    if res.n_complete:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.best_params.items())
        yield ctx.row(Status.PASS, "best_val_loss", round(res.best_value, 4), "", f"{label}best params: {params}")
    for note in res.notes:
        yield ctx.row(Status.PASS, "note", None, "", label + note)
    for name, fig in res.figures.items():
        ctx.save_figure(fig, name)


# ---------------------------------------------------------------------------------------------
# baseline
# ---------------------------------------------------------------------------------------------
@register(
    "baseline",
    tier=3,
    summary="vs uniform, unigram and a parameter-matched reference decoder (>=3 seeds, paired t-test)",
    needs=("lightning",),
    applies=_why_not_trainable,
    thresholds={"alpha": ALPHA, "practical_gap": PRACTICAL_GAP, "param_match_tol": PARAM_MATCH_TOL},
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


def _baseline_setup(ctx: CheckContext) -> dict:
    from tbkit.training import data as tdata
    from tbkit.training import trainer as training

    data, synthetic = _data(ctx)
    model = ctx.model
    # the same tokens, blocks and split as tbkit.train on this data
    td, train_data, val_data, block = training.training_data(
        model,
        data,
        max_len=ctx.options.get("max_len"),
        val_fraction=0.1,
        synthetic=synthetic,
        seed=ctx.seed,
        level="char",
    )
    n_params = sum(p.numel() for p in model.module.parameters())
    return dict(
        seeds=[ctx.seed + i for i in range(max(3, int(_opt(ctx, "baseline_seeds", 3))))],
        steps=int(_opt(ctx, "baseline_steps", 150)),
        batch=int(_opt(ctx, "batch_size", 16)),
        lr=float(_opt(ctx, "lr", 1e-3)),
        block=block,
        train=train_data,
        val=val_data,
        label=_label(td.synthetic),
        uniform=tdata.uniform_cross_entropy(model.vocab_size),
        unigram=tdata.unigram_cross_entropy(train_data, val_data, model.vocab_size),
        n_params=n_params,
        ref_cfg=match_reference(n_params, model.vocab_size, block),
        fresh=_fresh_builder(model.module),
    )


def _baseline_losses(ctx: CheckContext, setup: dict) -> tuple:
    """Validation losses per seed of the model and of the reference, trained on the same budget."""
    import torch

    from tbkit.checks.restore import preserved
    from tbkit.training import trainer as training

    model, fresh, cfg = ctx.model, setup["fresh"], dict(setup["ref_cfg"])
    cfg.pop("params", None)
    model_losses, ref_losses = [], []
    for seed in setup["seeds"]:
        torch.manual_seed(seed)
        if fresh:
            model_losses.append(_train_and_evaluate(ctx, setup, training.copy_loaded(model, module=fresh()), seed))
        else:  # the model itself, put back exactly after each seed: every seed starts from its weights
            with preserved(model.module):
                own = training.copy_loaded(model, module=model.module)
                model_losses.append(_train_and_evaluate(ctx, setup, own, seed))
        torch.manual_seed(seed)
        reference = training.copy_loaded(model, module=ReferenceDecoder(model.vocab_size, setup["block"], **cfg))
        ref_losses.append(_train_and_evaluate(ctx, setup, reference, seed))
    return model_losses, ref_losses


def _train_and_evaluate(ctx: CheckContext, setup: dict, lm, seed: int) -> float:
    from tbkit.training import trainer as training

    lm.module.to(ctx.device)
    steps = setup["steps"]
    training.fit(
        lm,
        setup["train"],
        setup["val"],
        epochs=10**6,
        max_steps=steps,
        batch_size=setup["batch"],
        lr=setup["lr"],
        weight_decay=0.01,
        warmup_steps=max(1, steps // 10),
        device=ctx.device,
        seed=seed,
        save_checkpoints=False,
    )
    return training.evaluate(lm, setup["val"], setup["batch"], device=ctx.device)


def _baseline_rows(ctx: CheckContext, setup: dict, m, r) -> Iterator[Row]:
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


def _baseline_test_row(ctx: CheckContext, setup: dict, m, r) -> Row:
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


def _fresh_builder(module):
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

    def shapes(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    return cls if shapes(trial) == shapes(module) else None


# ---- the reference decoder -------------------------------------------------------------------
def _reference_class():
    import torch
    import torch.nn as nn

    class _Ref(nn.Module):
        """A plain causal decoder: token + learned position embeddings, nn.TransformerEncoder
        (pre-norm, GELU) with an explicit causal mask (never ``is_causal`` alone: fused paths drop
        it under no_grad), final LayerNorm, untied LM head."""

        def __init__(self, vocab, max_len, d_model, nhead, layers):
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

        def forward(self, input_ids, attention_mask=None):
            # right padding only: with the causal mask real positions never see padded keys, so no
            # key-padding mask is needed (and none can fully mask a row into NaN)
            T = input_ids.shape[1]
            x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
            causal = nn.Transformer.generate_square_subsequent_mask(T, device=input_ids.device)
            return self.head(self.ln(self.encoder(x, mask=causal)))

    return _Ref


def ReferenceDecoder(vocab: int, max_len: int, d_model: int, nhead: int, layers: int, params: int = 0):
    return _reference_class()(vocab, max_len, d_model, nhead, layers)


def reference_param_count(vocab: int, max_len: int, d: int, layers: int) -> int:
    per_layer = 4 * d * d + 4 * d + 2 * (4 * d * d) + 4 * d + d + 4 * d  # attn in/out, ffn, 2 norms
    return vocab * d + max_len * d + layers * per_layer + 2 * d + d * vocab + vocab


def match_reference(n_params: int, vocab: int, max_len: int) -> dict:
    """Reference sizes (d_model multiple of 4 heads, 1-6 layers) whose count is nearest ``n_params``."""
    best = None
    for layers in range(1, 7):
        for d in range(8, 2049, 4):
            count = reference_param_count(vocab, max_len, d, layers)
            gap = abs(count - n_params) / n_params
            # prefer the closer count; among near-ties (< 1%), prefer 2 layers (a typical small shape)
            key = (round(gap, 2), abs(layers - 2), gap)
            if best is None or key < best[0]:
                best = (key, {"d_model": d, "nhead": 4, "layers": layers, "params": count})
    return dict(best[1])


# ---- statistics (numpy only, no scipy) -----------------------------------------------------------
def paired_t_test(a, b) -> dict:
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
