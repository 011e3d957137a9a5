"""The neural forecast model: a 6-h step on the normalised state, residual, sphere-aware.

Architecture (`SphereUNet`): a small convolutional U-Net on the latitude-longitude
grid with *spherical padding*: longitude wraps around (circular), and the rows
beyond a pole are the rows on the other side of that pole, i.e. the same rows
mirrored in latitude and shifted by 180° in longitude (what a point just
across the pole really sees; winds are padded like scalars, their sign change
across the pole is left to the learned filters). Inputs are the normalised
state plus sin/cos latitude (the forcing and the metric depend on latitude; the convolution alone
is blind to it). The net predicts the 6-h increment in units of the
per-channel increment std (GraphCast-style residual scaling); its last layer
starts at zero, so an untrained model is persistence.

Why not a spherical Fourier neural operator: torch-harmonics is not a
dependency here (its wheels pin another torch). Why this works on the sphere
and scales: every operation is local and fully convolutional, so the same
weights apply on any grid with an even number of rows/columns (`levels`
poolings need nlat, nlon divisible by 2**levels); the spherical padding removes
the seams at 0°/360° and at the poles; one pooling level per factor of 2 in
resolution keeps the receptive field at the 6-h advection distance
(1-2 cells per step at T21, ~6 at 128x256: add a level there).

Contract: `SphereUNet(x)` maps (B, C, lat, lon) normalised states to the
normalised state 6 h later. `NeuralForecastModel` meets `ForecastModel`:
physical units in and out, any leading dims, runs on its weights' device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from align_da_ops.grid import Normalization


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Hyperparameters of `SphereUNet` (stored in every checkpoint)."""

    channels: int  # state channels in and out
    width: int = 64  # hidden channels at full resolution (doubled per level)
    blocks: int = 2  # residual blocks per stage
    levels: int = 1  # 2x poolings (encoder stages below full resolution)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sphere_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad (..., lat, lon) by p cells: circular in longitude, across the poles in latitude."""
    if p == 0:
        return x
    nlon = x.shape[-1]
    if nlon % 2:
        raise ValueError(f"spherical padding needs an even number of longitudes; got {nlon}")
    south = x[..., :p, :].flip(-2).roll(nlon // 2, dims=-1)
    north = x[..., -p:, :].flip(-2).roll(nlon // 2, dims=-1)
    x = torch.cat([south, x, north], dim=-2)
    return torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)


class SphereConv(nn.Module):
    """3x3 convolution with spherical padding."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=0)

    def forward(self, x):
        return self.conv(sphere_pad(x, 1))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, width)
        self.conv1 = SphereConv(width, width)
        self.norm2 = nn.GroupNorm(8, width)
        self.conv2 = SphereConv(width, width)

    def forward(self, x):
        h = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(h)))


class SphereUNet(nn.Module):
    """Residual U-Net on the sphere: normalised state -> normalised state 6 h later."""

    def __init__(self, arch: Architecture, latitudes: np.ndarray, delta_std: np.ndarray):
        super().__init__()
        self.arch = arch
        lat = torch.as_tensor(np.deg2rad(np.asarray(latitudes, dtype=np.float64)), dtype=torch.float32)
        static = torch.stack([torch.sin(lat), torch.cos(lat)])[:, :, None]  # (2, lat, 1)
        self.register_buffer("static", static, persistent=False)
        self.register_buffer("delta_std", torch.as_tensor(np.asarray(delta_std), dtype=torch.float32)[:, None, None])
        widths = [arch.width * 2**i for i in range(arch.levels + 1)]
        self.lift = nn.Conv2d(arch.channels + 2, widths[0], 1)
        self.down = nn.ModuleList([nn.Sequential(*[ResBlock(w) for _ in range(arch.blocks)]) for w in widths])
        self.widen = nn.ModuleList([nn.Conv2d(widths[i], widths[i + 1], 1) for i in range(arch.levels)])
        self.narrow = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(arch.levels)])
        self.up = nn.ModuleList([nn.Sequential(*[ResBlock(widths[i]) for _ in range(arch.blocks)]) for i in range(arch.levels)])
        self.out_norm = nn.GroupNorm(8, widths[0])
        self.project = nn.Conv2d(widths[0], arch.channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static = self.static.to(x.dtype).expand(x.shape[0], -1, -1, x.shape[-1])
        h = self.lift(torch.cat([x, static], dim=1))
        skips = []
        for i, stage in enumerate(self.down):
            h = stage(h)
            if i < self.arch.levels:
                skips.append(h)
                h = self.widen[i](F.avg_pool2d(h, 2))
        for i in reversed(range(self.arch.levels)):
            h = skips[i] + F.interpolate(self.narrow[i](h), scale_factor=2.0, mode="nearest")
            h = self.up[i](h)
        increment = self.project(F.gelu(self.out_norm(h)))
        return x + increment * self.delta_std.to(x.dtype)


class NeuralForecastModel:
    """`ForecastModel`: normalise -> `SphereUNet` -> denormalise, batched over leading dims."""

    name = "neural"
    step_hours = 6

    def __init__(self, net: SphereUNet, normalization: Normalization, content_hash: str = ""):
        self.net = net.eval()
        self.normalization = normalization
        self.content_hash = content_hash

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "NeuralForecastModel":
        self.net.to(device)
        return self

    @torch.no_grad()
    def step(self, state: torch.Tensor) -> torch.Tensor:
        lead, device, dtype = state.shape[:-3], state.device, state.dtype
        flat = state.reshape(-1, *state.shape[-3:]).to(self.device, torch.float32)
        out = self.normalization.denormalize(self.net(self.normalization.normalize(flat)))
        return out.reshape(*lead, *out.shape[-3:]).to(device, dtype)

    def provenance(self) -> dict:
        return {"forecast_model": self.content_hash}
