"""VPT-style inverse dynamics model: a window of frames -> the action taken at each frame.

    frames [B, T, H, W, 3] uint8     (+ flow: OpenCV's dense optical flow t -> t+1, 2 more channels)
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

import numpy as np
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
    flow: bool = False                # optical flow (OpenCV DIS) as 2 more input channels: motion given, not learnt
    aux_motion: float = 0.0           # > 0: a regression head on the engine's motion (training only), this weight
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
        if self.flow and self.arch != "vpt":
            raise ConfigError("flow inputs are for the reward IDM (arch vpt); the judge (cnn3d) reads pixels only, "
                              "so a video that paints the flow the reward reads shows as a gap between the two")
        if self.aux_motion < 0 or (self.aux_motion > 0 and self.arch != "vpt"):
            raise ConfigError(f"aux_motion must be >= 0 and is for the reward IDM (arch vpt), got {self.aux_motion} "
                              f"with arch {self.arch!r}")
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


MOTION_DIMS = 5     # the aux head's targets: the episode's motion (forward, right, up) and camera_deg (pitch, yaw)
FLOW_SCALE = 0.25    # pixels -> input units: a 4-pixel shift (a fast turn at 64 px wide) reads as 1


def optical_flow(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, T, H, W, 2]: dense optical flow (OpenCV's DIS, Kroeger et al.
    2016) from frame t to t+1 in pixels (x, y), zero for the last frame. Computed the same way for real
    and generated videos (the IDM calls it on whatever it is given); about 0.5 ms a pair at 48x64."""
    import cv2
    v = np.ascontiguousarray(torch.as_tensor(frames).cpu().numpy())
    B, T, H, W, _ = v.shape
    gray = v.reshape(B * T, H, W, 3) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = gray.round().clip(0, 255).astype(np.uint8).reshape(B, T, H, W)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = np.zeros((B, T, H, W, 2), dtype=np.float32)
    for b in range(B):
        for t in range(T - 1):
            out[b, t] = dis.calc(gray[b, t], gray[b, t + 1], None)
    return torch.from_numpy(out)


def flow_input(flow: torch.Tensor) -> torch.Tensor:
    """Flow [B, T, H, W, 2] in pixels -> input channels [B, 2, T, H, W] (scaled, clamped)."""
    return (flow.float() * FLOW_SCALE).clamp(-3.0, 3.0).permute(0, 4, 1, 2, 3)


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
        layers = [nn.Conv3d(8 if cfg.flow else 6, c, kernel_size=3, stride=(1, s, s), padding=1), nn.GroupNorm(4, c), nn.ReLU()]
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
        if cfg.aux_motion > 0:   # privileged targets: (forward, right, up, pitch, yaw) of t -> t+1, never an output
            self.motion_head = nn.Sequential(nn.Linear(2 * cfg.d_model, 2 * cfg.d_model), nn.GELU(),
                                             nn.Linear(2 * cfg.d_model, MOTION_DIMS))
        nn.init.normal_(self.time, std=0.02)

    def hidden(self, frames: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3] -> per-frame hidden states [B, T, d] (what the heads read).
        flow: the frames' optical_flow [B, T, H, W, 2] if already computed (training caches it)."""
        B, T = frames.shape[:2]
        x = to_input(frames)                                           # [B, 6, T, H, W]
        if self.cfg.flow:
            f = optical_flow(frames) if flow is None else flow
            x = torch.cat([x, flow_input(f.to(x.device))], dim=1)     # [B, 8, T, H, W]
        x = self.temporal(x)                                           # [B, C, T, H, W]
        x = x.transpose(1, 2).reshape(B * T, *x.shape[1:2], *x.shape[3:])
        h = self.proj(self.cnn(x)).view(B, T, -1) + self.time[:, :T]  # [B, T, d]
        return self.norm(self.transformer(h))                          # no mask: past and future

    def forward(self, frames: torch.Tensor, flow: torch.Tensor | None = None, with_motion: bool = False):
        """frames uint8 [B, T, H, W, 3] -> per group logits [B, T-1, K_g] for actions 0..T-2;
        with_motion (training with aux_motion): also the motion head's [B, T-1, 5]."""
        h = self.hidden(frames, flow)
        if not with_motion:
            return self.heads(h)
        return self.heads(h), self.motion_head(torch.cat([h[:, :-1], h[:, 1:]], dim=-1))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """One vector per video [B, d]: the hidden states averaged over time (for Frechet distances)."""
        return video_features(self.hidden(frames))


class IDMEnsemble(nn.Module):
    """Several frozen IDMs read as one: log of the mean of their softmaxes, per group. Members trained
    apart disagree where each is unsure of the motion, so the average keeps what they share."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        outs = [m(frames) for m in self.members]
        return [torch.stack([o[g].float().log_softmax(-1) for o in outs]).logsumexp(0) - np.log(len(outs))
                for g in range(len(outs[0]))]

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """The members' video features side by side [B, sum of d]."""
        return torch.cat([m.features(frames) for m in self.members], dim=-1)


def build_idm(cfg: IDMConfig) -> nn.Module:
    if cfg.arch == "vpt":
        return VPTIDM(cfg)
    from rlir.models.judge_idm import CNN3DIDM
    return CNN3DIDM(cfg)
