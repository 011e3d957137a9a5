"""Vertical interpolation in log-pressure, batched and differentiable (torch).

Contract: `interp_log_pressure(values, pressure, targets, dim)` interpolates
`values` given at per-column pressures `pressure` (same shape as `values`,
monotonically increasing along `dim`) to `targets`, linearly in ln p, with
linear extrapolation in ln p beyond the outermost levels. `targets` is either
1-D (the same target levels for every column, any order) or has the shape of
`values` except along `dim` (per-column targets). The result has the targets'
count along `dim`. Gradients flow to `values`.
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
    targets = torch.as_tensor(targets, dtype=values.dtype, device=values.device)
    if targets.ndim == 1:
        lt = torch.log(targets).reshape(1, -1).expand(lp.shape[0], -1).contiguous()
    else:
        per_column = targets.movedim(dim, -1)
        if per_column.shape[:-1] != batch_shape:
            raise ValueError(f"per-column targets {tuple(targets.shape)} do not match values {tuple(values.shape)} off dim {dim}")
        lt = torch.log(per_column.reshape(lp.shape[0], -1)).contiguous()
    upper = torch.searchsorted(lp, lt).clamp(1, n_src - 1)
    lower = upper - 1
    lp0, lp1 = lp.gather(1, lower), lp.gather(1, upper)
    v0, v1 = v.gather(1, lower), v.gather(1, upper)
    weight = (lt - lp0) / (lp1 - lp0)
    out = v0 + weight * (v1 - v0)
    return out.reshape(*batch_shape, -1).movedim(-1, dim)
