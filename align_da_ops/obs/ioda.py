"""IODA-style NetCDF for `ObsBatch`: groups MetaData / ObsValue / ObsError / PreQC on dim Location.

Layout (long format: one Location per scalar observation, so the observed
variable is metadata rather than a variable name):

  MetaData/latitude, longitude (deg), pressure (Pa, NaN at the surface), stationElevation (m),
  MetaData/dateTime (int64 seconds since 1970-01-01T00:00:00Z), variableName, variableUnits,
  MetaData/obsType, stationIdentification (strings), sequenceNumber (int64 report number)
  ObsValue/value (float64), ObsError/value (float64 std), PreQC/value (int32 `QCFlag`)

Integers are written and read back as integers (netCDF4 with auto-masking off,
so no float conversion or fill-value masking). Files are written to a temporary
name and renamed, so a reader never sees half a file; a failed write leaves no
temporary behind.

Reading: `read_ioda` is strict (any row breaking the `ObsBatch` contract fails
the file); `read_ioda_checked` drops such rows one by one (latitude outside
[-90, 90], non-finite longitude, bad pressure, unknown variable or QC flag,
units other than the schema's) and says why, failing only for a file unreadable
as a whole. Both raise only `ObservationError`. Note that HDF5 itself may crash
on a corrupted file: callers reading untrusted files should check them first
(the feed checks a SHA-256 recorded when it wrote them).
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np

import align_da_ops
from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES
from align_da_ops.obs.batch import COLUMNS, ObsBatch, QCFlag

LOCATION = "Location"
EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
# (group, name, column, netCDF type, attributes)
_FIELDS = (
    ("MetaData", "latitude", "latitude", "f8", {"units": "degrees_north"}),
    ("MetaData", "longitude", "longitude", "f8", {"units": "degrees_east"}),
    ("MetaData", "pressure", "pressure", "f8", {"units": "Pa"}),
    ("MetaData", "stationElevation", "elevation", "f8", {"units": "m"}),
    ("MetaData", "dateTime", "time", "i8", {"units": "seconds since 1970-01-01T00:00:00Z"}),
    ("MetaData", "variableName", "variable", str, {}),
    ("MetaData", "obsType", "obs_type", str, {}),
    ("MetaData", "stationIdentification", "station", str, {}),
    ("MetaData", "sequenceNumber", "report", "i8", {"long_name": "report (profile) number"}),
    ("ObsValue", "value", "value", "f8", {}),
    ("ObsError", "value", "error", "f8", {"long_name": "observation error standard deviation"}),
    ("PreQC", "value", "qc", "i4", {}),
)


def _encode(column: str, values: np.ndarray) -> np.ndarray:
    if column == "time":
        return (values - EPOCH).astype("timedelta64[s]").astype(np.int64)
    if COLUMNS[column] == "str":
        return values.astype(object)
    return values


def write_ioda(batch: ObsBatch, path: Path, attrs: dict | None = None) -> Path:
    """Write `batch` atomically to `path` (NetCDF-4); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write(batch, tmp, attrs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write(batch: ObsBatch, tmp: Path, attrs: dict | None) -> None:
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.createDimension(LOCATION, len(batch))
        nc.setncatts(
            {
                "_ioda_layout": "ObsGroup",
                "layout": "long: one Location per scalar observation; variable in MetaData/variableName",
                "producer": f"align_da_ops {align_da_ops.__version__}",
                **{k: str(v) for k, v in (attrs or {}).items()},
            }
        )
        groups = {}
        for group, name, column, nctype, var_attrs in _FIELDS:
            grp = groups.get(group) or groups.setdefault(group, nc.createGroup(group))
            var = grp.createVariable(name, nctype, (LOCATION,))
            if var_attrs:
                var.setncatts(var_attrs)
            if len(batch):
                var[:] = _encode(column, getattr(batch, column))
        units = batch.units().astype(object)
        var = groups["MetaData"].createVariable("variableUnits", str, (LOCATION,))
        if len(batch):
            var[:] = units
        qc = groups["PreQC"]["value"]
        qc.setncatts(
            {
                "flag_values": np.asarray([int(f) for f in QCFlag], dtype=np.int32),
                "flag_meanings": " ".join(f.name.lower() for f in QCFlag),
            }
        )


def read_ioda(path: Path) -> ObsBatch:
    """Read a file written by `write_ioda`; any bad row (e.g. units not the schema's) fails the file."""
    batch, problems = read_ioda_checked(path)
    if problems:
        raise ObservationError(f"{path}: " + "; ".join(problems))
    return batch


def read_ioda_checked(path: Path) -> tuple[ObsBatch, tuple[str, ...]]:
    """(rows that keep the `ObsBatch` contract, why the others were dropped); ObservationError if unreadable."""
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"IODA file {path} does not exist")
    columns, units = _read_columns(path)
    n = {len(v) for v in columns.values()} | ({len(units)} if units is not None else set())
    if len(n) > 1:
        raise ObservationError(f"{path}: variables differ in length {sorted(n)}; is it an align-da IODA file?")
    try:
        keep, problems = _valid_rows(columns, units)
        return ObsBatch(**{c: v[keep] for c, v in columns.items()}), problems
    except (ObservationError, ValueError, TypeError, KeyError, IndexError) as exc:  # a column of the wrong kind
        raise ObservationError(f"{path}: {exc}") from None


