"""6 anatomical region queries (cardiac, left lung, right lung, mediastinum, diaphragm, spine), Xavier
uniform initialization (seed 001 §4.3). No pretrained embedding exists for a region.

Shape letters: B batch, A anatomical queries (6), D query width.
"""
import torch
from torch import nn

ANATOMICAL_REGIONS = ["Cardiac", "Left Lung", "Right Lung", "Mediastinum", "Diaphragm", "Spine"]


class AnatomicalQueries(nn.Module):
    def __init__(self, width, names=ANATOMICAL_REGIONS):
        super().__init__()
        self.names = list(names)
        self.queries = nn.Parameter(torch.empty(len(self.names), width))  # (A, D)
        nn.init.xavier_uniform_(self.queries)

    def forward(self, batch_size):
        return self.queries.unsqueeze(0).expand(batch_size, -1, -1)  # (B, A, D)
