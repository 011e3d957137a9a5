"""Look inside a state store or an archive (used by `align-da inspect`; the figures are in `plots`)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from align_da_ops import grid
from align_da_ops.data import readers
from align_da_ops.errors import InputDataError, SchemaError


GRIB_SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb2")


def open_any(path: str | Path, grib_filter: dict | None = None) -> xr.Dataset:
    """A Zarr store (nature run, WB2; a path or an fsspec URL) or a GRIB file, in the schema."""
    if readers.is_url(path):
        return readers.open_wb2_zarr(str(path))
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path} does not exist")
    if path.suffix.lower() in GRIB_SUFFIXES or _starts_with(path, b"GRIB"):
        return readers.open_grib([path], grib_filter)
    return readers.open_wb2_zarr(path)


def parse_filter(items: list[str]) -> dict[str, str | int]:
    """`KEY=VALUE` strings -> cfgrib's filter_by_keys (integer values as integers)."""
    keys: dict[str, str | int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE (e.g. typeOfLevel=isobaricInhPa)")
        value = value.strip()
        keys[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return keys


def _starts_with(path: Path, magic: bytes) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(len(magic)) == magic


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
            "units": da.attrs.get("units", grid.VARIABLES[name].units if name in grid.VARIABLES else "?"),
            **{k: float(stats[k]) for k in ("min", "mean", "max")},
            "nan_count": int(stats["nan"]),
        }
    return out


def select_map(ds: xr.Dataset, variable: str, level: int | None, time_index: int, member: int) -> xr.DataArray:
    """The 2-D (latitude, longitude) field of `variable` at `level` (hPa; upper-air variables only), time index
    and member, loaded; a SchemaError names what is missing or out of range."""
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


# -- archives ------------------------------------------------------------------------------
def is_archive(path: str | Path) -> bool:
    """Whether `path` is a cycling archive directory (it holds archive.json)."""
    return (Path(path) / "archive.json").exists()
