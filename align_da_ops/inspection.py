"""Look inside a state store: a text summary and PNG maps (used by `align-da inspect`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from align_da_ops import grid
from align_da_ops.data import readers
from align_da_ops.errors import InputDataError, SchemaError


def open_any(path: str | Path) -> xr.Dataset:
    """A Zarr store (nature run, WB2) or a GRIB file, in the schema."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path} does not exist")
    if path.suffix.lower() in (".grib", ".grib2", ".grb", ".grb2"):
        return readers.open_era5_grib([path])
    return readers.open_wb2_zarr(path)


def summary(ds: xr.Dataset) -> dict:
    """Variables (dims, units, min/mean/max), levels, times, grid and provenance attributes."""
    out: dict = {"dims": dict(ds.sizes), "attrs": dict(ds.attrs), "variables": {}}
    if grid.TIME in ds.coords:
        t = ds[grid.TIME].values
        out["times"] = {"count": int(t.size), "first": str(t.min())[:19], "last": str(t.max())[:19]}
    if grid.LEVEL in ds.coords:
        out["levels"] = [int(p) for p in ds[grid.LEVEL].values]
    lat = ds[grid.LAT].values
    out["grid"] = {"nlat": int(lat.size), "nlon": int(ds.sizes[grid.LON]), "lat_range": [float(lat[0]), float(lat[-1])]}
    for name, da in ds.data_vars.items():
        stats = xr.Dataset({"min": da.min(), "mean": da.mean(), "max": da.max(), "nan": da.isnull().sum()}).compute()
        out["variables"][name] = {
            "dims": list(da.dims),
            "units": da.attrs.get("units", grid.VARIABLES.get(name, grid.VariableInfo(name, name, "?", False, (0, 0))).units),
            **{k: float(stats[k]) for k in ("min", "mean", "max")},
            "nan_count": int(stats["nan"]),
        }
    return out


def select_map(ds: xr.Dataset, variable: str, level: int | None, time_index: int, member: int) -> xr.DataArray:
    if variable not in ds.data_vars:
        raise SchemaError(f"no variable {variable!r}; have {sorted(ds.data_vars)}")
    da = ds[variable]
    if grid.LEVEL in da.dims:
        levels = [int(p) for p in ds[grid.LEVEL].values]
        if level is None or level not in levels:
            raise SchemaError(f"{variable!r} needs --level, one of {levels}; got {level}")
        da = da.sel({grid.LEVEL: level})
    if grid.MEMBER in da.dims:
        if not 0 <= member < da.sizes[grid.MEMBER]:
            raise SchemaError(f"member {member} out of range 0..{da.sizes[grid.MEMBER] - 1}")
        da = da.isel({grid.MEMBER: member})
    if grid.TIME in da.dims:
        n = da.sizes[grid.TIME]
        if not -n <= time_index < n:
            raise SchemaError(f"time index {time_index} out of range for {n} times")
        da = da.isel({grid.TIME: time_index})
    return da.load()


def write_map_png(da: xr.DataArray, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lon = da[grid.LON].values
    lat = da[grid.LAT].values
    values = np.asarray(da.values)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    mesh = ax.pcolormesh(lon, lat, values, shading="nearest", cmap="RdBu_r" if values.min() < 0 < values.max() else "viridis")
    fig.colorbar(mesh, ax=ax, label=da.attrs.get("units", ""), shrink=0.85)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.set_xlim(0, 360)
    ax.set_ylim(-90, 90)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# -- archives ------------------------------------------------------------------------------
def is_archive(path: str | Path) -> bool:
    return (Path(path) / "archive.json").exists()


def write_archive_pngs(archive, scores, obs_rows, truth, out_dir: Path, variable: str, level: int | None) -> list[Path]:
    """Maps (analysis, increment, error) of the last cycle, WRMSE time series, O-B histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    cycle = archive.done_cycles()[-1]
    t = cycle.as_numpy()
    pick = lambda ds: select_map(ds.sel({grid.TIME: t}), variable, level, 0, 0)
    analysis = pick(archive.open_product("analysis"))
    background = pick(archive.open_product("background"))
    label = f"{variable}{f' {level} hPa' if level else ''} {cycle}"
    written.append(write_map_png(analysis, out_dir / "analysis.png", f"analysis {label}"))
    written.append(write_map_png(analysis - background, out_dir / "increment.png", f"increment (a - b) {label}"))
    if truth is not None and t in truth.indexes[grid.TIME]:
        error = analysis - pick(truth)
        written.append(write_map_png(error, out_dir / "error.png", f"analysis error (a - truth) {label}"))
    if scores is not None and len(scores):
        key = f"wrmse_{variable}_{level}" if level else f"wrmse_{variable}"
        fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
        for lead in sorted(set(scores.index.get_level_values("lead"))):
            series = scores.xs(lead, level="lead")[key]
            times = series.index.get_level_values("cycle_time")
            ax.plot(times, series.values, label="analysis" if lead == pd.Timedelta(0) else f"+{int(lead.total_seconds() // 3600)} h")
        ax.set_ylabel(f"WRMSE {key[6:]}")
        ax.legend()
        ax.set_title(f"{archive.meta['experiment']}: error against truth")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out_dir / "rmse_timeseries.png")
        plt.close(fig)
        written.append(out_dir / "rmse_timeseries.png")
    written.append(_departure_histograms(archive, out_dir / "omb_histograms.png"))
    return written


def _departure_histograms(archive, path: Path) -> Path:
    import matplotlib.pyplot as plt

    batch, ds, _ = archive.read_obs(archive.done_cycles()[-1])
    variables = sorted(set(batch.variable[batch.passed]))
    fig, axes = plt.subplots(1, max(1, len(variables)), figsize=(3.2 * max(1, len(variables)), 3), dpi=100, squeeze=False)
    for ax, var in zip(axes[0], variables):
        use = batch.passed & (batch.variable == var)
        omb = batch.value[use] - ds["hofx_background"].values[use]
        oma = batch.value[use] - ds["hofx_analysis"].values[use]
        bins = np.linspace(*np.nanpercentile(np.concatenate([omb, oma]), [1, 99]), 40)
        ax.hist(omb, bins=bins, alpha=0.6, label="O-B")
        ax.hist(oma, bins=bins, alpha=0.6, label="O-A")
        ax.set_title(var.replace("_component_of_wind", " wind"), fontsize=9)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
