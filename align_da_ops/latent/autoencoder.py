"""The latent autoencoder: normalised states <-> standardised latents, `downsampling`x smaller per axis.

Align-DA (Sun et al. 2025, §3.1) runs its score-based prior, the observation
guidance and the alignment in the latent space of a pretrained autoencoder
(ERA5 69x128x256 -> a 4x smaller grid per axis). `SphereAutoencoder` is that
autoencoder on the latitude-longitude grid, built from the forecast model's
sphere-aware parts (`sphere_pad`, `SphereConv`, `ResBlock`): every 3x3
convolution pads circularly in longitude and across the poles.

Two paths, summed. Linear: each f x f patch of the state (C f^2 numbers) maps
to `latent_channels` numbers and back (`patch_in`, `patch_out`: stride-f
convolutions), initialised by `init_from_pca` to the patch PCA of the training
states. Nonlinear: state + sin/cos(latitude) -> 1x1 lift to `width` -> per 2x
stage: `blocks` residual blocks, then a 2x2 stride-2 convolution (a learned
space-to-depth: the 2x2 cells of the finer grid tile the coarser one exactly,
so no padding is involved) doubling the width -> `blocks` residual blocks at
the coarsest grid -> 1x1 projection to `latent_channels`; the decoder is the
mirror image, with nearest-neighbour upsampling followed by a spherical 3x3
convolution per 2x stage (no checkerboard artefacts) and sin/cos(latitude),
averaged onto the latent grid, concatenated to the latents. Its output layers
start at zero, so training starts from patch PCA. Why: with ~100 training
states the nonlinear path alone underfits and overfits at once (T21 tiny, 64
latent channels: validation MSE 0.087 after 43 epochs, patch PCA alone 0.036,
both paths 0.026 after 20); PCA gets the bulk in closed form and the nets
learn what is nonlinear.

Latents are *standardised*: the persistent buffers `latent_mean` and
`latent_std` (per latent channel; 0 and 1 until set) are applied at the end of
`encode` and undone at the start of `decode`. Training never sees them
(`reconstruct` bypasses them), so they are set once after training from the
training split's latents (`set_latent_statistics`): the diffusion prior then
sees roughly zero-mean, unit-variance latents whatever the autoencoder's
internal scale.

Deterministic, not a VAE: the diffusion prior models the latent distribution
itself, so the KL term of a VAE would only blur reconstructions and add noise
to the analysis; what a prior needs from the latent space - a bounded, roughly
unit scale - is provided by the standardisation, and a deterministic encoder
makes encode(truth) a reproducible target for tests and alignment.

Contract: `SphereAutoencoder.encode` maps (B, C, nlat, nlon) normalised states
to (B, latent_channels, nlat/f, nlon/f); `decode` the inverse shapes.
`AutoencoderModel` works in physical units with any leading dims and is
differentiable (callers wrap it in `torch.no_grad()` when they need no graph).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from align_da_ops.data.streaming import batches_of
from align_da_ops.errors import SchemaError
from align_da_ops.forecast.network import ResBlock, SphereConv
from align_da_ops.grid import Normalization

_FACTORS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class AutoencoderArchitecture:
    """Hyperparameters of `SphereAutoencoder` (stored in every checkpoint); defaults: the shipped tiny one."""

    channels: int  # state channels in and out
    latent_channels: int = 128  # channels of the latent grid
    downsampling: int = 4  # factor per horizontal axis (a power of 2: 1, 2, 4, 8)
    width: int = 32  # hidden channels at full resolution (doubled per 2x stage; multiple of 8)
    blocks: int = 1  # residual blocks per stage (encoder and decoder)

    def __post_init__(self):
        if self.downsampling not in _FACTORS:
            raise ValueError(f"downsampling must be one of {_FACTORS}; got {self.downsampling}")
        if self.width % 8 or self.width < 8:
            raise ValueError(f"width must be a positive multiple of 8 (group norm); got {self.width}")
        if self.latent_channels < 1 or self.blocks < 0 or self.channels < 1:
            raise ValueError(f"channels, latent_channels must be >= 1 and blocks >= 0; got {self}")

    @property
    def stages(self) -> int:
        """Number of 2x down-sampling stages."""
        return int(self.downsampling).bit_length() - 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _stack(width: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(width) for _ in range(blocks)])


def _static(latitudes: np.ndarray) -> torch.Tensor:
    lat = torch.as_tensor(np.deg2rad(np.asarray(latitudes, dtype=np.float64)), dtype=torch.float32)
    return torch.stack([torch.sin(lat), torch.cos(lat)])[:, :, None]  # (2, lat, 1)


class SphereAutoencoder(nn.Module):
    """Spherical convolutional autoencoder: normalised state <-> standardised latents."""

    def __init__(self, arch: AutoencoderArchitecture, latitudes: np.ndarray):
        super().__init__()
        self.arch = arch
        f = arch.downsampling
        if len(latitudes) % f:
            raise ValueError(f"{len(latitudes)} latitudes are not divisible by downsampling={f}")
        static = _static(latitudes)
        self.register_buffer("static", static, persistent=False)
        self.register_buffer("static_latent", F.avg_pool2d(static, (f, 1)) if f > 1 else static, persistent=False)
        self.register_buffer("latent_mean", torch.zeros(arch.latent_channels))
        self.register_buffer("latent_std", torch.ones(arch.latent_channels))
        widths = [arch.width * 2**i for i in range(arch.stages + 1)]
        # linear path: f x f patch <-> latent vector (patch PCA at the start of training)
        self.patch_in = nn.Conv2d(arch.channels, arch.latent_channels, f, stride=f)
        self.patch_out = nn.ConvTranspose2d(arch.latent_channels, arch.channels, f, stride=f)
        # nonlinear encoder
        self.lift = nn.Conv2d(arch.channels + 2, widths[0], 1)
        self.enc = nn.ModuleList([_stack(w, arch.blocks) for w in widths])
        self.down = nn.ModuleList([nn.Conv2d(widths[i], widths[i + 1], 2, stride=2) for i in range(arch.stages)])
        self.enc_norm = nn.GroupNorm(8, widths[-1])
        self.to_latent = nn.Conv2d(widths[-1], arch.latent_channels, 1)
        # nonlinear decoder
        self.from_latent = nn.Conv2d(arch.latent_channels + 2, widths[-1], 1)
        self.dec = nn.ModuleList([_stack(w, arch.blocks) for w in widths])
        self.up = nn.ModuleList([SphereConv(widths[i + 1], widths[i]) for i in range(arch.stages)])
        self.dec_norm = nn.GroupNorm(8, widths[0])
        self.project = nn.Conv2d(widths[0], arch.channels, 1)

    @property
    def downsampling(self) -> int:
        return self.arch.downsampling

    @property
    def latent_channels(self) -> int:
        return self.arch.latent_channels

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        nlat = self.static.shape[1] // (1 if what == "state" else self.arch.downsampling)
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != nlat or x.shape[3] % 2:
            raise ValueError(f"{what} of shape {tuple(x.shape)} does not fit (B, {channels}, {nlat}, even nlon)")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised state (B, C, lat, lon) -> latents before standardisation."""
        self._check(x, self.arch.channels, "state")
        if x.shape[-1] % self.arch.downsampling:
            raise ValueError(f"{x.shape[-1]} longitudes are not divisible by downsampling={self.arch.downsampling}")
        static = self.static.to(x.dtype).expand(x.shape[0], -1, -1, x.shape[-1])
        h = self.lift(torch.cat([x, static], dim=1))
        for i, stage in enumerate(self.enc):
            h = stage(h)
            if i < self.arch.stages:
                h = self.down[i](h)
        return self.to_latent(F.gelu(self.enc_norm(h))) + self.patch_in(x)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Latents before standardisation (B, Cz, lat/f, lon/f) -> normalised state."""
        self._check(z, self.arch.latent_channels, "latent")
        static = self.static_latent.to(z.dtype).expand(z.shape[0], -1, -1, z.shape[-1])
        h = self.from_latent(torch.cat([z, static], dim=1))
        for i in reversed(range(self.arch.stages + 1)):
            h = self.dec[i](h)
            if i > 0:
                h = self.up[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.project(F.gelu(self.dec_norm(h))) + self.patch_out(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised state (B, C, lat, lon) -> standardised latents (B, Cz, lat/f, lon/f)."""
        return (self.encode_raw(x) - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents (B, Cz, lat/f, lon/f) -> normalised state (B, C, lat, lon)."""
        return self.decode_raw(z * self.latent_std[:, None, None] + self.latent_mean[:, None, None])

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) without the standardisation (what training optimises)."""
        return self.decode_raw(self.encode_raw(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`reconstruct` (the call DDP wraps in training)."""
        return self.reconstruct(x)

    @torch.no_grad()
    def init_from_pca(self, x_norm, batch: int = 64) -> None:
        """Make the untrained autoencoder the latitude-weighted patch PCA of x_norm (B, C, lat, lon), a tensor
        or an iterable of such batches (streamed).

        The linear patch path (`patch_in`: each f x f patch of the state -> Cz numbers;
        `patch_out`: back) gets the leading eigenvectors of the patches' (uncentred:
        normalised states have zero mean) second-moment matrix, weighted by cos(latitude)
        like the loss: the best linear autoencoder of this shape (up to the weights
        varying inside a patch), exact for states whose patches lie in a Cz-dimensional
        subspace. The nonlinear path's output
        layers are zeroed, so training starts from patch PCA and learns the nonlinear
        correction (as the forecast net starts from persistence).
        """
        f, cz, c = self.arch.downsampling, self.arch.latent_channels, self.arch.channels
        d = c * f * f
        w = self.static[1, :, 0].double().cpu()  # cos(latitude)
        w = (w / w.mean()).reshape(-1, f).mean(1)  # per row of patches
        moment, total = torch.zeros(d, d, dtype=torch.float64), 0.0
        for x in batches_of(x_norm, batch):
            x = x.double().cpu()
            b, _, nlat, nlon = x.shape
            patches = x.reshape(b, c, nlat // f, f, nlon // f, f).permute(0, 2, 4, 1, 3, 5).reshape(-1, d)
            pw = w[None, :, None].expand(b, -1, nlon // f).reshape(-1)
            moment += patches.T @ (patches * pw[:, None])
            total += float(pw.sum())
        _, vectors = torch.linalg.eigh(moment / total)  # eigenvalues ascending
        k = min(cz, d)
        basis = torch.zeros(cz, d, dtype=torch.float64)
        basis[:k] = vectors[:, -k:].flip(-1).T
        kernel = basis.reshape(cz, c, f, f).to(self.patch_in.weight)
        self.patch_in.weight.copy_(kernel)
        self.patch_out.weight.copy_(kernel)
        for layer in (self.patch_in, self.patch_out, self.to_latent, self.project):
            nn.init.zeros_(layer.bias)
        for layer in (self.to_latent, self.project):
            nn.init.zeros_(layer.weight)

    def reset_latent_statistics(self) -> None:
        self.latent_mean.zero_()
        self.latent_std.fill_(1.0)

    @torch.no_grad()
    def set_latent_statistics(self, x_norm, batch: int = 16, floor: float = 1e-6) -> None:
        """Set latent_mean/std to the per-channel mean/std of the raw latents of x_norm (samples and grid);
        x_norm: (B, C, lat, lon), a tensor or an iterable of such batches (streamed)."""
        n, total, total_sq = 0, 0.0, 0.0
        device = self.latent_mean.device
        for x in batches_of(x_norm, batch):
            h = self.encode_raw(x.to(device, torch.float32)).double()
            total = total + h.sum((0, 2, 3))
            total_sq = total_sq + h.pow(2).sum((0, 2, 3))
            n += h.shape[0] * h.shape[2] * h.shape[3]
        mean = total / n
        std = (total_sq / n - mean.pow(2)).clamp_min(0.0).sqrt().clamp_min(floor)
        self.latent_mean.copy_(mean.float())
        self.latent_std.copy_(std.float())


class IdentityAutoencoder(nn.Module):
    """encode = decode = identity (f = 1, latents = normalised states): the oracle for latent-space tests."""

    downsampling = 1

    def __init__(self, channels: int | None = None):
        super().__init__()
        self.latent_channels = channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x


class AutoencoderModel:
    """Physical units <-> standardised latents: normalise -> net.encode, net.decode -> denormalise.

    Any leading dims (..., C, lat, lon); results come back on the input's device and
    dtype (the net computes in float32 on its own device). Differentiable: no
    `torch.no_grad` inside.
    """

    def __init__(self, net: nn.Module, normalization: Normalization, content_hash: str = ""):
        self.net = net.eval()
        self.normalization = normalization
        self.content_hash = content_hash

    @property
    def downsampling(self) -> int:
        return int(self.net.downsampling)

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.net.parameters(), self.net.buffers()), None)
        return first.device if first is not None else getattr(self, "_device", torch.device("cpu"))

    def to(self, device) -> "AutoencoderModel":
        self._device = torch.device(device)
        self.net.to(self._device)
        return self

    def latent_shape(self, nlat: int, nlon: int) -> tuple[int, int, int]:
        """(Cz, nlat/f, nlon/f) of the latents of a state on an nlat x nlon grid."""
        f = self.downsampling
        if nlat % f or nlon % f:
            raise SchemaError(f"grid {nlat}x{nlon} is not divisible by the autoencoder's downsampling={f}")
        cz = self.net.latent_channels or len(self.normalization.channels)
        return (int(cz), nlat // f, nlon // f)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Physical state (..., C, lat, lon) -> standardised latents (..., Cz, lat/f, lon/f)."""
        lead, device, dtype = x.shape[:-3], x.device, x.dtype
        flat = x.reshape(-1, *x.shape[-3:]).to(self.device, torch.float32)
        z = self.net.encode(self.normalization.normalize(flat))
        return z.reshape(*lead, *z.shape[-3:]).to(device, dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents (..., Cz, lat/f, lon/f) -> physical state (..., C, lat, lon)."""
        lead, device, dtype = z.shape[:-3], z.device, z.dtype
        flat = z.reshape(-1, *z.shape[-3:]).to(self.device, torch.float32)
        x = self.normalization.denormalize(self.net.decode(flat))
        return x.reshape(*lead, *x.shape[-3:]).to(device, dtype)

    def provenance(self) -> dict:
        return {"autoencoder": self.content_hash}
