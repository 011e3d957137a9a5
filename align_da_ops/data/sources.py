"""The configured state source, whatever it is, as one Dataset in the schema.

`open_states(cfg)` returns dims (time, level, latitude, longitude) for upper-air
variables and (time, latitude, longitude) for surface ones, exactly the
configured variables and levels, on the configured grid (checked). Data stays
lazy (dask) until used. Normalisation statistics are computed with dask
reductions (never the whole period in memory) and stored beside the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from align_da_ops import grid
from align_da_ops.config import ExperimentConfig
from align_da_ops.data import readers
from align_da_ops.errors import InputDataError, SchemaError

NORMALIZATION_GROUP = "normalization"


def layout_of(cfg: ExperimentConfig) -> grid.StateLayout:
    return grid.StateLayout(tuple(cfg.state.upper_air), tuple(cfg.state.surface), tuple(cfg.state.levels))


def open_states(cfg: ExperimentConfig, member: int | None = None) -> xr.Dataset:
    """The configured data lazily, in the schema: one trajectory (`data.member`, or `member` of a nature run)."""
    src = cfg.data
    if member is not None and src.kind != "nature_run":
        raise SchemaError(f"member={member} selects a nature-run trajectory; data.kind is {src.kind!r}")
    if src.kind == "nature_run":
        path = cfg.nature_run.output
        if not path.exists():
            raise InputDataError(f"nature run {path} does not exist; make it with `align-da nature-run CONFIG`")
        ds = xr.open_zarr(path, consolidated=False)
        if not ds.attrs.get("complete"):
            raise InputDataError(f"nature run {path} is incomplete; rerun `align-da nature-run CONFIG` to finish it")
        member = src.member if member is None else member
        if member >= ds.sizes[grid.MEMBER]:
            raise SchemaError(f"member {member} asked for but {path} holds {ds.sizes[grid.MEMBER]} members")
        ds = ds.isel({grid.MEMBER: member})
    elif src.kind == "wb2_zarr":
        ds = readers.open_wb2_zarr(src.path)
        if cfg.state.grid.kind == "equiangular":
            ds = readers.poles_to_centres(ds, cfg.state.grid.nlat)
    else:
        ds = readers.open_grib(src.paths, src.filter_by_keys)
        if grid.MEMBER in ds.dims:
            if src.member is None:
                raise SchemaError(f"GRIB data holds {ds.sizes[grid.MEMBER]} members; set data.member")
            ds = ds.sel({grid.MEMBER: src.member})
    ds = readers.select(ds, cfg.state.upper_air + cfg.state.surface, cfg.state.levels)
    readers.check_grid(ds, cfg.state.grid.nlat, cfg.state.grid.nlon)
    return ds


def training_trajectory(cfg: ExperimentConfig) -> xr.Dataset:
    """The trajectory that single-trajectory training work reads over the train split (NMC pairs, preference
    cases): the first of `splits.train.members`, else `data.member`'s (so it never reads a held-out one)."""
    members = cfg.splits.train.members
    return open_states(cfg, members[0] if members else None)


def open_split_trajectories(cfg: ExperimentConfig, period) -> xr.Dataset:
    """The trajectories a split reads, lazily: `open_states(cfg)` when the split lists no members, else its
    members stacked along `member` (not cut to the split's times)."""
    if not period.members:
        return open_states(cfg)
    return xr.concat([open_states(cfg, m) for m in period.members], dim=grid.MEMBER)


def normalization_path(cfg: ExperimentConfig) -> Path:
    """Nature runs keep statistics inside their store; other sources in data/<name>/normalization.zarr."""
    if cfg.data.kind == "nature_run":
        return cfg.nature_run.output
    return Path("data") / cfg.name / "normalization.zarr"


def compute_normalization(ds: xr.Dataset, layout: grid.StateLayout, start, end) -> grid.Normalization:
    """Per-channel mean and std over [start, end] (all grid points, and all members if `ds` has a member
    dimension), by dask reductions."""
    sel = ds.sel({grid.TIME: slice(start, end)})
    if sel.sizes.get(grid.TIME, 0) == 0:
        raise SchemaError(f"no times in the normalisation period [{start}, {end}]")
    dims = [grid.TIME, grid.LAT, grid.LON] + ([grid.MEMBER] if grid.MEMBER in sel.dims else [])
    names = list(layout.upper_air + layout.surface)
    mean = sel[names].astype(np.float64).mean(dims)
    std = sel[names].astype(np.float64).std(dims)
    mean, std = mean.compute(), std.compute()
    means, stds = [], []
    for name in layout.upper_air:
        means.extend(mean[name].sel({grid.LEVEL: list(layout.levels)}).values)
        stds.extend(std[name].sel({grid.LEVEL: list(layout.levels)}).values)
    for name in layout.surface:
        means.append(float(mean[name]))
        stds.append(float(std[name]))
    std_arr = np.asarray(stds)
    std_arr = np.where(std_arr > 0, std_arr, 1.0)
    return grid.Normalization(layout.channels, np.asarray(means), std_arr, (str(start), str(end)))


def write_normalization(stats: grid.Normalization, path: Path) -> None:
    stats.to_dataset().to_zarr(path, group=NORMALIZATION_GROUP, mode="w", zarr_format=3, consolidated=False)


def read_normalization(path: Path) -> grid.Normalization:
    try:
        ds = xr.open_zarr(path, group=NORMALIZATION_GROUP, consolidated=False)
    except Exception as exc:  # missing group or store
        raise InputDataError(f"no normalisation statistics at {path} ({type(exc).__name__}); run `align-da stats CONFIG`") from None
    return grid.Normalization.from_dataset(ds)
