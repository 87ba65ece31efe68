"""User tower: a causal transformer over a user's recent item vectors (SASRec-like).

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Unlike
SASRec the inputs are item *vectors* (from the item tower), not item ids, so a
brand-new item is usable the moment its text is embedded. Each position adds an
event-type embedding (view / click / purchase), a recency-bucket embedding
(core.features.recency_buckets) and a position embedding counted from the end
of the window, because windows are LEFT-padded: the newest event always sits at
position T-1, where the user vector is read.

Masking is explicit: a query attends to real keys at or before itself (causal +
padding); every position may also attend to itself so padded rows never see an
all-masked softmax; padded outputs are zeroed. No data-dependent Python control
flow, so the module exports to ONNX as is.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoders.config import UserTowerConfig  # defined torch-free (the CLI reads its defaults)


def _init_weights(module: nn.Module) -> None:
    """Small normal init for linear and embedding weights (as RecBole's SASRec and nanoGPT)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: UserTowerConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [B, T, C], allowed [B, 1, T, T] bool (True = query may attend to key) -> [B, T, C],
        or [B, 1, C] with `last_only`: the newest position's query alone."""
        B, T, C = x.size()  # batch, time, channels
        q, k, v = self.qkv(x).split(C, dim=2)
        if last_only:
            q, allowed = q[:, -1:], allowed[:, :, -1:]  # [B, 1, C], [B, 1, 1, T]
        Q = q.size(1)  # queries: T, or 1
        q = q.view(B, Q, self.n_heads, C // self.n_heads).transpose(1, 2)  # [B, h, Q, c]
        k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (k, v))  # [B, h, T, c]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, Q, C))


class Block(nn.Module):
    """Pre-norm transformer block (as in nanoGPT)."""

    def __init__(self, config: UserTowerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Linear(4 * config.dim, config.dim),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """[B, T, C] -> [B, T, C], or [B, 1, C] with `last_only` (keys and values still span T)."""
        residual = x[:, -1:] if last_only else x
        x = residual + self.drop(self.attn(self.ln1(x), allowed, last_only))
        return x + self.drop(self.mlp(self.ln2(x)))


class UserTower(nn.Module):
    def __init__(self, config: UserTowerConfig):
        super().__init__()
        self.config = config
        self.event_emb = nn.Embedding(config.n_event_ids, config.dim, padding_idx=0)
        self.time_emb = nn.Embedding(config.n_time_buckets, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)  # index 0 = newest event
        self.ln_in = nn.LayerNorm(config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.dim)
        self.apply(_init_weights)

    def sequence(
        self,
        item_vectors: torch.Tensor,
        event_types: torch.Tensor,
        time_buckets: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Hidden state at every position: [B, T, D] (zeros at padding), used for training.

        item_vectors [B, T, D] float, event_types [B, T] long, time_buckets [B, T] long,
        attention_mask [B, T] bool (True = real event), left-padded, T <= max_len.
        """
        return self._hidden(item_vectors, event_types, time_buckets, attention_mask, last_only=False)

    def forward(
        self,
        item_vectors: torch.Tensor,
        event_types: torch.Tensor,
        time_buckets: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The user vector: [B, D], the hidden state at position T-1 (the newest event).

        Equal to sequence(...)[:, -1], but the last block computes that position alone: its
        other outputs are never read (what the worker runs, via ONNX, for every batch).
        """
        return self._hidden(item_vectors, event_types, time_buckets, attention_mask, last_only=True)[:, -1]

    def _hidden(self, item_vectors, event_types, time_buckets, attention_mask, last_only: bool) -> torch.Tensor:
        """Hidden states [B, T, D]; with `last_only`, [B, 1, D] for the newest position."""
        T = item_vectors.size(1)  # window length
        positions = torch.arange(T - 1, -1, -1, device=item_vectors.device)  # [T], 0 at the newest event
        x = item_vectors + self.pos_emb(positions) + self.event_emb(event_types) + self.time_emb(time_buckets)
        x = self.drop(self.ln_in(x))  # [B, T, D]
        query, key = positions.unsqueeze(1), positions.unsqueeze(0)  # [T, 1], [1, T] (distance from the end)
        allowed = ((key >= query) & attention_mask[:, None, None, :]) | (
            key == query
        )  # [B, 1, T, T] causal + padding, self always
        keep = attention_mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x = block(x, allowed, last) * (keep[:, -1:] if last else keep)  # [B, T, D], the last block [B, 1, D]
        return self.ln_out(x) * (keep[:, -1:] if last_only else keep)
