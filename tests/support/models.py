"""The test model zoo: small healthy transformers and deliberately broken ones.

Import from any test (tests/ is on sys.path through conftest):
    from models import HealthyDecoder, loaded
    lm = loaded(HealthyDecoder())          # a tbkit LoadedModel, kind taken from the class

Every model is tiny (vocab 97, d 32, 2 heads, 2 layers, max_len 32) so a full Tier 1 run takes
seconds on a CPU. Each broken model carries ``BROKEN_BY``: the check ids expected to flag it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 97  # prime and not a power of two: catches code that assumes a "round" vocabulary
D_MODEL = 32
HEADS = 2
LAYERS = 2
MAX_LEN = 32

# A finite "minus infinity": a query whose keys are all masked (a padded row) then averages
# instead of producing NaN, which would leak into real positions in the next layer.
MASKED = -1e9


# --------------------------------------------------------------------------------------------
# healthy models
# --------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm block: nn.MultiheadAttention with an explicit additive mask, then an MLP."""

    def __init__(self, d: int = D_MODEL, heads: int = HEADS, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=bias, need_weights=False)
        x = x + a
        return x + self.ffn(self.ln2(x))


class HealthyDecoder(nn.Module):
    """A GPT-style causal LM: learned positions, causal + key-padding mask, tied-free LM head."""

    KIND = "decoder"
    # 0: position t sees keys <= t. A leaky mask (see LeakyMaskDecoder) raises it.
    causal_offset = 0

    def __init__(
        self, vocab: int = VOCAB, d: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS, max_len: int = MAX_LEN
    ) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def attention_bias(self, T: int, attention_mask, device) -> torch.Tensor:
        """(B*heads, T, T) additive mask: causal, plus padded keys hidden when a mask is given."""
        allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril(diagonal=self.causal_offset)
        allowed = allowed.unsqueeze(0)
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
        bias = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, MASKED)
        B = attention_mask.shape[0] if attention_mask is not None else 1
        return bias.expand(B, T, T).repeat_interleave(self.heads, dim=0)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        return self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        x = self.embed(input_ids)
        bias = self.attention_bias(T, attention_mask, input_ids.device)
        if bias.shape[0] != B * self.heads:
            bias = bias[: self.heads].repeat(B, 1, 1)
        for block in self.blocks:
            x = block(x, bias)
        return self.head(self.ln_f(x))


