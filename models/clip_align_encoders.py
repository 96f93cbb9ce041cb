"""Video encoders of VideoAttentionCLIP (seed 003 "Core Components" 1 and "Detailed Architecture" A):
Simple3DEncoder, Simple2DEncoder, SimpleCNNLSTMEncoder and MapGuidedVideoEncoder.

    feat = Simple3DEncoder(3, D)(video)                        video (B, 3, T, H, W) -> (B, D)
    feat, tokens, gate, attn_grid = MapGuidedVideoEncoder(...)(video, attn_map)

Design choices:
- Small conv stacks (conv 3x3(x3) -> BatchNorm -> ReLU), channels width, 2*width, 4*width. The 3D trunk
  strides (1,2,2), (2,2,2), (1,1,1): a (T, H, W) clip becomes a (T/2, H/4, W/4) token grid with F = 4*width
  channels (8 x 32 x 32 -> 4 x 8 x 8 = 256 tokens), fine enough for a gaze map to pick out one object.
  The 2D trunk uses strides 2, 2, 1 per frame.
- Features before projection are a Linear(F -> D) of the pooled trunk output (no activation), so the
  classifier and the projection heads see the same D-dim vector the seed calls `video_feat`.
- MapGuidedVideoEncoder, `map_guided_type` (the attention map is first average-pooled to the token grid,
  a (B, A, T', H', W'); "contribution" c_n is token n's term in the pooled sum, so pooled = sum_n c_n):
    channel:        the seed's encoder as written ("Detailed Architecture" A.d): the attention map is
                    summarized by its global average over (T, H, W), one value per attention channel,
                    m (B, A); a small MLP (A -> Hd -> F) gives a channel gate g (B, F); every token is
                    gated alike before average pooling, c_n = g * x_n / N. The gate sees only how much
                    attention mass the clip has, not where it lies (with A = 1 it is one number per clip;
                    with data.attn_normalize=frame_sum it is the same number for every clip).
    channel_attended: the project's variant of the channel gate: the MLP (F -> Hd -> F) reads the
                    map-weighted average of the video tokens s = sum_n a_n x_n / sum_n a_n instead of m;
                    pooling is still uniform, c_n = g * x_n / N.
    spatiotemporal: the project's gate: g = act(Conv1x1(ReLU(Conv3x3x3(a)))) of shape (B, F, T', H', W'),
                    one gate per token and channel computed from the map around that token; a gated
                    average per channel, c_n = g_n * x_n / sum_m |g_m|. The gate network starts as a soft
                    copy of the map (sigmoid(6a - 3), or g = a for the linear gate; `_init_gate_from_map`):
                    with a random start the gate stayed near 0.5 everywhere for the whole tiny run (test
                    accuracy 0.45 vs 0.90 for weighted_pool on informative phantoms), i.e. plain average pooling.
    weighted_pool:  no learned gate: w_n = a_n / sum_m a_m, c_n = w_n x_n (pure attention pooling);
                    `video_gate` returns w as (B, 1, T', H', W') so the same plot shows it. It has no gate
                    to make linear, so `map_guided_sigmoid_gate=false` with it is refused (ClipAlignConfig).
  act is a sigmoid (gate in [0, 1], the seed's) or, with `map_guided_sigmoid_gate=false`, the identity (a
  linear, unbounded gate; a linear channel gate's last bias starts at 1, a pass-through).
- MapGate (non-3D backbones with `map_guided`, "Detailed Architecture" B): an MLP maps a summary of the map
  to a gate (B, D) that scales the video feature. `map_guided_type` names the summary: `channel` the seed's
  global average per attention channel (B, A), `grid` the project's average over a coarse (1, 4, 4) grid
  per attention channel (B, 16 A), which also says where the attention lies. The 3D-only types are refused
  for these backbones rather than ignored (ClipAlignConfig.validate).

Shape letters: B batch, T frames, H x W frame size, A attention channels, T' x H' x W' token grid,
N = T'H'W' tokens, F trunk channels, D feature dim (clip_feature_dim), Hd gate hidden dim.
"""
import torch
import torch.nn.functional as F
from torch import nn

GUIDE_TYPES = ("channel", "channel_attended", "spatiotemporal", "weighted_pool")   # MapGuidedVideoEncoder (3dcnn)
MAP_GATE_TYPES = ("channel", "grid")   # MapGate (2dcnn, cnn_lstm): the map summary its MLP reads
MAP_GATE_GRID = (1, 4, 4)  # coarse (T, H, W) grid of the `grid` summary


