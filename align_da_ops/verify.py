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
2025) are means of z-scored fields, latitude-weighted when `lat` is given
(`state_scores` always gives it). Over cycles (`mean_over_cycles`), an RMSE is
sqrt(mean over cycles of the weighted MSE), WeatherBench 2's definition, not the
mean of per-cycle RMSEs.

Ensembles: CRPS from the `scores` package (the "fair" estimator, unbiased for
small ensembles; Ferro 2014), latitude-weighted; rank histograms of the truth
among the members. Balance: the geostrophic-imbalance ratio mean|u − u_g| /
mean|u| over 20–70° of latitude (both hemispheres) on one pressure level.
Climatology for ACC: `symmetric_climatology`, the zonal and hemispherically
symmetrised time mean of a long truth (the Held–Suarez world is symmetric, so a
per-grid-point mean only adds sampling noise as spurious stationary waves).

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


def crps(members, truth, lat, member_dim: int = 0) -> torch.Tensor:
    """(*lead, C) latitude-weighted fair CRPS of an ensemble, computed by `scores.probability.crps_for_ensemble`."""
    import xarray as xr
    from scores.probability import crps_for_ensemble

    members = torch.movedim(torch.as_tensor(members).to(torch.float64), member_dim, 0).cpu()
    truth = torch.as_tensor(truth).to(torch.float64).cpu()
    if members.shape[0] < 2:
        raise ValueError(f"CRPS of an ensemble needs >= 2 members; got {members.shape[0]}")
    dims = [f"d{i}" for i in range(members.ndim - 3)] + ["lat", "lon"]
    truth = truth.expand(members.shape[1:])
    weights = xr.DataArray(_lat_weights(lat, truth)[:, 0].cpu().numpy(), dims=["lat"])
    fcst = xr.DataArray(members.numpy(), dims=["member", *dims])
    obs = xr.DataArray(truth.numpy(), dims=dims)
    out = crps_for_ensemble(fcst, obs, "member", method="fair", reduce_dims=["lat", "lon"], weights=weights)
    return torch.as_tensor(np.asarray(out.values))


def rank_histogram(members, truth, lat, member_dim: int = 0) -> torch.Tensor:
    """(*lead, C, N+1) latitude-weighted frequency of the truth's rank among N members (sums to 1).

    Rank k = number of members below the truth; ties are split at random-free midpoints (a
    member equal to the truth counts half), so a perfectly reliable ensemble is flat.
    """
    members = torch.movedim(torch.as_tensor(members).to(torch.float64), member_dim, 0)
    truth = torch.as_tensor(truth, device=members.device).to(torch.float64).expand(members.shape[1:])
    n = members.shape[0]
    rank = (members < truth).sum(0).to(torch.float64) + 0.5 * (members == truth).sum(0)
    rank = rank.floor().clamp(0, n).long()
    onehot = torch.nn.functional.one_hot(rank, n + 1).to(torch.float64)  # (*, lat, lon, N+1)
    w = _lat_weights(lat, truth)[..., None]
    return (onehot * w).mean(dim=(-3, -2))


def imbalance_ratio(states, layout, latitudes, longitudes, level: int, band: tuple[float, float] = (20.0, 70.0)) -> torch.Tensor:
    """(...) geostrophic-imbalance ratio Σw|u − u_g| / Σw|u| on `level` hPa, rows with band[0] <= |lat| <= band[1].

    u_g = −(1/f) ∂Φ/∂y from the geopotential of the same level (`align.rewards.geostrophic_wind`);
    w = cos(lat). Truth of the tiny OSSE: about 0.18 / 0.17 / 0.21 at 250 / 500 / 850 hPa.
    """
    from align_da_ops.align.rewards import geostrophic_wind

    x = torch.as_tensor(states).to(torch.float64)
    lat = np.asarray(latitudes, dtype=np.float64)
    rows = torch.as_tensor(np.flatnonzero((np.abs(lat) >= band[0]) & (np.abs(lat) <= band[1])), device=x.device)
    if len(rows) == 0:
        raise SchemaError(f"no latitude row within {band} degrees")
    z = x[..., layout.channel_index("geopotential", level), :, :]
    u = x[..., layout.channel_index("u_component_of_wind", level), :, :]
    u_g, _ = geostrophic_wind(z, latitudes, longitudes)
    w = torch.as_tensor(np.cos(np.deg2rad(lat)), device=x.device)[rows][:, None]
    du = (u - u_g).index_select(-2, rows).abs()
    return (w * du).sum(dim=(-2, -1)) / (w * u.index_select(-2, rows).abs()).sum(dim=(-2, -1))


