"""Verification scores: against truth on the grid, against observations, and a tidy score table.

Contract (grid scores): fields are torch tensors (*lead, channel, lat, lon) in
physical units and the schema's channel order (`StateLayout.channels`; an
xarray state becomes one with `layout.to_tensor(ds)`); `truth` (and
`climatology`) broadcast against them; `lat` are the grid latitudes in degrees.
Every score reduces over (lat, lon) only and keeps the leading dims (time,
lead, ...): per-channel scores return (*lead, channel), all-channel scores
(*lead,). Averaging over cycles is the caller's choice (`mean_over_cycles`).
Computations run in float64 on the inputs' device.

Conventions (WeatherBench 2, Rasp et al. 2024): area weights cos(lat)
normalised to mean 1 (`grid.latitude_weights`); RMSE = sqrt(weighted spatial
mean of squared error) per state; ACC of anomalies about a climatology without
further centring; spread–skill with the finite-ensemble factor sqrt((N+1)/N)
(Fortin et al. 2014) so that a calibrated ensemble scores 1. The normalised
MSE/MAE over all channels (the Align-DA paper's headline metrics, Sun et al.
2025) are unweighted means of z-scored fields unless `lat` is given.

Against observations: O−B / O−A statistics come from
`align_da_ops.obs.monitoring.departure_statistics`; `observation_scores` stacks
both into one table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from align_da_ops.errors import SchemaError
from align_da_ops.grid import Normalization, latitude_weights
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.monitoring import departure_statistics

INDEX = ("cycle_time", "lead", "method")


# -- helpers -----------------------------------------------------------------------------------------
def _pair(x: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    truth = torch.as_tensor(truth, device=x.device)
    if x.ndim < 3:
        raise SchemaError(f"fields must be (*lead, channel, lat, lon); got shape {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(x.shape, truth.shape)
    except RuntimeError:
        raise SchemaError(f"shapes {tuple(x.shape)} and {tuple(truth.shape)} do not broadcast") from None
    return x.to(torch.float64), truth.to(torch.float64)


def _lat_weights(lat, x: torch.Tensor) -> torch.Tensor:
    """(lat, 1) weights, cos(lat) normalised to mean 1, on x's device."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.shape != (x.shape[-2],):
        got = lat.shape[0] if lat.ndim == 1 else lat.shape
        raise SchemaError(f"{got} latitudes for fields with {x.shape[-2]} rows")
    return torch.as_tensor(latitude_weights(lat), dtype=torch.float64, device=x.device)[:, None]


def spatial_mean(x: torch.Tensor, lat=None) -> torch.Tensor:
    """Mean over (lat, lon): latitude-weighted when `lat` is given, else plain."""
    if lat is None:
        return x.mean(dim=(-2, -1))
    return (x * _lat_weights(lat, x)).mean(dim=(-2, -1))


# -- per-channel scores against truth ---------------------------------------------------------------
def wmse(x, truth, lat) -> torch.Tensor:
    """(*lead, C) latitude-weighted mean squared error, physical units²."""
    x, truth = _pair(x, truth)
    return spatial_mean((x - truth) ** 2, lat)


def wrmse(x, truth, lat) -> torch.Tensor:
    """(*lead, C) latitude-weighted RMSE per channel (variable and level), physical units."""
    return wmse(x, truth, lat).sqrt()


def wmae(x, truth, lat) -> torch.Tensor:
    """(*lead, C) latitude-weighted mean absolute error."""
    x, truth = _pair(x, truth)
    return spatial_mean((x - truth).abs(), lat)


def bias(x, truth, lat) -> torch.Tensor:
    """(*lead, C) latitude-weighted mean error x − truth."""
    x, truth = _pair(x, truth)
    return spatial_mean(x - truth, lat)


def acc(x, truth, climatology, lat) -> torch.Tensor:
    """(*lead, C) anomaly correlation Σw a_x a_t / sqrt(Σw a_x² Σw a_t²), anomalies about `climatology`."""
    x, truth = _pair(x, truth)
    clim = torch.as_tensor(climatology, device=x.device).to(torch.float64)
    ax, at = x - clim, truth - clim
    num = spatial_mean(ax * at, lat)
    den = (spatial_mean(ax**2, lat) * spatial_mean(at**2, lat)).sqrt()
    return num / den


def spread_skill(members, truth, lat, member_dim: int = 0, corrected: bool = True) -> dict[str, torch.Tensor]:
    """Ensemble spread vs error of the ensemble mean, per channel.

    `members` has a member axis at `member_dim` (≥ 2 members); returns
    {"spread": sqrt(w-mean of the unbiased ensemble variance), "skill": wrmse of the mean,
    "ratio": spread / skill × sqrt((N+1)/N) when `corrected`} with shapes (*lead, C).
    """
    members = torch.as_tensor(members).to(torch.float64)
    n = members.shape[member_dim]
    if n < 2:
        raise ValueError(f"spread–skill needs >= 2 members; got {n} along dim {member_dim}")
    mean = members.mean(dim=member_dim)
    variance = members.var(dim=member_dim, correction=1)
    spread = spatial_mean(variance, lat).sqrt()
    skill = wrmse(mean, truth, lat)
    factor = np.sqrt((n + 1) / n) if corrected else 1.0
    return {"spread": spread, "skill": skill, "ratio": factor * spread / skill}


