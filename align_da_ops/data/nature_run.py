"""Generate the OSSE nature run ("truth") into a Zarr store in the state schema.

The store holds dims (member, time, level, latitude, longitude), ERA5/WB2 names,
float32, chunked by `chunk_days`, and provenance in its attributes. It is made
from a template first; each chunk is then written into its own region, and only
after the data is on disk is the progress record (`restart.npz`: the exact
model state at the last written time plus the count of written times) replaced
atomically. A killed generation therefore resumes at the first unrecorded time
and the finished store equals an uninterrupted run, bitwise on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

import align_da_ops
from align_da_ops import grid
from align_da_ops.config import ExperimentConfig, HeldSuarezConfig, config_hash
from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore
from align_da_ops.data.restarts import find_spun_up, load_restart, save_restart
from align_da_ops.data.sources import compute_normalization, layout_of, write_normalization
from align_da_ops.devices import resolve_device
from align_da_ops.errors import ConfigError, StoreError
from align_da_ops.logs import get_logger
from align_da_ops.vertical import interp_log_pressure

log = get_logger(__name__)

_FIELD_OF = {
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
}


def progress_file(store: Path) -> Path:
    """The resume record beside the store: exact core state at the last written time + count written."""
    return store.with_name(store.name + ".progress.npz")


def build_core(nr: HeldSuarezConfig, device: torch.device) -> HeldSuarezCore:
    return HeldSuarezCore(CoreSpec(nr.truncation, nr.layers), nr.dt_minutes, device=device)


def pressure_level_tensor(core: HeldSuarezCore, state, layout: grid.StateLayout) -> torch.Tensor:
    """Core state -> channel-stacked physical fields (member, channel, lat, lon) on pressure levels."""
    fields = core.sigma_fields(state)
    targets = torch.as_tensor([100.0 * p for p in layout.levels], device=fields["t"].device)
    parts = [interp_log_pressure(fields[_FIELD_OF[name]], fields["pressure"], targets) for name in layout.upper_air]
    for name in layout.surface:
        # Flat orography: sea-level pressure equals surface pressure exactly.
        parts.append(fields["ps"])
    return torch.cat(parts, dim=-3)


def _run_signature(cfg: ExperimentConfig) -> str:
    nr = cfg.nature_run
    relevant = {"nature_run": nr.model_dump(mode="json", exclude={"output", "chunk_days"}), "state": cfg.state.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _template(cfg: ExperimentConfig, core: HeldSuarezCore, layout: grid.StateLayout, meta: dict) -> xr.Dataset:
    nr = cfg.nature_run
    times = pd.date_range(nr.start, nr.end, freq="6h")
    chunk = max(1, int(round(nr.chunk_days * 4)))
    lat, lon = core.latitudes, core.longitudes
    shape3 = (nr.members, len(times), len(layout.levels), len(lat), len(lon))
    import dask.array as da

    data_vars = {}
    for name in layout.upper_air:
        arr = da.zeros(shape3, dtype=np.float32, chunks=(nr.members, chunk, -1, -1, -1))
        data_vars[name] = ((grid.MEMBER, grid.TIME, grid.LEVEL, grid.LAT, grid.LON), arr, {"units": grid.VARIABLES[name].units})
    for name in layout.surface:
        arr = da.zeros(shape3[:2] + shape3[3:], dtype=np.float32, chunks=(nr.members, chunk, -1, -1))
        data_vars[name] = ((grid.MEMBER, grid.TIME, grid.LAT, grid.LON), arr, {"units": grid.VARIABLES[name].units})
    coords = {
        grid.MEMBER: np.arange(nr.members),
        grid.TIME: times.values,
        grid.LEVEL: (grid.LEVEL, np.asarray(layout.levels, dtype=np.int64), {"units": "hPa"}),
        grid.LAT: (grid.LAT, lat, {"units": "degrees_north", "spacing": "gaussian"}),
        grid.LON: (grid.LON, lon, {"units": "degrees_east"}),
    }
    attrs = {
        "title": f"Held-Suarez OSSE nature run ({cfg.name})",
        "source": "dinosaur-torch primitive equations (sigma coordinates, IMEX SIL3) + Held-Suarez 1994 forcing",
        "dinosaur_torch_version": _dist_version("dinosaur-torch"),
        "align_da_ops_version": align_da_ops.__version__,
        "truncation": f"T{nr.truncation}",
        "sigma_layers": nr.layers,
        "dt_minutes": nr.dt_minutes,
        "seed": nr.seed,
        "members": nr.members,
        "member_perturbation_k": nr.member_perturbation_k,
        "decorrelation_days": nr.decorrelation_days,
        "spinup": json.dumps(meta),
        "config_hash": config_hash(cfg),
        "run_signature": _run_signature(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": 0,
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _initial_state(core: HeldSuarezCore, nr: HeldSuarezConfig):
    state, meta = find_spun_up(core, nr.restart, nr.spinup_days, nr.seed)
    state = core.replicate(state, nr.members)
    if nr.members > 1:
        pieces = []
        for m in range(nr.members):
            member = dataclasses.replace(
                state,
                vorticity=state.vorticity[m : m + 1],
                divergence=state.divergence[m : m + 1],
                temperature_variation=state.temperature_variation[m : m + 1],
                log_surface_pressure=state.log_surface_pressure[m : m + 1],
            )
            if m > 0:  # member 0 stays the unperturbed trajectory
                member = core.perturb(member, zlib.crc32(f"{nr.seed}/{m}".encode()), nr.member_perturbation_k)
            pieces.append(member)
        state = dataclasses.replace(
            state,
            vorticity=torch.cat([p.vorticity for p in pieces]),
            divergence=torch.cat([p.divergence for p in pieces]),
            temperature_variation=torch.cat([p.temperature_variation for p in pieces]),
            log_surface_pressure=torch.cat([p.log_surface_pressure for p in pieces]),
        )
    if nr.decorrelation_days:
        state = core.advance(state, core.steps_for_hours(24 * nr.decorrelation_days))
    return state, meta


def generate(
    cfg: ExperimentConfig,
    output: Path | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    before_commit: Callable[[int], None] | None = None,
) -> Path:
    """Write (or resume) the nature run; returns the store path.

    `on_chunk(done, total)` is called after each chunk is committed;
    `before_commit(done)` after a chunk's data is written but before its
    progress record is (a hook for fault-injection tests).
    """
    nr = cfg.nature_run
    if nr is None:
        raise ConfigError(f"config {cfg.name!r} has no nature_run block")
    store = Path(output or nr.output)
    device = resolve_device(cfg.device)
    core = build_core(nr, device)
    layout = layout_of(cfg)
    steps_6h = core.steps_for_hours(6)
    progress_path = progress_file(store)
    if store.exists():
        state, done = _resume(store, cfg, core)
    else:
        state, meta = _initial_state(core, nr)
        store.parent.mkdir(parents=True, exist_ok=True)
        _template(cfg, core, layout, meta).to_zarr(store, mode="w-", compute=False, zarr_format=3, consolidated=False)
        done = 0
    times = pd.date_range(nr.start, nr.end, freq="6h")
    total = len(times)
    chunk = max(1, int(round(nr.chunk_days * 4)))
    log.info("nature_run_start", store=str(store), done=done, total=total, device=str(device))
    while done < total:
        stop = min(total, (done // chunk + 1) * chunk)
        frames = []
        for i in range(done, stop):
            if i > 0:
                state = core.advance(state, steps_6h)
            frames.append(pressure_level_tensor(core, state, layout).cpu())
        block = torch.stack(frames, dim=1)  # (member, time, channel, lat, lon)
        _write_region(store, layout, block, core, times[done:stop], done)
        if before_commit:
            before_commit(stop)
        save_restart(progress_path, core, state, times_done=stop)
        done = stop
        log.debug("nature_run_chunk", done=done, total=total)  # the CLI shows a progress bar
        if on_chunk:
            on_chunk(done, total)
    _finish(store, cfg, layout)
    return store


def _resume(store: Path, cfg: ExperimentConfig, core: HeldSuarezCore):
    try:
        attrs = open_nature_run(store).attrs
    except Exception as exc:  # unreadable store: refuse, never overwrite
        raise StoreError(f"{store} exists but is not a readable nature-run store ({exc}); move it away or pick another output") from None
    if attrs.get("run_signature") != _run_signature(cfg):
        raise StoreError(
            f"{store} was made by a different nature-run config (signature {attrs.get('run_signature')!r}, "
            f"this config {_run_signature(cfg)!r}); refusing to mix runs"
        )
    progress = progress_file(store)
    if not progress.exists():  # template written, no chunk committed yet
        state, _ = _initial_state(core, cfg.nature_run)
        return state, 0
    state, meta = load_restart(progress, core)
    return state, int(meta["times_done"])


def _write_region(store: Path, layout: grid.StateLayout, block: torch.Tensor, core, times, start: int) -> None:
    ds = layout.from_tensor(
        block, core.latitudes, core.longitudes, leading=(grid.MEMBER, grid.TIME),
        coords={grid.TIME: times.values},
    )
    ds = ds.drop_vars([grid.LAT, grid.LON, grid.LEVEL, grid.TIME], errors="ignore")
    ds = ds.astype(np.float32)
    ds.to_zarr(store, region={grid.TIME: slice(start, start + len(times))}, mode="r+", consolidated=False)


def _finish(store: Path, cfg: ExperimentConfig, layout: grid.StateLayout) -> None:
    """Normalisation statistics over the training split, then mark the store complete."""
    import zarr

    ds = open_nature_run(store)
    if not ds.attrs.get("complete"):
        train = cfg.splits.train
        truth = ds.isel({grid.MEMBER: cfg.data.member if cfg.data.kind == "nature_run" else 0})
        write_normalization(compute_normalization(truth, layout, train.start, train.end), store)
        root = zarr.open_group(store, mode="r+")
        root.attrs["complete"] = 1
        log.info("nature_run_complete", store=str(store))


def open_nature_run(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)
