"""Analysis-like training starts: the truth plus errors with the structure of a background-error covariance.

A forecast model trained only from the truth never sees the states it is started from while cycling:
analyses, which carry errors. `PerturbedStarts` adds to the first state of a fraction of the training
windows scale × B^{1/2} v (v ~ N(0, I); B a `SpectralCovariance`, e.g. the shipped NMC estimate),
leaving the later states (the targets) the truth, so the rollout loss teaches the model to forecast
from an erroneous start towards the true trajectory. Each window's draw depends on (seed, epoch,
window index) only: the same under any batch order, DataLoader workers or torchrun ranks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.analysis.covariance import SpectralCovariance
from align_da_ops.errors import SchemaError


class PerturbedStarts:
    """Perturbs the first state of normalised windows (B, 1 + k, C, lat, lon) in place of a copy."""

    def __init__(self, covariance: str | Path, norm: grid.Normalization, scale: float = 1.0, fraction: float = 0.5,
                 seed: int = 0):
        if not 0 < fraction <= 1 or scale <= 0:
            raise ValueError(f"start perturbations need 0 < fraction <= 1 and scale > 0; got {fraction}, {scale}")
        cov = SpectralCovariance.load(covariance)
        if tuple(cov.channels) != tuple(norm.channels):
            raise SchemaError(f"covariance {covariance} is for channels {cov.channels[:3]}...; the model's are "
                              f"{tuple(norm.channels)[:3]}... ({len(norm.channels)})")
        self.operator = cov.operator("cpu", torch.float64)
        self.std = torch.as_tensor(np.asarray(norm.std), dtype=torch.float64)[:, None, None]
        self.scale, self.fraction, self.seed = scale, fraction, seed

    def perturbation(self, index: int, epoch: int) -> torch.Tensor | None:
        """The normalised perturbation of window `index` in `epoch` (C, lat, lon), or None if it stays the truth."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 100_003 + int(index))
        if torch.rand((), generator=g, dtype=torch.float64) >= self.fraction:
            return None
        v = torch.randn(self.operator.control_shape, generator=g, dtype=torch.float64)
        return (self.scale * self.operator.sqrt(v) / self.std).float()

    def __call__(self, windows: torch.Tensor, indices, epoch: int) -> torch.Tensor:
        out = windows.clone()
        for row, index in enumerate(torch.as_tensor(indices).tolist()):
            delta = self.perturbation(index, epoch)
            if delta is not None:
                out[row, 0] += delta.to(out.dtype)
        return out
