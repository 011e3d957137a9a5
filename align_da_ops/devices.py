"""Choosing the compute device: CUDA when present and asked for, CPU otherwise."""

from __future__ import annotations

import torch

from align_da_ops.errors import DeviceError


def resolve_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was requested but torch sees no CUDA device")
    if choice not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {choice!r}; use auto, cpu or cuda")
    return torch.device(choice)