def _conv3d(cin, cout, stride):
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _conv2d(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Simple3DEncoder(nn.Module):
    """Small 3D CNN + global average pooling -> one feature vector per clip (the default `3dcnn`)."""

    def __init__(self, in_channels, feature_dim, width=16):
        super().__init__()
        self.trunk = nn.Sequential(_conv3d(in_channels, width, (1, 2, 2)), _conv3d(width, 2 * width, (2, 2, 2)),
                                   _conv3d(2 * width, 4 * width, 1))
        self.token_dim = 4 * width                                     # F
        self.proj = nn.Linear(self.token_dim, feature_dim)

    def tokens(self, x):
        """x: (B, C, T, H, W) -> (B, F, T', H', W')"""
        return self.trunk(x)

    def forward(self, x):
        tokens = self.tokens(x)                                        # (B, F, T', H', W')
        return self.proj(tokens.mean(dim=(2, 3, 4)))                   # (B, D)


class _FrameTrunk(nn.Module):
    """2D CNN applied to every frame: (B, C, T, H, W) -> (B, T, F) per-frame pooled features."""

    def __init__(self, in_channels, width):
        super().__init__()
        self.trunk = nn.Sequential(_conv2d(in_channels, width, 2), _conv2d(width, 2 * width, 2),
                                   _conv2d(2 * width, 4 * width, 1))
        self.token_dim = 4 * width

    def forward(self, x):
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)             # (B*T, C, H, W)
        pooled = self.trunk(frames).mean(dim=(2, 3))                   # (B*T, F)
        return pooled.view(B, T, -1)                                   # (B, T, F)


class Simple2DEncoder(nn.Module):
    """Per-frame 2D CNN, frame features averaged over time (`2dcnn`)."""

    def __init__(self, in_channels, feature_dim, width=16):
        super().__init__()
        self.frames = _FrameTrunk(in_channels, width)
        self.proj = nn.Linear(self.frames.token_dim, feature_dim)

    def forward(self, x):
        return self.proj(self.frames(x).mean(dim=1))                   # (B, T, F) -> (B, D)


class SimpleCNNLSTMEncoder(nn.Module):
    """Per-frame 2D CNN, then an LSTM over the frames; its final hidden state is the clip (`cnn_lstm`)."""

    def __init__(self, in_channels, feature_dim, width=16):
        super().__init__()
        self.frames = _FrameTrunk(in_channels, width)
        self.lstm = nn.LSTM(self.frames.token_dim, feature_dim, batch_first=True)
        self.proj = nn.Linear(feature_dim, feature_dim)

    def forward(self, x):
        per_frame = self.frames(x)                                     # (B, T, F)
        _, (h_last, _) = self.lstm(per_frame)                          # h_last: (1, B, D)
        return self.proj(h_last[-1])                                   # (B, D)


def _gate_activation(raw, sigmoid_gate):
    return torch.sigmoid(raw) if sigmoid_gate else raw


