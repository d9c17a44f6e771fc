"""Training data for Tier 3: turn what the user gives (a text file, token ids) into fixed-length
blocks with an attention mask, split train/validation, and compute the causal-LM loss.

Why this module exists: the predecessor counted padding in the loss while ignoring every real
token 0. Here padding is known from the attention mask only, and padded label positions are set
to ``-100`` (``ignore_index``); token id 0 is an ordinary token.

Synthetic data exists for trying the checks out, is produced only when asked for, and is labelled
``synthetic=True`` everywhere it travels.

torch and numpy are imported inside functions: ``import tbkit`` must stay light.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tbkit.errors import UsageError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # labels at padded positions; never token 0


# ---- tokenizer -----------------------------------------------------------------------------
@dataclass
class TextTokenizer:
    """A character- or whitespace-level tokenizer built from one text, capped to the model's vocabulary.

    Symbols get ids by frequency (most frequent first). When the text has more distinct symbols
    than the model has ids, the most frequent ``vocab_size - 1`` keep their own id and the rest
    share the last id, ``<unk>``; ``note`` says how much of the text that touched.
    """

    level: str  # "char" | "word"
    symbols: list[str]  # id -> symbol
    unk_id: Optional[int]
    note: str = ""

    def __post_init__(self) -> None:
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    def encode(self, text: str) -> list[Optional[int]]:
        units = text if self.level == "char" else text.split()
        unk = self.unk_id
        return [self._ids.get(u, unk) for u in units]

    def decode(self, ids: Iterable[int]) -> str:
        out = [self.symbols[i] if i < len(self.symbols) else "<unk>" for i in ids]
        return "".join(out) if self.level == "char" else " ".join(out)


def build_tokenizer(text: str, vocab_size: int, level: str = "char", source: str = "the text") -> TextTokenizer:
    if level not in ("char", "word"):
        raise UsageError(f"tokenizer level {level!r} is not known", "Use level='char' or level='word'.")
    units = list(text) if level == "char" else text.split()
    if len(units) < 2:
        raise UsageError(
            f"{source} holds fewer than 2 {level} tokens, nothing to train on", "Give a text file with some content."
        )
    counts = Counter(units)
    ranked = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    what = "characters" if level == "char" else "whitespace-separated words"
    if len(ranked) <= vocab_size:
        note = (
            f"{level}-level tokenizer built from {source}: {len(ranked)} distinct {what} -> ids "
            f"0-{len(ranked) - 1} of the model's {vocab_size}"
        )
        return TextTokenizer(level, ranked, None, note)
    kept = ranked[: vocab_size - 1]
    dropped = sum(counts[s] for s in ranked[vocab_size - 1 :])
    note = (
        f"{level}-level tokenizer built from {source}: {len(ranked)} distinct {what}, more than the "
        f"model's vocabulary of {vocab_size}; the {vocab_size - 1} most frequent keep their own id and "
        f"the other {len(ranked) - len(kept)} share <unk> = id {vocab_size - 1} "
        f"({100.0 * dropped / len(units):.1f}% of the tokens)"
    )
    return TextTokenizer(level, kept + ["<unk>"], vocab_size - 1, note)


# ---- token blocks ----------------------------------------------------------------------------
@dataclass
class TokenData:
    """(N, T) token ids and their attention mask (1 real, 0 padding), and what they are."""

    input_ids: torch.Tensor  # torch.LongTensor (N, T)
    attention_mask: torch.Tensor  # torch.LongTensor (N, T)
    description: str
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    tokenizer: Optional[TextTokenizer] = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def subset(self, index: torch.Tensor) -> TokenData:
        return TokenData(
            self.input_ids[index],
            self.attention_mask[index],
            self.description,
            self.synthetic,
            list(self.notes),
            self.tokenizer,
        )


def prepare(
    data: Any,
    *,
    vocab_size: int,
    block_len: int,
    pad_id: int = 0,
    synthetic: bool = False,
    seed: int = 0,
    synthetic_blocks: int = 64,
    level: str = "char",
) -> TokenData:
    """Whatever the user gave as ``data`` -> ``TokenData`` of blocks at most ``block_len`` long.

    - ``str`` / ``Path``: a UTF-8 text file, tokenized by ``build_tokenizer``.
    - a tensor / array / nested list of ids: 1-D is a stream, cut into blocks; 2-D is (N, T) rows,
      rows longer than ``block_len`` are cut into blocks.
    - a dict with ``input_ids`` (and optionally ``attention_mask``), or a tuple ``(ids, mask)``.
    - ``None`` with ``synthetic=True``: a seeded Markov-chain corpus, labelled synthetic.
    """
    if block_len < 2:
        raise UsageError(f"block length {block_len} is too short for a next-token loss", "Use max_len of 2 or more.")
    if data is None:
        if not synthetic:
            raise UsageError(
                "no training data given",
                "Pass data=<text file or token ids> (CLI: --data FILE), or synthetic=True to try it "
                "on synthetic data, labelled so.",
            )
        return synthetic_data(vocab_size, synthetic_blocks, block_len, seed)
    if synthetic:
        raise UsageError(
            "both data and synthetic=True were given", "Pass either your data or synthetic=True, not both."
        )
    if isinstance(data, (str, Path)):
        return _from_text_file(Path(data), vocab_size, block_len, pad_id, level)
    mask = None
    if isinstance(data, dict):
        if "input_ids" not in data:
            raise UsageError("the data dict has no 'input_ids'", "Pass {'input_ids': ..., 'attention_mask': ...}.")
        ids, mask = data["input_ids"], data.get("attention_mask")
    elif isinstance(data, tuple) and len(data) == 2:
        ids, mask = data
    else:
        ids = data
    return _from_ids(ids, mask, vocab_size, block_len, pad_id)


def _from_text_file(path: Path, vocab_size: int, block_len: int, pad_id: int, level: str) -> TokenData:
    import torch

    if not path.is_file():
        raise UsageError(f"training data file {path} does not exist", "Check the path given as data / --data.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"training data file {path} is not UTF-8 text ({err.reason} at byte {err.start})",
            "Give a UTF-8 text file, or token ids as an array.",
        ) from None
    tok = build_tokenizer(text, vocab_size, level, source=path.name)
    stream = torch.tensor(tok.encode(text), dtype=torch.long)
    ids, mask = _blocks(stream, block_len, pad_id)
    td = TokenData(
        ids,
        mask,
        f"text file {path} ({len(stream)} tokens, {len(ids)} blocks of {block_len})",
        notes=[tok.note],
        tokenizer=tok,
    )
    return td


def _from_ids(ids: Any, mask: Any, vocab_size: int, block_len: int, pad_id: int) -> TokenData:
    t = _as_long_tensor(ids, type(ids).__name__)
    m = _checked_mask(mask, t)
    _check_id_range(t if m is None else t[m != 0], vocab_size)
    if t.dim() == 1:
        stream = t if m is None else t[m != 0]
        out_ids, out_mask = _blocks(stream, block_len, pad_id)
        desc = f"token stream of {len(stream)} ids ({len(out_ids)} blocks of {block_len})"
    else:
        out_ids, out_mask = _row_blocks(t, m, block_len, pad_id)
        desc = f"token ids ({t.shape[0]} rows of {t.shape[1]} -> {len(out_ids)} blocks of at most {block_len})"
    if len(out_ids) == 0:
        raise UsageError("the token ids hold no block with two real tokens", "Give longer sequences.")
    return TokenData(out_ids, out_mask, desc)


def _as_long_tensor(ids: Any, what: str) -> torch.Tensor:
    """Integer ids of shape (N, T) or (L,) as a CPU LongTensor; UsageError otherwise."""
    import numpy as np
    import torch

    try:
        t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"the data ({what}) cannot be read as token ids: {err}",
            "Pass a text file path, or an integer array/tensor of shape (N, T) or (L,).",
        ) from None
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise UsageError(
            f"the token ids have dtype {t.dtype}, not an integer type",
            "Pass integer token ids (e.g. torch.long or numpy int64).",
        )
    t = t.detach().to("cpu", torch.long)
    if t.numel() == 0 or t.dim() not in (1, 2):
        raise UsageError(
            f"the token ids have shape {tuple(t.shape)}; expected (N, T) or a 1-D stream",
            "Pass a non-empty array of shape (N, T) or (L,).",
        )
    return t


def _checked_mask(mask: Any, t: torch.Tensor) -> Optional[torch.Tensor]:
    import numpy as np
    import torch

    if mask is None:
        return None
    m = (mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))).detach().to("cpu", torch.long)
    if m.shape != t.shape:
        raise UsageError(
            f"attention_mask shape {tuple(m.shape)} differs from input_ids shape {tuple(t.shape)}",
            "Give a mask of the same shape (1 = real token, 0 = padding).",
        )
    return m


def _check_id_range(real: torch.Tensor, vocab_size: int) -> None:
    bad = (real < 0) | (real >= vocab_size)
    if bool(bad.any()):
        raise UsageError(
            f"{int(bad.sum())} token ids lie outside [0, {vocab_size}) (min {int(real.min())}, max "
            f"{int(real.max())}); the model's input embedding has {vocab_size} rows",
            "Re-tokenize with a vocabulary that fits the model, or build the model with a larger vocabulary.",
        )


def _row_blocks(
    t: torch.Tensor, m: Optional[torch.Tensor], block_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) rows -> blocks of at most ``block_len``; rows longer are cut, the tail of each row
    becoming a padded block; blocks with fewer than two real tokens are dropped."""
    import torch

    m = torch.ones_like(t) if m is None else (m != 0).long()
    if t.shape[1] <= block_len:
        out_ids, out_mask = t.clone(), m.clone()
    else:
        pieces_i, pieces_m = [], []
        for start in range(0, t.shape[1], block_len):
            pi, pm = t[:, start : start + block_len], m[:, start : start + block_len]
            if pi.shape[1] < block_len:
                pad = block_len - pi.shape[1]
                pi = torch.nn.functional.pad(pi, (0, pad), value=pad_id)
                pm = torch.nn.functional.pad(pm, (0, pad), value=0)
            pieces_i.append(pi)
            pieces_m.append(pm)
        out_ids, out_mask = torch.cat(pieces_i), torch.cat(pieces_m)
    out_ids = out_ids.masked_fill(out_mask == 0, pad_id)
    keep = out_mask.sum(1) >= 2  # a block needs two real tokens for one prediction
    return out_ids[keep], out_mask[keep]


