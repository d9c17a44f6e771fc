"""tiny_gpt: the bundled example, written the way Transformer Builder exports a model.

A GPT-style causal decoder small enough for a CPU: vocabulary 512, width 64, 2 pre-norm blocks
of 4 heads, learned positions up to 64 tokens. Like an export it has a parameterless
``__init__`` with hard-coded sizes and submodules named ``{nodeType}_{index}``.

Masking is done properly, because this model is what `tbkit run` checks when no model is given:
- a causal mask is always passed to ``nn.MultiheadAttention`` (``is_causal`` alone is silently
  ignored by fused paths under ``no_grad``);
- ``attention_mask`` (1 = real token, 0 = padding) hides padded keys;
- every query may always see itself, so no attention row is ever fully masked. Real queries never
  see padded keys either way; this only keeps padded (or all-padding) rows finite instead of NaN.
"""

import math
from typing import Optional

import torch
import torch.nn as nn


class CustomTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vocab_size = 512
        self.d_model = 64
        self.nhead = 4
        self.max_len = 64

        self.embedding_0_token = nn.Embedding(512, 64)
        self.embedding_0_position = nn.Embedding(64, 64)

        self.layernorm_0 = nn.LayerNorm(64)
        self.mhsa_0 = nn.MultiheadAttention(64, 4, dropout=0.0, batch_first=True)
        self.layernorm_1 = nn.LayerNorm(64)
        self.ffn_0 = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))

        self.layernorm_2 = nn.LayerNorm(64)
        self.mhsa_1 = nn.MultiheadAttention(64, 4, dropout=0.0, batch_first=True)
        self.layernorm_3 = nn.LayerNorm(64)
        self.ffn_1 = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))

        self.layernorm_4 = nn.LayerNorm(64)
        self.linear_0_output = nn.Linear(64, 512)

        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("ffn_0.2.weight") or name.endswith("ffn_1.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * 2))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _attention_mask(
        self, attention_mask: Optional[torch.Tensor], seq_len: int, device: torch.device
    ) -> torch.Tensor:
        """A boolean mask (True = may not attend) of shape (B * heads, S, S), or (S, S)."""
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)
        if attention_mask is None:
            return causal
        padded_key = attention_mask.to(device) == 0  # (B, S)
        blocked = causal.unsqueeze(0) | padded_key.unsqueeze(1)  # (B, S, S)
        eye = torch.eye(seq_len, dtype=torch.bool, device=device).unsqueeze(0)
        blocked = blocked & ~eye  # a query always sees itself: no fully masked row, no NaN
        return blocked.repeat_interleave(self.nhead, dim=0)

    def _block(
        self,
        x: torch.Tensor,
        norm_a: nn.Module,
        attn: nn.MultiheadAttention,
        norm_b: nn.Module,
        ffn: nn.Module,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        h: torch.Tensor = norm_a(x)
        a: torch.Tensor
        a, _ = attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + a
        y: torch.Tensor = ffn(norm_b(x))
        return x + y

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, seq_len = input_ids.shape
        if seq_len > self.max_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds this model's maximum of {self.max_len} "
                "(learned position table); shorten the input"
            )
        positions = torch.arange(seq_len, device=input_ids.device)
        x = self.embedding_0_token(input_ids) + self.embedding_0_position(positions).unsqueeze(0)
        mask = self._attention_mask(attention_mask, seq_len, input_ids.device)
        x = self._block(x, self.layernorm_0, self.mhsa_0, self.layernorm_1, self.ffn_0, mask)
        x = self._block(x, self.layernorm_2, self.mhsa_1, self.layernorm_3, self.ffn_1, mask)
        logits: torch.Tensor = self.linear_0_output(self.layernorm_4(x))
        return logits
