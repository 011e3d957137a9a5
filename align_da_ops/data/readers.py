"""Readers for real data into the state schema: ERA5/WeatherBench2 Zarr and ERA5 GRIB.

Both return an `xarray.Dataset` with ERA5/WB2 long names, dims
(*leading, level, latitude, longitude) (leading: `member` if present, then
`time`), latitudes ascending, longitudes in [0, 360), integer hPa levels.
Unreadable files raise InputDataError; readable data that does not fit the
schema raises SchemaError naming what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from align_da_ops import grid
from align_da_ops.errors import InputDataError, SchemaError

# Alternative names seen in the wild -> schema names.
_DIM_ALIASES = {
    "lat": grid.LAT,
    "lon": grid.LON,
    "isobaricInhPa": grid.LEVEL,
    "pressure_level": grid.LEVEL,
    "plev": grid.LEVEL,
    "number": grid.MEMBER,
    "valid_time": grid.TIME,
}


def _rename(ds: xr.Dataset) -> xr.Dataset:
    names = {k: v for k, v in _DIM_ALIASES.items() if k in ds.variables and v not in ds.variables}
    names.update({k: grid.SHORT_NAMES[k] for k in ds.data_vars if k in grid.SHORT_NAMES})
    return ds.rename(names)


def _order(ds: xr.Dataset) -> xr.Dataset:
    leading = [d for d in (grid.MEMBER, grid.TIME) if d in ds.dims]
    out = {}
    for name, da in ds.data_vars.items():
        tail = [grid.LEVEL, grid.LAT, grid.LON] if grid.LEVEL in da.dims else [grid.LAT, grid.LON]
        extra = [d for d in da.dims if d not in leading + tail]
        if extra:
            raise SchemaError(f"{name!r} has unexpected dims {extra}; schema dims are {leading + tail}")
        out[name] = da.transpose(*[d for d in leading if d in da.dims], *tail)
    return xr.Dataset(out, attrs=ds.attrs)


def select(
    ds: xr.Dataset,
    variables: Sequence[str],
    levels: Sequence[int] | None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> xr.Dataset:
    """Keep `variables` (and `levels`) between `start` and `end`, checking each is present."""
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise SchemaError(f"data lacks variables {missing}; has {sorted(ds.data_vars)}")
    ds = ds[list(variables)]
    if levels and grid.LEVEL in ds.dims:
        have = [int(p) for p in ds[grid.LEVEL].values]
        absent = [p for p in levels if p not in have]
        if absent:
            raise SchemaError(f"data lacks pressure levels {absent} hPa; has {have}")
        ds = ds.sel({grid.LEVEL: list(levels)})
    if (start or end) and grid.TIME in ds.dims:
        ds = ds.sel({grid.TIME: slice(start, end)})
        if ds.sizes[grid.TIME] == 0:
            raise SchemaError(f"no times in [{start}, {end}]")
    return ds


def open_wb2_zarr(path: str | Path) -> xr.Dataset:
    """Open an ERA5/WeatherBench2-style Zarr store lazily (dask) in the schema."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"Zarr store {path} does not exist")
    # Zarr v3 stores (ours) carry no consolidated metadata; WB2's v2 stores do.
    consolidated = False if (path / "zarr.json").exists() else None
    try:
        ds = xr.open_zarr(path, consolidated=consolidated, decode_timedelta=False)
    except Exception as exc:  # zarr raises many types for a broken store
        raise InputDataError(f"cannot open Zarr store {path}: {type(exc).__name__}: {exc}") from None
    ds = _rename(ds)
    ds = ds[[v for v in ds.data_vars if v in grid.VARIABLES]]
    if not ds.data_vars:
        raise SchemaError(f"{path} holds no schema variables; known names: {sorted(grid.VARIABLES)}")
    return _order(grid.canonicalise(ds))


def open_era5_grib(paths: Sequence[str | Path]) -> xr.Dataset:
    """Read ERA5 GRIB file(s) on pressure levels through ecCodes (cfgrib), in the schema."""
    parts = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputDataError(f"GRIB file {p} does not exist")
        try:
            ds = xr.open_dataset(p, engine="cfgrib", backend_kwargs={"indexpath": ""}, decode_timedelta=False)
        except Exception as exc:  # cfgrib/eccodes raise assorted errors on bad input
            raise InputDataError(f"cannot decode GRIB file {p}: {type(exc).__name__}: {exc}") from None
        if not ds.data_vars:
            raise InputDataError(f"GRIB file {p} holds no decodable fields")
        # Analyses: the valid time is the reference time (+ step 0).
        if "valid_time" in ds.coords and "time" in ds.dims:
            ds = ds.assign_coords(time=ds["valid_time"].values).drop_vars("valid_time")
        ds = ds.drop_vars([c for c in ("step", "surface", "valid_time") if c in ds.coords])
        parts.append(_rename(ds))
    merged = xr.merge(parts, compat="no_conflicts", join="outer") if len(parts) > 1 else parts[0]
    merged = merged[[v for v in merged.data_vars if v in grid.VARIABLES]]
    if not merged.data_vars:
        raise SchemaError(f"GRIB files {list(map(str, paths))} hold no schema variables")
    for name in merged.data_vars:
        merged[name].attrs["units"] = grid.VARIABLES[name].units
    return _order(grid.canonicalise(merged))


def check_grid(ds: xr.Dataset, nlat: int, nlon: int) -> None:
    got = (ds.sizes.get(grid.LAT), ds.sizes.get(grid.LON))
    if got != (nlat, nlon):
        raise SchemaError(f"grid is (latitude, longitude) = {got}; config expects ({nlat}, {nlon})")


def check_plausible(ds: xr.Dataset) -> None:
    """Values finite and within each variable's physical limits (cheap sanity check)."""
    for name, da in ds.data_vars.items():
        values = np.asarray(da.values)
        lo, hi = grid.VARIABLES[name].valid_range
        if not np.isfinite(values).all():
            raise SchemaError(f"{name!r} holds non-finite values")
        if values.min() < lo or values.max() > hi:
            raise SchemaError(f"{name!r} outside plausible range [{lo}, {hi}]: [{values.min():.4g}, {values.max():.4g}]")
