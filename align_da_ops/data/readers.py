"""Readers for real data into the state schema: ERA5/WeatherBench2 Zarr and GRIB (ERA5, GFS, ...).

Zarr stores are read from a local path or a URL (fsspec: `file://`, `gs://` with gcsfs installed, ...).
GRIB files (GRIB1 and GRIB2) are split by cfgrib into consistent hypercubes; upper-air variables are taken
from pressure levels (typeOfLevel isobaricInhPa), surface ones from their usual level (surface, meanSea,
2 m, 10 m); `filter_by_keys` narrows the messages read (e.g. {"typeOfLevel": "isobaricInhPa"}).
Geopotential height in gpm (`gh`) becomes geopotential (x g0 = 9.80665).

Both return an `xarray.Dataset` with ERA5/WB2 long names, dims
(*leading, level, latitude, longitude) (leading: `member` if present, then
`time`), latitudes ascending, longitudes in [0, 360), integer hPa levels.
Unreadable files raise InputDataError; readable data that does not fit the
schema raises SchemaError naming what was expected and what was found.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from align_da_ops import grid
from align_da_ops.errors import InputDataError, SchemaError

G0 = 9.80665  # standard gravity (WMO): geopotential = G0 * geopotential height

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


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def open_wb2_zarr(path: str | Path) -> xr.Dataset:
    """Open an ERA5/WeatherBench2-style Zarr store (local path or fsspec URL) lazily (dask) in the schema."""
    if is_url(path):
        target, consolidated = str(path), None
    else:
        target = Path(path)
        if not target.exists():
            raise InputDataError(f"Zarr store {target} does not exist")
        # Zarr v3 stores without consolidated metadata (older archives) would warn on consolidated=None.
        consolidated = None if not (target / "zarr.json").exists() or "consolidated_metadata" in (target / "zarr.json").read_text() else False
    try:
        ds = xr.open_zarr(target, consolidated=consolidated, decode_timedelta=False)
    except Exception as exc:  # zarr raises many types for a broken store
        raise InputDataError(f"cannot open Zarr store {path}: {type(exc).__name__}: {exc}") from None
    ds = _rename(ds)
    ds = ds[[v for v in ds.data_vars if v in grid.VARIABLES]]
    if not ds.data_vars:
        raise SchemaError(f"{path} holds no schema variables; known names: {sorted(grid.VARIABLES)}")
    return _order(grid.canonicalise(ds))


# The level a surface variable is read from: (cfgrib's typeOfLevel coordinate, its value or None).
_SURFACE_LEVELS = {
    "surface_pressure": ("surface", None),
    "mean_sea_level_pressure": ("meanSea", None),
    "2m_temperature": ("heightAboveGround", 2.0),
    "10m_u_component_of_wind": ("heightAboveGround", 10.0),
    "10m_v_component_of_wind": ("heightAboveGround", 10.0),
}
# cfgrib names -> schema names beyond the ECMWF short names (GFS's gh, and cfgrib's 2 m / 10 m names)
_GRIB_NAMES = {"gh": "geopotential", "t2m": "2m_temperature", "u10": "10m_u_component_of_wind",
               "v10": "10m_v_component_of_wind", "prmsl": "mean_sea_level_pressure", "pres": "surface_pressure"}


def _grib_hypercubes(path: Path, filter_by_keys: dict | None) -> list[xr.Dataset]:
    import cfgrib

    kwargs = {"indexpath": ""}
    if filter_by_keys:
        kwargs["filter_by_keys"] = dict(filter_by_keys)
    try:
        with warnings.catch_warnings():  # cfgrib's own merges warn about xarray's future defaults
            warnings.simplefilter("ignore", FutureWarning)
            return cfgrib.open_datasets(str(path), backend_kwargs=kwargs, decode_timedelta=False)
    except Exception as exc:  # cfgrib/eccodes raise assorted errors on bad input (KeyError when nothing matches)
        hint = f" with filter {filter_by_keys} (do any messages match it?)" if filter_by_keys else ""
        raise InputDataError(f"cannot decode GRIB file {path}{hint}: {type(exc).__name__}: {exc}") from None


def _schema_fields(ds: xr.Dataset) -> xr.Dataset:
    """The schema variables of one cfgrib hypercube, on their proper level, in schema names and units."""
    keep = {}
    for name, da in ds.data_vars.items():
        target = _GRIB_NAMES.get(name, grid.SHORT_NAMES.get(name, name if name in grid.VARIABLES else None))
        if target is None:
            continue
        info = grid.VARIABLES[target]
        if info.upper_air:
            if "isobaricInhPa" not in da.coords:
                continue  # e.g. temperature on hybrid or height levels
            if "isobaricInhPa" not in da.dims:
                da = da.expand_dims("isobaricInhPa")
        else:
            level, value = _SURFACE_LEVELS.get(target, (None, None))
            if da.attrs.get("GRIB_typeOfLevel") != level or (value is not None and float(da.coords.get(level, np.nan)) != value):
                continue
        if name == "gh":
            da = da * G0
        keep[target] = da.assign_attrs(units=info.units)
    if not keep:
        return xr.Dataset()
    out = xr.Dataset(keep)
    # Analyses: the valid time is the reference time (+ step 0).
    if "valid_time" in out.coords and "time" in out.dims:
        out = out.assign_coords(time=out["valid_time"].values)
    scalar = [c for c in out.coords if c not in out.dims and c not in ("isobaricInhPa", "time", "number")]
    return _rename(out.drop_vars(scalar))


def open_grib(paths: Sequence[str | Path], filter_by_keys: dict | None = None) -> xr.Dataset:
    """Read GRIB1/GRIB2 file(s) through ecCodes (cfgrib) into the schema (see the module docstring)."""
    parts = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputDataError(f"GRIB file {p} does not exist")
        cubes = _grib_hypercubes(p, filter_by_keys)
        if not any(c.data_vars for c in cubes):
            raise InputDataError(f"GRIB file {p} holds no decodable fields"
                                 + (f" matching {filter_by_keys}" if filter_by_keys else ""))
        parts.extend(f for f in map(_schema_fields, cubes) if f.data_vars)
    if not parts:
        raise SchemaError(f"GRIB files {list(map(str, paths))} hold no schema variables on pressure levels or the "
                          f"surface; known: {sorted(grid.SHORT_NAMES)} (+ gh)")
    try:
        merged = xr.merge(parts, compat="no_conflicts", join="outer") if len(parts) > 1 else parts[0]
    except (ValueError, xr.MergeError) as exc:
        raise SchemaError(f"GRIB files {list(map(str, paths))} hold conflicting fields ({exc}); "
                          "narrow them with filter_by_keys (inspect --filter KEY=VALUE)") from None
    for name in merged.data_vars:
        merged[name].attrs["units"] = grid.VARIABLES[name].units
    return _order(grid.canonicalise(merged))


def poles_to_centres(ds: xr.Dataset, nlat: int) -> xr.Dataset:
    """An equiangular grid with poles (nlat + 1 latitudes from -90 to 90, WeatherBench2's `with_poles`) on the
    cell-centred grid of nlat latitudes: each centre lies half-way between two with-pole rows, so its value is
    their mean (linear interpolation in latitude; exact for fields linear in latitude). Other grids pass unchanged."""
    lat = ds[grid.LAT].values
    if lat.size != nlat + 1 or not np.allclose(lat, grid.equiangular_latitudes(nlat + 1, with_poles=True), atol=1e-6):
        return ds
    centres = grid.equiangular_latitudes(nlat)
    upper, lower = ds.isel({grid.LAT: slice(1, None)}), ds.isel({grid.LAT: slice(None, -1)})
    mean = (upper.drop_vars(grid.LAT) + lower.drop_vars(grid.LAT)) / 2
    out = mean.assign_coords({grid.LAT: centres})
    for name in out.data_vars:
        out[name].attrs = ds[name].attrs
    out.attrs = {**ds.attrs, "regridding": f"with-pole grid of {nlat + 1} latitudes -> {nlat} cell centres "
                 "(mean of the two neighbouring rows)"}
    return out


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
