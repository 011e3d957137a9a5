"""Generate the OSSE nature run ("truth") into a Zarr store in the state schema.

The store holds dims (member, time, level, latitude, longitude), ERA5/WB2 names,
float32, chunked by `chunk_days` and by member group, and provenance in its
attributes. Members are advanced in groups of `members_per_call` (one batched
core call per group and step; default one group of all members); groups are
independent, so they run one after another here or as tasks on a dask cluster
(`client`), each writing only its own chunks. It is made from a template first;
each chunk of a group is then written into its own region, and only after the
data is on disk is the group's progress record (the exact model state at the
last written time plus the count of written times) replaced atomically. A
killed generation therefore resumes each group at its first unrecorded time and
the finished store equals an uninterrupted run, bitwise on CPU at equal threads
(also when the groups ran on different workers).
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


def member_groups(nr: HeldSuarezConfig) -> list[tuple[int, int]]:
    """[(first, end)) member ranges advanced together, in order."""
    size = nr.members_per_call or nr.members
    return [(a, min(a + size, nr.members)) for a in range(0, nr.members, size)]


def progress_file(store: Path, group: tuple[int, int] | None = None) -> Path:
    """A group's resume record beside the store: exact core state at the last written time + count written
    (`<store>.progress.npz` when one group holds every member)."""
    suffix = "" if group is None else f"-m{group[0]:04d}-{group[1]:04d}"
    return store.with_name(f"{store.name}.progress{suffix}.npz")


def _progress_of(store: Path, nr: HeldSuarezConfig, group: tuple[int, int]) -> Path:
    return progress_file(store, None if len(member_groups(nr)) == 1 else group)


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
    exclude = {"output", "chunk_days"} | ({"members_per_call"} if len(member_groups(nr)) == 1 else set())
    relevant = {"nature_run": nr.model_dump(mode="json", exclude=exclude), "state": cfg.state.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _template(cfg: ExperimentConfig, core: HeldSuarezCore, layout: grid.StateLayout, meta: dict) -> xr.Dataset:
    nr = cfg.nature_run
    times = pd.date_range(nr.start, nr.end, freq="6h")
    chunk = max(1, int(round(nr.chunk_days * 4)))
    group = nr.members_per_call or nr.members  # a group's chunks are its own: groups write concurrently
    lat, lon = core.latitudes, core.longitudes
    shape3 = (nr.members, len(times), len(layout.levels), len(lat), len(lon))
    import dask.array as da

    data_vars = {}
    for name in layout.upper_air:
        arr = da.zeros(shape3, dtype=np.float32, chunks=(group, chunk, -1, -1, -1))
        data_vars[name] = ((grid.MEMBER, grid.TIME, grid.LEVEL, grid.LAT, grid.LON), arr, {"units": grid.VARIABLES[name].units})
    for name in layout.surface:
        arr = da.zeros(shape3[:2] + shape3[3:], dtype=np.float32, chunks=(group, chunk, -1, -1))
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
        "members_per_call": nr.members_per_call or nr.members,
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


def _initial_state(core: HeldSuarezCore, nr: HeldSuarezConfig, group: tuple[int, int] | None = None):
    """(state of the members in `group` (default all) at the first output time, spin-up metadata).
    Each member's perturbation depends on (seed, member) only; the decorrelation run is one batched
    call per group, like every later step."""
    state, meta = find_spun_up(core, nr.restart, nr.spinup_days, nr.seed)
    first, end = group or (0, nr.members)
    if nr.members > 1:
        pieces = []
        for m in range(first, end):
            member = core.replicate(state, 1)
            if m > 0:  # member 0 stays the unperturbed trajectory
                member = core.perturb(member, zlib.crc32(f"{nr.seed}/{m}".encode()), nr.member_perturbation_k)
            pieces.append(member)
        state = dataclasses.replace(
            pieces[0],
            vorticity=torch.cat([p.vorticity for p in pieces]),
            divergence=torch.cat([p.divergence for p in pieces]),
            temperature_variation=torch.cat([p.temperature_variation for p in pieces]),
            log_surface_pressure=torch.cat([p.log_surface_pressure for p in pieces]),
        )
    else:
        state = core.replicate(state, 1)
    if nr.decorrelation_days:
        state = core.advance(state, core.steps_for_hours(24 * nr.decorrelation_days))
    return state, meta


def generate(
    cfg: ExperimentConfig,
    output: Path | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    before_commit: Callable[[int], None] | None = None,
    client=None,
) -> Path:
    """Write (or resume) the nature run; returns the store path.

    Member groups run one after another in this process, or with a `distributed.Client` one task per
    group. Serially, `on_chunk(done, total)` is called after each chunk is committed (times written, summed
    over groups) and `before_commit(done)` after a chunk's data is written but before its progress record
    is (a hook for fault-injection tests; `done` counts the group's times); on a cluster `on_chunk` is
    called as groups finish.
    """
    nr = cfg.nature_run
    if nr is None:
        raise ConfigError(f"config {cfg.name!r} has no nature_run block")
    store = Path(output or nr.output)
    if store.exists():
        _check_store(store, cfg)
    else:
        core = build_core(nr, resolve_device(cfg.device))
        _, meta = find_spun_up(core, nr.restart, nr.spinup_days, nr.seed)
        store.parent.mkdir(parents=True, exist_ok=True)
        _template(cfg, core, layout_of(cfg), meta).to_zarr(store, mode="w-", compute=False, zarr_format=3, consolidated=False)
    groups = member_groups(nr)
    per_group = len(pd.date_range(nr.start, nr.end, freq="6h"))
    total = per_group * len(groups)
    log.info("nature_run_start", store=str(store), groups=len(groups), members=nr.members, total=total)
    if client is None:
        for i, group in enumerate(groups):
            tick = (lambda done, before=i * per_group: on_chunk(before + done, total)) if on_chunk else None
            generate_members(group, cfg, store, tick, before_commit)
    else:
        from align_da_ops.cluster import run_tasks

        run_tasks(client, generate_members, groups, cfg, store, keys=[f"nature-run-m{a}-{b}" for a, b in groups],
                  on_done=(lambda i, done, n: on_chunk(done * per_group, total)) if on_chunk else None)
    _finish(store, cfg, layout_of(cfg))
    return store


def generate_members(
    group: tuple[int, int], cfg: ExperimentConfig, store: Path,
    on_chunk: Callable[[int], None] | None = None, before_commit: Callable[[int], None] | None = None,
) -> int:
    """Write (or resume) one member group's trajectories into the store's template; returns the times
    written by this call. Idempotent: a rerun after a kill resumes from the group's progress record.
    `on_chunk(times done)` after each committed chunk."""
    nr = cfg.nature_run
    device = resolve_device(cfg.device)
    core = build_core(nr, device)
    layout = layout_of(cfg)
    steps_6h = core.steps_for_hours(6)
    progress_path = _progress_of(store, nr, group)
    if progress_path.exists():
        state, meta = load_restart(progress_path, core)
        done = int(meta["times_done"])
    else:  # template written, no chunk of this group committed yet
        state, _ = _initial_state(core, nr, group)
        done = 0
    times = pd.date_range(nr.start, nr.end, freq="6h")
    total = len(times)
    chunk = max(1, int(round(nr.chunk_days * 4)))
    first = done
    while done < total:
        stop = min(total, (done // chunk + 1) * chunk)
        frames = []
        for i in range(done, stop):
            if i > 0:
                state = core.advance(state, steps_6h)
            frames.append(pressure_level_tensor(core, state, layout).cpu())
        block = torch.stack(frames, dim=1)  # (member, time, channel, lat, lon)
        _write_region(store, layout, block, core, times[done:stop], done, group[0])
        if before_commit:
            before_commit(stop)
        save_restart(progress_path, core, state, times_done=stop)
        done = stop
        log.debug("nature_run_chunk", group=list(group), done=done, total=total)  # the CLI shows a progress bar
        if on_chunk:
            on_chunk(done)
    return done - first


def _check_store(store: Path, cfg: ExperimentConfig) -> None:
    """Refuse an existing output that is unreadable or was made by another run config (never overwrite it)."""
    try:
        attrs = open_nature_run(store).attrs
    except Exception as exc:  # unreadable store: refuse, never overwrite
        raise StoreError(f"{store} exists but is not a readable nature-run store ({exc}); move it away or pick another output") from None
    if attrs.get("run_signature") != _run_signature(cfg):
        raise StoreError(
            f"{store} was made by a different nature-run config (signature {attrs.get('run_signature')!r}, "
            f"this config {_run_signature(cfg)!r}); refusing to mix runs"
        )


def _write_region(store: Path, layout: grid.StateLayout, block: torch.Tensor, core, times, start: int, member: int) -> None:
    ds = layout.from_tensor(
        block, core.latitudes, core.longitudes, leading=(grid.MEMBER, grid.TIME),
        coords={grid.TIME: times.values},
    )
    ds = ds.drop_vars([grid.LAT, grid.LON, grid.LEVEL, grid.TIME], errors="ignore")
    ds = ds.astype(np.float32)
    region = {grid.MEMBER: slice(member, member + block.shape[0]), grid.TIME: slice(start, start + len(times))}
    ds.to_zarr(store, region=region, mode="r+", consolidated=False)


def _finish(store: Path, cfg: ExperimentConfig, layout: grid.StateLayout) -> None:
    """Normalisation statistics over the training split, then mark the store complete."""
    import zarr

    ds = open_nature_run(store)
    if not ds.attrs.get("complete"):
        train = cfg.splits.train
        members = list(train.members) if train.members else cfg.data.member if cfg.data.kind == "nature_run" else 0
        write_normalization(compute_normalization(ds.isel({grid.MEMBER: members}), layout, train.start, train.end), store)
        root = zarr.open_group(store, mode="r+")
        root.attrs["complete"] = 1
        log.info("nature_run_complete", store=str(store))


def open_nature_run(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False)
