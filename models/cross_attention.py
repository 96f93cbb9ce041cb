"""Queries attend to patch tokens: 2 layers of multi-head attention, LayerNorm, FFN, LayerNorm (seed 001 §4.4).

Design choices:
- Post-norm residual layers in the seed's order: q = LN(q + MHA(q, patches, patches)); q = LN(q + FFN(q)).
  FFN D -> 4D -> D with GELU. Queries only read the patches (no self-attention among queries: §4.4
  lists none).
- The head-averaged attention weights of every layer are returned, (B, L, N, P), for the per-query
  cross-attention maps (`visualize`).

Shape letters: B batch, N queries (20 = 14 condition + 6 anatomical), P patches, D width, L layers.
"""
import torch
from torch import nn


class CrossAttentionLayer(nn.Module):
    def __init__(self, width, heads, ffn_ratio=4, dropout=0.1):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_ratio * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_ratio * width, width))
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries, patches):
        """queries (B, N, D), patches (B, P, D) -> queries (B, N, D), weights (B, N, P)."""
        attended, weights = self.attention(queries, patches, patches, need_weights=True,
                                           average_attn_weights=True)  # (B, N, D), (B, N, P)
        queries = self.norm1(queries + self.dropout(attended))            # (B, N, D)
        queries = self.norm2(queries + self.dropout(self.ffn(queries)))   # (B, N, D)
        return queries, weights


class CrossAttentionModule(nn.Module):
    def __init__(self, width, heads=8, layers=2, ffn_ratio=4, dropout=0.1):
        super().__init__()
        self.layers = nn.ModuleList([CrossAttentionLayer(width, heads, ffn_ratio, dropout) for _ in range(layers)])

    def forward(self, queries, patches):
        """queries (B, N, D), patches (B, P, D) -> attended (B, N, D), attention (B, L, N, P)."""
        maps = []
        for layer in self.layers:
            queries, weights = layer(queries, patches)  # (B, N, D), (B, N, P)
            maps.append(weights)
        return queries, torch.stack(maps, dim=1)         # (B, N, D), (B, L, N, P)
