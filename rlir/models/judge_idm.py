"""The judge: a plain 3D-CNN inverse dynamics model, a different architecture from the reward IDM.

    frames [B, T, H, W, 3] -> 3D conv blocks (space halves, time kept) -> flatten each frame
    -> per-frame features [B, T, D] -> 1D temporal conv -> heads on (h_t, h_{t+1})

Trained on episodes disjoint from the reward IDM's and with its own seed, it scores evaluation
videos independently: a world model that only fools the reward IDM shows as a gap between the two.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlir.models.idm import ActionHeads, IDMConfig, to_input, video_features


class Block3D(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, (3, 3, 3), stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(cout, cout, (3, 3, 3), padding=1)
        self.bn1, self.bn2 = nn.GroupNorm(4, cout), nn.GroupNorm(4, cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)) + x)


class CNN3DIDM(nn.Module):
    def __init__(self, cfg: IDMConfig):
        super().__init__()
        self.cfg = cfg
        H, W = cfg.resolution
        blocks, c = [], 6
        for cout in cfg.channels:
            blocks.append(Block3D(c, cout))
            c, H, W = cout, (H + 1) // 2, (W + 1) // 2
        self.body = nn.Sequential(*blocks)
        self.proj = nn.Sequential(nn.Linear(c * H * W, cfg.d_model), nn.LayerNorm(cfg.d_model), nn.GELU())
        self.temporal = nn.Conv1d(cfg.d_model, cfg.d_model, 5, padding=2)
        self.heads = ActionHeads(cfg.d_model)

    def hidden(self, frames: torch.Tensor) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3] -> per-frame hidden states [B, T, d] (what the heads read)."""
        B, T = frames.shape[:2]
        x = self.body(to_input(frames))                               # [B, C, T, h, w]
        h = self.proj(x.transpose(1, 2).reshape(B, T, -1))            # [B, T, d]
        return h + F.gelu(self.temporal(h.transpose(1, 2))).transpose(1, 2)

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.hidden(frames))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """One vector per video [B, d]: the hidden states averaged over time (for Frechet distances)."""
        return video_features(self.hidden(frames))
