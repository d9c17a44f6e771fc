"""Hugging Face configs: a config.json with ``model_type`` is built with ``transformers``'
``Auto…from_config`` — random weights, nothing downloaded — and the kind comes from the
architecture's head."""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Optional

from tbkit.errors import SourceError, shorten

if TYPE_CHECKING:
    from torch import nn

# (head name suffixes, Auto class, kind) — the first match wins
_HEADS = (
    (("ForConditionalGeneration", "ForSeq2SeqLM"), "AutoModelForSeq2SeqLM", "seq2seq"),
    (("ForCausalLM", "LMHeadModel"), "AutoModelForCausalLM", "decoder"),
    (("ForMaskedLM",), "AutoModelForMaskedLM", "encoder"),
)
_MAPPINGS = (
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM", "seq2seq"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM", "encoder"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM", "decoder"),
)


def is_hf_config(config: dict[str, Any]) -> bool:
    return isinstance(config.get("model_type"), str)


def _transformers(where: str) -> types.ModuleType:
    try:
        import transformers
    except ImportError:
        raise SourceError(
            f"{where} is a Hugging Face config (model_type), but the transformers package is not installed "
            "in this Python, so the model cannot be built from it",
            "Install it through the gate with tbkit.install('transformers'), or load model code instead.",
        ) from None
    return transformers


def build(
    config: dict[str, Any], where: str, class_name: Optional[str], notes: list[str]
) -> tuple[nn.Module, Optional[str], Optional[str]]:
    """(model, kind, kind reason) from a Hugging Face config dict; seeded random init. The kind is
    None (to be inferred) for an architecture without a recognised head."""
    import torch

    transformers = _transformers(where)
    model_type = config["model_type"]
    rest = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **rest)
    except Exception as err:  # configs raise anything (XLNet: NotImplementedError for a length): one paragraph
        raise SourceError(
            f"{where} has model_type {model_type!r}, which this transformers {transformers.__version__} cannot "
            f"build ({shorten(' '.join(str(err).split()), 200)})",
            "Check model_type (e.g. gpt2, llama, bert, t5), or upgrade transformers through tbkit.install.",
        ) from None
    auto, kind, arch = _choose(transformers, config, class_name, where)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        try:
            model = _instantiate(auto, hf_config)
        except Exception as err:
            raise SourceError(
                f"building {arch} from {where} raised {type(err).__name__}: {shorten(' '.join(str(err).split()), 300)}",
                "Check the config values (sizes must be consistent, e.g. hidden size divisible by the heads).",
            ) from None
    model.eval()
    notes.append(f"built with transformers {transformers.__version__} from_config ({arch}, random weights, offline)")
    return model, kind, (f"from the Hugging Face architecture {arch}" if kind else None)


def _instantiate(cls: type, hf_config: Any) -> Any:  # a transformers model class and config
    for method in ("from_config", "_from_config"):  # Auto classes / concrete model classes
        if hasattr(cls, method):
            return getattr(cls, method)(hf_config)
    return cls(hf_config)


def _choose(
    transformers: types.ModuleType, config: dict[str, Any], class_name: Optional[str], where: str
) -> tuple[type, Optional[str], str]:
    """(class or Auto class, kind, architecture name)."""
    archs = config.get("architectures")
    wanted = class_name or (archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None)
    if wanted is not None:
        cls = getattr(transformers, wanted, None)
        if cls is None:
            raise SourceError(
                f"{where} names the architecture {wanted!r}, which transformers {transformers.__version__} does not have",
                "Fix architectures in config.json (e.g. GPT2LMHeadModel), or leave it out to pick the LM head.",
            )
        kind = next((k for suffixes, _, k in _HEADS if wanted.endswith(suffixes)), None)  # None: inferred
        return cls, kind, wanted
    from transformers.models.auto import modeling_auto

    for mapping, auto_name, kind in _MAPPINGS:
        if config["model_type"] in getattr(modeling_auto, mapping, {}):
            return getattr(transformers, auto_name), kind, f"{auto_name} for {config['model_type']}"
    return transformers.AutoModel, None, f"AutoModel for {config['model_type']}"
