"""IODA v3 NetCDF for `ObsBatch`: the one observation file writer (ingest, simulate, the archive) and reader.

Layout (IODA v3, "wide": one Location per report level, one variable per observed quantity):

  dimension Location
  MetaData/latitude, longitude (deg), pressure (Pa, missing at the surface), stationElevation (m),
  MetaData/dateTime (int64 seconds since 1970-01-01T00:00:00Z), stationIdentification, obsType (strings),
  MetaData/sequenceNumber (int64 report number)
  ObsValue/<name>, ObsError/<name> (float64, IODA units), PreQC/<name> (int32 `QCFlag`, flag_values/meanings)
  archive files add EffectiveQC/<name> (the cycle's QC), EffectiveError/<name>, hofx0/<name> (H(x_b)),
  hofx1/<name> (H(x_a)), ombg/<name> (y - H(x_b)) and oman/<name> (y - H(x_a))

<name> is the JEDI/IODA variable name (`IODA_NAMES`): airTemperature, windEastward, windNorthward,
specificHumidity, geopotential (m2 s-2: the schema's variable, kept exact rather than converted to
geopotentialHeight), stationPressure, pressureReducedToMeanSeaLevel, airTemperatureAt2M, windEastwardAt10M,
windNorthwardAt10M. Cells a Location does not observe hold the fill values (NaN; PreQC -2147483647);
a reported but missing value is NaN with PreQC `MISSING`. Our own extension, ignored by IODA readers:
RowNumber/<name> (int64), each cell's position in the long table, so that reading gives back the rows
in the order they were written (exact round trips).

Integers stay integers (netCDF4 with auto-masking off). Files are written to a temporary name and renamed,
so a reader never sees half a file; a failed write leaves no temporary behind.

Reading: `read_ioda` is strict (any row breaking the `ObsBatch` contract fails the file); `read_ioda_checked`
drops such rows (latitude outside [-90, 90], non-finite longitude, bad pressure, unknown variable or QC
flag, units other than IODA's) and says why, failing only for a file unreadable as a whole. Both raise only
`ObservationError`. Note that HDF5 itself may crash on a corrupted file: callers reading untrusted files
should check them first (the feed checks a SHA-256 recorded when it wrote them).
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd

import align_da_ops
from align_da_ops.errors import ObservationError
from align_da_ops.obs.batch import COLUMNS, ObsBatch, QCFlag

LOCATION = "Location"
EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
INT_FILL = np.int32(-2147483647)  # netCDF's default int fill: no observation in this cell
# schema variable -> (IODA v3 name, IODA units)
IODA_NAMES: dict[str, tuple[str, str]] = {
    "geopotential": ("geopotential", "m2 s-2"),
    "temperature": ("airTemperature", "K"),
    "u_component_of_wind": ("windEastward", "m s-1"),
    "v_component_of_wind": ("windNorthward", "m s-1"),
    "specific_humidity": ("specificHumidity", "kg kg-1"),
    "2m_temperature": ("airTemperatureAt2M", "K"),
    "10m_u_component_of_wind": ("windEastwardAt10M", "m s-1"),
    "10m_v_component_of_wind": ("windNorthwardAt10M", "m s-1"),
    "surface_pressure": ("stationPressure", "Pa"),
    "mean_sea_level_pressure": ("pressureReducedToMeanSeaLevel", "Pa"),
}
SCHEMA_NAMES = {ioda: schema for schema, (ioda, _) in IODA_NAMES.items()}
# MetaData (per Location): name, batch column, netCDF type, attributes
_META = (
    ("latitude", "latitude", "f8", {"units": "degrees_north"}),
    ("longitude", "longitude", "f8", {"units": "degrees_east"}),
    ("pressure", "pressure", "f8", {"units": "Pa"}),
    ("stationElevation", "elevation", "f8", {"units": "m"}),
    ("dateTime", "time", "i8", {"units": "seconds since 1970-01-01T00:00:00Z"}),
    ("stationIdentification", "station", str, {}),
    ("obsType", "obs_type", str, {"long_name": "observation type (align-da-ops)"}),
    ("sequenceNumber", "report", "i8", {"long_name": "report (profile) number"}),
)
_QC_ATTRS = {
    "flag_values": np.asarray([int(f) for f in QCFlag], dtype=np.int32),
    "flag_meanings": " ".join(f.name.lower() for f in QCFlag),
}


def write_ioda(batch: ObsBatch, path: Path, attrs: dict | None = None, *, pre_qc: np.ndarray | None = None,
               hofx_background: np.ndarray | None = None, hofx_analysis: np.ndarray | None = None) -> Path:
    """Write `batch` atomically to `path` (NetCDF-4, IODA v3); returns the path.

    Without `pre_qc`, `batch.qc` is the PreQC (decoding, simulation). With it (the archive), `pre_qc` is the
    PreQC and `batch.qc` the EffectiveQC; `hofx_background`/`hofx_analysis` (per row) add hofx0/ombg and
    hofx1/oman."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write(batch, tmp, attrs, pre_qc, hofx_background, hofx_analysis)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _locations(batch: ObsBatch) -> np.ndarray:
    """Location number of every row: rows of one report at one level, place and time share a Location
    (a second value of the same variable there opens another Location); numbered by first appearance."""
    keys = ["report", "pressure", "time", "latitude", "longitude", "station", "obs_type", "elevation"]
    frame = pd.DataFrame({k: getattr(batch, k) for k in keys})
    frame["variable"] = batch.variable
    frame["repeat"] = frame.groupby(keys + ["variable"], dropna=False, sort=False).cumcount()
    return frame.groupby(keys + ["repeat"], dropna=False, sort=False).ngroup().to_numpy()


