"""`LatentDiT`: a diffusion transformer prior network (DiT, Peebles & Xie 2023) that cross-attends to the
background latent, the paper's architecture; a drop-in alternative to `LatentUNet` (`PriorArchitecture.kind`
"dit").

Tokens: the scaled noisy latent (B, Cz, h, w) is cut into patch x patch patches, each embedded linearly to
`hidden` features; the background latent z_b is embedded the same way (its own projection, then LayerNorm)
and is what every block cross-attends to (it never enters the noisy tokens). Positions: a learned embedding
per token row, added to both token sets (latitude is no symmetry), and longitude only through rotary
embeddings in every attention with integer zonal wave numbers, so attention scores depend on the periodic
longitude difference alone: the network is exactly equivariant to rolling both inputs in longitude by whole
patches, as the U-Net with spherical padding is to any roll (training augments with such rolls).

Blocks (pre-norm residuals): self-attention over the tokens, cross-attention to the background tokens, MLP;
the time embedding sets, by adaLN-Zero, a shift, a scale and a zero-initialised gate for each of the three,
so every block starts as the identity. Final layer: adaLN, then a zero-initialised linear map of each token
back to its patch, so F starts at zero like the U-Net's. EDM preconditioning and the loss are
`PreconditionedPrior`'s.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from align_da_ops.diffusion.network import PriorArchitecture, time_embedding
from align_da_ops.diffusion.preconditioning import PreconditionedPrior

MLP_RATIO = 4


def zonal_rotary(columns: int, head_dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (columns, head_dim/2) of the rotary angles k_m * 2 pi j / columns for token column j and
    integer wave numbers k_m spread over 0..columns/2 (periodic in longitude by construction)."""
    waves = torch.linspace(0, columns // 2, head_dim // 2, dtype=torch.float64).round()
    angles = 2 * np.pi * torch.arange(columns, dtype=torch.float64)[:, None] / columns * waves[None]
    return angles.cos().to(device, dtype), angles.sin().to(device, dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs (i, i + d/2) of x (B, heads, N, d) by the angles of (cos, sin) (N, d/2)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention of tokens x (B, N, D) to a context (B, M, D) (itself when None), zonal rotary
    positions on queries and keys (rotary (cos, sin) per token)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, rotary) -> torch.Tensor:
        context = x if context is None else context
        q = rotate(self._split(self.query(x)), *rotary)
        k, v = (self._split(y) for y in self.key_value(context).chunk(2, dim=-1))
        o = F.scaled_dot_product_attention(q, rotate(k, *rotary), v)
        return self.out(o.transpose(1, 2).flatten(2))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Self-attention, cross-attention to the background tokens and MLP, each adaLN-Zero modulated by c."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6) for _ in range(3)])
        self.self_attention = Attention(hidden, heads)
        self.cross_attention = Attention(hidden, heads)
        self.mlp = nn.Sequential(nn.Linear(hidden, MLP_RATIO * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(MLP_RATIO * hidden, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 9 * hidden))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x, c, background, rotary):
        mods = self.modulation(c)[:, None].chunk(9, dim=-1)
        branches = (lambda h: self.self_attention(h, None, rotary), lambda h: self.cross_attention(h, background, rotary),
                    self.mlp)
        for i, (norm, branch) in enumerate(zip(self.norms, branches)):
            shift, scale, gate = mods[3 * i : 3 * i + 3]
            x = x + gate * branch(modulate(norm(x), shift, scale))
        return x


def check_shape(arch: PriorArchitecture, rows: int, columns: int | None = None) -> None:
    """ValueError unless the latent rows (and columns) are multiples of the patch and hidden of 2 x heads."""
    p = arch.patch
    if p < 1 or rows % p or (columns is not None and columns % p) or arch.hidden % (2 * arch.heads):
        raise ValueError(f"a DiT on a {rows}x{columns or '?'} latent needs patch {p} to divide both and hidden "
                         f"{arch.hidden} to be a multiple of 2 x {arch.heads} heads")


class LatentDiT(PreconditionedPrior):
    """eps_theta(z_t, t, z_b): (B, Cz, h, w), (B,), (B, Cz, h, w) -> (B, Cz, h, w); h = len(latent_latitudes),
    h and w multiples of arch.patch, arch.hidden a multiple of 2 * arch.heads."""

    def __init__(self, arch: PriorArchitecture, latent_latitudes: np.ndarray, eta: float = 1e-3):
        super().__init__(eta)
        rows, p = len(latent_latitudes), arch.patch
        check_shape(arch, rows)
        self.arch = arch
        self.patchify = nn.Conv2d(arch.latent_channels, arch.hidden, p, stride=p)
        self.patchify_background = nn.Conv2d(arch.latent_channels, arch.hidden, p, stride=p)
        self.background_norm = nn.LayerNorm(arch.hidden)
        self.row_embedding = nn.Parameter(0.02 * torch.randn(rows // p, arch.hidden))
        self.embed = nn.Sequential(nn.Linear(arch.embedding, arch.hidden), nn.SiLU(), nn.Linear(arch.hidden, arch.hidden))
        self.blocks = nn.ModuleList([DiTBlock(arch.hidden, arch.heads) for _ in range(arch.depth)])
        self.final_norm = nn.LayerNorm(arch.hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(arch.hidden, 2 * arch.hidden))
        self.project = nn.Linear(arch.hidden, p * p * arch.latent_channels)
        for layer in (self.final_modulation[1], self.project):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _tokens(self, patchify: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """(B, Cz, h, w) -> (B, rows * columns, hidden), row-major, with the row embedding added."""
        h = patchify(x)
        return (h + self.row_embedding.T[None, :, :, None].to(h.dtype)).flatten(2).transpose(1, 2)

    def raw(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The transformer itself, F(c_in z_t, t, z_b)."""
        batch, cz, nlat, nlon = x.shape
        p = self.arch.patch
        rows, columns = nlat // p, nlon // p
        c = self.embed(time_embedding(t.expand(batch), self.arch.embedding)).to(x.dtype)
        tokens = self._tokens(self.patchify, x)
        background = self.background_norm(self._tokens(self.patchify_background, cond.to(x.dtype)))
        cos, sin = zonal_rotary(columns, self.arch.hidden // self.arch.heads, x.device, x.dtype)
        rotary = (cos.repeat(rows, 1), sin.repeat(rows, 1))  # token n sits in column n % columns
        for block in self.blocks:
            tokens = block(tokens, c, background, rotary)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        out = self.project(modulate(self.final_norm(tokens), shift, scale))  # (B, N, p * p * Cz)
        out = out.view(batch, rows, columns, p, p, cz).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, cz, nlat, nlon)