def _blocks(stream: torch.Tensor, block_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-D stream -> (N, block_len) blocks; the last partial block is right-padded (mask 0)."""
    import torch

    n_full = len(stream) // block_len
    ids = [stream[: n_full * block_len].view(n_full, block_len)]
    mask = [torch.ones(n_full, block_len, dtype=torch.long)]
    rest = stream[n_full * block_len :]
    if len(rest) >= 2:
        tail = torch.full((1, block_len), pad_id, dtype=torch.long)
        tail[0, : len(rest)] = rest
        tail_mask = torch.zeros(1, block_len, dtype=torch.long)
        tail_mask[0, : len(rest)] = 1
        ids.append(tail)
        mask.append(tail_mask)
    return torch.cat(ids), torch.cat(mask)


def split(data: TokenData, val_fraction: float, seed: int = 0) -> tuple[TokenData, TokenData]:
    """Seeded split into (train, val) by block; both keep at least one block."""
    import torch

    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction {val_fraction} is not between 0 and 1", "Use e.g. val_fraction=0.1.")
    n = len(data)
    if n < 2:
        raise UsageError(
            f"the data make only {n} block(s); a train/validation split needs 2 or more",
            "Give more data or a smaller max_len.",
        )
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


# ---- synthetic ---------------------------------------------------------------------------------
def synthetic_data(vocab_size: int, n_blocks: int, block_len: int, seed: int = 0) -> TokenData:
    """A seeded first-order Markov chain over up to 64 ids: each id is followed by one of two
    favoured successors 90% of the time. Learnable (a model should get well below the unigram
    entropy) and cheap; the notes carry the entropies so results can be read against them."""
    import torch

    k = min(vocab_size, 64)
    g = torch.Generator().manual_seed(10_000 + seed)
    trans = torch.full((k, k), 0.1 / k)
    succ = torch.stack([torch.randperm(k, generator=g)[:2] for _ in range(k)])
    for i in range(k):
        trans[i, succ[i]] += 0.45
    trans = trans / trans.sum(1, keepdim=True)
    length = n_blocks * block_len
    stream = torch.empty(length, dtype=torch.long)
    state = int(torch.randint(k, (1,), generator=g))
    draws = torch.rand(length, generator=g)
    cdf = trans.cumsum(1)
    for i in range(length):
        stream[i] = state
        state = min(int(torch.searchsorted(cdf[state], draws[i])), k - 1)
    # entropy rate under the stationary distribution (power iteration)
    pi = torch.full((k,), 1.0 / k)
    for _ in range(200):
        pi = pi @ trans
    h_cond = float(-(pi[:, None] * trans * trans.log()).sum())
    h_uni = float(-(pi * pi.log()).sum())
    note = (
        f"SYNTHETIC data (asked for): first-order Markov chain over {k} of {vocab_size} ids, seed {seed}; "
        f"entropy rate {h_cond:.3f} nats, unigram entropy {h_uni:.3f} nats"
    )
    ids = stream.view(n_blocks, block_len)
    return TokenData(
        ids,
        torch.ones_like(ids),
        f"synthetic Markov chain, {n_blocks} blocks of {block_len}",
        synthetic=True,
        notes=[note],
    )


# ---- losses ------------------------------------------------------------------------------------
def lm_labels(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token labels for positions 0..T-2; padded targets are IGNORE_INDEX (not token 0)."""
    labels = input_ids[:, 1:].clone()
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    return labels


def lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Causal-LM cross entropy: logits at t predict input_ids at t+1; padding is ignored."""
    import torch.nn.functional as F

    labels = lm_labels(input_ids, attention_mask)
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
    )


def unigram_cross_entropy(train: TokenData, val: TokenData, vocab_size: int) -> float:
    """Cross entropy (nats/token) on val's predicted positions of the add-one-smoothed unigram
    distribution of train's tokens. Add-one so an id unseen in train costs finite loss."""
    import torch

    counts = torch.bincount(train.input_ids[train.attention_mask != 0], minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    labels = lm_labels(val.input_ids, val.attention_mask)
    targets = labels[labels != IGNORE_INDEX]
    return float(-logp[targets].mean())


def uniform_cross_entropy(vocab_size: int) -> float:
    return math.log(vocab_size)


# ---- what a run trains on ------------------------------------------------------------------------
def block_length(loaded: Any, max_len: Optional[int]) -> int:
    """The block length: ``max_len`` (checked against the model's limit), else min(limit, 128)."""
    limit = loaded.max_len
    if max_len is None:
        return min(limit, 128) if limit else 128
    if limit is not None and max_len > limit:
        raise UsageError(
            f"max_len {max_len} exceeds the model's maximum sequence length {limit}", f"Use max_len={limit} or less."
        )
    return int(max_len)


def training_data(
    loaded: Any, data: Any, *, max_len: Optional[int], val_fraction: float, synthetic: bool, seed: int, level: str
) -> tuple[TokenData, TokenData, TokenData, int]:
    """(TokenData, train split, validation split, block length) for ``loaded`` from what the user gave."""
    block = block_length(loaded, max_len)
    td = prepare(
        data,
        vocab_size=loaded.vocab_size,
        block_len=block,
        pad_id=loaded.pad_token_id,
        synthetic=synthetic,
        seed=seed,
        level=level,
    )
    train_data, val_data = split(td, val_fraction, seed)
    return td, train_data, val_data, block
