"""Checkpoints of the latent autoencoder (.pt): weights plus everything needed to trust them.

Stored with `align_da_ops.checkpoint_io` (weights-only dict, content hash). Model
metadata: format, config (the experiment config, resolved, as JSON),
config_hash, architecture (AutoencoderArchitecture fields), channels,
normalization {mean, std, period}, grid {nlat, nlon, latitudes},
reconstruction {mse, mae: per-channel validation scores in normalised units,
latitude-weighted}; the latent standardisation (latent_mean, latent_std) is part
of the weights. Optionally training {epoch, optimizer, history, settings} for
resuming. Loading refuses, with `CheckpointError`, a missing/corrupt file, a
hash that does not match, or a checkpoint for other channels, another grid or
another architecture than expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from align_da_ops import checkpoint_io
from align_da_ops.errors import CheckpointError
from align_da_ops.forecast.checkpoint import SHIPPED_DIR, grid_meta, normalization_meta, normalization_of
from align_da_ops.grid import Normalization
from align_da_ops.latent.autoencoder import AutoencoderArchitecture, AutoencoderModel, SphereAutoencoder

FORMAT = "align-da-ops/autoencoder/1"
_MODEL_KEYS = ("format", "config", "config_hash", "architecture", "channels", "normalization", "grid", "reconstruction")
save = checkpoint_io.save
__all__ = ["FORMAT", "build_checkpoint", "check_compatible", "content_hash", "load_autoencoder", "network_of",
           "normalization_of", "read", "save", "shipped_checkpoint", "strip_training"]


def shipped_checkpoint(experiment_name: str) -> Path:
    """Where the packaged autoencoder for an experiment config lives (it may not exist)."""
    return SHIPPED_DIR / f"autoencoder-{experiment_name}.pt"


def content_hash(ckpt: dict) -> str:
    """sha256 (16 hex) of the model metadata and weights; training state excluded."""
    return checkpoint_io.content_hash(ckpt, _MODEL_KEYS)


def build_checkpoint(
    net: SphereAutoencoder,
    normalization: Normalization,
    config_json: str,
    config_hash: str,
    latitudes,
    nlon: int,
    reconstruction: dict,
    training=None,
) -> dict:
    """The checkpoint dict for `net` (see the module docstring), hashed; reconstruction: {mse, mae} per channel."""
    meta = {
        "config": config_json,
        "config_hash": config_hash,
        "architecture": net.arch.to_dict(),
        "channels": list(normalization.channels),
        "normalization": normalization_meta(normalization),
        "grid": grid_meta(latitudes, nlon),
        "reconstruction": {k: [float(v) for v in np.asarray(reconstruction[k])] for k in ("mse", "mae")},
    }
    return checkpoint_io.assemble(FORMAT, meta, net, _MODEL_KEYS, training)


def read(path: Path) -> dict:
    """Load a checkpoint dict (weights_only) and verify its format and content hash."""
    return checkpoint_io.read(path, FORMAT, _MODEL_KEYS, "train one with `align-da train autoencoder CONFIG`")


def strip_training(src: Path, dst: Path) -> str:
    """Copy a checkpoint without its training state (for shipping); returns the unchanged content hash."""
    return checkpoint_io.strip_training(read(src), dst)


def check_compatible(ckpt: dict, channels=None, nlat=None, nlon=None, architecture: dict | None = None, where="") -> None:
    """Raise CheckpointError naming expected vs actual if the checkpoint does not fit."""
    checkpoint_io.check_grid(ckpt, channels, nlat, nlon, where)
    checkpoint_io.check_architecture(ckpt, architecture, where)


def network_of(ckpt: dict, where="") -> SphereAutoencoder:
    """Rebuild the autoencoder and load its weights (strict)."""
    try:
        arch = AutoencoderArchitecture(**ckpt["architecture"])
        net = SphereAutoencoder(arch, np.asarray(ckpt["grid"]["latitudes"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where} has an unusable architecture {ckpt['architecture']}: {exc}") from None
    return checkpoint_io.load_weights(net, ckpt, where)


def load_autoencoder(path: Path, channels=None, nlat=None, nlon=None, device="cpu") -> AutoencoderModel:
    """The autoencoder in a checkpoint, checked against the experiment's channels and grid."""
    ckpt = read(path)
    check_compatible(ckpt, channels, nlat, nlon, where=f"autoencoder checkpoint {path}")
    net = network_of(ckpt, where=f"autoencoder checkpoint {path}")
    return AutoencoderModel(net, normalization_of(ckpt), ckpt["content_hash"]).to(torch.device(device))