PATCH_SIZES = (2, 4)  # grid cells per latent cell of the 2x and 4x autoencoders


def patch_edge_ratio(field: torch.Tensor, patch: int) -> torch.Tensor:
    """(...) patch-artefact check of fields (..., C, lat, lon), e.g. analysis increments: the RMS of the jumps between
    neighbouring grid cells that straddle a patch edge (every `patch` cells, along latitude and longitude, the
    longitude wrap included) over the RMS of the jumps inside patches, per channel, then the mean over channels.
    About 1 for fields without structure tied to the patch grid (white noise, large scales); above 1 when a decoder
    stitches its latent cells' patches together with seams (piecewise-constant patches: infinite), and also,
    less, when variance at the latent grid's own scale is interpolated between latent cell centres (the jumps
    peak midway between centres, on the edges)."""
    x = torch.as_tensor(field).to(torch.float64)
    d_lon = (x.roll(-1, dims=-1) - x).pow(2)  # jump from column j to j + 1 (wrapping)
    d_lat = (x[..., 1:, :] - x[..., :-1, :]).pow(2)  # jump from row i to i + 1
    lon_edge = (torch.arange(x.shape[-1], device=x.device) + 1) % patch == 0
    lat_edge = (torch.arange(x.shape[-2] - 1, device=x.device) + 1) % patch == 0
    edge = d_lon[..., lon_edge].sum((-2, -1)) + d_lat[..., lat_edge, :].sum((-2, -1))
    inner = d_lon[..., ~lon_edge].sum((-2, -1)) + d_lat[..., ~lat_edge, :].sum((-2, -1))
    n_edge = x.shape[-2] * int(lon_edge.sum()) + x.shape[-1] * int(lat_edge.sum())
    n_inner = x.shape[-2] * int((~lon_edge).sum()) + x.shape[-1] * int((~lat_edge).sum())
    return ((edge / n_edge) / (inner / n_inner)).sqrt().mean(-1)


def symmetric_climatology(mean_field: torch.Tensor, channels: Sequence[str]) -> torch.Tensor:
    """(C, lat, lon) zonal and hemispherically symmetrised climatology from a time mean (C, lat, lon).

    Zonal mean (constant in longitude), then ½(m(φ) + s m(−φ)) with s = −1 for the meridional
    wind (antisymmetric about the equator in a symmetric world) and +1 otherwise. Needs
    latitudes symmetric about the equator (Gaussian or equiangular grids are).
    """
    m = torch.as_tensor(mean_field).to(torch.float64)
    if m.ndim != 3 or m.shape[0] != len(channels):
        raise SchemaError(f"climatology must be (channel={len(channels)}, lat, lon); got {tuple(m.shape)}")
    zonal = m.mean(-1, keepdim=True)
    sign = torch.as_tensor([-1.0 if c.startswith("v_component_of_wind") else 1.0 for c in channels], dtype=torch.float64)
    sym = 0.5 * (zonal + sign[:, None, None] * zonal.flip(-2))
    return sym.expand(m.shape).contiguous()


# -- all-channel scores in normalised units ---------------------------------------------------------
def normalized_mse(x, truth, norm: Normalization, lat=None) -> torch.Tensor:
    """(*lead,) MSE over all channels and grid points of the z-scored fields (per-channel mean/std of `norm`)."""
    x, truth = _pair(x, truth)
    return spatial_mean((norm.normalize(x) - norm.normalize(truth)) ** 2, lat).mean(-1)


def normalized_mae(x, truth, norm: Normalization, lat=None) -> torch.Tensor:
    """(*lead,) MAE over all channels and grid points of the z-scored fields."""
    x, truth = _pair(x, truth)
    return spatial_mean((norm.normalize(x) - norm.normalize(truth)).abs(), lat).mean(-1)


