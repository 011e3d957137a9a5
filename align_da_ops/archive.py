"""The experiment archive: Zarr for gridded products, one file per cycle for observations, done flags.

Layout of an archive directory:
  archive.json            what the archive is for (experiment, layout, grid, leads)
  grid.zarr/<product>/    xarray datasets in the state schema with a `time` (cycle) axis:
                          background, analysis, spread (ensembles), forecast (+`lead`), members (+`member`)
  obs/<YYYYMMDDHH>.nc     observation table with QC flags, H(x_b), H(x_a) and the O-B/O-A statistics
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
from align_da_ops.errors import ArchiveCorruptError, ArchiveError, ArchiveLockedError, ArchiveWriteError, InputDataError
from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import COLUMNS, ObsBatch
from align_da_ops.times import CycleTime

PRODUCTS = ("background", "analysis", "spread", "forecast", "members")
GROW_CYCLES = 120  # time-axis growth block (30 days)
SIX_HOURS = np.timedelta64(6, "h")
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
        for product, (n, consistent) in states.items():
            if n is None:
                self._create_group(product, target)
            elif n < target or not consistent:
                self._grow_group(product, target)
        return index

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
                return xr.open_zarr(self.grid_store, group=product, consolidated=False, chunks=None)
            return xr.open_zarr(self.grid_store, group=product, consolidated=False)
        except Exception as exc:  # absent group or store
            raise InputDataError(f"archive {self.root} has no {product!r} product yet ({type(exc).__name__})") from None

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
            x = x[self.leads.index(lead)]
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
    def _obs_path(self, cycle: CycleTime) -> Path:
        return self.root / "obs" / f"{cycle.compact}.nc"

    def _write_obs(self, record: CycleRecord) -> str:
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
        return _file_checksum(path)

    def read_obs(self, cycle: CycleTime) -> tuple[ObsBatch, xr.Dataset, pd.DataFrame]:
        """The cycle's observation batch, the file (with H(x_b), H(x_a)) and its monitoring table."""
        flag = self._read_flag(cycle)
        if flag is None:
            raise ArchiveError(f"cycle {cycle} is not done in {self.root}")
        path = self._obs_path(cycle)
        expected = flag.get("checksums", {}).get("obs")
        try:
            if expected is not None and _file_checksum(path) != expected:
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
        return batch, ds, mon

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
        checksums["forecast"] = self._write_product("forecast", stacked, index, lead_dims=("lead",), coords={"lead": list(self.leads)})
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
        checksums["obs"] = self._write_obs(record)
        provenance = dict(record.provenance)
        provenance["checksums"] = checksums
        provenance["wall_s"] = {**provenance.get("wall_s", {}), "archive": round(time.perf_counter() - started, 4)}
        _atomic_write_text(flag, json.dumps(provenance, indent=1, sort_keys=True, default=str))


def _checksum(x: np.ndarray) -> str:
    """SHA-256 of a slab's float32 bytes (C order), as written and as read back."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def _file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