class MapGuidedVideoEncoder(nn.Module):
    """3D CNN whose pooling is guided by the attention map (seed 003 "Detailed Architecture" A.d: `channel`;
    `channel_attended`, `spatiotemporal` and `weighted_pool` are the project's variants)."""

    def __init__(self, in_channels, attn_in_channels, feature_dim, hidden_dim=64, guide_type="spatiotemporal",
                 sigmoid_gate=True, width=16):
        super().__init__()
        if guide_type not in GUIDE_TYPES:
            raise ValueError(f"model.map_guided_type must be one of {GUIDE_TYPES}, got {guide_type!r}")
        self.guide_type, self.sigmoid_gate = guide_type, sigmoid_gate
        self.backbone = Simple3DEncoder(in_channels, feature_dim, width)
        token_dim = self.backbone.token_dim                             # F
        if guide_type == "spatiotemporal":
            self.gate_net = nn.Sequential(nn.Conv3d(attn_in_channels, hidden_dim, 3, 1, 1), nn.ReLU(inplace=True),
                                          nn.Conv3d(hidden_dim, token_dim, 1))
        elif guide_type in ("channel", "channel_attended"):
            summary_dim = attn_in_channels if guide_type == "channel" else token_dim   # A (map) or F (tokens)
            self.gate_net = nn.Sequential(nn.Linear(summary_dim, hidden_dim), nn.ReLU(inplace=True),
                                          nn.Linear(hidden_dim, token_dim))
        else:
            self.gate_net = None
        if guide_type == "spatiotemporal":
            self._init_gate_from_map(attn_in_channels, hidden_dim)
        elif guide_type != "weighted_pool" and not sigmoid_gate:
            nn.init.ones_(self.gate_net[-1].bias)                       # linear channel gate starts near 1

    @torch.no_grad()
    def _init_gate_from_map(self, attn_in_channels, hidden_dim):
        """Start the spatiotemporal gate as a soft copy of the map: every hidden unit reads the centre tap
        (ReLU(a) = a for a >= 0), the output is scale * a + offset per channel, plus 1% noise to break the
        symmetry: sigmoid(6a - 3) (0.05 off the map, 0.95 on its peak) or, linear, g = a."""
        first, last = self.gate_net[0], self.gate_net[-1]
        first.weight.normal_(0, 0.01)
        first.weight[:, :, 1, 1, 1] += 1.0 / attn_in_channels
        first.bias.zero_()
        scale, offset = (6.0, -3.0) if self.sigmoid_gate else (1.0, 0.0)
        last.weight.normal_(0, 0.01).add_(scale / hidden_dim)
        last.bias.fill_(offset)

    def forward(self, video, attn_map):
        """video (B, 3, T, H, W), attn_map (B, A, T, H, W) ->
        feat (B, D), tokens (B, N, F) contributions, gate (see module docstring), attn_grid (B, N)."""
        x = self.backbone.tokens(video)                                 # (B, F, T', H', W')
        if x.requires_grad:   # the token-major math below hands back a strided gradient; conv3d's CPU
            x.register_hook(lambda grad: grad.contiguous())   # backward is ~5x slower on it
        B, Fd, Tp, Hp, Wp = x.shape
        a = F.adaptive_avg_pool3d(attn_map, (Tp, Hp, Wp))               # (B, A, T', H', W')
        a_sum = a.sum(dim=1, keepdim=True)                              # (B, 1, T', H', W')
        weights = a_sum.flatten(1) / a_sum.flatten(1).sum(1, keepdim=True).clamp_min(1e-8)   # (B, N)
        N = Tp * Hp * Wp
        x_flat = x.flatten(2)                                           # (B, F, N) (channel-major: fast backward)
        if self.guide_type == "spatiotemporal":
            gate = _gate_activation(self.gate_net(a), self.sigmoid_gate)   # (B, F, T', H', W')
            g = gate.flatten(2)                                         # (B, F, N)
            contrib = g * x_flat / g.abs().sum(2, keepdim=True).clamp_min(1e-6)   # (B, F, N) gated average
        elif self.guide_type == "channel":                              # seed 003 A.d as written
            summary = attn_map.mean(dim=(2, 3, 4))                      # (B, A) global average of the map
            gate = _gate_activation(self.gate_net(summary), self.sigmoid_gate)   # (B, F)
            contrib = gate[:, :, None] * x_flat / N                     # (B, F, N)
        elif self.guide_type == "channel_attended":
            summary = torch.einsum("bn,bfn->bf", weights, x_flat)       # (B, F) map-weighted token average
            gate = _gate_activation(self.gate_net(summary), self.sigmoid_gate)   # (B, F)
            contrib = gate[:, :, None] * x_flat / N                     # (B, F, N)
        else:
            gate = weights.view(B, 1, Tp, Hp, Wp)                       # (B, 1, T', H', W')
            contrib = weights[:, None, :] * x_flat                      # (B, F, N)
        tokens = contrib.transpose(1, 2)                                # (B, N, F)
        pooled = contrib.sum(dim=2)                                     # (B, F)
        return self.backbone.proj(pooled), tokens, gate, weights        # (B, D), (B, N, F), gate, (B, N)


class MapGate(nn.Module):
    """`map_gate` for non-3D backbones: map summary (`channel`: global average, `grid`: 4 x 4 grid average)
    -> MLP -> gate (B, D) scaling the video feature."""

    def __init__(self, attn_in_channels, feature_dim, hidden_dim=64, sigmoid_gate=True, summary="channel"):
        super().__init__()
        if summary not in MAP_GATE_TYPES:
            raise ValueError(f"map_gate summary must be one of {MAP_GATE_TYPES}, got {summary!r}")
        self.grid = (1, 1, 1) if summary == "channel" else MAP_GATE_GRID
        summary_dim = attn_in_channels * self.grid[0] * self.grid[1] * self.grid[2]
        self.sigmoid_gate = sigmoid_gate
        self.mlp = nn.Sequential(nn.Linear(summary_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, feature_dim))
        if not sigmoid_gate:
            nn.init.ones_(self.mlp[-1].bias)

    def forward(self, attn_map):
        """attn_map (B, A, T, H, W) -> gate (B, D)"""
        summary = F.adaptive_avg_pool3d(attn_map, self.grid).flatten(1)       # (B, A) or (B, A*16)
        return _gate_activation(self.mlp(summary), self.sigmoid_gate)          # (B, D)
