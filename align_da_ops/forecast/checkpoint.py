"""Checkpoints of the neural forecast model (.pt): weights plus everything needed to trust them.

Stored with `align_da_ops.checkpoint_io` (weights-only dict, content hash). Model
metadata: format, config (the experiment config, resolved, as JSON),
config_hash, architecture (Architecture fields), channels, normalization
{mean, std, period}, delta_std (per-channel 6-h increment std, normalised
units), grid {nlat, nlon, latitudes}; optionally training {epoch, optimizer,
history, settings} for resuming. Loading refuses, with `CheckpointError`, a
missing/corrupt file, a hash that does not match, or a checkpoint for other
channels, another grid or another architecture than expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from align_da_ops import checkpoint_io
from align_da_ops.errors import CheckpointError
from align_da_ops.forecast.network import Architecture, NeuralForecastModel, SphereUNet
from align_da_ops.grid import Normalization

FORMAT = "align-da-ops/neural-forecast/1"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
_MODEL_KEYS = ("format", "config", "config_hash", "architecture", "channels", "normalization", "delta_std", "grid")
save = checkpoint_io.save


def shipped_checkpoint(experiment_name: str) -> Path:
    """Where the packaged checkpoint for an experiment config lives (it may not exist)."""
    return SHIPPED_DIR / f"neural-{experiment_name}.pt"


def content_hash(ckpt: dict) -> str:
    """sha256 (16 hex) of the model metadata and weights; training state excluded."""
    return checkpoint_io.content_hash(ckpt, _MODEL_KEYS)


def normalization_meta(normalization: Normalization) -> dict:
    """The JSON-able form of a normalisation, as stored in checkpoints."""
    return {
        "mean": [float(v) for v in normalization.mean],
        "std": [float(v) for v in normalization.std],
        "period": list(normalization.period),
    }


def grid_meta(latitudes, nlon: int) -> dict:
    lat = [float(v) for v in np.asarray(latitudes)]
    return {"nlat": len(lat), "nlon": int(nlon), "latitudes": lat}


def build_checkpoint(
    net: SphereUNet, normalization: Normalization, config_json: str, config_hash: str, latitudes, nlon: int, training=None
) -> dict:
    """The checkpoint dict for `net` (see the module docstring), hashed."""
    meta = {
        "config": config_json,
        "config_hash": config_hash,
        "architecture": net.arch.to_dict(),
        "channels": list(normalization.channels),
        "normalization": normalization_meta(normalization),
        "delta_std": [float(v) for v in net.delta_std.flatten().cpu()],
        "grid": grid_meta(latitudes, nlon),
    }
    return checkpoint_io.assemble(FORMAT, meta, net, _MODEL_KEYS, training)


def strip_training(src: Path, dst: Path) -> str:
    """Copy a checkpoint without its training state (for shipping); returns the unchanged content hash."""
    return checkpoint_io.strip_training(read(src), dst)


def read(path: Path) -> dict:
    """Load a checkpoint dict (weights_only) and verify its format and content hash."""
    return checkpoint_io.read(path, FORMAT, _MODEL_KEYS, "train one with `align-da train forecast CONFIG`")


def check_compatible(ckpt: dict, channels=None, nlat=None, nlon=None, architecture: dict | None = None, where="") -> None:
    """Raise CheckpointError naming expected vs actual if the checkpoint does not fit."""
    checkpoint_io.check_grid(ckpt, channels, nlat, nlon, where)
    checkpoint_io.check_architecture(ckpt, architecture, where)


def network_of(ckpt: dict, where="") -> SphereUNet:
    """Rebuild the network and load its weights (strict)."""
    try:
        arch = Architecture(**ckpt["architecture"])
    except TypeError as exc:
        raise CheckpointError(f"{where} has an unknown architecture {ckpt['architecture']}: {exc}") from None
    net = SphereUNet(arch, np.asarray(ckpt["grid"]["latitudes"]), np.asarray(ckpt["delta_std"]))
    return checkpoint_io.load_weights(net, ckpt, where)


def normalization_of(ckpt: dict) -> Normalization:
    n = ckpt["normalization"]
    return Normalization(tuple(ckpt["channels"]), np.asarray(n["mean"]), np.asarray(n["std"]), tuple(n["period"]))


def load_model(path: Path, channels=None, nlat=None, nlon=None, device="cpu") -> NeuralForecastModel:
    """The forecast model in a checkpoint, checked against the experiment's channels and grid."""
    ckpt = read(path)
    check_compatible(ckpt, channels, nlat, nlon, where=f"checkpoint {path}")
    net = network_of(ckpt, where=f"checkpoint {path}")
    return NeuralForecastModel(net, normalization_of(ckpt), ckpt["content_hash"]).to(torch.device(device))
