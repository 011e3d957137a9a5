"""`ObsBatch`: a columnar table of scalar observations with IODA semantics, and the QC flags.

One row per scalar observation (long format): where, when, which variable (the
schema's ERA5/WB2 long name, in the schema's units), value, error std, QC flag,
observation type, station and report number. Rejected observations stay in the
table with their flag; nothing is dropped silently. Batches are immutable:
every operation returns a new batch.

Column contract (all 1-D numpy arrays of the same length):
  latitude (deg, [-90, 90]), longitude (deg, normalised to [0, 360)),
  pressure (Pa; NaN for surface observations), elevation (m above sea level; NaN unknown),
  time (datetime64[s], UTC), variable (str), value (float64; NaN when missing),
  error (float64 std, > 0 unless missing), qc (int16 `QCFlag`), obs_type (str),
  station (str), report (int64: rows of one report/profile share it).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES


class QCFlag(enum.IntEnum):
    """Why an observation is (not) used. 0 = used; the first failed check wins."""

    PASS = 0
    MISSING = 1  # no value (missing report, missing element)
    GROSS = 2  # outside the physical limits of its variable
    OUTSIDE_WINDOW = 3  # observation time outside the assimilation window
    DUPLICATE = 4  # same station, time, variable and level as an earlier row
    BACKGROUND_CHECK = 5  # |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2)
    THINNED = 6  # another observation kept in its thinning box
    BLACKLISTED = 7  # station or type on the blacklist
    NO_OPERATOR = 8  # the state has no channel to compute H(x) for this variable
    OUTSIDE_DOMAIN = 9  # pressure outside the state's levels


COLUMNS: dict[str, str] = {
    "latitude": "float64",
    "longitude": "float64",
    "pressure": "float64",
    "elevation": "float64",
    "time": "datetime64[s]",
    "variable": "str",
    "value": "float64",
    "error": "float64",
    "qc": "int16",
    "obs_type": "str",
    "station": "str",
    "report": "int64",
}


def _as_column(name: str, values, n: int | None) -> np.ndarray:
    kind = COLUMNS[name]
    arr = np.asarray(values)
    if kind == "str":
        arr = arr.astype(str) if arr.size else np.asarray([], dtype="<U1")
    elif kind == "datetime64[s]":
        arr = arr.astype("datetime64[s]")
    else:
        arr = arr.astype(kind)
    if arr.ndim != 1:
        raise ObservationError(f"column {name!r} must be 1-D; got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ObservationError(f"column {name!r} has {arr.shape[0]} rows; expected {n}")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class ObsBatch:
    """Immutable columnar observations; build with `ObsBatch.from_columns` or `ObsBatch.empty`."""

    latitude: np.ndarray
    longitude: np.ndarray
    pressure: np.ndarray
    elevation: np.ndarray
    time: np.ndarray
    variable: np.ndarray
    value: np.ndarray
    error: np.ndarray
    qc: np.ndarray
    obs_type: np.ndarray
    station: np.ndarray
    report: np.ndarray

    def __post_init__(self):
        n = len(self.latitude)
        for name in COLUMNS:
            object.__setattr__(self, name, _as_column(name, getattr(self, name), n))
            getattr(self, name).flags.writeable = False
        lat = self.latitude
        if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90.0 + 1e-6):
            bad = lat[~(np.abs(lat) <= 90.0 + 1e-6)][:5]
            raise ObservationError(f"latitudes must be finite and within [-90, 90]; got e.g. {bad}")
        if np.any(np.abs(lat) > 90.0):  # decoders give -90.00000000000001 at the South Pole
            lat = np.clip(lat, -90.0, 90.0)
            lat.flags.writeable = False
            object.__setattr__(self, "latitude", lat)
        if np.any(self.pressure <= 0) or np.any(np.isinf(self.pressure)):
            raise ObservationError(
                f"pressures must be positive (Pa) or NaN at the surface; got {self.pressure[~(self.pressure > 0)][:5]}"
            )
        if np.any(~np.isfinite(self.longitude)):
            raise ObservationError("longitudes must be finite")
        lon = np.mod(self.longitude, 360.0)
        lon[lon >= 360.0] = 0.0  # np.mod(-1e-20, 360) rounds to 360
        lon.flags.writeable = False
        object.__setattr__(self, "longitude", lon)
        unknown = sorted(set(np.unique(self.variable)) - set(VARIABLES))
        if unknown:
            raise ObservationError(f"unknown variables {unknown}; known: {sorted(VARIABLES)}")
        flags = set(np.unique(self.qc).tolist()) - {int(f) for f in QCFlag}
        if flags:
            raise ObservationError(f"unknown QC flag values {sorted(flags)}")

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_columns(cls, **columns) -> ObsBatch:
        """Build from column arrays; qc defaults to PASS (MISSING where value is NaN), elevation to NaN."""
        missing = [c for c in COLUMNS if c not in columns and c not in ("qc", "elevation", "report", "station")]
        if missing:
            raise ObservationError(f"missing columns {missing}")
        unknown = sorted(set(columns) - set(COLUMNS))
        if unknown:
            raise ObservationError(f"unknown columns {unknown}; known: {list(COLUMNS)}")
        n = len(np.asarray(columns["latitude"]))
        value = np.asarray(columns["value"], dtype=np.float64)
        columns.setdefault("qc", np.where(np.isnan(value), int(QCFlag.MISSING), int(QCFlag.PASS)))
        columns.setdefault("elevation", np.full(n, np.nan))
        columns.setdefault("report", np.arange(n))
        columns.setdefault("station", np.full(n, ""))
        for name in ("variable", "obs_type", "station"):
            if isinstance(columns[name], str):
                columns[name] = np.full(n, columns[name])
        if isinstance(columns["time"], (np.datetime64, str)):
            columns["time"] = np.full(n, np.datetime64(columns["time"], "s"))
        return cls(**{c: columns[c] for c in COLUMNS})

    @classmethod
    def empty(cls) -> ObsBatch:
        return cls(**{c: np.asarray([], dtype=(str if k == "str" else k)) for c, k in COLUMNS.items()})

    @classmethod
    def concat(cls, batches: Iterable[ObsBatch]) -> ObsBatch:
        """Rows of all batches in order; report numbers are offset so reports stay distinct."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        cols = {c: [] for c in COLUMNS}
        offset = 0
        for b in batches:
            for c in COLUMNS:
                cols[c].append(b.report - b.report.min() + offset if c == "report" else getattr(b, c))
            offset += int(b.report.max()) - int(b.report.min()) + 1
        return cls(**{c: np.concatenate(v) for c, v in cols.items()})

    # -- access ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.latitude.shape[0])

    def __repr__(self) -> str:
        return f"ObsBatch({len(self)} obs, {int(self.passed.sum())} pass, variables={sorted(str(v) for v in set(self.variable))})"

    @property
    def passed(self) -> np.ndarray:
        return self.qc == int(QCFlag.PASS)

    @property
    def is_surface(self) -> np.ndarray:
        return np.isnan(self.pressure)

    def units(self) -> np.ndarray:
        """Canonical units per row (from the schema)."""
        table = {name: info.units for name, info in VARIABLES.items()}
        return np.asarray([table[v] for v in self.variable], dtype=str) if len(self) else np.asarray([], dtype=str)

    def select(self, index) -> ObsBatch:
        """Rows picked by a boolean mask or an integer index array."""
        return ObsBatch(**{c: getattr(self, c)[index] for c in COLUMNS})

    def replace(self, **columns) -> ObsBatch:
        return dataclasses.replace(self, **columns)

    def flag(self, mask: np.ndarray, flag: QCFlag) -> ObsBatch:
        """Set `flag` where `mask` is true and the row still passes (the first failed check wins)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise ObservationError(f"flag mask has shape {mask.shape}; expected ({len(self)},)")
        qc = self.qc.copy()
        qc[mask & self.passed] = int(flag)
        return self.replace(qc=qc)

    def flag_counts(self) -> dict[str, int]:
        """Rows per QC flag name, every flag listed."""
        return {f.name.lower(): int((self.qc == int(f)).sum()) for f in QCFlag}

    def to_dataframe(self) -> pd.DataFrame:
        df = pd.DataFrame({c: getattr(self, c) for c in COLUMNS})
        df["qc_flag"] = [QCFlag(int(q)).name.lower() for q in self.qc]
        return df

    def equals(self, other: ObsBatch) -> bool:
        """Column-wise equality, NaN equal to NaN."""
        if len(self) != len(other):
            return False
        for c in COLUMNS:
            a, b = getattr(self, c), getattr(other, c)
            if a.dtype.kind == "f":
                if not np.array_equal(a, b, equal_nan=True):
                    return False
            elif not np.array_equal(a, b):
                return False
        return True


def summary_table(batch: ObsBatch, by: Sequence[str] = ("obs_type", "variable")) -> pd.DataFrame:
    """Rows and rows passing per group, with value min/max of passing rows."""
    df = batch.to_dataframe()
    df["pass"] = batch.passed
    df["value_pass"] = np.where(batch.passed, batch.value, np.nan)
    grouped = df.groupby(list(by), sort=True)
    return grouped.agg(
        count=("value", "size"), passed=("pass", "sum"), min=("value_pass", "min"), max=("value_pass", "max")
    ).reset_index()
