"""Vertical interpolation in log-pressure, batched and differentiable (torch).

Contract: `interp_log_pressure(values, pressure, targets, dim)` interpolates
`values` given at per-column pressures `pressure` (same shape as `values`,
monotonically increasing along `dim`) to the 1-D `targets` (any order), linearly
in ln p, with linear extrapolation in ln p beyond the outermost levels. The
result has `len(targets)` entries along `dim`. Gradients flow to `values`.
"""

from __future__ import annotations

import torch


def interp_log_pressure(
    values: torch.Tensor, pressure: torch.Tensor, targets: torch.Tensor, dim: int = -3
) -> torch.Tensor:
    if values.shape != pressure.shape:
        raise ValueError(f"values and pressure shapes differ: {values.shape=} {pressure.shape=}")
    if values.shape[dim] < 2:
        raise ValueError(f"need at least 2 source levels along dim {dim}; got {values.shape[dim]}")
    v = values.movedim(dim, -1)
    lp = torch.log(pressure.to(values.dtype)).movedim(dim, -1)
    batch_shape = v.shape[:-1]
    n_src = v.shape[-1]
    v = v.reshape(-1, n_src)
    lp = lp.reshape(-1, n_src).contiguous()
    lt = torch.log(torch.as_tensor(targets, dtype=values.dtype, device=values.device))
    lt = lt.reshape(1, -1).expand(lp.shape[0], -1).contiguous()
    upper = torch.searchsorted(lp, lt).clamp(1, n_src - 1)
    lower = upper - 1
    lp0, lp1 = lp.gather(1, lower), lp.gather(1, upper)
    v0, v1 = v.gather(1, lower), v.gather(1, upper)
    weight = (lt - lp0) / (lp1 - lp0)
    out = v0 + weight * (v1 - v0)
    return out.reshape(*batch_shape, -1).movedim(-1, dim)