def _write(batch, tmp, attrs, pre_qc, hofx_background, hofx_analysis) -> None:
    location = _locations(batch)
    n_loc = int(location.max()) + 1 if len(batch) else 0
    first = np.unique(location, return_index=True)[1]  # the first row of every Location
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.createDimension(LOCATION, n_loc)
        nc.setncatts({"ioda_layout": "ObsGroup", "ioda_layout_version": 3,
                      "producer": f"align_da_ops {align_da_ops.__version__}",
                      **{k: str(v) for k, v in (attrs or {}).items()}})
        meta = nc.createGroup("MetaData")
        for name, column, nctype, var_attrs in _META:
            var = meta.createVariable(name, nctype, (LOCATION,))
            var.setncatts(var_attrs)
            if n_loc:
                var[:] = _encode(column, getattr(batch, column)[first])
        effective = pre_qc is not None
        cells = {  # group -> (per-row values, fill, netCDF type, extra attributes)
            "ObsValue": (batch.value, np.nan, "f8", {}),
            "ObsError": (batch.error, np.nan, "f8", {"long_name": "observation error standard deviation"}),
            "PreQC": (np.asarray(pre_qc if effective else batch.qc, dtype=np.int32), INT_FILL, "i4", _QC_ATTRS),
            "RowNumber": (np.arange(len(batch), dtype=np.int64), np.int64(-1), "i8",
                          {"long_name": "row of the observation in the writer's long table (align-da-ops)"}),
        }
        if effective:
            cells["EffectiveQC"] = (batch.qc.astype(np.int32), INT_FILL, "i4", _QC_ATTRS)
            cells["EffectiveError"] = (batch.error, np.nan, "f8", {})
        for group, hofx in (("hofx0", hofx_background), ("hofx1", hofx_analysis)):
            if hofx is not None:
                hofx = np.asarray(hofx, dtype=np.float64)
                cells[group] = (hofx, np.nan, "f8", {})
                cells["ombg" if group == "hofx0" else "oman"] = (batch.value - hofx, np.nan, "f8", {})
        groups = {g: nc.createGroup(g) for g in cells}
        for variable in dict.fromkeys(batch.variable.tolist()):  # first-appearance order
            ioda, units = IODA_NAMES[variable]
            rows = np.flatnonzero(batch.variable == variable)
            for group, (values, fill, nctype, extra) in cells.items():
                var = groups[group].createVariable(ioda, nctype, (LOCATION,), fill_value=fill)
                unit = {} if group in ("PreQC", "EffectiveQC", "RowNumber") else {"units": units}
                var.setncatts({**unit, **extra})
                column = np.full(n_loc, fill, dtype=np.asarray(values).dtype)
                column[location[rows]] = values[rows]
                var[:] = column


def _encode(column: str, values: np.ndarray) -> np.ndarray:
    if column == "time":
        return (values - EPOCH).astype("timedelta64[s]").astype(np.int64)
    if COLUMNS[column] == "str":
        return values.astype(object)
    return values


def _decode(column: str, raw: np.ndarray) -> np.ndarray:
    if column == "time":
        return EPOCH + raw.astype(np.int64).astype("timedelta64[s]")
    if COLUMNS[column] == "str":
        return raw.astype(str) if raw.size else np.asarray([], dtype=str)
    return raw


def read_ioda(path: Path) -> ObsBatch:
    """Read an IODA v3 file as written by `write_ioda`; any bad row fails the file."""
    batch, problems = read_ioda_checked(path)
    if problems:
        raise ObservationError(f"{path}: " + "; ".join(problems))
    return batch


def read_ioda_checked(path: Path) -> tuple[ObsBatch, tuple[str, ...]]:
    """(rows that keep the `ObsBatch` contract, why the others were dropped); ObservationError if unreadable."""
    batch, problems, _ = read_ioda_groups(path)
    return batch, problems


