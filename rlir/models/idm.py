"""VPT-style inverse dynamics model: a window of frames -> the action taken at each frame.

    frames [B, T, H, W, 3] uint8
      -> temporal conv (3D, 2 layers / 5 frames      each frame sees its neighbours' pixels,
                        or 1 layer / 3 frames)       at half resolution (or full: temporal_stride 1)
      -> per-frame IMPALA CNN                        image features, [B, T, D]
      -> non-causal transformer over time           each frame sees past and future in the window
      -> heads on (h_t, h_{t+1})                     p(a_t | o_t, o_{t+1}, context), t = 0..T-2
      -> one categorical per group: 7 discrete groups + 11-way pitch and yaw bins

(Baker et al. 2022, VPT: "a 3D convolution over time, an IMPALA CNN, a non-causal transformer,
one categorical head per action group".)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlir.actions import N_CLASSES


@dataclass
class IDMConfig:
    arch: str = "vpt"                 # "vpt" (this file) or "cnn3d" (rlir/models/judge_idm.py)
    resolution: tuple[int, int] = (48, 64)
    clip_len: int = 16
    temporal_channels: int = 32
    temporal_layers: int = 2          # 3x3x3 layers: 2 see 5 frames, 1 sees 3
    temporal_stride: int = 2          # spatial stride of the first: 1 reads motion at full resolution
    channels: tuple[int, ...] = (32, 32, 32)   # IMPALA stages (each halves H and W)
    blocks_per_stage: int = 1
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        from rlir.errors import ConfigError
        if self.arch not in ("vpt", "cnn3d"):
            raise ConfigError(f"arch must be 'vpt' or 'cnn3d', got {self.arch!r}")
        if self.clip_len < 2:
            raise ConfigError("clip_len must be at least 2 (an action needs the next frame)")
        if self.temporal_layers not in (1, 2) or self.temporal_stride not in (1, 2):
            raise ConfigError(f"temporal_layers and temporal_stride must be 1 or 2, got "
                              f"{self.temporal_layers} and {self.temporal_stride}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


def to_input(frames: torch.Tensor, with_motion: bool = True) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, C, T, H, W]: RGB in [-1, 1], and (with_motion) the change
    to the next frame, x_{t+1} - x_t (zero for the last frame), which puts motion in plain sight."""
    x = frames.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
    if not with_motion:
        return x
    d = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)
    return torch.cat([x, 2.0 * d], dim=1)


def video_features(h: torch.Tensor) -> torch.Tensor:
    """Per-frame hidden states [B, T, d] -> one feature vector per video [B, d] (mean over time)."""
    return h.float().mean(1)


class ActionHeads(nn.Module):
    """(h_t, h_{t+1}) -> logits of a_t for each of the 9 groups."""

    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(2 * d, k) for k in N_CLASSES)

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:   # h [B, T, d]
        pair = self.mlp(torch.cat([h[:, :-1], h[:, 1:]], dim=-1))   # [B, T-1, 2d]
        return [head(pair) for head in self.heads]                  # each [B, T-1, K_g]


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.relu(self.c1(F.relu(x))))


class ImpalaStage(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(4, cout)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(cout) for _ in range(blocks)])

    def forward(self, x):
        return self.blocks(self.pool(self.norm(self.conv(x))))


class VPTIDM(nn.Module):
    _no_split_modules = ["TransformerEncoderLayer"]

    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        H, W = cfg.resolution
        s, c = cfg.temporal_stride, cfg.temporal_channels
        H, W = (H + s - 1) // s, (W + s - 1) // s
        layers = [nn.Conv3d(6, c, kernel_size=3, stride=(1, s, s), padding=1), nn.GroupNorm(4, c), nn.ReLU()]
        if cfg.temporal_layers == 2:   # two 3x3x3 layers: a receptive field of 5 frames
            layers += [nn.Conv3d(c, c, kernel_size=3, padding=1), nn.GroupNorm(4, c), nn.ReLU()]
        self.temporal = nn.Sequential(*layers)   # motion at pixel scale (stride 1: at full resolution)
        stages, c = [], cfg.temporal_channels
        for cout in cfg.channels:
            stages.append(ImpalaStage(c, cout, cfg.blocks_per_stage))
            c, H, W = cout, (H + 1) // 2, (W + 1) // 2
        self.cnn = nn.Sequential(*stages)
        self.proj = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(c * H * W, cfg.d_model), nn.LayerNorm(cfg.d_model))
        self.time = nn.Parameter(torch.zeros(1, cfg.clip_len, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, 4 * cfg.d_model, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.heads = ActionHeads(cfg.d_model)
        nn.init.normal_(self.time, std=0.02)

    def hidden(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3] -> per-frame hidden states [B, T, d] (what the heads read)."""
        B, T = frames.shape[:2]
        x = self.temporal(to_input(frames))                            # [B, C, T, H, W]
        x = x.transpose(1, 2).reshape(B * T, *x.shape[1:2], *x.shape[3:])
        h = self.proj(self.cnn(x)).view(B, T, -1) + self.time[:, :T]  # [B, T, d]
        return self.norm(self.transformer(h))                          # no mask: past and future

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """frames uint8 [B, T, H, W, 3] -> per group logits [B, T-1, K_g] for actions 0..T-2."""
        return self.heads(self.hidden(frames))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """One vector per video [B, d]: the hidden states averaged over time (for Frechet distances)."""
        return video_features(self.hidden(frames))


def build_idm(cfg: IDMConfig) -> nn.Module:
    if cfg.arch == "vpt":
        return VPTIDM(cfg)
    from rlir.models.judge_idm import CNN3DIDM
    return CNN3DIDM(cfg)
