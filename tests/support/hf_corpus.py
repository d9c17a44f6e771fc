"""The Hugging Face corpus: every text model type of the installed ``transformers`` that has a
causal LM, masked LM or seq-to-seq LM head, built tiny from a bare ``config.json`` (random weights,
nothing downloaded) and run through Tier 1 as a user would (``tbkit.run(folder)``).

``tiny_config(model_type)`` writes only the size keys the type's own config has (hidden 64,
2 layers, 2 heads, vocab 512, 130 position rows). ``run_type`` returns an ``Outcome``: loaded or
not (the load error, one paragraph), and every FAIL/ERROR row. ``KNOWN_FAILS`` maps a type to the
real property of that model, as built, that its FAIL names (verified by hand; each one is a fact
about the model, not a convention tbkit guessed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
)
# size keys set when the type's config has them
TINY = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "n_embed", "d_embed"), 64),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers"), 2),
    **dict.fromkeys(("n_layers", "num_decoder_layers", "encoder_layers", "num_encoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "encoder_attention_heads"), 2),
    **dict.fromkeys(("decoder_attention_heads", "num_heads", "num_key_value_heads"), 2),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner"), 128),
    **dict.fromkeys(("vocab_size", "src_vocab_size"), 512),
    "tgt_vocab_size": 384,  # FSMT: separate source / target vocabularies
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 130),
    "head_dim": 32,
    "embedding_size": 64,
}
# special token ids a type's defaults put past the tiny vocabulary (Whisper's pad 50256)
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")
TOKEN_IDS += ("cls_token_id", "mask_token_id", "unk_token_id")
# multi-head latent attention (DeepSeek-V2/V3 and its descendants): head sizes that agree with each other
# and with the tiny heads (their head_dim is the rotary part, qk_rope_head_dim)
LATENT_ATTENTION = {
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 16,
    "qk_head_dim": 32,
    "head_dim": 16,
    "v_head_dim": 32,
    "kv_lora_rank": 32,
    "q_lora_rank": 32,
}
# per-type keys that must agree with the tiny sizes
EXTRA = {
    "reformer": {"axial_pos_embds_dim": [32, 32], "axial_pos_shape": [8, 16], "max_position_embeddings": 128},
    "codegen": {"rotary_dim": 16},  # defaults to 64, more than a tiny head of 32
    "gptj": {"rotary_dim": 16},
}
# Whole-sweep speed: the speed check never FAILs and dominates the time of a tiny model.
CHECKS = "summary,conventions,shape,batch_equivalence,causal,padding,stability,determinism,init,gradient_flow,memory"

# type -> the real property its FAIL names (checked by hand on the model as built)
KNOWN_FAILS: dict = {
    "bert-generation": (
        "causal: BertGenerationDecoder's default config has is_decoder=False, so the model built as a "
        "causal LM attends both ways (a real property of that config)"
    ),
    "xlnet": (
        "causal: XLNetLMHeadModel without a perm_mask (attn_type 'bi', its default) lets every position see every "
        "other; its causal order comes only from the permutation mask the caller gives"
    ),
    "convbert": (
        "padding: ConvBERT's span-based dynamic convolution (nn.functional.unfold over the sequence, "
        "modeling_convbert.py) is not masked, so pad tokens next to real ones move their outputs"
    ),
    "cpmant": (
        "causal: CPM-Ant is a prefix LM; its context flags default to all ones (modeling_cpmant.py), and context "
        "tokens attend both ways"
    ),
    "prophetnet": (
        "causal: ProphetNet's decoder output at position 0 moves by ~2.5e-6 when decoder token 1 changes (measured "
        "with transformers alone, no tbkit in the loop): a small real dependence of the first position on the next"
    ),
    "reformer": (
        "gradient_flow: in training mode Reformer's axial position embeddings require the sequence length to be "
        "exactly prod(axial_pos_shape) (ValueError), so a training step at another length fails"
    ),
    "yoso": (
        "padding: YosoSelfAttention turns the 0/1 attention_mask into int(1 + mask / 10000), which is 1 for real "
        "and padded tokens alike, so padding is attended (modeling_yoso.py)"
    ),
    "mobilebert": (
        "padding: MobileBERT's trigram input (config.trigram_input, modeling_mobilebert.py) concatenates the "
        "embeddings of tokens t-1, t and t+1, so the pad after the last real token moves its output (0.092 "
        "relative when the pad content changes)"
    ),
    "mt5": (
        "init: MT5's _init_weights draws the untied lm_head from N(0, 1.0) (modeling_mt5.py), so a fresh model's "
        "logits are far from uniform (cross-entropy ~40 against ln V = 6.2, also with transformers alone)"
    ),
    "mamba2": (
        "init: Mamba2's default config keeps hidden_size 4096 and initializer_range 0.1 for an untied lm_head, so "
        "fresh logits have std ~6.4 (cross-entropy 20.1 against ln V = 6.2 with transformers alone, seed 0)"
    ),
}
# The fast subset in the default test run: an offset position table (RoBERTa), a decoder, two
# seq2seq models (one with separate source / target vocabularies) and a masked LM.
FAST_TYPES = ("roberta", "gpt2", "bart", "fsmt", "bert")


def text_model_types() -> list:
    """Types in the three LM mappings whose config is a single text config (no vision/audio parts)."""
    from transformers.models.auto import modeling_auto

    types: set = set()
    for mapping in MAPPINGS:
        types |= set(getattr(modeling_auto, mapping, {}))
    return sorted(types)


def tiny_config(model_type: str) -> Optional[dict]:
    """The bare config.json for a tiny ``model_type`` (None: not a text-only config)."""
    import transformers

    try:
        default = transformers.AutoConfig.for_model(model_type)
    except Exception:
        return None
    if getattr(default, "sub_configs", None):
        return None  # multimodal / composite (vision, audio, encoder + decoder configs)
    config = {"model_type": model_type}
    for key, value in TINY.items():
        if _has(default, key):
            try:  # some attributes refuse a value (XLNet has no length limit to set)
                transformers.AutoConfig.for_model(model_type, **{key: value})
            except Exception:
                continue
            config[key] = value
    if _has(default, "qk_rope_head_dim"):
        config.update({key: value for key, value in LATENT_ATTENTION.items() if _has(default, key)})
    for i, key in enumerate(TOKEN_IDS):
        value = getattr(default, key, None) if _has(default, key) else None
        if isinstance(value, int) and value >= TINY["vocab_size"]:
            config[key] = i + 1
    config.update(EXTRA.get(model_type, {}))
    return config


def _has(config, key: str) -> bool:
    try:  # per-layer configs raise a RuntimeError for a global attribute
        return hasattr(config, key)
    except Exception:
        return False


@dataclass
class Outcome:
    model_type: str
    loaded: bool = False
    load_error: str = ""
    fails: list = field(default_factory=list)  # (check, metric, detail) of FAIL / ERROR rows
    conventions: list = field(default_factory=list)  # (metric, detail) of the conventions rows

    @property
    def clean(self) -> bool:
        return self.loaded and not self.fails


def run_type(model_type: str, folder: Path, checks: str = CHECKS) -> Optional[Outcome]:
    """Tier 1 on a tiny ``model_type`` from a bare config.json in ``folder`` (None: not a text type)."""
    import tbkit
    from tbkit.errors import TbkitError

    config = tiny_config(model_type)
    if config is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    outcome = Outcome(model_type)
    try:
        report = tbkit.run(
            str(folder), checks=checks, out_dir=folder / "report", progress=False, stream=_Null(), device="cpu"
        )
    except TbkitError as err:
        outcome.load_error = " ".join(str(err).split())
        return outcome
    outcome.loaded = True
    for r in report.rows:
        if r.status.value in ("FAIL", "ERROR"):
            outcome.fails.append((r.check, r.metric, (r.detail or "")[:400]))
        if r.check == "conventions":
            outcome.conventions.append((r.metric, r.detail))
    return outcome


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
