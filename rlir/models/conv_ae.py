"""The convolutional encoder/decoder pair both frame codecs share (VQ tokenizer, continuous autoencoder).

    encoder: [B, 3, H, W] -> conv -> (stride-2 conv, res blocks) per stage -> [B, dim, H/2^n, W/2^n]
    decoder: the mirror image, transposed convs back to [B, 3, H, W]
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                  nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def conv_encoder(channels, res_blocks: int, dim: int) -> nn.Sequential:
    layers, c = [nn.Conv2d(3, channels[0], 3, padding=1)], channels[0]
    for cout in channels:
        layers += [nn.Conv2d(c, cout, 4, stride=2, padding=1)] + [ResBlock(cout) for _ in range(res_blocks)]
        c = cout
    return nn.Sequential(*layers, nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, dim, 1))


def conv_decoder(channels, res_blocks: int, dim: int) -> nn.Sequential:
    layers, c = [nn.Conv2d(dim, channels[-1], 3, padding=1)], channels[-1]
    for cout in reversed(channels):
        layers += [ResBlock(c) for _ in range(res_blocks)] + [nn.ConvTranspose2d(c, cout, 4, stride=2, padding=1)]
        c = cout
    return nn.Sequential(*layers, nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of uint8 frames [..., H, W, 3] (infinite where identical)."""
    mse = (x.float() - y.float()).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(255.0 ** 2 / mse)