# -- named scores, and the tidy table -----------------------------------------------------------------
def channel_scores(score: str, values: torch.Tensor, channels: Sequence[str]) -> dict[str, float]:
    """{"<score>_<channel>": value} from a (C,) tensor, e.g. wrmse_geopotential_500."""
    values = torch.as_tensor(values)
    if values.shape != (len(channels),):
        raise SchemaError(f"{score}: {tuple(values.shape)} values for {len(channels)} channels")
    return {k: float(v) for k, v in channel_columns(score, values, channels).items()}


def channel_columns(score: str, values: torch.Tensor, channels: Sequence[str]) -> dict[str, torch.Tensor]:
    """{"<score>_<channel>": (*lead,) tensor} from a (*lead, C) tensor."""
    return {f"{score}_{c}": values[..., i] for i, c in enumerate(channels)}


def score_columns(
    x, truth, lat, channels: Sequence[str], *, norm: Normalization | None = None, climatology=None
) -> dict[str, torch.Tensor]:
    """The standard score set for states (*lead, C, lat, lon) as {name: (*lead,) tensor}: wrmse_/bias_ per
    channel; acc_ with a climatology; mse_normalized / mae_normalized (latitude-weighted) with a `Normalization`."""
    x = torch.as_tensor(x)
    if x.ndim < 3 or x.shape[-3] != len(channels):
        raise SchemaError(f"states must be (..., channel={len(channels)}, lat, lon); got {tuple(x.shape)}")
    out = channel_columns("wrmse", wrmse(x, truth, lat), channels)
    out |= channel_columns("bias", bias(x, truth, lat), channels)
    if climatology is not None:
        out |= channel_columns("acc", acc(x, truth, climatology, lat), channels)
    if norm is not None:
        out["mse_normalized"] = normalized_mse(x, truth, norm, lat)
        out["mae_normalized"] = normalized_mae(x, truth, norm, lat)
    return out


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
    """`score_columns` for one state (C, lat, lon) as floats; spread_/ssr_ with members (N, C, lat, lon)."""
    x = torch.as_tensor(x)
    if x.ndim != 3 or x.shape[0] != len(channels):
        raise SchemaError(f"state must be (channel={len(channels)}, lat, lon); got {tuple(x.shape)}")
    out = {k: float(v) for k, v in score_columns(x, truth, lat, channels, norm=norm, climatology=climatology).items()}
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
    return tidy_scores(pd.DataFrame(rows))


def tidy_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """`scores_table` from a frame with INDEX columns (cycle_time datetime64, lead Timedelta, method str)."""
    df = frame.set_index(list(INDEX)).sort_index()
    dup = df.index[df.index.duplicated()]
    if len(dup):
        raise ValueError(f"duplicate score records for {list(dup[:3])}")
    return df[sorted(df.columns)].astype(float)


ROOT_MEAN_SQUARE_PREFIXES = ("wrmse_", "spread_", "ensrmse_", "omb_rms_", "oma_rms_")


def over_cycles(values: pd.Series | np.ndarray, score: str, axis: int = 0):
    """Aggregate one score's per-cycle values: root-mean-square for RMSE-like scores (`ROOT_MEAN_SQUARE_PREFIXES`:
    sqrt of the mean MSE, WeatherBench 2), the mean for every other score."""
    v = np.asarray(values, dtype=np.float64)
    if score.startswith(ROOT_MEAN_SQUARE_PREFIXES):
        return np.sqrt(np.nanmean(v**2, axis=axis))
    return np.nanmean(v, axis=axis)


def mean_over_cycles(table: pd.DataFrame) -> pd.DataFrame:
    """Every score over cycle times, per (lead, method): RMSEs as sqrt(mean MSE), the rest as means (`over_cycles`)."""
    return table.groupby(level=["lead", "method"]).agg({c: (lambda v, c=c: over_cycles(v, c)) for c in table.columns})


# -- against observations ----------------------------------------------------------------------------
def observation_scores(batch: ObsBatch, hx_background, hx_analysis=None, **kwargs) -> pd.DataFrame:
    """O−B (and O−A) statistics per (obs_type, variable, level band), stacked; see `departure_statistics`."""
    tables = [departure_statistics(batch, hx_background, "O-B", **kwargs)]
    if hx_analysis is not None:
        tables.append(departure_statistics(batch, hx_analysis, "O-A", **kwargs))
    return pd.concat(tables, ignore_index=True)