class HealthyEncoder(nn.Module):
    """A BERT-style encoder on torch's nn.TransformerEncoder, honouring the padding mask.
    Returns hidden states (B, T, d)."""

    KIND = "encoder"

    def __init__(
        self, vocab: int = VOCAB, d: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS, max_len: int = MAX_LEN
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        pad = None if attention_mask is None else ~attention_mask.bool()
        return self.ln(self.encoder(x, src_key_padding_mask=self.key_padding(pad)))

    def key_padding(self, pad):
        return pad


class HealthySeq2Seq(nn.Module):
    """Encoder-decoder on torch's nn.Transformer: causal target mask, source padding honoured in
    the encoder and in cross-attention. ``forward(input_ids, decoder_input_ids, attention_mask)``."""

    KIND = "seq2seq"

    def __init__(
        self, vocab: int = VOCAB, d: int = D_MODEL, heads: int = HEADS, layers: int = 1, max_len: int = MAX_LEN
    ) -> None:
        super().__init__()
        self.src_tok = nn.Embedding(vocab, d)
        self.tgt_tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.transformer = nn.Transformer(d, heads, layers, layers, 4 * d, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(
        self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        dev = input_ids.device
        src = self.src_tok(input_ids) + self.pos(torch.arange(input_ids.shape[1], device=dev))
        T = decoder_input_ids.shape[1]
        tgt = self.tgt_tok(decoder_input_ids) + self.pos(torch.arange(T, device=dev))
        pad = None if attention_mask is None else ~attention_mask.bool()
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=dev)
        out = self.transformer(
            src, tgt, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad, tgt_is_causal=True
        )
        return self.head(out)


# --------------------------------------------------------------------------------------------
# broken models: each names the checks that must flag it
# --------------------------------------------------------------------------------------------
class LeakyMaskDecoder(HealthyDecoder):
    """Off-by-one causal mask: position t also sees t+1."""

    BROKEN_BY = ("causal",)
    causal_offset = 1


class IsCausalNoMaskDecoder(nn.Module):
    """Relies on ``is_causal=True`` without passing a mask (docs/checks_tier1.md, "Known traps"): torch raises
    in grad mode, and under eval + no_grad the fused fast path silently ignores causality."""

    KIND = "decoder"
    BROKEN_BY = ("causal",)

    def __init__(
        self, vocab: int = VOCAB, d: int = D_MODEL, heads: int = HEADS, layers: int = LAYERS, max_len: int = MAX_LEN
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        pad = None if attention_mask is None else ~attention_mask.bool()
        return self.head(self.layers(x, src_key_padding_mask=pad, is_causal=True))


class PaddingIgnoringEncoder(HealthyEncoder):
    """Takes an attention_mask and ignores it: padding leaks into real positions."""

    BROKEN_BY = ("padding",)

    def key_padding(self, pad):
        return None


class UnusedLayerDecoder(HealthyDecoder):
    """Defines a projection that forward never calls: its parameters get no gradient."""

    BROKEN_BY = ("gradient_flow",)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.unused_proj = nn.Linear(D_MODEL, D_MODEL)


class NaNForLongInputsDecoder(HealthyDecoder):
    """A length-dependent rescaling that turns NaN beyond 3/4 of max_len (like a badly
    extrapolated positional scaling): fine on short inputs, NaN at max_len."""

    BROKEN_BY = ("stability",)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = super().embed(input_ids)
        headroom = torch.tensor(float(self.pos.num_embeddings * 3 // 4 - input_ids.shape[1]))
        return x * (1 + 0 * headroom.sqrt())  # sqrt of a negative number: NaN times 0 is NaN


class DropoutInEvalDecoder(HealthyDecoder):
    """Calls F.dropout(training=True) by hand, so eval() does not switch it off."""

    BROKEN_BY = ("determinism",)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.dropout(super().embed(input_ids), p=0.1, training=True)


class BatchMixingDecoder(HealthyDecoder):
    """Adds the batch mean to every row (a hand-rolled batch norm): rows influence each other."""

    BROKEN_BY = ("batch_equivalence",)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = super().embed(input_ids)
        return x + 0.5 * x.mean(dim=0, keepdim=True)


class WildInitDecoder(HealthyDecoder):
    """Every weight matrix drawn with std 3: logits explode and the initial loss is far above ln V."""

    BROKEN_BY = ("init",)

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, 3.0)


HEALTHY = (HealthyDecoder, HealthyEncoder, HealthySeq2Seq)
BROKEN = (
    LeakyMaskDecoder,
    IsCausalNoMaskDecoder,
    PaddingIgnoringEncoder,
    UnusedLayerDecoder,
    NaNForLongInputsDecoder,
    DropoutInEvalDecoder,
    BatchMixingDecoder,
    WildInitDecoder,
)


# --------------------------------------------------------------------------------------------
# models that exercise how the checks treat the model (issue 13)
# --------------------------------------------------------------------------------------------
class MinGPTBlock(nn.Module):
    """minGPT's block, as published: the MLP is called through a lambda that closes over the
    original ``self.mlp`` ModuleDict, so a ``copy.deepcopy`` of the model still runs the
    ORIGINAL's MLP (the copy's lambda is the same function object, closing over the same dict)."""

    def __init__(self, d: int = D_MODEL, heads: int = HEADS) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d, 4 * d), c_proj=nn.Linear(4 * d, d), act=nn.GELU()))
        m = self.mlp
        self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))  # closes over the original submodule

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        a, _ = self.attn(h, h, h, attn_mask=bias, need_weights=False)
        x = x + a
        return x + self.mlpf(self.ln_2(x))


class MinGPTClosureDecoder(HealthyDecoder):
    """HealthyDecoder with minGPT's closure-over-submodule blocks: healthy, but a deepcopy lies."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.blocks = nn.ModuleList(MinGPTBlock(self.tok.embedding_dim, self.heads) for _ in range(len(self.blocks)))


class MaskKwargDecoder(HealthyDecoder):
    """Healthy, but takes its padding mask as ``mask=`` (1 for real tokens)."""

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(input_ids, attention_mask=mask)


class KeyPaddingMaskEncoder(HealthyEncoder):
    """Healthy, but takes torch's ``src_key_padding_mask=`` (True at padding) directly."""

    def forward(self, input_ids: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if src_key_padding_mask is None else (~src_key_padding_mask.bool()).long()
        return super().forward(input_ids, attention_mask=mask)


class LMHeadEncoder(HealthyEncoder):
    """A bidirectional encoder with an LM head: its output width equals the vocabulary, so a kind
    inferred from the output alone says "decoder" — and causal then fails it."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.head = nn.Linear(self.tok.embedding_dim, self.tok.num_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(super().forward(input_ids, attention_mask))


_AS_LOADED = object()


def loaded(module: nn.Module, kind: str | None = None, *, max_len=_AS_LOADED, vocab_size: int | None = None):
    """A tbkit LoadedModel for a zoo model (or any small module), through ``tbkit.load`` as a user
    gets it; ``kind`` defaults to the class's KIND, and ``max_len`` / ``vocab_size`` may be
    overridden to exercise the checks' handling of other model facts."""
    import dataclasses

    import tbkit

    kind = kind or getattr(type(module), "KIND", None)
    if kind is None:
        raise ValueError(f"say which kind {type(module).__name__} is")
    lm = tbkit.load(module, kind=kind)
    changes = {}
    if max_len is not _AS_LOADED:
        changes["max_len"] = max_len
    if vocab_size is not None:
        changes["vocab_size"] = int(vocab_size)
    return dataclasses.replace(lm, **changes) if changes else lm


def build(cls, seed: int = 0, **kw) -> nn.Module:
    """A zoo model built under a fixed seed (weights do not depend on test order)."""
    torch.manual_seed(seed)
    return cls(**kw)
