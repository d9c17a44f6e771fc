"""Facts taken from the real modules: vocabulary size, maximum length, kind, and whether the
forward honours tbkit's contract (checked by reading the signature and by one tiny forward).

The model is the truth; the config is only compared against it (disagreements become notes).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from tbkit.errors import SourceError
from tbkit.sources.conventions import SYNTHESISED, decoder_input_name
from tbkit.sources.loaded import KINDS, LoadedModel, Provenance

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

Params = Mapping[str, inspect.Parameter]  # a forward's parameters, by name

_POSITION_NAME = re.compile(r"(^|[._])(pe|wpe|pos\w*|position\w*)$", re.IGNORECASE)
_INTERMEDIATE = re.compile(r"_(output|out|outputs|hidden|hidden_states|residual)$")
# Code that builds or requests a causal mask. Deliberately specific: a comment saying "not causal"
# or an ``is_causal=False`` must not count as evidence.
_CAUSAL_CODE = re.compile(r"is_causal\s*=\s*True|\btriu_?\(|\btril_?\(|generate_square_subsequent_mask|causal_mask")
_DECLARED_LIMITS = (
    "max_len",
    "max_seq_len",
    "block_size",
    "max_position_embeddings",
    "context_length",
    "n_positions",
    "n_ctx",
)


# ---- vocabulary ----------------------------------------------------------------------------
def embeddings(model: nn.Module) -> list[tuple[str, nn.Embedding]]:
    import torch.nn as nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]


def guess_input_embedding(model: nn.Module) -> Optional[tuple[str, nn.Embedding]]:
    """The first nn.Embedding not named like a position table."""
    for name, emb in embeddings(model):
        if not _POSITION_NAME.search(name):
            return name, emb
    return None


# ---- maximum length ------------------------------------------------------------------------
def find_max_len(
    model: nn.Module, flat: dict[str, Any], token_embedding: Optional[str], notes: list[str]
) -> tuple[Optional[int], str]:
    """(max_len or None, how). Position table > declared attribute > config."""
    d_model: Optional[int] = None
    for name, emb in embeddings(model):
        if name == token_embedding:
            d_model = emb.embedding_dim
    found: Optional[tuple[int, str]] = None
    for name, emb in embeddings(model):
        if name != token_embedding and _POSITION_NAME.search(name):
            # Some tables reserve leading rows (HF BART's learned positions keep `offset = 2`):
            # the usable length is the rows minus that offset, or length rows+1 breaks the model.
            offset = emb.__dict__.get("offset")
            offset = (
                offset
                if isinstance(offset, int) and not isinstance(offset, bool) and 0 < offset < emb.num_embeddings
                else 0
            )
            rows = emb.num_embeddings - offset
            found = (
                rows,
                f"learned position table {name} ({emb.num_embeddings} rows"
                + (f", first {offset} reserved)" if offset else ")"),
            )
            break
    if found is None:
        for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
            if _POSITION_NAME.search(name) and buf.dim() >= 2:
                sizes = [s for s in buf.shape if s not in (1, d_model)]
                if len(sizes) == 1:
                    found = (int(sizes[0]), f"positional table {name} of shape {tuple(buf.shape)}")
                    break
    if found is None:
        for attr in _DECLARED_LIMITS:
            value = model.__dict__.get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found = (value, f"declared by the model ({attr}={value})")
                break
    config_value = next((flat[k] for k in _DECLARED_LIMITS if isinstance(flat.get(k), int)), None)
    if found is None:
        if config_value is not None:
            return config_value, "from config (no positional table or declared limit in the model)"
        return None, "no limit found (no positional table, declared limit or config value)"
    if config_value is not None and config_value != found[0]:
        notes.append(
            f"config max length {config_value} disagrees with the model's {found[1]}; the model's value is used"
        )
    return found


# ---- forward contract ----------------------------------------------------------------------
def forward_params(model: nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def check_forward_signature(model: nn.Module, params: Params, seq2seq_declared: bool = False) -> bool:
    """Raise for a forward tbkit cannot call; return True if it takes a decoder input (seq2seq).
    Required inputs tbkit synthesises (segment ids, position ids) are no obstacle."""
    P = inspect.Parameter
    cls = type(model).__name__
    positional = [
        p for p in params.values() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.VAR_POSITIONAL)
    ]
    if params and not positional:
        raise SourceError(
            f"{cls}.forward takes no positional input, so it cannot be called as forward(input_ids)",
            "Define forward(self, input_ids, attention_mask=None) returning logits (B, S, V).",
        )
    required = [
        n for n, p in params.items() if p.default is P.empty and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL)
    ]
    intermediate = [n for n in required[1:] if _INTERMEDIATE.search(n)]
    if intermediate:
        raise SourceError(
            f"broken export: {cls}.forward requires intermediate tensors as arguments ({', '.join(required)}); "
            f"{', '.join(intermediate)} are outputs of the model's own layers, which a caller cannot supply",
            "Export the model again with a current Transformer Builder (its forward must be forward(self, input_ids, "
            "attention_mask=None)), or fix forward to compute those tensors itself.",
        )
    decoder_input = decoder_input_name(params, seq2seq_declared)
    extra = [n for n in required[1:] if n != decoder_input and n not in SYNTHESISED]
    if extra:
        raise SourceError(
            f"{cls}.forward requires {', '.join(extra)} besides the token ids, but tbkit calls "
            "forward(input_ids, attention_mask=None) (and decoder_input_ids for seq2seq)",
            "Give those arguments defaults (attention_mask=None); for a seq2seq model whose 2nd argument is the "
            "decoder input, declare it (kind='seq2seq', --kind seq2seq).",
        )
    return decoder_input is not None


def _is_library_class(cls: type) -> bool:
    """Classes from installed libraries (torch, transformers, anything in site-packages): their
    source mentions causal masks for options the model may not use, so it is no evidence."""
    import sys

    if cls.__module__.split(".")[0] in ("torch", "transformers"):
        return True
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None) or ""
    return "site-packages" in filename or "dist-packages" in filename


def _hugging_face_kind(model: nn.Module) -> Optional[tuple[str, str]]:
    """A transformers model says whether it generates text; trust that over its source code."""
    is_transformers_model = any(c.__module__.startswith("transformers.") for c in type(model).__mro__)
    can_generate = getattr(model, "can_generate", None)
    if not is_transformers_model or not callable(can_generate):
        return None
    try:
        generates = bool(can_generate())
    except Exception:
        return None
    if generates:
        return "decoder", f"inferred: {type(model).__name__} is a Hugging Face model that can generate text"
    return "encoder", f"inferred: {type(model).__name__} is a Hugging Face model that does not generate text"


def _causal_evidence(model: nn.Module) -> Optional[str]:
    """Why the code looks causal, from the source of the model's own classes (if readable)."""
    seen: set[type] = set()
    for mod in model.modules():
        cls = type(mod)
        if cls in seen or _is_library_class(cls):
            continue
        seen.add(cls)
        try:
            src = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        m = _CAUSAL_CODE.search(src)
        if m:
            return f"causal masking in {cls.__name__} ({m.group(0)!r})"
    return None