def read_ioda_groups(path: Path, groups: tuple[str, ...] = ()) -> tuple[ObsBatch, tuple[str, ...], dict[str, np.ndarray]]:
    """`read_ioda_checked` plus the per-row values of extra groups (e.g. hofx0, hofx1, PreQC) for the kept rows.
    Reading an EffectiveQC file, the batch's qc is the EffectiveQC."""
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"IODA file {path} does not exist")
    columns, units, extra = _read_columns(path, groups)
    try:
        keep, problems = _valid_rows(columns, units)
        batch = ObsBatch(**{c: v[keep] for c, v in columns.items()})
        return batch, problems, {g: v[keep] for g, v in extra.items()}
    except (ObservationError, ValueError, TypeError, KeyError, IndexError) as exc:  # a column of the wrong kind
        raise ObservationError(f"{path}: {exc}") from None


def _read_columns(path: Path, groups: tuple[str, ...]):
    """Long-format columns (one row per observed cell), the units each row's file variable declares, and the
    extra groups' values per row."""
    try:
        nc = netCDF4.Dataset(path, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise ObservationError(f"{path} is not a readable NetCDF file: {exc}") from None
    try:
        with nc:
            nc.set_auto_maskandscale(False)
            return _cells(nc, path, groups)
    except ObservationError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, IndexError, KeyError, UnicodeError, OverflowError) as exc:
        raise ObservationError(f"{path}: unreadable content ({type(exc).__name__}: {exc})") from None


def _group(nc, path: Path, name: str):
    if name not in nc.groups:
        raise ObservationError(f"{path} lacks the {name} group; is it an IODA v3 file?")
    return nc[name]


def _cells(nc, path: Path, groups: tuple[str, ...]):
    meta = {}
    for name, column, _, _ in _META:
        try:
            meta[column] = _decode(column, np.asarray(_group(nc, path, "MetaData")[name][:]))
        except (IndexError, KeyError):
            raise ObservationError(f"{path} lacks MetaData/{name}; is it an IODA v3 file?") from None
    sizes = {len(v) for v in meta.values()}
    if len(sizes) > 1:
        raise ObservationError(f"{path}: MetaData variables differ in length {sorted(sizes)}")
    effective = "EffectiveQC" in nc.groups
    qc_group = "EffectiveQC" if effective else "PreQC"
    wanted = ("ObsValue", "ObsError", qc_group, *[g for g in groups if g != qc_group])
    parts = {k: [] for k in (*meta, "variable", "value", "error", "qc", "units", "row", *groups)}
    for ioda in _group(nc, path, "ObsValue").variables:
        data = {}
        for group in wanted + (("RowNumber",) if "RowNumber" in nc.groups else ()):
            var = _group(nc, path, group).variables.get(ioda)
            if var is None:
                raise ObservationError(f"{path} has ObsValue/{ioda} but no {group}/{ioda}")
            data[group] = np.asarray(var[:])
        present = data[qc_group] != INT_FILL
        loc = np.flatnonzero(present)
        for column, values in meta.items():
            parts[column].append(values[loc])
        parts["variable"].append(np.full(loc.size, SCHEMA_NAMES.get(ioda, ioda), dtype=object))
        parts["units"].append(np.full(loc.size, str(getattr(nc["ObsValue"][ioda], "units", "")), dtype=object))
        parts["value"].append(data["ObsValue"][loc].astype(np.float64))
        parts["error"].append(data["ObsError"][loc].astype(np.float64))
        parts["qc"].append(data[qc_group][loc])
        parts["row"].append(data["RowNumber"][loc] if "RowNumber" in data else np.full(loc.size, -1, np.int64))
        for group in groups:
            parts[group].append(data[group][loc])
    if not parts["variable"]:  # no observed variable
        empty = ObsBatch.empty()
        return {c: getattr(empty, c) for c in COLUMNS}, np.asarray([], dtype=str), {g: np.zeros(0) for g in groups}
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(joined.pop("row"), kind="stable")
    units = joined.pop("units")[order].astype(str)
    extra = {g: joined.pop(g)[order] for g in groups}
    columns = {c: joined[c][order] for c in COLUMNS}
    columns["variable"] = columns["variable"].astype(str)
    return columns, units, extra


def _valid_rows(columns: dict[str, np.ndarray], units: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Mask of rows an `ObsBatch` accepts, and one problem line per kind of rejected row."""
    lat, lon, p = (np.asarray(columns[c], dtype=np.float64) for c in ("latitude", "longitude", "pressure"))
    variable = columns["variable"].astype(str)
    known = np.isin(variable, list(IODA_NAMES))
    expected = np.asarray([IODA_NAMES[v][1] if k else "" for v, k in zip(variable, known)], dtype=str)
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
        checks["units differ from IODA's"] = ~known | (units == expected)
    keep = np.ones(len(lat), dtype=bool)
    problems = []
    for what, ok in checks.items():
        bad = np.flatnonzero(~ok)
        if bad.size:
            problems.append(f"{bad.size} bad rows: {what} (first at rows {bad[:3].tolist()})")
        keep &= ok
    return keep, tuple(problems)
