"""Checkpoints of the latent prior (unaligned or aligned), on `align_da_ops.checkpoint_io`.

Metadata (all hashed): config (experiment JSON), config_hash, architecture
(PriorArchitecture.to_dict: a U-Net's has no `kind`), latent_shape (Cz, h, w), latent_latitudes, schedule {eta},
autoencoder (content hash of the autoencoder whose latents it models),
residual_scale (per latent channel: the prior models d = (z - z_b) / scale, the
background's latent error, standardised),
forecast_model (hash of the model that made its training backgrounds), leads
(background leads in hours), lineage {kind: dsm | dpo | ipo, reference: hash of
the prior it was aligned from ('' for dsm), preference_data: hash of the pairs
('' for dsm), settings}. `state_dict` holds the EMA weights (the ones sampled
with); `training` the raw weights, optimiser and history for resuming.
Loading refuses a prior made for another autoencoder than the one in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from align_da_ops import checkpoint_io
from align_da_ops.diffusion.dit import LatentDiT
from align_da_ops.diffusion.network import Conditioned, LatentUNet, PriorArchitecture
from align_da_ops.diffusion.preconditioning import PreconditionedPrior
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.errors import CheckpointError

FORMAT = "align-da-ops/latent-prior/1"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
META_KEYS = (
    "format", "config", "config_hash", "architecture", "latent_shape", "latent_latitudes", "schedule",
    "autoencoder", "forecast_model", "leads", "lineage", "residual_scale",
)


def shipped_prior(experiment_name: str, variant: str = "") -> Path:
    """The packaged prior for an experiment: prior-<name>.pt, or prior-<name>-<variant>.pt (e.g. aligned-m)."""
    return SHIPPED_DIR / (f"prior-{experiment_name}-{variant}.pt" if variant else f"prior-{experiment_name}.pt")


def build_network(arch: PriorArchitecture, latent_latitudes, eta: float = 1e-3) -> PreconditionedPrior:
    """The prior network of `arch.kind` ("unet": LatentUNet, "dit": LatentDiT), freshly initialised."""
    return (LatentDiT if arch.kind == "dit" else LatentUNet)(arch, np.asarray(latent_latitudes), eta)


def build_checkpoint(net: PreconditionedPrior, meta: dict, training=None) -> dict:
    """`meta` holds every META_KEYS entry but format and architecture."""
    full = {**meta, "architecture": net.arch.to_dict()}
    return checkpoint_io.assemble(FORMAT, full, net, META_KEYS, training)


def read(path: Path) -> dict:
    return checkpoint_io.read(path, FORMAT, META_KEYS, "train one with `align-da train prior CONFIG`")


def network_of(ckpt: dict, where: str = "") -> PreconditionedPrior:
    try:
        arch = PriorArchitecture(**ckpt["architecture"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an unknown architecture {ckpt['architecture']}: {exc}") from None
    net = build_network(arch, ckpt["latent_latitudes"], float(ckpt["schedule"]["eta"]))
    return checkpoint_io.load_weights(net, ckpt, where)


class ResidualCodec:
    """Physical state <-> standardised residual latent d = (E(x) - z_b) / scale (a guidance `Codec`)."""

    def __init__(self, autoencoder, z_background: torch.Tensor, scale: torch.Tensor):
        self.autoencoder, self.z_b, self.scale = autoencoder, z_background, scale

    def encode(self, x):
        return (self.autoencoder.encode(x) - self.z_b) / self.scale

    def decode(self, d):
        return self.autoencoder.decode(self.z_b + self.scale * d)


class LatentPrior:
    """p(z | z_b) as p(d | z_b), d = (z - z_b) / scale: the EMA network of a checkpoint plus its schedule."""

    def __init__(self, net: PreconditionedPrior, schedule: CosineSchedule, meta: dict):
        self.net = net.eval().requires_grad_(False)
        self.schedule = schedule
        self.meta = meta
        self.content_hash = meta["content_hash"]
        self.scale = torch.as_tensor(meta.get("residual_scale") or [1.0], dtype=torch.float32)[:, None, None]

    def denoiser(self, z_background: torch.Tensor) -> Conditioned:
        return Conditioned(self.net, z_background)

    def codec(self, autoencoder, z_background: torch.Tensor) -> ResidualCodec:
        return ResidualCodec(autoencoder, z_background, self.scale.to(z_background.device))

    def sample(self, autoencoder, background: torch.Tensor, sampler, generators, guidance=None, obs=None):
        """(residual latents (N, Cz, h, w), z_b (1, Cz, h, w), members (N, C, lat, lon) physical) for one background.

        `guidance` (with its `obs`: an ObservationTerm) wraps the prior denoiser; None: unguided."""
        device = autoencoder.device
        with torch.no_grad():
            z_b = autoencoder.encode(background.to(device, torch.float32)[None])
        codec = self.codec(autoencoder, z_b)
        denoiser = self.denoiser(z_b)
        if guidance is not None:
            denoiser = guidance.wrap(denoiser, self.schedule, codec, obs)
        d = sampler.sample(denoiser, self.schedule, z_b.shape[1:], generators, device)
        with torch.no_grad():
            members = codec.decode(d)
        return d, z_b, members

    def to(self, device) -> "LatentPrior":
        self.net.to(device)
        return self

    def provenance(self) -> dict:
        return {"prior": self.content_hash}


def load_prior(path: Path, autoencoder_hash: str | None = None, device="cpu") -> LatentPrior:
    """The prior in a checkpoint; refuses one trained on another autoencoder's latents."""
    ckpt = read(path)
    if autoencoder_hash is not None and ckpt["autoencoder"] != autoencoder_hash:
        raise CheckpointError(
            f"prior {path} models the latents of autoencoder {ckpt['autoencoder']}, but autoencoder "
            f"{autoencoder_hash} is in use; retrain the prior (`align-da train prior`) on this autoencoder"
        )
    net = network_of(ckpt, where=f"prior {path}")
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "training")}
    return LatentPrior(net, CosineSchedule(float(ckpt["schedule"]["eta"])), meta).to(torch.device(device))