def _has_encoder_and_decoder(model: nn.Module) -> bool:
    import torch.nn as nn

    kinds = {type(m) for m in model.modules()}
    return nn.Transformer in kinds or (nn.TransformerEncoder in kinds and nn.TransformerDecoder in kinds)


# ---- the whole inspection ------------------------------------------------------------------
_TARGET_NAMES = ("targets", "labels")


def inspect_and_wrap(
    model: nn.Module,
    config: dict[str, Any],
    flat: dict[str, Any],
    provenance: Provenance,
    notes: list[str],
    kind: Optional[str] = None,
    kind_reason: Optional[str] = None,
) -> LoadedModel:
    """Check the forward contract, find vocab/max_len/kind from the real modules, run one tiny
    forward (B=1, T=2), and return the LoadedModel. ``kind_reason`` says where a given ``kind``
    came from (default: declared by the caller)."""
    params = forward_params(model)
    declared, declared_reason = _declared_kind(kind, kind_reason, config)
    takes_decoder_input = check_forward_signature(model, params, declared == "seq2seq")
    seq2seq = _seq2seq(model, declared, takes_decoder_input, params)
    guess = guess_input_embedding(model)
    config_vocab = flat.get("vocab_size") if isinstance(flat.get("vocab_size"), int) else None
    probe = LoadedModel(
        model,
        config,
        "seq2seq" if seq2seq else (declared or "decoder"),
        "",
        _probe_vocab(model, guess, config_vocab, provenance),
        None,
        provenance,
        notes,
    )
    out, fed = _adapted_forward(probe, params, notes)
    token_name, vocab = _input_vocab(model, fed, guess, config_vocab, notes)
    width = out.shape[-1]
    if declared is not None:
        final_kind, reason = declared, declared_reason
    else:
        final_kind, reason = _infer_kind(model, params, seq2seq, width, vocab)
    if final_kind == "decoder" and width != vocab:
        notes.append(
            f"a decoder whose output width {width} is not the vocabulary size {vocab}: checks treat it as hidden states"
        )
    if not bool(out.isfinite().all()):
        notes.append("the load-time forward (B=1, T=2) produced NaN/Inf; the stability checks will show where")
    max_len, how = find_max_len(model, flat, token_name, notes)
    notes.append(f"maximum length: {how}")
    return LoadedModel(
        model,
        config,
        final_kind,
        reason,
        vocab,
        max_len,
        provenance,
        notes,
        targets_argument=probe.targets_argument,
    )