# -- all-channel scores in normalised units ---------------------------------------------------------
def normalized_mse(x, truth, norm: Normalization, lat=None) -> torch.Tensor:
    """(*lead,) MSE over all channels and grid points of the z-scored fields (per-channel mean/std of `norm`)."""
    x, truth = _pair(x, truth)
    return spatial_mean((norm.normalize(x) - norm.normalize(truth)) ** 2, lat).mean(-1)


def normalized_mae(x, truth, norm: Normalization, lat=None) -> torch.Tensor:
    """(*lead,) MAE over all channels and grid points of the z-scored fields."""
    x, truth = _pair(x, truth)
    return spatial_mean((norm.normalize(x) - norm.normalize(truth)).abs(), lat).mean(-1)


# -- named scores for one state, and the tidy table -------------------------------------------------
def channel_scores(score: str, values: torch.Tensor, channels: Sequence[str]) -> dict[str, float]:
    """{"<score>_<channel>": value} from a (C,) tensor, e.g. wrmse_geopotential_500."""
    values = torch.as_tensor(values)
    if values.shape != (len(channels),):
        raise SchemaError(f"{score}: {tuple(values.shape)} values for {len(channels)} channels")
    return {f"{score}_{c}": float(v) for c, v in zip(channels, values.tolist())}


def state_scores(
    x,
    truth,
    lat,
    channels: Sequence[str],
    *,
    norm: Normalization | None = None,
    climatology=None,
    members=None,
) -> dict[str, float]:
    """The standard score set for one state (C, lat, lon): wrmse_/bias_ per channel; acc_ with a
    climatology; mse_normalized / mae_normalized with a `Normalization`; spread_/ssr_ with members (N, C, lat, lon)."""
    x = torch.as_tensor(x)
    if x.ndim != 3 or x.shape[0] != len(channels):
        raise SchemaError(f"state must be (channel={len(channels)}, lat, lon); got {tuple(x.shape)}")
    out = channel_scores("wrmse", wrmse(x, truth, lat), channels)
    out |= channel_scores("bias", bias(x, truth, lat), channels)
    if climatology is not None:
        out |= channel_scores("acc", acc(x, truth, climatology, lat), channels)
    if norm is not None:
        out["mse_normalized"] = float(normalized_mse(x, truth, norm))
        out["mae_normalized"] = float(normalized_mae(x, truth, norm))
    if members is not None:
        ss = spread_skill(members, truth, lat)
        out |= channel_scores("spread", ss["spread"], channels)
        out |= channel_scores("ssr", ss["ratio"], channels)
    return out


def scores_table(records: Iterable[Mapping]) -> pd.DataFrame:
    """Tidy table from per-cycle records {cycle_time, lead, method, <score>: value, ...}.

    Index (cycle_time: Timestamp, lead: Timedelta — a number means hours, method: str),
    sorted; one float column per score name (sorted; NaN where a record lacks it).
    Duplicate (cycle_time, lead, method) keys raise ValueError.
    """
    rows = []
    for i, rec in enumerate(records):
        missing = [k for k in INDEX if k not in rec]
        if missing:
            raise ValueError(f"score record {i} lacks {missing}; has {sorted(rec)}")
        lead = rec["lead"]
        lead = pd.Timedelta(hours=float(lead)) if isinstance(lead, (int, float, np.number)) else pd.Timedelta(lead)
        rows.append({**rec, "cycle_time": pd.Timestamp(rec["cycle_time"]), "lead": lead, "method": str(rec["method"])})
    if not rows:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=list(INDEX)))
    df = pd.DataFrame(rows).set_index(list(INDEX)).sort_index()
    dup = df.index[df.index.duplicated()]
    if len(dup):
        raise ValueError(f"duplicate score records for {list(dup[:3])}")
    return df[sorted(df.columns)].astype(float)


def mean_over_cycles(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of every score over cycle times, per (lead, method) (RMSEs averaged per cycle, WeatherBench 1 style)."""
    return table.groupby(level=["lead", "method"]).mean()


# -- against observations ----------------------------------------------------------------------------
def observation_scores(batch: ObsBatch, hx_background, hx_analysis=None, **kwargs) -> pd.DataFrame:
    """O−B (and O−A) statistics per (obs_type, variable, level band), stacked; see `departure_statistics`."""
    tables = [departure_statistics(batch, hx_background, "O-B", **kwargs)]
    if hx_analysis is not None:
        tables.append(departure_statistics(batch, hx_analysis, "O-A", **kwargs))
    return pd.concat(tables, ignore_index=True)
