"""Gated fusion of the global token and the attended queries, 20 -> 10 pooling, 1 + 10 output tokens
(seed 001 §4.5).

    gate = sigmoid(MLP([cls ; mean(queries)]))      (B, 1) in [0, 1]
    cls_gated = gate * cls;  queries_weighted = (1 - gate) * queries
    pooled = MHA(pool_queries, queries_weighted, queries_weighted)   (B, 10, D)
    visual_tokens = [cls_gated ; pooled]            (B, 11, D)

Design choices:
- Gate MLP: 2D -> gate_hidden -> 1 with GELU (the seed says "MLP" without widths; default hidden D/4,
  which keeps the module near the seed's ~2M at D = 768: the pooling attention alone is 2.36M). Its last
  layer starts at 0, so the gate starts at exactly 0.5 (an even mix).
- The 10 pooling queries start as N(0, 1) rows (norm ~sqrt(D)), the scale of the LayerNorm-ed queries they
  attend to (the seed gives no initialization). With Xavier rows (norm ~1.4 at D = 128) the pooling
  attention stayed uniform through a whole tiny-default run (entropy 2.986 of the uniform 2.996, measured),
  so the 10 pooled tokens were one and the same mean of the 20 queries (pairwise cosine 0.99998): the
  decoder received 2 distinct tokens instead of 11.
- `use_gate=False` is the ablation "without gated fusion": cls and queries pass unscaled.

Shape letters: B batch, N attended queries (20), K pooled tokens (10), D width.
"""
import torch
from torch import nn


class GatedFusion(nn.Module):
    def __init__(self, width, num_pooled=10, heads=8, dropout=0.1, use_gate=True, gate_hidden=None):
        super().__init__()
        self.use_gate = use_gate
        gate_hidden = gate_hidden or width // 4
        self.gate_mlp = nn.Sequential(nn.Linear(2 * width, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, 1))
        nn.init.zeros_(self.gate_mlp[-1].weight)
        nn.init.zeros_(self.gate_mlp[-1].bias)
        self.pool_queries = nn.Parameter(torch.randn(num_pooled, width))  # (K, D) N(0, 1): see the docstring
        self.pool_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)

    def forward(self, cls, queries):
        """cls (B, D), queries (B, N, D) -> visual_tokens (B, 1 + K, D), gate (B, 1)."""
        B, N, D = queries.shape
        if self.use_gate:
            query_mean = queries.mean(dim=1)                                   # (B, D)
            gate_input = torch.cat([cls, query_mean], dim=-1)                  # (B, 2D)
            gate = torch.sigmoid(self.gate_mlp(gate_input))                    # (B, 1)
            cls_gated = gate * cls                                             # (B, D)
            queries_weighted = (1 - gate).unsqueeze(-1) * queries              # (B, N, D)
        else:
            gate = torch.full((B, 1), float("nan"), device=cls.device)         # (B, 1) no gate
            cls_gated, queries_weighted = cls, queries
        pool = self.pool_queries.unsqueeze(0).expand(B, -1, -1)                # (B, K, D)
        pooled, _ = self.pool_attention(pool, queries_weighted, queries_weighted, need_weights=False)  # (B, K, D)
        visual_tokens = torch.cat([cls_gated.unsqueeze(1), pooled], dim=1)     # (B, 1 + K, D)
        return visual_tokens, gate
