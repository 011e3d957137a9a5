"""Checkpoints of the neural forecast model (.pt): weights plus everything needed to trust them.

A checkpoint is a plain dict of tensors, strings, numbers and lists (so it
loads with `torch.load(..., weights_only=True)`, never unpickling code):
  format, config (the experiment config, resolved, as JSON), config_hash,
  architecture (Architecture fields), channels, normalization {mean, std,
  period}, delta_std (per-channel 6-h increment std, normalised units),
  grid {nlat, nlon, latitudes}, state_dict, content_hash, and optionally
  training {epoch, optimizer, history, settings} for resuming.
`content_hash` is a sha256 over the model part (metadata JSON + weights), so an
inference-only copy (`strip_training`) keeps the hash of the full checkpoint.
Loading refuses, with `CheckpointError`, a missing/corrupt file, a hash that
does not match, or a checkpoint for other channels, another grid or another
architecture than expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from align_da_ops.errors import CheckpointError
from align_da_ops.forecast.network import Architecture, NeuralForecastModel, SphereUNet
from align_da_ops.grid import Normalization

FORMAT = "align-da-ops/neural-forecast/1"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
_MODEL_KEYS = ("format", "config", "config_hash", "architecture", "channels", "normalization", "delta_std", "grid")


def shipped_checkpoint(experiment_name: str) -> Path:
    """Where the packaged checkpoint for an experiment config lives (it may not exist)."""
    return SHIPPED_DIR / f"neural-{experiment_name}.pt"


def content_hash(ckpt: dict) -> str:
    """sha256 (16 hex) of the model metadata and weights; training state excluded."""
    h = hashlib.sha256(json.dumps({k: ckpt[k] for k in _MODEL_KEYS}, sort_keys=True).encode())
    for key in sorted(ckpt["state_dict"]):
        tensor = ckpt["state_dict"][key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def build_checkpoint(
    net: SphereUNet, normalization: Normalization, config_json: str, config_hash: str, latitudes, nlon: int, training=None
) -> dict:
    """The checkpoint dict for `net` (see the module docstring), hashed."""
    lat = [float(v) for v in np.asarray(latitudes)]
    ckpt = {
        "format": FORMAT,
        "config": config_json,
        "config_hash": config_hash,
        "architecture": net.arch.to_dict(),
        "channels": list(normalization.channels),
        "normalization": {
            "mean": [float(v) for v in normalization.mean],
            "std": [float(v) for v in normalization.std],
            "period": list(normalization.period),
        },
        "delta_std": [float(v) for v in net.delta_std.flatten().cpu()],
        "grid": {"nlat": len(lat), "nlon": int(nlon), "latitudes": lat},
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    ckpt["content_hash"] = content_hash(ckpt)
    if training is not None:
        ckpt["training"] = training
    return ckpt


def save(ckpt: dict, path: Path) -> None:
    """Write atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def strip_training(src: Path, dst: Path) -> str:
    """Copy a checkpoint without its training state (for shipping); returns the unchanged content hash."""
    ckpt = read(src)
    ckpt.pop("training", None)
    save(ckpt, dst)
    return ckpt["content_hash"]


def read(path: Path) -> dict:
    """Load a checkpoint dict (weights_only) and verify its format and content hash."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `align-da train forecast CONFIG`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file
        raise CheckpointError(f"cannot load {path} as a weights-only checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a neural-forecast checkpoint (format {got!r}, expected {FORMAT!r})")
    missing = [k for k in (*_MODEL_KEYS, "state_dict", "content_hash") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    actual = content_hash(ckpt)
    if actual != ckpt["content_hash"]:
        raise CheckpointError(f"{path} is corrupt: content hash {actual} != recorded {ckpt['content_hash']}")
    return ckpt


def check_compatible(ckpt: dict, channels=None, nlat=None, nlon=None, architecture: dict | None = None, where="") -> None:
    """Raise CheckpointError naming expected vs actual if the checkpoint does not fit."""
    if channels is not None and list(channels) != list(ckpt["channels"]):
        ours, theirs = list(channels), list(ckpt["channels"])
        diff = sorted(set(ours) ^ set(theirs))[:6]
        raise CheckpointError(
            f"{where} was trained on {len(theirs)} channels, the experiment has {len(ours)} "
            f"(differing or reordered: {diff or 'order differs'})"
        )
    grid = (ckpt["grid"]["nlat"], ckpt["grid"]["nlon"])
    if (nlat is not None and nlat != grid[0]) or (nlon is not None and nlon != grid[1]):
        raise CheckpointError(f"{where} was trained on a {grid[0]}x{grid[1]} grid, the experiment has {nlat}x{nlon}")
    if architecture is not None and dict(architecture) != dict(ckpt["architecture"]):
        raise CheckpointError(f"{where} has architecture {ckpt['architecture']}, expected {architecture}")


def network_of(ckpt: dict, where="") -> SphereUNet:
    """Rebuild the network and load its weights (strict)."""
    try:
        arch = Architecture(**ckpt["architecture"])
    except TypeError as exc:
        raise CheckpointError(f"{where} has an unknown architecture {ckpt['architecture']}: {exc}") from None
    net = SphereUNet(arch, np.asarray(ckpt["grid"]["latitudes"]), np.asarray(ckpt["delta_std"]))
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise CheckpointError(f"{where} weights do not fit architecture {ckpt['architecture']}: {' '.join(first)}") from None
    return net


def normalization_of(ckpt: dict) -> Normalization:
    n = ckpt["normalization"]
    return Normalization(tuple(ckpt["channels"]), np.asarray(n["mean"]), np.asarray(n["std"]), tuple(n["period"]))


def load_model(path: Path, channels=None, nlat=None, nlon=None, device="cpu") -> NeuralForecastModel:
    """The forecast model in a checkpoint, checked against the experiment's channels and grid."""
    ckpt = read(path)
    check_compatible(ckpt, channels, nlat, nlon, where=f"checkpoint {path}")
    net = network_of(ckpt, where=f"checkpoint {path}")
    return NeuralForecastModel(net, normalization_of(ckpt), ckpt["content_hash"]).to(torch.device(device))
