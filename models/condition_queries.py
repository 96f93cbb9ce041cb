"""14 condition queries, one per CheXbert condition, initialized from a BERT [CLS] embedding (seed 001 §4.2).

Design choices:
- For each condition name (data.labels.CHEXPERT_LABELS, the seed's order) the text encoder's [CLS]
  vector of the tokenized name becomes the initial query (BioBERT at paper scale, tiny-hub/bert-mlm at
  tiny scale, both via hub.pretrained.load_hf). The encoder is used once and then dropped.
- When the text width differs from the query width the vectors are cut / zero-padded and rescaled to the
  Xavier norm; at both scales the widths agree (768 / 128), so this is a guard, not the normal path.
- `center=True` (an option, `model.condition_center`; off in both configs, the seed takes the raw vectors): subtract the
  mean of the 14 vectors and rescale each to the mean norm of the raw vectors (the scale the seed takes
  as is). A BERT's [CLS] vectors are anisotropic: for the tiny hub's BERT the 14 raw vectors have
  pairwise cosine 0.96 (min 0.82), so the 14 queries start nearly identical, read the patches alike and
  the shared auxiliary head cannot tell them apart. Centering keeps what separates the conditions in the
  BERT space (their differences) and drops the shared offset.
- `init="xavier"` is the ablation without BERT initialization.

Shape letters: B batch, Q condition queries (14), D query width.
"""
import torch
from torch import nn

from data.labels import CHEXPERT_LABELS


@torch.no_grad()
def bert_cls_embeddings(names, encoder_name):
    """condition names -> (len(names), H) [CLS] vectors of the last hidden layer of `encoder_name`."""
    from transformers import AutoModel, AutoTokenizer
    from hub.pretrained import load_hf
    tokenizer = load_hf(AutoTokenizer, encoder_name, system="chexquery")
    encoder = load_hf(AutoModel, encoder_name, system="chexquery").eval()
    batch = tokenizer(list(names), padding=True, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state  # (Q, T, H)
    return hidden[:, 0]                           # (Q, H)


class ConditionQueries(nn.Module):
    def __init__(self, width, names=CHEXPERT_LABELS, init="bert", encoder_name="tiny-hub/bert-mlm", center=False):
        super().__init__()
        self.names = list(names)
        self.queries = nn.Parameter(torch.empty(len(self.names), width))  # (Q, D)
        nn.init.xavier_uniform_(self.queries)
        if init == "bert":
            self.init_from_text(encoder_name, center)
        elif init != "xavier":
            raise ValueError(f"model.condition_init must be 'bert' or 'xavier', got {init!r}")

    @torch.no_grad()
    def init_from_text(self, encoder_name, center=False):
        vectors = bert_cls_embeddings(self.names, encoder_name)  # (Q, H)
        Q, D = self.queries.shape
        xavier_norm = self.queries.norm(dim=1, keepdim=True)   # (Q, 1) norms of the Xavier rows drawn above
        if vectors.shape[1] != D:
            fitted = torch.zeros(Q, D)
            n = min(D, vectors.shape[1])
            fitted[:, :n] = vectors[:, :n]
            vectors = fitted * (xavier_norm / fitted.norm(dim=1, keepdim=True).clamp_min(1e-6))
        if center:
            scale = vectors.norm(dim=1).mean()                                             # raw [CLS] norm
            vectors = vectors - vectors.mean(dim=0, keepdim=True)                          # (Q, D)
            vectors = vectors * (scale / vectors.norm(dim=1, keepdim=True).clamp_min(1e-6))
        self.queries.copy_(vectors)

    def forward(self, batch_size):
        return self.queries.unsqueeze(0).expand(batch_size, -1, -1)  # (B, Q, D)
