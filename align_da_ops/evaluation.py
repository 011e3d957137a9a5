"""Scores of an archive against the truth (OSSE) and against observations, over cycles and leads.

`archive_scores` returns the tidy table of `verify.scores_table`: one row per
(cycle_time, lead, method), lead 0 h the analysis and lead L the forecast from
that cycle valid L hours later (lead 6 h is the next cycle's background). Rows
exist only where the truth covers the valid time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from align_da_ops import grid, verify
from align_da_ops.archive import LEAD, Archive
from align_da_ops.errors import ArchiveCorruptError
from align_da_ops.times import CycleTime

HEADLINE = (("geopotential", 500), ("temperature", 850), ("u_component_of_wind", 500), ("v_component_of_wind", 500))


BALANCE_LEVELS = (250, 500, 850)


def _stack(ds: xr.Dataset, layout: grid.StateLayout) -> torch.Tensor:
    return layout.to_tensor(ds.load())[0]


def _finite(x: torch.Tensor, archive: Archive, product: str, cycles) -> torch.Tensor:
    """x (cycle-first) unchanged; a done cycle holding NaN/Inf (a lost chunk) is an ArchiveCorruptError, never a score."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bad.any():
        names = [str(c) for c, b in zip(cycles, bad.tolist()) if b]
        raise ArchiveCorruptError(f"archive {archive.root}: {product!r} of done cycles {names[:5]}{' ...' if len(names) > 5 else ''} "
                                  "holds NaN/Inf (missing chunks?); `align-da archive verify` lists what is damaged")
    return x


VERIFY_BLOCK_CYCLES = 40  # cycles read and scored at a time: bounds memory whatever the archive's length


def archive_scores(
    archive: Archive, truth: xr.Dataset, method: str, norm: grid.Normalization | None = None,
    climatology: torch.Tensor | None = None, start=None, end=None, balance_levels=BALANCE_LEVELS,
    block_cycles: int = VERIFY_BLOCK_CYCLES,
) -> pd.DataFrame:
    """Per-cycle scores of an archive's done cycles in [start, end] (default: all) against the truth.

    Rows (cycle_time, lead, method); lead 0 h is the analysis, lead L the forecast from that cycle
    (lead 6 h is the next cycle's background). Columns: wrmse_, bias_ (and acc_ with a climatology) per
    channel, latitude-weighted mse/mae_normalized (with `norm`), `imbalance_<level>` and
    `imbalance_truth_<level>` (`verify.imbalance_ratio`), at lead 0 `patch_ratio_<n>` of the increment
    (`verify.patch_edge_ratio`, n in `verify.PATCH_SIZES`), and for archives that store members, at
    lead 0, `ensemble_scores`. Computed `block_cycles` cycles at a time, each block read lazily from the
    archive's Zarr chunks (one per cycle) and the truth's, so memory is bounded by the block, not by the
    archive's length; within a block batched over cycles (`verify.score_columns`), one lead at a time.
    """
    cycles = [c for c in archive.done_cycles()
              if (start is None or c.value >= _as_datetime(start)) and (end is None or c.value <= _as_datetime(end))]
    if not cycles:
        return verify.scores_table([])
    products = {p: archive.open_product(p, dask=False)
                for p in ("analysis", "background", "forecast") + (("members",) if archive.n_members else ())}
    frames = [_block_scores(archive, products, truth, method, cycles[i : i + block_cycles], norm, climatology, balance_levels)
              for i in range(0, len(cycles), block_cycles)]
    frame = pd.concat(frames, ignore_index=True)
    frame["lead"] = pd.to_timedelta(frame["lead"], unit="h").astype("timedelta64[ns]")
    frame["cycle_time"] = pd.to_datetime(frame["cycle_time"]).astype("datetime64[ns]")
    return verify.tidy_scores(frame)


