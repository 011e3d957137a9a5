"""The denoiser of the background-conditioned prior p(z | z_b): eps_theta(z_t, t, z_b).

Contract: `Denoiser` is any callable (z_t, t) -> eps with z_t (N, Cz, h, w) and t a
scalar tensor in [0, 1]; the conditioning is bound beforehand (`Conditioned`), so
samplers and guidance never see the background. Guidance wraps a Denoiser and
returns a Denoiser.

Networks: every prior network is a `PreconditionedPrior` (EDM preconditioning and
the denoising score matching loss, `diffusion.preconditioning`) chosen by
`PriorArchitecture.kind`: "unet" (`LatentUNet`, the default) or "dit"
(`diffusion.dit.LatentDiT`, the paper's transformer with cross-attention to z_b).

`LatentUNet`: a U-Net on the latent grid with spherical padding (the latent is a
coarse latitude-longitude grid, so the forecast model's padding applies), the
background latent *concatenated* to the noisy latent at the input (every cell
gets its own background column; a U-Net's receptive field covers the 8x16 latent
after one pooling), sin/cos latitude of each latent row, and the diffusion time
through a sinusoidal embedding that scales and shifts every residual block (FiLM).
The output layer starts at zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from align_da_ops.diffusion.preconditioning import PreconditionedPrior
from align_da_ops.forecast.network import SphereConv


class Denoiser(Protocol):
    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


KINDS = ("unet", "dit")
_FIELDS = {
    "unet": ("latent_channels", "width", "blocks", "levels", "embedding"),
    "dit": ("kind", "latent_channels", "hidden", "depth", "heads", "patch", "embedding"),
}


@dataclasses.dataclass(frozen=True)
class PriorArchitecture:
    """Hyperparameters of the prior network (stored in every prior checkpoint).

    kind "unet": `LatentUNet` (width, blocks, levels); kind "dit": `dit.LatentDiT` (hidden features, depth
    blocks, heads, patch size); `embedding`: the sinusoidal time features of both. `to_dict` holds only the
    fields of its kind, so a U-Net's dict (and the content hash of its checkpoint) is the one written before
    the DiT existed, and a dict without `kind` is a U-Net."""

    latent_channels: int
    width: int = 96
    blocks: int = 2
    levels: int = 1
    embedding: int = 128
    kind: str = "unet"
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    patch: int = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown prior architecture kind {self.kind!r}; use one of {KINDS}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _FIELDS[self.kind]}


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class FiLMBlock(nn.Module):
    """Residual block (GroupNorm, GELU, spherical 3x3 conv) x2, time as scale and shift."""

    def __init__(self, width: int, embedding: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, width)
        self.conv1 = SphereConv(width, width)
        self.film = nn.Linear(embedding, 2 * width)
        self.norm2 = nn.GroupNorm(8, width)
        self.conv2 = SphereConv(width, width)

    def forward(self, x, emb):
        h = self.conv1(F.gelu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.gelu(h))


class LatentUNet(PreconditionedPrior):
    """eps_theta(z_t, t, z_b): (B, Cz, h, w), (B,), (B, Cz, h, w) -> (B, Cz, h, w)."""

    def __init__(self, arch: PriorArchitecture, latent_latitudes: np.ndarray, eta: float = 1e-3):
        super().__init__(eta)
        self.arch = arch
        lat = torch.as_tensor(np.deg2rad(np.asarray(latent_latitudes, dtype=np.float64)), dtype=torch.float32)
        self.register_buffer("static", torch.stack([torch.sin(lat), torch.cos(lat)])[:, :, None], persistent=False)
        widths = [arch.width * 2**i for i in range(arch.levels + 1)]
        self.embed = nn.Sequential(nn.Linear(arch.embedding, arch.embedding), nn.GELU(), nn.Linear(arch.embedding, arch.embedding))
        self.lift = nn.Conv2d(2 * arch.latent_channels + 2, widths[0], 1)
        self.down = nn.ModuleList([nn.ModuleList([FiLMBlock(w, arch.embedding) for _ in range(arch.blocks)]) for w in widths])
        self.widen = nn.ModuleList([nn.Conv2d(widths[i], widths[i + 1], 1) for i in range(arch.levels)])
        self.narrow = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(arch.levels)])
        self.up = nn.ModuleList(
            [nn.ModuleList([FiLMBlock(widths[i], arch.embedding) for _ in range(arch.blocks)]) for i in range(arch.levels)]
        )
        self.out_norm = nn.GroupNorm(8, widths[0])
        self.project = nn.Conv2d(widths[0], arch.latent_channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def raw(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The U-Net itself, F(c_in z_t, t, z_b)."""
        z_t = x
        emb = self.embed(time_embedding(t.expand(z_t.shape[0]), self.arch.embedding))
        static = self.static.to(z_t.dtype).expand(z_t.shape[0], -1, -1, z_t.shape[-1])
        h = self.lift(torch.cat([z_t, cond.to(z_t.dtype), static], dim=1))
        skips = []
        for i, stage in enumerate(self.down):
            for block in stage:
                h = block(h, emb)
            if i < self.arch.levels:
                skips.append(h)
                h = self.widen[i](F.avg_pool2d(h, 2))
        for i in reversed(range(self.arch.levels)):
            h = skips[i] + F.interpolate(self.narrow[i](h), scale_factor=2.0, mode="nearest")
            for block in self.up[i]:
                h = block(h, emb)
        return self.project(F.gelu(self.out_norm(h)))


class Conditioned:
    """A `Denoiser` from a conditional network and one background latent (broadcast over the batch)."""

    def __init__(self, net: nn.Module, cond: torch.Tensor):
        self.net, self.cond = net, cond

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = self.cond.expand(z_t.shape[0], *self.cond.shape[-3:])
        return self.net(z_t, t.reshape(-1)[:1].expand(z_t.shape[0]), cond)


def latent_latitudes(latitudes: np.ndarray, factor: int) -> np.ndarray:
    """Latitudes of the latent rows: the mean of each block of `factor` grid rows."""
    lat = np.asarray(latitudes, dtype=np.float64)
    return lat.reshape(-1, factor).mean(1)
