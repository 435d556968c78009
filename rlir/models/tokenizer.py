"""VQ frame tokenizer: image -> a grid of discrete codes -> image (the AR world model's vocabulary).

    frame [B, H, W, 3] uint8
      -> conv encoder, `len(channels)` stride-2 stages    [B, dim, H/2^n, W/2^n]
      -> vector quantiser (vector-quantize-pytorch)      nearest of `codebook_size` codes,
                                                         EMA codebook, dead codes re-seeded
      -> conv decoder, mirror of the encoder             [B, H, W, 3]

MineWorld uses a VQ-GAN (8192 codes, 16x downsampling); the tiny preset is a plain VQ-VAE with an
L1 + MSE reconstruction loss (no adversarial or perceptual term: no pretrained weights offline).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize


@dataclass
class TokenizerConfig:
    resolution: tuple[int, int] = (48, 64)
    channels: tuple[int, ...] = (64, 128, 128)   # one stride-2 stage each: 48x64 -> 6x8 codes
    dim: int = 64                                # code vector size
    codebook_size: int = 1024
    res_blocks: int = 1
    commitment_weight: float = 0.25
    dead_code_threshold: float = 1.0             # a code used less than this (EMA count) is re-seeded

    def validate(self) -> None:
        from rlir.errors import ConfigError
        f = 2 ** len(self.channels)
        if self.resolution[0] % f or self.resolution[1] % f:
            raise ConfigError(f"resolution {self.resolution} must be divisible by {f} "
                              f"({len(self.channels)} stride-2 stages)")
        if self.codebook_size < 2:
            raise ConfigError("codebook_size must be at least 2")

    @property
    def grid(self) -> tuple[int, int]:
        f = 2 ** len(self.channels)
        return self.resolution[0] // f, self.resolution[1] // f

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class VQTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        enc, c = [nn.Conv2d(3, ch[0], 3, padding=1)], ch[0]
        for cout in ch:
            enc += [nn.Conv2d(c, cout, 4, stride=2, padding=1)] + [ResBlock(cout) for _ in range(cfg.res_blocks)]
            c = cout
        enc += [nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, cfg.dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.vq = VectorQuantize(dim=cfg.dim, codebook_size=cfg.codebook_size, decay=0.99,
                                 commitment_weight=cfg.commitment_weight, kmeans_init=True, kmeans_iters=10,
                                 threshold_ema_dead_code=cfg.dead_code_threshold, accept_image_fmap=True)
        dec, c = [nn.Conv2d(cfg.dim, ch[-1], 3, padding=1)], ch[-1]
        for cout in reversed(ch):
            dec += [ResBlock(c) for _ in range(cfg.res_blocks)] + [nn.ConvTranspose2d(c, cout, 4, stride=2, padding=1)]
            c = cout
        dec += [nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @staticmethod
    def to_float(frames: torch.Tensor) -> torch.Tensor:   # uint8 [B, H, W, 3] -> [-1, 1] [B, 3, H, W]
        return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:        # [-1, 1] [B, 3, H, W] -> uint8 [B, H, W, 3]
        return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1)

    def forward(self, frames: torch.Tensor):
        """uint8 frames [B, H, W, 3] -> (reconstruction in [-1, 1] [B, 3, H, W], codes [B, h, w], vq loss)."""
        z, codes, commit = self.vq(self.encoder(self.to_float(frames)))
        return self.decoder(z), codes, commit.sum()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [..., H, W, 3] -> codes [..., h*w] (row-major: the order the AR model reads them)."""
        lead = frames.shape[:-3]
        _, codes, _ = self.vq(self.encoder(self.to_float(frames.reshape(-1, *frames.shape[-3:]))))
        return codes.reshape(*lead, -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., h*w] -> uint8 frames [..., H, W, 3]."""
        lead = codes.shape[:-1]
        h, w = self.cfg.grid
        z = self.vq.get_output_from_indices(codes.reshape(-1, h, w).long())         # [N, dim, h, w]
        return self.to_uint8(self.decoder(z)).reshape(*lead, *self.cfg.resolution, 3)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of uint8 frames [..., H, W, 3] (infinite where identical)."""
    mse = (x.float() - y.float()).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(255.0 ** 2 / mse)


def tokenizer_loss(recon: torch.Tensor, target: torch.Tensor, vq_loss: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon, target) + F.mse_loss(recon, target) + vq_loss
