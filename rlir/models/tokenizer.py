"""Frame codecs: image -> a grid of latent tokens -> image.

With `quantize` (the default) it is the AR world model's VQ tokenizer (discrete codes, its vocabulary);
without, the diffusion world model's continuous autoencoder (latents scaled to unit variance).

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

from rlir.models.conv_ae import conv_decoder, conv_encoder, to_float, to_uint8


@dataclass
class TokenizerConfig:
    resolution: tuple[int, int] = (48, 64)
    channels: tuple[int, ...] = (64, 128, 128)   # one stride-2 stage each: 48x64 -> 6x8 codes
    dim: int = 64                                # code vector size
    codebook_size: int = 1024
    res_blocks: int = 1
    commitment_weight: float = 0.25
    dead_code_threshold: float = 1.0             # a code used less than this (EMA count) is re-seeded
    quantize: bool = True                        # False: a continuous autoencoder (diffusion world model)

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


class VQTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = conv_encoder(cfg.channels, cfg.res_blocks, cfg.dim)
        self.vq = None if not cfg.quantize else VectorQuantize(dim=cfg.dim, codebook_size=cfg.codebook_size, decay=0.99,
                                 commitment_weight=cfg.commitment_weight, kmeans_init=True, kmeans_iters=10,
                                 threshold_ema_dead_code=cfg.dead_code_threshold, accept_image_fmap=True)
        self.decoder = conv_decoder(cfg.channels, cfg.res_blocks, cfg.dim)
        if not cfg.quantize:
            self.register_buffer("latent_scale", torch.ones(()))   # running std of the latents

    @property
    def kind(self) -> str:
        return "tokenizer" if self.cfg.quantize else "autoencoder"

    to_float, to_uint8 = staticmethod(to_float), staticmethod(to_uint8)

    def forward(self, frames: torch.Tensor):
        """uint8 frames [B, H, W, 3] -> (reconstruction in [-1, 1] [B, 3, H, W], codes [B, h, w] or latents
        [B, dim, h, w], auxiliary loss: the VQ commitment loss, or a small latent penalty)."""
        z = self.encoder(self.to_float(frames))
        if self.vq is None:
            if self.training:
                with torch.no_grad():
                    self.latent_scale.lerp_(z.float().std(), 0.01)   # float: z is bf16 under autocast
            return self.decoder(z), z, 1e-4 * z.pow(2).mean()
        z, codes, commit = self.vq(z)
        return self.decoder(z), codes, commit.sum()

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """uint8 [..., H, W, 3] -> codes [..., h*w] (row-major: the order the AR model reads them), or
        unit-scale latents [..., h*w, dim] without quantisation. `bf16`: the conv encoder under bf16
        autocast (about 2x on a CPU with bf16 units), the nearest-code search in float32."""
        lead = frames.shape[:-3]
        x = self.to_float(frames.reshape(-1, *frames.shape[-3:]))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            z = self.encoder(x)
        z = z.float()
        if self.vq is None:
            return (z / self.latent_scale).flatten(2).transpose(1, 2).reshape(*lead, -1, self.cfg.dim)
        _, codes, _ = self.vq(z)
        return codes.reshape(*lead, -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [..., h*w] (or latents [..., h*w, dim]) -> uint8 frames [..., H, W, 3]."""
        h, w = self.cfg.grid
        if self.vq is None:
            lead = codes.shape[:-2]
            z = codes.reshape(-1, h, w, self.cfg.dim).permute(0, 3, 1, 2) * self.latent_scale
        else:
            lead = codes.shape[:-1]
            z = self.vq.get_output_from_indices(codes.reshape(-1, h, w).long())     # [N, dim, h, w]
        return self.to_uint8(self.decoder(z)).reshape(*lead, *self.cfg.resolution, 3)


def tokenizer_loss(recon: torch.Tensor, target: torch.Tensor, vq_loss: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(recon, target) + F.mse_loss(recon, target) + vq_loss
