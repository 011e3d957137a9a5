"""The denoiser of the background-conditioned prior p(z | z_b): eps_theta(z_t, t, z_b).

Contract: `Denoiser` is any callable (z_t, t) -> eps with z_t (N, Cz, h, w) and t a
scalar tensor in [0, 1]; the conditioning is bound beforehand (`Conditioned`), so
samplers and guidance never see the background. Guidance wraps a Denoiser and
returns a Denoiser.

Network (`LatentUNet`): a U-Net on the latent grid with spherical padding (the
latent is a coarse latitude-longitude grid, so the forecast model's padding
applies), the background latent *concatenated* to the noisy latent at the input
(the paper cross-attends to z_b in a DiT with 2x2 patches; at the latent sizes
of this system, 8x16 at T21 to 32x64 at 1.4°, channel concatenation gives every
cell its own background column and a U-Net's receptive field covers the whole
latent after one pooling, so we use the simpler, cheaper network; a DiT was
not built or compared), sin/cos latitude of each latent row, and the diffusion
time through a sinusoidal embedding that scales and shifts every residual
block (FiLM). The output layer starts at zero.

Preconditioning (Karras et al. 2022, EDM, with unit data variance): with the
noise level s = sigma/mu, the network output F gives the clean estimate
D = c_skip z_t/mu + c_out F (c_skip = 1/(1+s^2), c_out = s/sqrt(1+s^2), input
scaled to unit variance by 1/sqrt(mu^2+sigma^2)) and the returned noise is
eps = (z_t - mu D)/sigma. Near t = 1 (mu = eta = 1e-3) a plain eps-network's
error is multiplied by sigma/mu = 1000 in Tweedie's estimate and in the first
DDIM steps: on the tiny OSSE the sampled analyses diverged (normalised MSE
3e4 against 0.32 for the background). Preconditioned, D stays a bounded
network output at high noise and F is (minus) the noise at low noise. Training
is still denoising score matching: `loss` is the squared error of F against
its target, i.e. the eps-error weighted by 1 + s^2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.forecast.network import SphereConv


class Denoiser(Protocol):
    def __call__(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class PriorArchitecture:
    """Hyperparameters of `LatentUNet` (stored in every prior checkpoint)."""

    latent_channels: int
    width: int = 96
    blocks: int = 2
    levels: int = 1
    embedding: int = 128

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


class LatentUNet(nn.Module):
    """eps_theta(z_t, t, z_b): (B, Cz, h, w), (B,), (B, Cz, h, w) -> (B, Cz, h, w)."""

    def __init__(self, arch: PriorArchitecture, latent_latitudes: np.ndarray, eta: float = 1e-3):
        super().__init__()
        self.arch = arch
        self.schedule = CosineSchedule(eta)
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

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor):
        shape = (-1,) + (1,) * (like.dim() - 1)
        t = t.expand(like.shape[0]).to(torch.float64)
        mu, sigma = self.schedule.mu(t), self.schedule.sigma(t)
        s2 = (sigma / mu) ** 2
        c_skip, c_out = 1 / (1 + s2), (sigma / mu) / (1 + s2).sqrt()
        c_in = 1 / (mu**2 + sigma**2).sqrt()
        return [c.to(like.dtype).view(shape) for c in (mu, sigma, c_skip, c_out, c_in)]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        mu, sigma, c_skip, c_out, c_in = self._coefficients(t, z_t)
        clean = c_skip * z_t / mu + c_out * self.raw(c_in * z_t, t, cond)
        return (z_t - mu * clean) / sigma

    def loss(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample denoising score matching loss (B,): mean squared error of F against its target."""
        mu, sigma, c_skip, c_out, c_in = self._coefficients(t, z0)
        z_t = mu * z0 + sigma * eps
        target = (z0 - c_skip * z_t / mu) / c_out
        return (self.raw(c_in * z_t, t, cond) - target).pow(2).mean(dim=(1, 2, 3))

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
