"""The experiment archive: Zarr for gridded products, one file per cycle for observations, done flags.

Layout of an archive directory:
  archive.json            what the archive is for (experiment, layout, grid, leads)
  grid.zarr/<product>/    xarray datasets in the state schema with a `time` (cycle) axis:
                          background, analysis, spread (ensembles), forecast (+`lead`), members (+`member`)
  obs/<YYYYMMDDHH>.nc     observation table with QC flags, H(x_b), H(x_a) and the O-B/O-A statistics
  cycles/<YYYYMMDDHH>.json  the done flag, holding the cycle's provenance; written last, atomically
  .lock                   held (flock) by the one engine writing here

Contracts: `write_cycle` writes data first and the done flag last, so a crash
never leaves a cycle marked done with partial data; a done cycle is never
rewritten unless `force=True` (which first removes the flag). The time axis
grows in blocks as cycles beyond it arrive. Readers see lazy dask arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.errors import ArchiveError, InputDataError
from align_da_ops.obs.batch import COLUMNS, ObsBatch
from align_da_ops.times import CycleTime

PRODUCTS = ("background", "analysis", "spread", "forecast", "members")
GROW_CYCLES = 120  # time-axis growth block (30 days)


@dataclasses.dataclass(frozen=True)
class CycleRecord:
    """Everything one cycle produced; tensors are (channel, lat, lon) in physical units."""

    cycle: CycleTime
    background: torch.Tensor
    analysis: torch.Tensor
    forecasts: dict[int, torch.Tensor]
    obs: ObsBatch
    hx_background: np.ndarray
    hx_analysis: np.ndarray
    monitoring: pd.DataFrame
    provenance: dict
    spread: torch.Tensor | None = None
    members: torch.Tensor | None = None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class Archive:
    """One experiment's archive directory (see module docstring)."""

    def __init__(self, root: Path, meta: dict):
        self.root = Path(root)
        self.meta = meta
        self.layout = grid.StateLayout(tuple(meta["upper_air"]), tuple(meta["surface"]), tuple(meta["levels"]))
        self.lat = np.asarray(meta["latitudes"])
        self.lon = np.asarray(meta["longitudes"])
        self.leads = tuple(int(x) for x in meta["leads_hours"])
        self.n_members = int(meta.get("members_stored", 0))
        self.ensemble = bool(meta.get("ensemble", self.n_members > 0))
        self._lock_file = None

    # -- creation / opening --------------------------------------------------------
    @classmethod
    def create_or_open(
        cls, root: Path, experiment: str, layout: grid.StateLayout, lat, lon, leads_hours, start: CycleTime,
        members_stored: int = 0, ensemble: bool = False,
    ) -> "Archive":
        root = Path(root)
        meta = {
            "experiment": experiment,
            "upper_air": list(layout.upper_air),
            "surface": list(layout.surface),
            "levels": list(layout.levels),
            "latitudes": [float(x) for x in lat],
            "longitudes": [float(x) for x in lon],
            "leads_hours": [int(x) for x in leads_hours],
            "members_stored": int(members_stored),
            "ensemble": bool(ensemble or members_stored),
            "first_cycle": start.value.isoformat(),
        }
        if (root / "archive.json").exists():
            archive = cls.open(root)
            mine = {k: v for k, v in meta.items() if k != "first_cycle"}
            theirs = {k: archive.meta.get(k) for k in mine}
            if mine != theirs:
                diff = sorted(k for k in mine if mine[k] != theirs[k])
                raise ArchiveError(f"archive {root} was made for a different experiment/layout (differs in {diff})")
            return archive
        root.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(root / "archive.json", json.dumps(meta, indent=1))
        return cls(root, meta)

    @classmethod
    def open(cls, root: Path) -> "Archive":
        try:
            meta = json.loads((Path(root) / "archive.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputDataError(f"{root} is not a readable archive: {exc}") from None
        return cls(Path(root), meta)

    # -- locking -------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self):
        """Exclusive writer lock; a second engine gets ArchiveError at once (released even on kill -9)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise ArchiveError(f"archive {self.root} is locked by another engine (pid {owner})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield self
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    # -- done flags ----------------------------------------------------------------
    def _flag(self, cycle: CycleTime) -> Path:
        return self.root / "cycles" / f"{cycle.compact}.json"

    def is_done(self, cycle: CycleTime) -> bool:
        return self._flag(cycle).exists()

    def done_cycles(self) -> list[CycleTime]:
        folder = self.root / "cycles"
        if not folder.exists():
            return []
        return sorted(CycleTime.parse(p.stem) for p in folder.glob("*.json"))

    def provenance(self, cycle: CycleTime) -> dict:
        if not self.is_done(cycle):
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        return json.loads(self._flag(cycle).read_text())

    # -- gridded products ------------------------------------------------------------
    @property
    def grid_store(self) -> Path:
        return self.root / "grid.zarr"

    def _time_axis(self) -> np.ndarray | None:
        path = self.grid_store / "analysis"
        if not path.exists():
            return None
        return xr.open_zarr(self.grid_store, group="analysis", consolidated=False)[grid.TIME].values

    def _template(self, product: str, times: np.ndarray) -> xr.Dataset:
        import dask.array as da

        extra = {"forecast": ("lead", len(self.leads)), "members": (grid.MEMBER, self.n_members)}.get(product)
        lead_dims = (grid.TIME,) + ((extra[0],) if extra else ())
        lead_shape = (len(times),) + ((extra[1],) if extra else ())
        x = da.full(lead_shape + (self.layout.n_channels, len(self.lat), len(self.lon)), np.nan, dtype=np.float32,
                    chunks=(1,) + lead_shape[1:] + (-1, -1, -1))
        coords = {grid.TIME: times}
        if product == "forecast":
            coords["lead"] = np.asarray(self.leads, dtype=np.int64)
        if product == "members":
            coords[grid.MEMBER] = np.arange(self.n_members)
        return self._dataset(x, lead_dims, coords)

    def _dataset(self, x, lead_dims, coords) -> xr.Dataset:
        n_lev = len(self.layout.levels)
        data_vars = {}
        for i, name in enumerate(self.layout.upper_air):
            data_vars[name] = ((*lead_dims, grid.LEVEL, grid.LAT, grid.LON), x[..., i * n_lev : (i + 1) * n_lev, :, :])
        off = n_lev * len(self.layout.upper_air)
        for j, name in enumerate(self.layout.surface):
            data_vars[name] = ((*lead_dims, grid.LAT, grid.LON), x[..., off + j, :, :])
        all_coords = {grid.LAT: self.lat, grid.LON: self.lon, **coords}
        if self.layout.upper_air:
            all_coords[grid.LEVEL] = np.asarray(self.layout.levels, dtype=np.int64)
        return xr.Dataset(data_vars, coords=all_coords)

    def _products(self) -> list[str]:
        out = ["background", "analysis", "forecast"]
        if self.ensemble:
            out.append("spread")
        if self.n_members:
            out.append("members")
        return out

    def _ensure_time(self, cycle: CycleTime) -> int:
        """Index of `cycle` on the time axis, growing the axis (NaN-filled) when needed."""
        times = self._time_axis()
        t = cycle.as_numpy()
        if times is None:
            start = np.datetime64(self.meta["first_cycle"], "ns")
            if t < start:
                raise ArchiveError(f"cycle {cycle} precedes the archive's first cycle {self.meta['first_cycle']}")
            n = int((t - start) // np.timedelta64(6, "h")) + GROW_CYCLES
            new = start + np.arange(n) * np.timedelta64(6, "h")
            for product in self._products():
                self._template(product, new).to_zarr(self.grid_store, group=product, mode="w", compute=False,
                                                      zarr_format=3, consolidated=False)
            times = new
        if t < times[0]:
            raise ArchiveError(f"cycle {cycle} precedes the archive's first cycle {times[0]}")
        if t > times[-1]:
            n = int((t - times[-1]) // np.timedelta64(6, "h")) + GROW_CYCLES
            new = times[-1] + (1 + np.arange(n)) * np.timedelta64(6, "h")
            for product in self._products():
                self._template(product, new).to_zarr(self.grid_store, group=product, append_dim=grid.TIME,
                                                      consolidated=False)
            times = np.concatenate([times, new])
        return int((t - times[0]) // np.timedelta64(6, "h"))

    def _write_product(self, product: str, tensor: torch.Tensor, index: int, lead_dims=(), coords=None) -> None:
        x = tensor.detach().to("cpu", torch.float32).numpy()[None]
        ds = self._dataset(x, (grid.TIME, *lead_dims), coords or {})
        ds = ds.drop_vars([grid.LAT, grid.LON, grid.LEVEL, *(coords or {})], errors="ignore")
        ds.to_zarr(self.grid_store, group=product, region={grid.TIME: slice(index, index + 1)}, mode="r+",
                   consolidated=False)

    def open_product(self, product: str, dask: bool = True) -> xr.Dataset:
        """Lazy dataset of one product over all cycles (NaN where a cycle is not written).

        `dask=False` opens it without dask (lazy backend arrays): several times faster to load
        many one-cycle chunks at once, for readers that load what they select.
        """
        if product not in PRODUCTS:
            raise ArchiveError(f"unknown product {product!r}; have {PRODUCTS}")
        try:
            if not dask:
                return xr.open_zarr(self.grid_store, group=product, consolidated=False, chunks=None)
            return xr.open_zarr(self.grid_store, group=product, consolidated=False)
        except Exception as exc:  # absent group or store
            raise InputDataError(f"archive {self.root} has no {product!r} product yet ({type(exc).__name__})") from None

    def read_state(self, product: str, cycle: CycleTime, lead: int | None = None) -> torch.Tensor:
        """(channel, lat, lon) float32 tensor of a done cycle's product."""
        if not self.is_done(cycle):
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        ds = self.open_product(product).sel({grid.TIME: cycle.as_numpy()})
        if lead is not None:
            ds = ds.sel(lead=lead)
        x, _ = self.layout.to_tensor(ds.load())
        return x

    # -- observations -------------------------------------------------------------------
    def _obs_path(self, cycle: CycleTime) -> Path:
        return self.root / "obs" / f"{cycle.compact}.nc"

    def _write_obs(self, record: CycleRecord) -> None:
        obs = record.obs
        table = {c: ("location", getattr(obs, c)) for c in COLUMNS}
        table["time"] = ("location", obs.time.astype("datetime64[ns]"))
        table["hofx_background"] = ("location", np.asarray(record.hx_background, np.float64))
        table["hofx_analysis"] = ("location", np.asarray(record.hx_analysis, np.float64))
        mon = record.monitoring.reset_index(drop=True)
        for col in mon.columns:
            values = mon[col].to_numpy()
            table[f"monitoring_{col}"] = ("stat_row", values.astype(str) if values.dtype == object else values)
        ds = xr.Dataset(table, attrs={"cycle": record.cycle.value.isoformat()})
        path = self._obs_path(record.cycle)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".nc.tmp")
        ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)

    def read_obs(self, cycle: CycleTime) -> tuple[ObsBatch, xr.Dataset, pd.DataFrame]:
        """The cycle's observation batch, the file (with H(x_b), H(x_a)) and its monitoring table."""
        if not self.is_done(cycle):
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        with xr.open_dataset(self._obs_path(cycle), engine="netcdf4", mask_and_scale=False) as ds:
            ds = ds.load()
        cols = {c: ds[c].values for c in COLUMNS}
        cols["time"] = cols["time"].astype("datetime64[s]")
        for c in ("variable", "obs_type", "station"):
            cols[c] = cols[c].astype(str)
        batch = ObsBatch.from_columns(**cols)
        mon = pd.DataFrame({k[len("monitoring_"):]: ds[k].values for k in ds.data_vars if k.startswith("monitoring_")})
        return batch, ds, mon

    # -- the one writer ------------------------------------------------------------------
    def write_cycle(self, record: CycleRecord, force: bool = False) -> None:
        """Data first, done flag last. A done cycle is refused unless `force` (which unflags it first)."""
        flag = self._flag(record.cycle)
        if flag.exists():
            if not force:
                raise ArchiveError(f"cycle {record.cycle} is already done in {self.root}; use force to redo it")
            flag.unlink()
        started = time.perf_counter()
        index = self._ensure_time(record.cycle)
        self._write_product("background", record.background, index)
        self._write_product("analysis", record.analysis, index)
        stacked = torch.stack([record.forecasts[lead] for lead in self.leads])
        self._write_product("forecast", stacked, index, lead_dims=("lead",), coords={"lead": list(self.leads)})
        if self.ensemble:
            if record.spread is None:
                raise ArchiveError(f"archive stores the ensemble spread; cycle {record.cycle} brought no ensemble")
            self._write_product("spread", record.spread, index)
        if self.n_members:
            if record.members is None or record.members.shape[0] != self.n_members:
                raise ArchiveError(f"archive stores {self.n_members} members; cycle {record.cycle} brought "
                                   f"{None if record.members is None else record.members.shape[0]}")
            self._write_product("members", record.members, index, lead_dims=(grid.MEMBER,),
                                coords={grid.MEMBER: np.arange(self.n_members)})
        self._write_obs(record)
        provenance = dict(record.provenance)
        provenance["wall_s"] = {**provenance.get("wall_s", {}), "archive": round(time.perf_counter() - started, 4)}
        _atomic_write_text(flag, json.dumps(provenance, indent=1, sort_keys=True, default=str))