def _declared_kind(
    kind: Optional[str], kind_reason: Optional[str], config: dict[str, Any]
) -> tuple[Optional[str], str]:
    declared = kind if kind is not None else config.get("kind")
    if declared is not None and declared not in KINDS:
        where = "kind=" if kind is not None else "the config's 'kind'"
        raise SourceError(
            f"{where} {declared!r} is not a model kind", f"Use one of {', '.join(KINDS)}, or leave it out to infer it."
        )
    if kind is not None:
        return declared, kind_reason or "declared"
    return declared, "from config 'kind'"


def _seq2seq(model: nn.Module, declared: Optional[str], takes_decoder_input: bool, params: Params) -> bool:
    if (
        declared == "seq2seq"
        and not takes_decoder_input
        and len([p for p in params if p not in ("attention_mask",)]) < 2
    ):
        raise SourceError(
            f"the model is declared seq2seq but {type(model).__name__}.forward takes no decoder input",
            "Add a decoder_input_ids argument to forward, or declare the right kind (decoder or encoder).",
        )
    return declared == "seq2seq" or (declared is None and takes_decoder_input)


def _probe_vocab(
    model: nn.Module, guess: Optional[tuple[str, nn.Embedding]], config_vocab: Optional[int], provenance: Provenance
) -> int:
    from tbkit.sources.config_files import add_keys_hint

    probe_vocab = guess[1].num_embeddings if guess else config_vocab
    if probe_vocab is None:
        raise SourceError(
            f"{type(model).__name__} has no nn.Embedding and the config gives no vocab_size, so tbkit cannot "
            "tell which token ids are valid",
            add_keys_hint(provenance, "vocab_size"),
        )
    return probe_vocab


def _input_vocab(
    model: nn.Module,
    fed: set[str],
    guess: Optional[tuple[str, nn.Embedding]],
    config_vocab: Optional[int],
    notes: list[str],
) -> tuple[Optional[str], int]:
    """(input embedding name, vocabulary size): the embedding that actually received the ids wins
    over name guessing; the config is only compared against it."""
    # seq2seq: both sides were fed the ids; the smaller table bounds them (FSMT: src/tgt vocabularies)
    hits = [(m.num_embeddings, n) for n, m in embeddings(model) if n in fed and not _POSITION_NAME.search(n)]
    hits = hits or [(m.num_embeddings, n) for n, m in embeddings(model) if n in fed]
    hit = min(hits)[1] if hits else None
    token_name, token_emb = (hit, dict(embeddings(model))[hit]) if hit else (guess if guess else (None, None))
    if token_emb is None:
        notes.append(f"no input nn.Embedding found; vocabulary size {config_vocab} taken from the config")
        # set: with no embedding, _probe_vocab took the config's vocab_size (and raised without one)
        return None, cast(int, config_vocab)
    vocab = token_emb.num_embeddings
    if config_vocab is not None and config_vocab != vocab:
        notes.append(
            f"config vocab_size {config_vocab} disagrees with the input embedding {token_name} ({vocab} rows); "
            f"the embedding is used: token ids are drawn from [0, {vocab})"
        )
    return token_name, vocab


def _adapted_forward(probe: LoadedModel, params: Params, notes: list[str]) -> tuple[torch.Tensor, set[str]]:
    """The tiny forward, adapting to a forward that returns the last position only unless it is
    given targets (nanoGPT's ``forward(idx, targets=None)``): then targets are always passed."""
    import torch

    device = next((p.device for p in probe.module.parameters()), torch.device("cpu"))
    ids = torch.tensor([[1 % probe.vocab_size, 2 % probe.vocab_size]], device=device)
    out, fed = _tiny_forward(probe, ids)
    target = next((n for n in _TARGET_NAMES if n in params), None)
    if out.dim() == 3 and tuple(out.shape[:2]) == (1, 1) and target is not None:
        probe.targets_argument = target
        out, fed = _tiny_forward(probe, ids)
        if out.dim() == 3 and tuple(out.shape[:2]) == (1, 2):
            notes.append(
                f"forward returns logits for the last position only unless {target}= is given; tbkit calls it "
                f"with {target}=<the input ids> to get every position (the loss it computes is not used)"
            )
    _check_output_shape(probe.module, out, target)
    return out, fed


def _check_output_shape(model: nn.Module, out: torch.Tensor, target: Optional[str]) -> None:
    if out.dim() == 3 and tuple(out.shape[:2]) == (1, 2):
        return
    cls = type(model).__name__
    hint = "Return one vector per input position (do not pool or flatten the sequence)."
    if out.dim() == 3 and tuple(out.shape[:2]) == (1, 1):
        hint = (
            "It returns the last position only: return every position, or accept targets=None / labels=None and "
            "return all positions when they are given (tbkit then passes them)."
        )
    raise SourceError(
        f"{cls}.forward returned shape {tuple(out.shape)} for token ids of shape (1, 2); tbkit expects "
        "(batch, seq, vocab) logits or (batch, seq, hidden) states",
        hint,
    )