def _block_scores(archive: Archive, products: dict, truth: xr.Dataset, method: str, cycles: list[CycleTime], norm,
                  climatology, balance_levels) -> pd.DataFrame:
    """`archive_scores` rows of some cycles (lead in hours), reading only their chunks."""
    layout, lat, lon = archive.layout, archive.lat, archive.lon
    times = np.asarray([c.as_numpy() for c in cycles])
    have = truth.indexes[grid.TIME]
    analysis = _finite(_stack(products["analysis"].sel({grid.TIME: times}), layout), archive, "analysis", cycles)
    increment = analysis - _finite(_stack(products["background"].sel({grid.TIME: times}), layout), archive, "background", cycles)
    forecast = products["forecast"].sel({grid.TIME: times}).load()
    _finite(torch.as_tensor(np.concatenate([forecast[v].values.reshape(len(times), -1) for v in forecast.data_vars], 1)),
            archive, "forecast", cycles)
    members = None
    if "members" in products:
        members = _finite(_stack(products["members"].sel({grid.TIME: times}), layout), archive, "members", cycles)
    levels = [p for p in balance_levels if p in layout.levels and "u_component_of_wind" in layout.upper_air
              and "geopotential" in layout.upper_air]
    frames = []
    for lead in (0, *archive.leads):
        valid = times + np.timedelta64(lead, "h")
        keep = np.asarray([v in have for v in valid])
        if not keep.any():
            continue
        x = analysis[keep] if lead == 0 else _stack(forecast.sel({LEAD: np.timedelta64(lead, "h")}).isel({grid.TIME: np.flatnonzero(keep)}), layout)
        x_true = _stack(truth.sel({grid.TIME: valid[keep]}), layout)
        columns = verify.score_columns(x, x_true, lat, layout.channels, norm=norm, climatology=climatology)
        for p in levels:
            columns[f"imbalance_{p}"] = verify.imbalance_ratio(x, layout, lat, lon, p)
            columns[f"imbalance_truth_{p}"] = verify.imbalance_ratio(x_true, layout, lat, lon, p)
        if members is not None and lead == 0:
            columns |= ensemble_scores(members[keep], x_true, lat, layout.channels)
        if lead == 0:
            for patch in verify.PATCH_SIZES:
                columns[f"patch_ratio_{patch}"] = verify.patch_edge_ratio(increment[keep], patch)
        frame = pd.DataFrame({k: np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for k, v in columns.items()})
        frames.append(frame.assign(cycle_time=times[keep], lead=lead, method=method))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(verify.INDEX))


RANK_HISTOGRAM_CHANNELS = ("geopotential_500", "temperature_850")


def ensemble_scores(members: torch.Tensor, truth: torch.Tensor, lat, channels) -> dict[str, torch.Tensor]:
    """For ensembles (T, N, C, lat, lon) against truth (T, C, lat, lon): {name: (T,)} with crps_, spread_ and
    ensrmse_ (RMSE of the members' mean) per channel, n_members, and rankhist_<channel>_<k> (rank
    frequencies of the truth for `RANK_HISTOGRAM_CHANNELS`)."""
    ss = verify.spread_skill(members, truth, lat, member_dim=1, corrected=False)
    out = verify.channel_columns("crps", verify.crps(members, truth, lat, member_dim=1), channels)
    out |= verify.channel_columns("spread", ss["spread"], channels)
    out |= verify.channel_columns("ensrmse", ss["skill"], channels)
    out["n_members"] = torch.full((members.shape[0],), float(members.shape[1]))
    ranks = verify.rank_histogram(members, truth, lat, member_dim=1)  # (T, C, N+1)
    for name in RANK_HISTOGRAM_CHANNELS:
        if name in channels:
            for k in range(ranks.shape[-1]):
                out[f"rankhist_{name}_{k}"] = ranks[:, list(channels).index(name), k]
    return out


def _as_datetime(value):
    return pd.Timestamp(value).to_pydatetime()


def climatology_of(truth: xr.Dataset, layout: grid.StateLayout, start, end) -> torch.Tensor:
    """Time mean of the truth over [start, end] per grid point, a (channel, lat, lon) tensor (a forecast baseline)."""
    mean = truth.sel({grid.TIME: slice(start, end)}).mean(grid.TIME).load()
    return layout.to_tensor(mean)[0]


def acc_climatology(truth: xr.Dataset, layout: grid.StateLayout, start, end) -> torch.Tensor:
    """The ACC reference: the zonal, hemispherically symmetrised mean of the truth over [start, end]
    (`verify.symmetric_climatology`), a (channel, lat, lon) tensor constant along longitude."""
    return verify.symmetric_climatology(climatology_of(truth, layout, start, end), layout.channels)


def headline(table: pd.DataFrame, lead_hours: int) -> dict[str, float]:
    """The headline WRMSEs (z500, t850, u500, v500) over cycles at one lead: sqrt(mean weighted MSE) (WB2)."""
    sel = table.xs(pd.Timedelta(hours=lead_hours), level="lead")
    return {f"{v}_{p}": float(verify.over_cycles(sel[f"wrmse_{v}_{p}"], "wrmse_")) for v, p in HEADLINE}


