"""The Python API for notebooks and scripts: everything the CLI does, from one import.

    import align_da_ops as ada
    ctx = ada.open_campaign("cycles/tiny-3dvar.yaml")       # validated config, models loaded
    ada.replay(ctx, end="2000-01-12T00")                   # resumable, like `align-da replay`
    tree = ada.open_archive(ctx.archive.root)              # xarray DataTree, lazy
    tree["analysis"]["geopotential"].sel(level=500).isel(time=-1).plot()
    ada.status("cycles/tiny-3dvar.yaml")["health"]         # like `align-da status --json`

Times may be `CycleTime`s, datetimes or strings ("2000-01-11T06", "2000011106").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from align_da_ops.engine import CycleOutcome
from align_da_ops.times import CycleTime
from align_da_ops.wiring import CycleContext


def cycle_time(value: CycleTime | datetime | str) -> CycleTime:
    """A cycle time from a CycleTime, a datetime or text (ISO 8601 or YYYYMMDDHH)."""
    if isinstance(value, CycleTime):
        return value
    return CycleTime(value) if isinstance(value, datetime) else CycleTime.parse(str(value))


def load_campaign(path: str | Path, overrides: Sequence[str] = ()):
    """(CampaignConfig, ExperimentConfig) of a campaign file, validated, with `key.sub=value` overrides."""
    from align_da_ops.campaign import load_campaign as load

    return load(path, overrides)


def open_campaign(path: str | Path, overrides: Sequence[str] = ()) -> CycleContext:
    """A campaign ready to cycle (the same context the CLI builds: models, observations, archive)."""
    from align_da_ops.cycling_commands import context

    return context(Path(path), list(overrides))


def run_cycle(ctx: CycleContext, at: CycleTime | datetime | str, force: bool = False) -> CycleOutcome:
    """Run one cycle under the archive lock (its predecessor must be done unless it is the first)."""
    from align_da_ops.engine import run_cycle as run

    with ctx.archive.locked():
        return run(ctx, cycle_time(at), force=force)


def replay(ctx: CycleContext, start=None, end=None, force: bool = False) -> list[CycleOutcome]:
    """Run cycles start..end (default: the campaign's period) back to back; done cycles are skipped."""
    from align_da_ops.replaying import replay as run

    last = cycle_time(end) if end is not None else ctx.campaign.last
    if last is None:
        raise ValueError("this campaign has no end; give end=")
    return run(ctx, cycle_time(start) if start is not None else ctx.campaign.first, last, force=force)


def open_archive(path: str | Path, observations: bool = True):
    """The archive as a lazy xarray DataTree: one child per product present (analysis, background,
    forecast with `prediction_timedelta` and `valid_time`, spread, members with `member`) up to the last
    done cycle, each with a boolean `done` per time (False: the cycle is not done and its values are NaN); the archive's description in
    the root's attrs; with `observations`, each done cycle's IODA v3 file under observations/YYYYMMDDHH
    (MetaData, ObsValue, ObsError, PreQC, EffectiveQC, hofx0, hofx1, ombg, oman)."""
    import numpy as np
    import xarray as xr

    from align_da_ops.archive import PRODUCTS, Archive

    archive = Archive.open(Path(path))
    done_cycles = archive.done_cycles()
    done = {c.as_numpy() for c in done_cycles}
    children = {}
    for product in PRODUCTS:
        if not (archive.grid_store / product).exists():
            continue
        ds = archive.open_product(product)
        if done_cycles:  # the time axis grows in blocks: drop the times after the last done cycle
            ds = ds.sel(time=slice(None, done_cycles[-1].as_numpy()))
        mask = np.array([t in done for t in ds["time"].values.astype("datetime64[ns]")], dtype=bool)
        children[product] = ds.assign(done=("time", mask, {"long_name": "cycle is done (values valid)"}))
    root = xr.Dataset(attrs={k: v for k, v in archive.meta.items() if k not in ("latitudes", "longitudes")}
                      | {"archive": str(archive.root), "Conventions": "CF-1.10"})
    tree = {"/": root, **{f"/{k}": v for k, v in children.items()}}
    if observations:
        for cycle in done_cycles:  # each done cycle's IODA v3 file, group by group (lazy)
            path = archive.root / "obs" / f"{cycle.compact}.ioda.nc"
            if path.exists():
                for name, node in xr.open_datatree(path, engine="netcdf4", mask_and_scale=False).subtree_with_keys:
                    tree[f"/observations/{cycle.compact}" + ("" if name == "." else f"/{name}")] = node.to_dataset()
    return xr.DataTree.from_dict(tree)


def status(target: str | Path, now: datetime | None = None, last_n: int = 8) -> dict:
    """The `align-da status --json` report of a campaign file or archive directory."""
    from align_da_ops.cycle_status import campaign_status, expectation_for

    archive, expect = expectation_for(Path(target))
    return campaign_status(archive, expect, now, last_n)