def _infer_kind(model: nn.Module, params: Params, seq2seq: bool, width: int, vocab: int) -> tuple[str, str]:
    """(kind, "inferred: <why>") for a model whose kind was not declared. A decoder with a broken
    mask must still come out as a decoder (so the causal check can fail it): evidence of intent
    (mask-building code, an LM head) counts, not measured behaviour."""
    if seq2seq:
        decoder_input = decoder_input_name(params)
        return "seq2seq", f"inferred: forward takes a decoder input ({decoder_input})"
    hugging_face = _hugging_face_kind(model)
    if hugging_face is not None:
        return hugging_face
    evidence = _causal_evidence(model)
    if evidence:
        return "decoder", f"inferred: {evidence}"
    if width == vocab:
        return "decoder", (
            f"inferred: output size {width} equals the vocabulary (a language-model head); "
            "pass kind='encoder' if this is a masked LM"
        )
    reason = f"inferred: no causal masking in the code and the output is hidden states of size {width}"
    if _has_encoder_and_decoder(model):
        reason += " (it has encoder and decoder stacks, but forward takes no decoder input)"
    return "encoder", reason


def _tiny_forward(loaded: LoadedModel, ids: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """Run forward(B=1, T=2) in eval/no_grad; return (output, names of embeddings fed the ids)."""
    import torch

    model = loaded.module
    fed: set[str] = set()
    hooks: list[RemovableHandle] = []
    for name, emb in embeddings(model):

        def hook(mod: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and args[0].shape == ids.shape and torch.equal(args[0], ids):
                fed.add(_name)

        hooks.append(emb.register_forward_pre_hook(hook))
    was_training = model.training
    cls = type(model).__name__
    try:
        model.eval()
        with torch.no_grad():
            out = loaded.forward(ids)
    except TypeError as err:
        if "holds no logits tensor" in str(err):
            raise SourceError(
                f"the output of {cls}.forward cannot be used: {err}", "Return the logits tensor (B, S, V) from forward."
            ) from None
        raise SourceError(
            f"calling {cls}.forward on token ids of shape (1, 2) raised TypeError: {' '.join(str(err).split())}",
            _library_advice(model) or "Make forward(input_ids, attention_mask=None) accept a (batch, seq) LongTensor.",
        ) from None
    except Exception as err:
        raise SourceError(
            f"the load-time forward of {cls} on token ids of shape (1, 2) raised {type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}{_line_in_model_code(err, model)}",
            _setup_advice(model, err)
            or _library_advice(model)
            or "Fix the model's forward (it must accept a (batch, seq) LongTensor of token ids); "
            "run it yourself once to see the full traceback.",
        ) from None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return out, fed


def _setup_advice(model: nn.Module, err: BaseException) -> str:
    """Advice for a model that needs setting up before its first call (``setup_caches`` and the
    like): tbkit builds it with the file's ``build_model()`` function, which can do that."""
    setup = next((n for n in ("setup_caches", "setup_cache", "init_caches") if callable(getattr(model, n, None))), None)
    if setup is None and "setup" not in str(err).lower():
        return ""
    call = f"model.{setup}(...)" if setup else "the setup it needs"
    return (
        f"{type(model).__name__} needs setting up before its first call: define build_model() in the model file "
        f"that builds it, runs {call} and returns it; tbkit calls build_model() when the file has one (or name it: "
        "FILE.py:build_model)."
    )


def _library_advice(model: nn.Module) -> str:
    """Advice for a model class from an installed library (transformers and the like): its forward is
    not the user's to fix, so what fails is a value in the config or an input that the library expects."""
    package = type(model).__module__.split(".")[0]
    filename = getattr(sys.modules.get(package), "__file__", None) or ""
    if not any(part in ("site-packages", "dist-packages") for part in Path(filename).parts):
        return ""
    version = getattr(sys.modules[package], "__version__", "")
    return (
        f"{type(model).__name__} is {package} {version}'s own code, so the cause is most likely a config value that "
        "does not agree with the others (sizes, per-layer lists, token ids) or an input it needs that tbkit does not "
        f"give (the error names it): check the config against the documentation of {package} for this model type, or "
        "build and set up the model yourself and pass the object to tbkit.run(model)."
    )


def _line_in_model_code(err: BaseException, model: nn.Module) -> str:
    """' (model.py line N)' for the deepest frame in the model's own file, if there is one."""
    import traceback

    filename = getattr(sys.modules.get(type(model).__module__), "__file__", None)
    if not filename:
        return ""
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    return f" (at line {lines[-1]} of {filename.rsplit('/', 1)[-1].rstrip('>')})" if lines else ""
