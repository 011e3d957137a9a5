"""The experiment archive: Zarr for gridded products, one file per cycle for observations, done flags.

Layout of an archive directory:
  archive.json            what the archive is for (experiment, layout, grid, leads)
  grid.zarr/<product>/    xarray datasets in the state schema with a `time` (cycle) axis:
                          background, analysis, spread (ensembles), forecast (+`prediction_timedelta`),
                          members (+`member`); CF attributes (units, standard_name, long_name, axis) on every
                          variable and coordinate, `Conventions` and the archive's description on every
                          group, consolidated metadata at the root (`xr.open_datatree(grid.zarr, engine="zarr")`)
  obs/<YYYYMMDDHH>.ioda.nc  the cycle's observations in IODA v3 (PreQC, EffectiveQC, hofx0 = H(x_b),
                          hofx1 = H(x_a), ombg, oman; see obs/ioda.py); archives of earlier versions hold
                          obs/<YYYYMMDDHH>.nc (one table), still read
  obs/<YYYYMMDDHH>.monitoring.nc  O-B/O-A statistics per observation type, variable and level band
  cycles/<YYYYMMDDHH>.json  the done flag, holding the cycle's provenance and the SHA-256 of every
                          product slab and of the obs file it wrote; written last, atomically
  failures/<YYYYMMDDHH>.json  the last failed attempt at a cycle not done (error, exit code, time); advisory,
                          removed when the cycle completes; read by `align-da status`
  .lock                   the writer's pid (the lock itself is an flock on the archive directory)

Crash consistency by construction: every write before the done flag is idempotent and is
redone by the next attempt at that cycle. Product groups are created from templates with
no data (unwritten chunks read as NaN); the time axis grows by resizing each array and then
rewriting the time coordinate, and an archive whose groups disagree (a kill between two
of those steps) is completed on the next write; a group left incomplete by a kill during
its creation is recreated (only while no cycle is done). Product slabs are region writes,
the obs file and the done flag are atomic renames. A done cycle is never rewritten unless
`force=True` (which first removes the flag). Reading a done cycle's product or obs file
verifies its checksum: missing or corrupt data is an `ArchiveCorruptError`, never NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.errors import (
    ArchiveCorruptError, ArchiveError, ArchiveLockedError, ArchiveWriteError, InputDataError, ObservationError,
)
from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import COLUMNS, ObsBatch
from align_da_ops.times import CycleTime

PRODUCTS = ("background", "analysis", "spread", "forecast", "members")
GROW_CYCLES = 120  # time-axis growth block (30 days)
SIX_HOURS = np.timedelta64(6, "h")
LEAD = "prediction_timedelta"  # WeatherBench2's name for the forecast lead (timedelta64)
CONVENTIONS = "CF-1.10"
PRODUCT_TITLES = {
    "background": "background: the forecast the analysis started from",
    "analysis": "analysis",
    "spread": "analysis ensemble spread (standard deviation over members)",
    "forecast": "forecasts started from the analysis",
    "members": "analysis ensemble members",
}
COMPLETE = "align_da_ops_complete"  # group attribute written last when a product group is created
FLAG_NAME = re.compile(r"^\d{10}\.json$")

log = get_logger(__name__)


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
    pre_qc: np.ndarray | None = None  # the observations' flags before the cycle's QC (IODA PreQC)


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
        self._lead_dim: str | None = None

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
        try:
            root.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(root / "archive.json", json.dumps(meta, indent=1))
        except OSError as exc:
            raise ArchiveWriteError(f"cannot create archive {root}: {exc.strerror or exc}") from None
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
        """Exclusive writer lock: an flock on the archive directory itself, so deleting `.lock` (which only
        records the holder's pid) cannot let a second engine in; released even on kill -9."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                owner = (self.root / ".lock").read_text().strip() or "unknown"
            except OSError:
                owner = "unknown"
            raise ArchiveLockedError(f"archive {self.root} is locked by another engine (pid {owner})") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise ArchiveError(f"the filesystem of {self.root} does not support flock ({exc.strerror}); "
                                   "put archives on a local or lock-capable filesystem") from None
            raise
        try:
            _atomic_write_text(self.root / ".lock", str(os.getpid()))
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- done flags ----------------------------------------------------------------
    def _flag(self, cycle: CycleTime) -> Path:
        return self.root / "cycles" / f"{cycle.compact}.json"

    def _read_flag(self, cycle: CycleTime) -> dict | None:
        """The flag's provenance; None when absent or unreadable (a flag is written atomically, so an
        unreadable one was not written by the engine: the cycle counts as not done, with a warning)."""
        path = self._flag(cycle)
        try:
            flag = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("done_flag_unreadable", path=str(path), error=str(exc))
            return None
        if not isinstance(flag, dict):
            log.warning("done_flag_unreadable", path=str(path), error="not a JSON object")
            return None
        return flag

    def is_done(self, cycle: CycleTime) -> bool:
        return self._read_flag(cycle) is not None

    def done_cycles(self) -> list[CycleTime]:
        """Cycles with a valid done flag; other files in cycles/ are ignored (with a warning)."""
        folder = self.root / "cycles"
        if not folder.exists():
            return []
        out = []
        for path in folder.iterdir():
            if not FLAG_NAME.match(path.name):
                if not path.name.endswith(".tmp"):
                    log.warning("stray_file_in_cycles", path=str(path))
                continue
            try:
                cycle = CycleTime.parse(path.stem)
            except ValueError:
                log.warning("stray_file_in_cycles", path=str(path))
                continue
            if self.is_done(cycle):
                out.append(cycle)
        return sorted(out)

    def provenance(self, cycle: CycleTime) -> dict:
        flag = self._read_flag(cycle)
        if flag is None:
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        return flag

    # -- failure records (advisory: not part of crash consistency) ------------------------
    def record_failure(self, cycle: CycleTime, exc: BaseException) -> None:
        """Note the failed attempt at `cycle` (never raises: a full disk must not hide the original error)."""
        record = {"cycle": cycle.value.isoformat(), "error": type(exc).__name__, "message": str(exc)[:2000],
                  "exit_code": int(getattr(exc, "exit_code", 1)), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            _atomic_write_text(self.root / "failures" / f"{cycle.compact}.json", json.dumps(record, indent=1))
        except Exception as err:  # noqa: BLE001  (advisory record; the caller re-raises the real error)
            log.warning("failure_record_not_written", cycle=str(cycle), error=str(err))

    def clear_failure(self, cycle: CycleTime) -> None:
        path = self.root / "failures" / f"{cycle.compact}.json"
        if path.exists():
            path.unlink(missing_ok=True)

    def failures(self) -> dict[CycleTime, dict]:
        """Failure records of cycles that are not done (a record left beside a done cycle is ignored)."""
        folder = self.root / "failures"
        out = {}
        for path in sorted(folder.glob("*.json")) if folder.exists() else ():
            try:
                cycle = CycleTime.parse(path.stem)
                record = json.loads(path.read_text())
            except (ValueError, OSError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and not self.is_done(cycle):
                out[cycle] = record
        return out

    # -- gridded products ------------------------------------------------------------
    @property
    def grid_store(self) -> Path:
        return self.root / "grid.zarr"

    def _template(self, product: str, times: np.ndarray) -> xr.Dataset:
        import dask.array as da

        extra = {"forecast": (LEAD, len(self.leads)), "members": (grid.MEMBER, self.n_members)}.get(product)
        lead_dims = (grid.TIME,) + ((extra[0],) if extra else ())
        lead_shape = (len(times),) + ((extra[1],) if extra else ())
        x = da.full(lead_shape + (self.layout.n_channels, len(self.lat), len(self.lon)), np.nan, dtype=np.float32,
                    chunks=(1,) + lead_shape[1:] + (-1, -1, -1))
        coords = {grid.TIME: times}
        if product == "forecast":
            coords[LEAD] = self._lead_values()
        if product == "members":
            coords[grid.MEMBER] = np.arange(self.n_members)
        ds = self._dataset(x, lead_dims, coords)
        for name in coords:
            ds[name].attrs.update(grid.COORD_ATTRS.get(name, {}))
        ds.attrs.update(self._group_attrs(product))
        return ds

    def _lead_values(self) -> np.ndarray:
        return np.asarray(self.leads, dtype=np.int64).astype("timedelta64[h]").astype("timedelta64[ns]")

    def _stored_lead_dim(self) -> str:
        """The forecast group's lead dimension: `prediction_timedelta`, or `lead` in an archive begun by an
        earlier version (it keeps its layout, so a campaign resumes across an upgrade)."""
        import zarr

        if self._lead_dim is None:  # looked up once per Archive (the first write has created the group)
            try:
                group = zarr.open_group(self.grid_store, path="forecast", mode="r", zarr_format=3)
                self._lead_dim = "lead" if "lead" in group else LEAD
            except Exception:  # unreadable group: the write that follows reports it
                return LEAD
        return self._lead_dim

    def _group_attrs(self, product: str) -> dict:
        """CF global attributes of a product group: what it is and the archive it belongs to."""
        return {
            "Conventions": CONVENTIONS,
            "title": f"{self.meta['experiment']}: {PRODUCT_TITLES[product]}",
            "source": f"align-da-ops {_version()}",
            "experiment": self.meta["experiment"],
            "first_cycle": self.meta["first_cycle"],
            "comment": "times whose cycle is not done hold NaN; the done cycles are the archive's cycles/*.json flags "
                       "(align_da_ops.open_archive adds a `done` mask)",
        }

    def _dataset(self, x, lead_dims, coords) -> xr.Dataset:
        n_lev = len(self.layout.levels)
        data_vars = {}
        for i, name in enumerate(self.layout.upper_air):
            data_vars[name] = ((*lead_dims, grid.LEVEL, grid.LAT, grid.LON), x[..., i * n_lev : (i + 1) * n_lev, :, :],
                               grid.VARIABLES[name].cf_attrs)
        off = n_lev * len(self.layout.upper_air)
        for j, name in enumerate(self.layout.surface):
            data_vars[name] = ((*lead_dims, grid.LAT, grid.LON), x[..., off + j, :, :], grid.VARIABLES[name].cf_attrs)
        all_coords = {grid.LAT: (grid.LAT, self.lat, grid.COORD_ATTRS[grid.LAT]),
                      grid.LON: (grid.LON, self.lon, grid.COORD_ATTRS[grid.LON]), **coords}
        if self.layout.upper_air:
            all_coords[grid.LEVEL] = (grid.LEVEL, np.asarray(self.layout.levels, dtype=np.int64), grid.COORD_ATTRS[grid.LEVEL])
        return xr.Dataset(data_vars, coords=all_coords)

    def _products(self) -> list[str]:
        out = ["background", "analysis", "forecast"]
        if self.ensemble:
            out.append("spread")
        if self.n_members:
            out.append("members")
        return out

    def _ensure_time(self, cycle: CycleTime) -> int:
        """Index of `cycle` on the time axis; creates, completes or grows every product group first.

        Idempotent: whatever step a kill interrupted (a group half-created, some arrays resized and
        others not, the time coordinate not yet rewritten), the next call finishes it."""
        start = np.datetime64(self.meta["first_cycle"], "ns")
        t = cycle.as_numpy()
        if t < start:
            raise ArchiveError(f"cycle {cycle} precedes the archive's first cycle {self.meta['first_cycle']}")
        index = int((t - start) // SIX_HOURS)
        states = {product: self._group_state(product) for product in self._products()}
        current = max((n for n, _ in states.values() if n is not None), default=0)
        target = current if index < current else index + GROW_CYCLES
        changed = False
        for product, (n, consistent) in states.items():
            if n is None:
                self._create_group(product, target)
            elif n < target or not consistent:
                self._grow_group(product, target)
            else:
                continue
            changed = True
        if changed or self._consolidated_length() != target:
            self._consolidate()
        return index

    def _consolidate(self) -> None:
        """Rewrite the root's consolidated metadata (after groups were created or grown)."""
        import warnings

        import zarr

        with warnings.catch_warnings():  # consolidated metadata is not yet in the Zarr v3 spec (zarr warns)
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.grid_store), zarr_format=3)

    def _consolidated_length(self) -> int | None:
        """Time-axis length of the analysis group in the consolidated metadata (None: not consolidated)."""
        try:
            root = json.loads((self.grid_store / "zarr.json").read_text())
            meta = root["consolidated_metadata"]["metadata"]
            return int(meta[f"analysis/{grid.TIME}"]["shape"][0])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None

    def _group_state(self, product: str) -> tuple[int | None, bool]:
        """(length, consistent) of a product group: length None when the group is absent or incomplete;
        consistent when every time-dimensioned array has that length and the time coordinate is right."""
        import zarr

        try:
            group = zarr.open_group(self.grid_store, path=product, mode="r", zarr_format=3)
            arrays = dict(group.arrays())
        except Exception:  # absent or unreadable metadata
            return None, False
        if not group.attrs.get(COMPLETE):
            if not self.done_cycles():
                return None, False  # its creation was interrupted
            self._mark_complete(product)  # written by a version without the marker (cycles are done in it)
        expected = set(self.layout.upper_air + self.layout.surface) | {grid.TIME}
        if not expected <= set(arrays):
            raise ArchiveCorruptError(f"archive {self.root}: product group {product!r} lacks arrays "
                                      f"{sorted(expected - set(arrays))}; restore it or start a new archive")
        lengths = {name: a.shape[0] for name, a in arrays.items() if (a.metadata.dimension_names or ("",))[0] == grid.TIME}
        n = min(lengths.values())
        if len(set(lengths.values())) > 1:
            return n, False
        try:
            consistent = bool(np.array_equal(arrays[grid.TIME][:], self._time_values(arrays[grid.TIME].attrs, n)))
        except ArchiveError:
            raise
        except Exception:
            consistent = False
        return n, consistent

    def _time_values(self, attrs, n: int) -> np.ndarray:
        """The stored (encoded) time coordinate of n cycles: hours since the units' epoch."""
        units = str(attrs.get("units", ""))
        if not units.startswith("hours since "):
            raise ArchiveCorruptError(f"archive {self.root}: time coordinate has units {units!r}; expected 'hours since ...'")
        epoch = np.datetime64(pd.Timestamp(units[len("hours since "):]).to_datetime64(), "ns")
        start = np.datetime64(self.meta["first_cycle"], "ns")
        offset = int((start - epoch) // np.timedelta64(1, "h"))
        return offset + 6 * np.arange(n, dtype=np.int64)

    def _create_group(self, product: str, length: int) -> None:
        path = self.grid_store / product
        if path.exists():
            if self.done_cycles():
                raise ArchiveCorruptError(f"archive {self.root}: product group {product!r} is incomplete although cycles "
                                          "are done; restore it or start a new archive")
            shutil.rmtree(path)  # left half-created by a kill before any cycle was done: redo
        start = np.datetime64(self.meta["first_cycle"], "ns")
        times = start + np.arange(length) * SIX_HOURS
        encoding = {grid.TIME: {"units": f"hours since {pd.Timestamp(start).isoformat(sep=' ')}", "dtype": "int64"}}
        if product == "forecast" and np.issubdtype(self._lead_values().dtype, np.timedelta64):
            encoding[LEAD] = {"units": "hours", "dtype": "int64"}
        self._template(product, times).to_zarr(self.grid_store, group=product, mode="w", compute=False, zarr_format=3,
                                               consolidated=False, encoding=encoding)
        self._mark_complete(product)

    def _mark_complete(self, product: str) -> None:
        import zarr

        zarr.open_group(self.grid_store, path=product, mode="r+", zarr_format=3).attrs[COMPLETE] = True

    def _grow_group(self, product: str, length: int) -> None:
        """Resize every time-dimensioned array to `length` (new chunks read as NaN), time coordinate last."""
        import zarr

        group = zarr.open_group(self.grid_store, path=product, mode="r+", zarr_format=3)
        arrays = dict(group.arrays())
        for name, array in arrays.items():
            if name != grid.TIME and (array.metadata.dimension_names or ("",))[0] == grid.TIME and array.shape[0] != length:
                array.resize((length, *array.shape[1:]))
        time_array = arrays[grid.TIME]
        if time_array.shape[0] != length:
            time_array.resize((length,))
        time_array[:] = self._time_values(time_array.attrs, length)

    def _write_product(self, product: str, tensor: torch.Tensor, index: int, lead_dims=(), coords=None) -> str:
        """Write one cycle's slab (a region write: redoing it is idempotent); returns its checksum."""
        x = tensor.detach().to("cpu", torch.float32).numpy()[None]
        ds = self._dataset(x, (grid.TIME, *lead_dims), coords or {})
        ds = ds.drop_vars([grid.LAT, grid.LON, grid.LEVEL, *(coords or {})], errors="ignore")
        ds.to_zarr(self.grid_store, group=product, region={grid.TIME: slice(index, index + 1)}, mode="r+",
                   consolidated=False)
        return _checksum(x[0])

    def open_product(self, product: str, dask: bool = True) -> xr.Dataset:
        """Lazy dataset of one product over all cycles (NaN where a cycle is not written).

        `dask=False` opens it without dask (lazy backend arrays): several times faster to load
        many one-cycle chunks at once, for readers that load what they select.
        """
        if product not in PRODUCTS:
            raise ArchiveError(f"unknown product {product!r}; have {PRODUCTS}")
        try:
            if not dask:
                ds = xr.open_zarr(self.grid_store, group=product, consolidated=False, chunks=None)
            else:
                ds = xr.open_zarr(self.grid_store, group=product, consolidated=False)
        except Exception as exc:  # absent group or store
            raise InputDataError(f"archive {self.root} has no {product!r} product yet ({type(exc).__name__})") from None
        if "lead" in ds.dims:  # written before the lead was a timedelta (archives of version <= 0.1 of this layout)
            ds = ds.rename({"lead": LEAD}).assign_coords({LEAD: self._lead_values()})
        if LEAD in ds.dims:
            ds[LEAD].attrs.update(grid.COORD_ATTRS[LEAD])
            ds = ds.assign_coords(valid_time=ds[grid.TIME] + ds[LEAD])
            ds["valid_time"].attrs.update(grid.COORD_ATTRS["valid_time"])
        return ds

    def read_state(self, product: str, cycle: CycleTime, lead: int | None = None) -> torch.Tensor:
        """(channel, lat, lon) float32 tensor of a done cycle's product (members: (member, channel, lat, lon)),
        verified against the checksum its done flag recorded."""
        flag = self._read_flag(cycle)
        if flag is None:
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        try:
            ds = self.open_product(product, dask=False).sel({grid.TIME: cycle.as_numpy()}).load()
        except (InputDataError, KeyError, OSError, ValueError) as exc:
            raise ArchiveCorruptError(f"archive {self.root}: {product!r} of done cycle {cycle} is unreadable ({exc})") from None
        x, _ = self.layout.to_tensor(ds)
        expected = flag.get("checksums", {}).get(product)
        if expected is not None and _checksum(x.numpy()) != expected:
            bad = "missing (NaN)" if torch.isnan(x).any() else "altered"
            raise ArchiveCorruptError(f"archive {self.root}: {product!r} of done cycle {cycle} is {bad}: its checksum does not "
                                      f"match the done flag; redo the cycle (--force) or restore the archive")
        if lead is not None:
            if lead not in self.leads:
                raise ArchiveError(f"archive {self.root} has no {lead} h lead; it has {list(self.leads)}")
            x = x[self.leads.index(lead)]  # the forecast's leads are stored in the archive's order
        return x

    def verify(self, cycle: CycleTime) -> list[str]:
        """Problems of one done cycle (empty: every product and the obs file match their checksums)."""
        problems = []
        for product in self._products():
            try:
                self.read_state(product, cycle)
            except ArchiveError as exc:
                problems.append(str(exc))
        try:
            self.read_obs(cycle)
        except (ArchiveError, InputDataError) as exc:
            problems.append(str(exc))
        return problems

    # -- observations -------------------------------------------------------------------
    def _obs_path(self, cycle: CycleTime, kind: str = "ioda") -> Path:
        """obs/<cycle>.ioda.nc (IODA v3 observations), obs/<cycle>.monitoring.nc (O-B/O-A statistics);
        kind "legacy": obs/<cycle>.nc, one table of both, as written before IODA v3."""
        suffix = {"ioda": ".ioda.nc", "monitoring": ".monitoring.nc", "legacy": ".nc"}[kind]
        return self.root / "obs" / f"{cycle.compact}{suffix}"

    def _write_obs(self, record: CycleRecord) -> dict[str, str]:
        """The cycle's IODA v3 file (PreQC, EffectiveQC, hofx0/1, ombg, oman) and its monitoring file; checksums."""
        from align_da_ops.obs.ioda import write_ioda

        obs = record.obs
        path = self._obs_path(record.cycle)
        pre_qc = obs.qc if record.pre_qc is None else record.pre_qc
        write_ioda(obs, path, {"cycle": record.cycle.value.isoformat(), "experiment": self.meta["experiment"]},
                   pre_qc=pre_qc, hofx_background=record.hx_background, hofx_analysis=record.hx_analysis)
        mon = record.monitoring.reset_index(drop=True)
        table = {}
        for col in mon.columns:
            values = mon[col].to_numpy()
            table[col] = ("stat_row", values.astype(str) if values.dtype == object else values)
        monitoring = self._obs_path(record.cycle, "monitoring")
        tmp = monitoring.with_name(f".{monitoring.name}.tmp")
        xr.Dataset(table, attrs={"cycle": record.cycle.value.isoformat(), "title": "O-B and O-A statistics"}).to_netcdf(
            tmp, engine="netcdf4")
        os.replace(tmp, monitoring)
        return {"obs": _file_checksum(path), "monitoring": _file_checksum(monitoring)}

    def read_obs(self, cycle: CycleTime) -> tuple[ObsBatch, xr.Dataset, pd.DataFrame]:
        """The cycle's observation batch (qc: the cycle's QC), H(x_b) and H(x_a) per row (`hofx_background`,
        `hofx_analysis` on dim `location`) and the monitoring table; checksums verified."""
        from align_da_ops.obs.ioda import read_ioda_groups

        flag = self._read_flag(cycle)
        if flag is None:
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        checksums = flag.get("checksums", {})
        if "obs" in checksums and "monitoring" not in checksums:
            return self._read_legacy_obs(cycle, checksums["obs"])
        paths = {"obs": self._obs_path(cycle), "monitoring": self._obs_path(cycle, "monitoring")}
        try:
            for key, path in paths.items():
                if key in checksums and _file_checksum(path) != checksums[key]:
                    raise ArchiveCorruptError(f"archive {self.root}: obs file {path.name} of done cycle {cycle} does not "
                                              "match its checksum; redo the cycle (--force) or restore the archive")
            batch, problems, extra = read_ioda_groups(paths["obs"], ("hofx0", "hofx1"))
            with xr.open_dataset(paths["monitoring"], engine="netcdf4", mask_and_scale=False) as ds:
                ds = ds.load()
                mon = ds.to_dataframe().reset_index(drop=True) if ds.data_vars else pd.DataFrame()
        except (OSError, ValueError, ObservationError) as exc:
            raise ArchiveCorruptError(f"archive {self.root}: obs files of done cycle {cycle} are unreadable ({exc})") from None
        if problems:
            raise ArchiveCorruptError(f"archive {self.root}: obs file of done cycle {cycle} has bad rows: {problems}")
        hofx = xr.Dataset({"hofx_background": ("location", extra["hofx0"]), "hofx_analysis": ("location", extra["hofx1"])})
        return batch, hofx, mon

    def _read_legacy_obs(self, cycle: CycleTime, expected: str) -> tuple[ObsBatch, xr.Dataset, pd.DataFrame]:
        path = self._obs_path(cycle, "legacy")
        try:
            if _file_checksum(path) != expected:
                raise ArchiveCorruptError(f"archive {self.root}: obs file {path.name} of done cycle {cycle} does not match "
                                          "its checksum; redo the cycle (--force) or restore the archive")
            with xr.open_dataset(path, engine="netcdf4", mask_and_scale=False) as ds:
                ds = ds.load()
        except (OSError, ValueError) as exc:
            raise ArchiveCorruptError(f"archive {self.root}: obs file of done cycle {cycle} is unreadable ({exc})") from None
        cols = {c: ds[c].values for c in COLUMNS}
        cols["time"] = cols["time"].astype("datetime64[s]")
        for c in ("variable", "obs_type", "station"):
            cols[c] = cols[c].astype(str)
        batch = ObsBatch.from_columns(**cols)
        mon = pd.DataFrame({k[len("monitoring_"):]: ds[k].values for k in ds.data_vars if k.startswith("monitoring_")})
        return batch, ds[["hofx_background", "hofx_analysis"]], mon

    # -- the one writer ------------------------------------------------------------------
    def write_cycle(self, record: CycleRecord, force: bool = False) -> None:
        """Data first, done flag (with checksums) last. A done cycle is refused unless `force` (which unflags it first)."""
        flag = self._flag(record.cycle)
        if self.is_done(record.cycle):
            if not force:
                raise ArchiveError(f"cycle {record.cycle} is already done in {self.root}; use force to redo it")
            flag.unlink()
        elif flag.exists():
            flag.unlink()  # unreadable: not the engine's
        try:
            self._write_cycle(record)
        except OSError as exc:
            raise ArchiveWriteError(f"cannot write cycle {record.cycle} to {self.root}: {exc.strerror or exc} "
                                    f"({exc.filename or 'zarr store'}); the cycle is not marked done, rerun it "
                                    "once the cause is fixed") from None

    def _write_cycle(self, record: CycleRecord) -> None:
        flag = self._flag(record.cycle)
        started = time.perf_counter()
        index = self._ensure_time(record.cycle)
        checksums = {
            "background": self._write_product("background", record.background, index),
            "analysis": self._write_product("analysis", record.analysis, index),
        }
        stacked = torch.stack([record.forecasts[lead] for lead in self.leads])
        lead_dim = self._stored_lead_dim()
        checksums["forecast"] = self._write_product("forecast", stacked, index, lead_dims=(lead_dim,),
                                                    coords={lead_dim: self._lead_values()})
        if self.ensemble:
            if record.spread is None:
                raise ArchiveError(f"archive stores the ensemble spread; cycle {record.cycle} brought no ensemble")
            checksums["spread"] = self._write_product("spread", record.spread, index)
        if self.n_members:
            if record.members is None or record.members.shape[0] != self.n_members:
                raise ArchiveError(f"archive stores {self.n_members} members; cycle {record.cycle} brought "
                                   f"{None if record.members is None else record.members.shape[0]}")
            checksums["members"] = self._write_product("members", record.members, index, lead_dims=(grid.MEMBER,),
                                                       coords={grid.MEMBER: np.arange(self.n_members)})
        checksums.update(self._write_obs(record))
        provenance = dict(record.provenance)
        provenance["checksums"] = checksums
        provenance["wall_s"] = {**provenance.get("wall_s", {}), "archive": round(time.perf_counter() - started, 4)}
        _atomic_write_text(flag, json.dumps(provenance, indent=1, sort_keys=True, default=str))


def _version() -> str:
    import align_da_ops

    return align_da_ops.__version__


def _checksum(x: np.ndarray) -> str:
    """SHA-256 of a slab's float32 bytes (C order), as written and as read back."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def _file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
