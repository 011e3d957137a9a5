"""IODA-style NetCDF for `ObsBatch`: groups MetaData / ObsValue / ObsError / PreQC on dim Location.

Layout (long format: one Location per scalar observation, so the observed
variable is metadata rather than a variable name):

  MetaData/latitude, longitude (deg), pressure (Pa, NaN at the surface), stationElevation (m),
  MetaData/dateTime (int64 seconds since 1970-01-01T00:00:00Z), variableName, variableUnits,
  MetaData/obsType, stationIdentification (strings), sequenceNumber (int64 report number)
  ObsValue/value (float64), ObsError/value (float64 std), PreQC/value (int32 `QCFlag`)

Integers are written and read back as integers (netCDF4 with auto-masking off,
so no float conversion or fill-value masking). Files are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np

import align_da_ops
from align_da_ops.errors import ObservationError
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
    os.replace(tmp, path)
    return path


def read_ioda(path: Path) -> ObsBatch:
    """Read a file written by `write_ioda`; checks units against the schema."""
    path = Path(path)
    if not path.exists():
        raise ObservationError(f"IODA file {path} does not exist")
    try:
        nc = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise ObservationError(f"{path} is not a readable NetCDF file: {exc}") from None
    with nc:
        nc.set_auto_maskandscale(False)
        columns = {}
        for group, name, column, _, _ in _FIELDS:
            try:
                raw = nc[f"{group}/{name}"][:]
            except (IndexError, KeyError):
                raise ObservationError(f"{path} lacks {group}/{name}; is it an align-da IODA file?") from None
            columns[column] = _decode(column, np.asarray(raw))
        units = (
            np.asarray(nc["MetaData/variableUnits"][:]).astype(str)
            if "variableUnits" in nc["MetaData"].variables
            else None
        )
    batch = ObsBatch(**columns)
    if units is not None and len(batch) and not np.array_equal(units, batch.units()):
        bad = np.flatnonzero(units != batch.units())[:3]
        raise ObservationError(
            f"{path}: units differ from the schema at rows {bad.tolist()}: {units[bad].tolist()} vs {batch.units()[bad].tolist()}"
        )
    return batch


def _decode(column: str, raw: np.ndarray) -> np.ndarray:
    if column == "time":
        return EPOCH + raw.astype(np.int64).astype("timedelta64[s]")
    if COLUMNS[column] == "str":
        return raw.astype(str) if raw.size else np.asarray([], dtype=str)
    return raw
