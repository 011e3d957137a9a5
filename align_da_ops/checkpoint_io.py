"""Checkpoint files shared by every learned component (forecast model, autoencoder, prior, aligned prior).

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so
it loads with `torch.load(..., weights_only=True)` and never unpickles code. It
holds a `format` string, metadata entries (named by the component), a
`state_dict`, a `content_hash` and optionally `training` (resume state).
`content_hash` is a sha256 (16 hex) over the metadata JSON and the weights, so
an inference-only copy (`strip_training`) keeps the hash of the full file.
`read` refuses, with `CheckpointError`, a missing, unreadable, foreign or
tampered file.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from align_da_ops.errors import CheckpointError


def content_hash(ckpt: dict, meta_keys: Sequence[str]) -> str:
    """sha256 (16 hex) of the metadata entries `meta_keys` and the weights; training state excluded."""
    h = hashlib.sha256(json.dumps({k: ckpt[k] for k in meta_keys}, sort_keys=True).encode())
    for key in sorted(ckpt["state_dict"]):
        tensor = ckpt["state_dict"][key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def assemble(fmt: str, meta: dict, module: torch.nn.Module | dict, meta_keys: Sequence[str], training=None) -> dict:
    """The checkpoint dict: format + metadata + weights (cloned to CPU) + hash (+ training state)."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    ckpt = {"format": fmt, **meta, "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()}}
    ckpt["content_hash"] = content_hash(ckpt, meta_keys)
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


def read(path: Path, fmt: str, meta_keys: Sequence[str], how_to_make: str) -> dict:
    """Load (weights_only) and verify format, required keys and content hash."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {how_to_make}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file
        raise CheckpointError(f"cannot load {path} as a weights-only checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a {fmt} checkpoint (format {got!r})")
    missing = [k for k in (*meta_keys, "state_dict", "content_hash") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    actual = content_hash(ckpt, meta_keys)
    if actual != ckpt["content_hash"]:
        raise CheckpointError(f"{path} is corrupt: content hash {actual} != recorded {ckpt['content_hash']}")
    state = ckpt["state_dict"]
    bad = [k for k, v in (state.items() if isinstance(state, dict) else ())
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} has NaN/Inf weights in {bad[:5]}{' ...' if len(bad) > 5 else ''} (its hash is valid: "
                              "it was saved that way, e.g. by a diverged training); retrain or use another checkpoint")
    return ckpt


def strip_training(ckpt: dict, dst: Path) -> str:
    """Write a copy without the training state (for shipping); returns the unchanged content hash."""
    ckpt = {k: v for k, v in ckpt.items() if k != "training"}
    save(ckpt, dst)
    return ckpt["content_hash"]


def load_weights(module: torch.nn.Module, ckpt: dict, where: str) -> torch.nn.Module:
    """Load `ckpt['state_dict']` strictly, turning a mismatch into CheckpointError."""
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[:3])
        raise CheckpointError(f"{where} weights do not fit its recorded architecture: {first}") from None
    return module


def check_grid(ckpt: dict, channels=None, nlat=None, nlon=None, where: str = "") -> None:
    """Raise CheckpointError naming expected vs actual if channels or grid differ from the checkpoint's."""
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


def check_architecture(ckpt: dict, architecture: dict | None, where: str = "") -> None:
    """Raise CheckpointError if the checkpoint's recorded architecture is not `architecture` (None: no check)."""
    if architecture is not None and dict(architecture) != dict(ckpt["architecture"]):
        raise CheckpointError(f"{where} has architecture {ckpt['architecture']}, expected {architecture}")


def check_resumable(ckpt: dict, config_hash: str, path: Path) -> None:
    """Raise CheckpointError unless `ckpt` was trained with this config and still holds its training state."""
    if ckpt["config_hash"] != config_hash:
        raise CheckpointError(
            f"checkpoint {path} was trained with config hash {ckpt['config_hash']}, this config is {config_hash}; "
            "give another --output to start afresh"
        )
    if "training" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no training state (an exported copy); it cannot be resumed")


def warmup_cosine(lr: float, warmup_steps: int, step: int, total: int) -> float:
    """Learning rate at optimiser `step` of `total`: linear warm-up to `lr`, then cosine decay to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