def _read_columns(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        nc = netCDF4.Dataset(path, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise ObservationError(f"{path} is not a readable NetCDF file: {exc}") from None
    try:
        with nc:
            nc.set_auto_maskandscale(False)
            columns = {}
            for group, name, column, _, _ in _FIELDS:
                try:
                    raw = nc[f"{group}/{name}"][:]
                except (IndexError, KeyError):
                    raise ObservationError(f"{path} lacks {group}/{name}; is it an align-da IODA file?") from None
                columns[column] = _decode(column, np.asarray(raw))
            meta = nc["MetaData"]
            units = np.asarray(meta["variableUnits"][:]).astype(str) if "variableUnits" in meta.variables else None
    except ObservationError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, IndexError, KeyError, UnicodeError, OverflowError) as exc:
        raise ObservationError(f"{path}: unreadable content ({type(exc).__name__}: {exc})") from None
    return columns, units


def _valid_rows(columns: dict[str, np.ndarray], units: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Mask of rows an `ObsBatch` accepts, and one problem line per kind of rejected row."""
    lat, lon, p = (np.asarray(columns[c], dtype=np.float64) for c in ("latitude", "longitude", "pressure"))
    variable = columns["variable"].astype(str)
    known = np.isin(variable, list(VARIABLES))
    expected = np.asarray([VARIABLES[v].units if k else "" for v, k in zip(variable, known)], dtype=str)
    with np.errstate(invalid="ignore"):
        checks = {
            "latitude not finite or outside [-90, 90]": np.abs(lat) <= 90.0 + 1e-6,
            "longitude not finite": np.isfinite(lon),
            "pressure neither positive nor NaN": np.isnan(p) | ((p > 0) & np.isfinite(p)),
            "unknown variable": known,
            "unknown QC flag": np.isin(columns["qc"], [int(f) for f in QCFlag]),
            "time not a date (NaT)": ~np.isnat(columns["time"]),
        }
    if units is not None:
        checks["units differ from the schema"] = ~known | (units == expected)
    keep = np.ones(len(lat), dtype=bool)
    problems = []
    for what, ok in checks.items():
        bad = np.flatnonzero(~ok)
        if bad.size:
            problems.append(f"{bad.size} bad rows: {what} (first at rows {bad[:3].tolist()})")
        keep &= ok
    return keep, tuple(problems)


def _decode(column: str, raw: np.ndarray) -> np.ndarray:
    if column == "time":
        return EPOCH + raw.astype(np.int64).astype("timedelta64[s]")
    if COLUMNS[column] == "str":
        return raw.astype(str) if raw.size else np.asarray([], dtype=str)
    return raw