def drift(table: pd.DataFrame, lead_hours: int = 0) -> dict[str, float]:
    """Ratio of the last third's mean analysis WRMSE to the middle third's (≈1: no drift)."""
    sel = table.xs(pd.Timedelta(hours=lead_hours), level="lead")
    n = len(sel)
    if n < 6:
        return {}
    middle, last = sel.iloc[n // 3 : 2 * n // 3], sel.iloc[2 * n // 3 :]
    rms = lambda part, c: verify.over_cycles(part[c], c)  # noqa: E731
    return {f"{v}_{p}": float(rms(last, f"wrmse_{v}_{p}") / rms(middle, f"wrmse_{v}_{p}")) for v, p in HEADLINE}


def stage_seconds(archive: Archive, start=None, end=None) -> dict[str, float]:
    """Mean wall seconds per stage over the archive's done cycles in [start, end] (from their provenance)."""
    totals: dict[str, list[float]] = {}
    for cycle in archive.done_cycles():
        if (start is not None and cycle.value < _as_datetime(start)) or (end is not None and cycle.value > _as_datetime(end)):
            continue
        for stage, seconds in archive.provenance(cycle).get("wall_s", {}).items():
            totals.setdefault(stage, []).append(float(seconds))
    return {k: float(np.mean(v)) for k, v in totals.items()}


def departure_scores(archive: Archive, cycles: list[CycleTime]) -> pd.DataFrame:
    """Per cycle: O−B and O−A RMS of the used observations per (obs type, variable), pooled over level
    bands, as columns omb_rms_<type>_<variable> / oma_rms_<type>_<variable>; index cycle_time."""
    rows = {}
    for cycle in cycles:
        _, _, mon = archive.read_obs(cycle)
        rec = {}
        if len(mon):
            mon = mon.assign(ss=mon["count"] * mon["rms"] ** 2)
            pooled = mon.groupby(["departure", "obs_type", "variable"])[["count", "ss"]].sum()
            for (dep, typ, var), row in pooled.iterrows():
                if row["count"] > 0:
                    prefix = "omb" if dep == "O-B" else "oma"
                    rec[f"{prefix}_rms_{typ}_{var}"] = float(np.sqrt(row["ss"] / row["count"]))
        rows[pd.Timestamp(cycle.value)] = rec
    return pd.DataFrame.from_dict(rows, orient="index")


def desroziers(archive: Archive, cycles: list[CycleTime], background_variance: dict[str, float] | None = None) -> pd.DataFrame:
    """Desroziers et al. (2005) consistency per (obs_type, variable) over the used observations of `cycles`.

    With d_ob = y − H(x_b), d_oa = y − H(x_a), d_ab = H(x_a) − H(x_b): E[d_oa d_ob] ≈ R and
    E[d_ab d_ob] ≈ HBHᵀ for a consistent system. Columns: count, dob_rms, oa_ob (E[d_oa d_ob]),
    r (mean σ_o²), ratio_r = oa_ob / r; with `background_variance` (σ_b² per channel name, e.g. B's
    pointwise variances): ab_ob, hbh (mean σ_b² at the observations), ratio_b and chi2_per_n =
    mean d_ob² / (σ_o² + σ_b²) (≈ 1 when R and B are right).
    """
    parts = []
    for cycle in cycles:
        batch, ds, _ = archive.read_obs(cycle)
        hb, ha = ds["hofx_background"].values, ds["hofx_analysis"].values
        use = batch.passed & np.isfinite(batch.value) & np.isfinite(hb) & np.isfinite(ha)
        frame = pd.DataFrame({"obs_type": batch.obs_type[use], "variable": batch.variable[use],
                              "dob": (batch.value - hb)[use], "doa": (batch.value - ha)[use],
                              "dab": (ha - hb)[use], "r": batch.error[use] ** 2})
        if background_variance is not None:
            pressure = batch.pressure[use]
            names = [v if not np.isfinite(p) else f"{v}_{int(round(p / 100.0))}" for v, p in zip(frame["variable"], pressure)]
            frame["hbh"] = [background_variance.get(n, np.nan) for n in names]
        parts.append(frame)
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    df["oa_ob"], df["ab_ob"], df["dob2"] = df.doa * df.dob, df.dab * df.dob, df.dob**2
    g = df.groupby(["obs_type", "variable"])
    out = g.agg(count=("dob", "size"), dob_ms=("dob2", "mean"), oa_ob=("oa_ob", "mean"), r=("r", "mean"),
                ab_ob=("ab_ob", "mean"))
    out["dob_rms"] = np.sqrt(out.pop("dob_ms"))
    out["ratio_r"] = out.oa_ob / out.r
    if background_variance is not None:
        df["chi2"] = df.dob2 / (df.r + df.hbh)
        out["hbh"] = g["hbh"].mean()
        out["ratio_b"] = out.ab_ob / out.hbh
        out["chi2_per_n"] = df.groupby(["obs_type", "variable"])["chi2"].mean()
    else:
        out = out.drop(columns="ab_ob")
    return out.reset_index()


def observation_table(archive: Archive, cycles: list[CycleTime] | None = None) -> pd.DataFrame:
    """All archived O-B/O-A monitoring rows, with their cycle."""
    frames = []
    for cycle in cycles or archive.done_cycles():
        _, _, mon = archive.read_obs(cycle)
        mon.insert(0, "cycle", cycle.value)
        frames.append(mon)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
