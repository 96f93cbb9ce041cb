"""Auxiliary classification head: one MLP D -> D/2 -> 1 (GELU, dropout 0.2) shared by the 14 condition
queries, one logit per condition (seed 001 §4.7). Shared, so its size is the seed's ~300K at D = 768.

Shape letters: B batch, Q condition queries (14), D width.
"""
from torch import nn


class AuxiliaryHead(nn.Module):
    def __init__(self, width, hidden=None, dropout=0.2):
        super().__init__()
        hidden = hidden or width // 2
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, condition_queries):
        """condition_queries (B, Q, D) -> aux_logits (B, Q)."""
        return self.mlp(condition_queries).squeeze(-1)  # (B, Q)
