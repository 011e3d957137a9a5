"""WMO BUFR -> `ObsBatch` through ecCodes: SYNOP, marine surface, TEMP, aircraft and AMVs.

Contract: `decode_bufr_file(path)` / `decode_bufr_bytes(data)` never raise (nor crash
the process) for bad content. Messages are located by their "BUFR" ... "7777"
framing; each one is decoded on its own, and a message that fails is counted and
described in the `DecodeReport`, never fatal for the file: its rows are all
dropped, other messages' rows are untouched. Elements a report does not carry
are not observations and make no rows; reports without a valid position or time
(missing, |lat| > 90, |lon| > 360, a date outside 1850-2200) are skipped and
counted, the other reports of the message are kept.

Reports: a report is one platform's observation at one time, identified by (observation
type, station id, time) for a fixed land station (WMO block and station number), and by
(type, station id, time, position, and the pressure of a single-level upper-air report) for
a moving or unidentified platform (ship, buoy, aircraft, satellite wind). A report spread over several messages or subsets (e.g. a SYNOP
whose pressure and wind come in two messages) is one report: its rows share one `report`
number (rows stay in message order, so they need not be adjacent) and
`DecodeReport.reports` counts it once. A report without a valid position or time counts
on its own.

Derived pressures: an aircraft or AMV report without pressure but with an altitude gets the
ICAO standard-atmosphere pressure of that altitude (`isa_pressure`). A pressure altitude
(`flightLevel`, `indicatedAircraftAltitude`) is preferred; a geometric height (`height`,
`globalNavigationSatelliteSystemAltitude`; aircraft only) is used as if it were one, an
approximation (the real atmosphere is not the standard one: typically a few hPa off). Such
rows get obs_type "<type>_isa" (e.g. "aircraft_isa", `DERIVED_PRESSURE_SUFFIX`), so that QC,
thinning, blacklists and monitoring can tell them from measured pressures;
`DecodeReport.derived_pressure` counts them.

Isolation: ecCodes is a C library that crashes (SIGSEGV) or may loop on some
malformed messages, so by default messages are unpacked in a child process
(`_Worker`, started on first use and restarted after a crash). Messages go to it in
chunks (one round trip per chunk); it acknowledges each message as it is done, so a
crash or a message taking over `MESSAGE_TIMEOUT_S` is pinned on that message, which
fails alone: the rest of its chunk is decoded again by a fresh worker. Results come
back as plain arrays (`np.lib.format`, `allow_pickle=False`), never as pickles. The
worker loads this file alone (not the `align_da_ops.obs` package, which imports torch),
so it starts in well under a second.

How a message is read: ecCodes unpacks it; its data keys ("#rank#name") are walked in
order and split into subsets. The walk depends only on the message's layout (expanded
descriptors, replication factors, subsets, tables), so it is done once per layout and
cached (`_layout`). Single-level reports (SYNOP, buoy, aircraft, AMV) use the first
occurrence of each element in the subset (later ones are gusts, intermediate vectors,
extremes...); for uncompressed messages their values are taken from the one
`numericValues` array when the layout's key positions were checked against it, else one
`codes_get_double_array` per element name. TEMP profiles are walked level by level: every
`pressure` opens a level and the elements that follow belong to it, so temperature, wind
and geopotential arrays of unequal length (significant levels, wind-only levels) stay on
the right pressures. A chunk's values are turned into rows with array operations
(`_finish`). Winds: (speed, direction from) -> u = -s sin d, v = -s cos d; geopotential
height (gpm) -> geopotential (m2 s-2) with g0 = 9.80665. Values come from ecCodes in SI
units (K, Pa, m s-1), which are the schema's.
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import json
import math
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING

import eccodes
import numpy as np

from align_da_ops.errors import ObservationError
from align_da_ops.logs import get_logger

if TYPE_CHECKING:  # the worker process loads this file without the obs package (and torch)
    from align_da_ops.obs.batch import ObsBatch

log = get_logger(__name__)
G0 = 9.80665
_MISSING_LONG = eccodes.CODES_MISSING_LONG
MESSAGE_TIMEOUT_S = 60.0  # one message may take this long in the worker before it is stopped
_WORKER_START_S = 120.0  # the worker imports numpy and ecCodes (a slow disk can take long)
_CHUNK_MESSAGES = 500  # messages per round trip to the worker
_CHUNK_BYTES = 8 << 20
_POLL_S = 1.0  # while a chunk is decoded, the caller checks the worker's progress this often
# Observation times outside this range are decoding garbage (year 0, 9999...), not observations.
_TIME_MIN, _TIME_MAX = np.datetime64("1850-01-01T00:00:00", "s"), np.datetime64("2200-01-01T00:00:00", "s")
_STOP_KEYS = {"dataPresentIndicator", "operator"}  # quality-information sections follow the data
DERIVED_PRESSURE_SUFFIX = "_isa"  # obs_type suffix: pressure from an altitude through the standard atmosphere

# Observation error std per (obs_type, variable), schema units. Typical operational values
# (ECMWF/NCEP error tables, rounded); a config may override them. Derived-pressure types keep
# their parent's errors.
DEFAULT_ERRORS: dict[tuple[str, str], float] = {
    **{(t, "2m_temperature"): 1.5 for t in ("synop", "marine")},
    **{(t, "surface_pressure"): 100.0 for t in ("synop", "marine")},
    **{(t, "mean_sea_level_pressure"): 100.0 for t in ("synop", "marine")},
    **{(t, v): 2.0 for t in ("synop", "marine") for v in ("10m_u_component_of_wind", "10m_v_component_of_wind")},
    ("temp", "temperature"): 1.0,
    ("temp", "geopotential"): 100.0,
    ("temp", "u_component_of_wind"): 2.0,
    ("temp", "v_component_of_wind"): 2.0,
    **{(t, "temperature"): 1.0 for t in ("aircraft", "aircraft_isa")},
    **{(t, v): 2.5 for t in ("aircraft", "aircraft_isa") for v in ("u_component_of_wind", "v_component_of_wind")},
    **{(t, v): 3.5 for t in ("amv", "amv_isa") for v in ("u_component_of_wind", "v_component_of_wind")},
}
# BUFR data category (Common Code Table C-13) -> our observation type.
_CATEGORY = {0: "synop", 1: "marine", 2: "temp", 4: "aircraft", 5: "amv"}
_SURFACE_TYPES = ("synop", "marine")
# Altitudes an aircraft may report instead of pressure: pressure altitudes first, then geometric ones.
_PRESSURE_ALTITUDES = ("flightLevel", "indicatedAircraftAltitude")
_HEIGHTS = ("height", "heightOrAltitude", "globalNavigationSatelliteSystemAltitude")
# Numeric roles read for every subset group (NaN where the subset lacks them): the columns of its fields.
_ROLES = (
    "latitude",
    "longitude",
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "elevation",
    "block",
    "station",
    "platform",
    "satellite",
    "t",
    "sp",
    "msl",
    "speed",
    "direction",
    "pressure",
    "altitude",
)
_COL = {role: i for i, role in enumerate(_ROLES)}
# String station ids, in order of preference after the WMO block and station number.
_STRING_IDS = (
    "shipOrMobileLandStationIdentifier",
    "aircraftFlightNumber",
    "aircraftRegistrationNumberOrOtherIdentification",
)
# Replication descriptors -> the ecCodes key holding their factors (they shape the layout).
_REPLICATION = {
    31000: "shortDelayedDescriptorReplicationFactor",
    31001: "delayedDescriptorReplicationFactor",
    31002: "extendedDelayedDescriptorReplicationFactor",
}
# Row variables: (code, surface name, upper-air name), in row order within a level.
_VARIABLES = (
    ("t", "2m_temperature", "temperature"),
    ("sp", "surface_pressure", None),
    ("msl", "mean_sea_level_pressure", None),
    ("z", None, "geopotential"),
    ("u", "10m_u_component_of_wind", "u_component_of_wind"),
    ("v", "10m_v_component_of_wind", "v_component_of_wind"),
)


@dataclasses.dataclass(frozen=True)
class DecodeReport:
    """What happened to one file: message and report counts, and the problems met.

    `reports` counts station reports (see the module doc), not messages; `by_type` splits them by
    message type; `derived_pressure` counts observations whose pressure is an ISA conversion.
    """

    source: str
    size_bytes: int
    messages: int  # complete BUFR messages found
    decoded: int
    failed: int
    skipped: int  # supported framing, unsupported data category
    reports: int
    observations: int
    truncated: bool  # the last message runs past the end of the data
    problems: tuple[str, ...]
    by_type: dict[str, int] = dataclasses.field(default_factory=dict)
    derived_pressure: int = 0

    def unusable_reason(self) -> str | None:
        """Why the whole file must be quarantined, or None when it is usable.

        Usable means: complete framing and at least one decoded message (bad messages
        beside it are only counted). A truncated file is not usable: it is most likely
        a broken transfer that will be sent again whole.
        """
        if self.problems and self.problems[0].startswith(("cannot read", "not a regular file")):
            return self.problems[0]
        if self.size_bytes == 0:
            return "empty file (0 bytes)"
        if self.truncated:
            return next(p for p in self.problems if p.startswith("truncated"))
        if self.messages == 0:
            return "no complete BUFR message: " + ("; ".join(self.problems[:3]) or "wrong format")
        if self.decoded == 0:
            return f"all {self.messages} BUFR messages failed or are unsupported: " + "; ".join(self.problems[:3])
        return None


@dataclasses.dataclass(frozen=True)
class Decoded:
    batch: ObsBatch
    report: DecodeReport


# -- framing ------------------------------------------------------------------------
def scan_messages(data: bytes) -> tuple[list[bytes], list[str], bool]:
    """Split raw bytes into complete BUFR messages; returns (messages, problems, truncated)."""
    messages, problems = [], []
    pos = data.find(b"BUFR")
    if pos < 0:
        head = data[:16]
        return [], [f"no 'BUFR' marker in {len(data)} bytes (starts with {head!r})"], False
    while pos >= 0:
        if pos + 8 > len(data):
            problems.append(f"truncated: message header at byte {pos} cut off")
            return messages, problems, True
        length, edition = int.from_bytes(data[pos + 4 : pos + 7], "big"), data[pos + 7]
        if edition not in (2, 3, 4) or length < 32:
            problems.append(f"byte {pos}: bad section 0 (edition {edition}, length {length}); skipped")
            pos = data.find(b"BUFR", pos + 4)
            continue
        end = pos + length
        if end > len(data):
            problems.append(f"truncated: message at byte {pos} declares {length} bytes, only {len(data) - pos} present")
            return messages, problems, True
        if data[end - 4 : end] != b"7777":
            problems.append(f"byte {pos}: message of {length} bytes lacks its '7777' end marker; skipped")
            pos = data.find(b"BUFR", pos + 4)
            continue
        messages.append(data[pos:end])
        pos = data.find(b"BUFR", end)
    return messages, problems, False


def isa_pressure(height_m: np.ndarray) -> np.ndarray:
    """ICAO standard-atmosphere pressure (Pa) at a (geopotential) altitude in metres; NaN stays NaN.

    0-11 km: 288.15 K at 101325 Pa, cooling 6.5 K/km: p = 101325 (1 - 6.5e-3 h / 288.15)^5.25588;
    11-20 km: isothermal 216.65 K, p = p11 exp(-(h - 11000) / 6341.62 m), p11 = 22632 Pa; 20-32 km:
    warming 1 K/km. Below sea level the first formula goes on, above 32 km the last one.
    """
    h = np.asarray(height_m, dtype=np.float64)
    t0, lapse, t11, k = 288.15, 0.0065, 216.65, G0 * 0.0289644 / 8.31432  # k = g0 M / R (K/m)
    p11 = 101325.0 * (t11 / t0) ** (k / lapse)
    p20 = p11 * np.exp(-k * 9000.0 / t11)
    troposphere = 101325.0 * (1.0 - lapse * np.minimum(h, 11000.0) / t0) ** (k / lapse)
    tropopause = p11 * np.exp(-k * (np.clip(h, 11000.0, 20000.0) - 11000.0) / t11)
    stratosphere = p20 * (1.0 + 0.001 * (np.maximum(h, 20000.0) - 20000.0) / t11) ** (-k / 0.001)
    return np.where(h <= 11000.0, troposphere, np.where(h <= 20000.0, tropopause, stratosphere))


# -- layouts: the walk of a message's keys, once per layout ------------------------------
@dataclasses.dataclass
class _Layout:
    """A walked layout: subsets as (name, rank, position) lists (single-level types only), the element
    names, what to read per subset group, and whether numericValues positions were checked."""

    groups: list[list[tuple[str, int, int]]]
    names: frozenset[str]
    plans: list[dict]
    positional: bool | None = None  # numericValues[position] is the key's value: None until checked
    checks: int = 0


_LAYOUTS: dict[tuple, _Layout] = {}
_LAYOUTS_MAX = 1024  # most TEMP layouts are seen once: the cache is emptied when full


def _walk(handle) -> list[list[tuple[str, int, int]]]:
    """(name, rank, position in numericValues) of the data keys of each subset, up to its quality section."""
    it = eccodes.codes_bufr_keys_iterator_new(handle)
    groups: list[list[tuple[str, int, int]]] = [[]]
    skipping, pos = False, -1
    try:
        while eccodes.codes_bufr_keys_iterator_next(it):
            key = eccodes.codes_bufr_keys_iterator_get_name(it)
            if key == "subsetNumber":
                if groups[-1]:
                    groups.append([])
                skipping = False
                continue
            if not key.startswith("#") or "->" in key:
                continue
            pos += 1
            _, rank, name = key.split("#", 2)
            skipping = skipping or name in _STOP_KEYS
            if not skipping:
                groups[-1].append((name, int(rank), pos))
    finally:
        eccodes.codes_bufr_keys_iterator_delete(it)
    return [g for g in groups if g]


def _first(group, *names: str) -> tuple[str, int, int] | None:
    """(name, rank, position) of the earliest occurrence in the subset of any of `names`."""
    for entry in group:
        if entry[0] in names:
            return entry
    return None


def _plan(group, obs_type: str) -> dict:
    """What to read for one subset group.

    fields: {role: (name, rank, position)} for the roles (`_ROLES`) the subset has; cols and
    positions: their columns and numericValues positions as arrays; strings: the string ids
    present; levels: the TEMP levels' ranks.
    """
    fields = {
        "latitude": _first(group, "latitude"),
        "longitude": _first(group, "longitude"),
        **{unit: _first(group, unit) for unit in ("year", "month", "day", "hour", "minute", "second")},
        "elevation": _first(
            group, "heightOfStationGroundAboveMeanSeaLevel", "heightOfStation", "heightOfBarometerAboveMeanSeaLevel"
        ),
        "block": _first(group, "blockNumber"),
        "station": _first(group, "stationNumber"),
        "platform": _first(group, "marineObservingPlatformIdentifier"),
        "satellite": _first(group, "satelliteIdentifier"),
    }
    strings = [e for e in (_first(group, name) for name in _STRING_IDS) if e is not None]
    levels = []
    if obs_type in _SURFACE_TYPES:
        fields |= {
            "t": _first(group, "airTemperatureAt2M", "airTemperature"),
            "sp": _first(group, "nonCoordinatePressure"),
            "msl": _first(group, "pressureReducedToMeanSeaLevel"),
            "speed": _first(group, "windSpeedAt10M", "windSpeed"),
            "direction": _first(group, "windDirectionAt10M", "windDirection"),
        }
    elif obs_type in ("aircraft", "amv"):
        fields |= {
            "pressure": _first(group, "pressure"),
            "altitude": _first(group, *_PRESSURE_ALTITUDES)
            or (_first(group, *_HEIGHTS) if obs_type == "aircraft" else None),
            "t": _first(group, "airTemperature") if obs_type == "aircraft" else None,
            "speed": _first(group, "windSpeedAt10M", "windSpeed"),
            "direction": _first(group, "windDirectionAt10M", "windDirection"),
        }
    else:
        levels = _levels(group)
    fields = {k: v for k, v in fields.items() if v is not None}
    return {
        "fields": fields,
        "cols": np.asarray([_COL[role] for role in fields], dtype=np.intp),
        "positions": np.asarray([e[2] for e in fields.values()], dtype=np.intp),
        "strings": strings,
        "levels": levels,
    }


_LEVEL_KEYS = {
    "airTemperature",
    "nonCoordinateGeopotential",
    "nonCoordinateGeopotentialHeight",
    "windSpeed",
    "windDirection",
    "latitudeDisplacement",
    "longitudeDisplacement",
    "timePeriod",
}


def _levels(group) -> dict[str, np.ndarray]:
    """TEMP: ranks of each level's elements (0: absent); every `pressure` opens a level."""
    levels: list[dict[str, int]] = []
    pending: dict[str, int] = {}
    for name, rank, _ in group:
        if name == "pressure":
            levels.append({"pressure": rank, **pending})
            pending = {}
        elif name == "timePeriod":  # 309052: the level's time offset precedes its pressure
            pending.setdefault(name, rank)
        elif name in _LEVEL_KEYS and levels:
            levels[-1].setdefault(name, rank)
    return {k: np.asarray([lv.get(k, 0) for lv in levels], dtype=np.int64) for k in ("pressure", *_LEVEL_KEYS)}


def _layout(h, message: bytes, obs_type: str, n: int, compressed: bool) -> _Layout:
    """The message's cached layout, walked on first sight.

    Key: everything the walk depends on: expanded descriptors, the replication factors, the
    number of subsets, compression, the edition and the tables (section 1 up to the local table
    version: master table, centre, versions) and the type.
    """
    desc = eccodes.codes_get_long_array(h, "expandedDescriptors")
    tables = message[7:8] + message[11 : 8 + (15 if message[7] == 4 else 12)]
    key = [obs_type, n, compressed, tables, desc.tobytes()]
    present = set(desc.tolist())
    for code, name in _REPLICATION.items():
        if code in present:
            try:
                key.append(eccodes.codes_get_long_array(h, name).tobytes())
            except eccodes.KeyValueNotFoundError:  # inside a replication repeated 0 times
                key.append(b"")
    key = tuple(key)
    layout = _LAYOUTS.get(key)
    if layout is None:
        groups = _walk(h)
        names = frozenset(name for g in groups for name, _, _ in g)
        plans = [_plan(g, obs_type) for g in groups]
        layout = _Layout(groups if obs_type != "temp" else [], names, plans)  # profiles need only their plans
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _check_positions(m: _Message, layout: _Layout) -> None:
    """Decide once per layout whether `numericValues[position]` is each single-level field's value.

    Every numeric key up to the last field read must match (ecCodes puts some operators in
    numericValues without a key, which would shift the positions); a message whose compared
    values are all alike proves nothing and the check waits for another one (three at most).
    """
    if layout.positional is not None or m.compressed or m.nv is None:
        return
    last = max((e[2] for plan in layout.plans for e in plan["fields"].values()), default=-1)
    keys = [(name, rank, pos) for g in layout.groups for name, rank, pos in g if pos <= last]
    got, want = [], []
    for name, rank, pos in keys:
        key = f"#{rank}#{name}"
        if eccodes.codes_get_native_type(m.h, key) is str:
            continue
        got.append(float(eccodes.codes_get_double(m.h, key)))
        want.append(float(m.nv[pos]) if pos < len(m.nv) else np.nan)
    got, want = _missing_to_nan(np.asarray(got)), _missing_to_nan(np.asarray(want))
    if len(want) and not np.array_equal(got, want, equal_nan=True):
        layout.positional = False
    elif len(np.unique(want[np.isfinite(want)])) >= 2:
        layout.positional = True
    else:
        layout.checks += 1
        if layout.checks >= 3:
            layout.positional = False


def _missing_to_nan(raw: np.ndarray) -> np.ndarray:
    out = np.asarray(raw, dtype=np.float64).copy()
    out[(out == _MISSING_LONG) | (out <= -1e99) | ~np.isfinite(out)] = np.nan
    return out


# -- one unpacked message -------------------------------------------------------------
class _Message:
    """Unpacked message: float values by (name, rank), broadcast to the subsets of a group."""

    def __init__(self, handle, n: int, compressed: bool, numeric_values: bool):
        self.h, self.n, self.compressed = handle, n, compressed
        self.nv = eccodes.codes_get_double_array(handle, "numericValues") if numeric_values else None
        self._all: dict[str, np.ndarray] = {}

    @property
    def group_size(self) -> int:
        return self.n if self.compressed else 1

    def _occurrences(self, name: str) -> np.ndarray:
        if name not in self._all:
            self._all[name] = eccodes.codes_get_double_array(self.h, name)
        return self._all[name]

    def number(self, name: str, rank: int) -> np.ndarray:
        """Float values of occurrence `rank` for the group's subsets; NaN where missing."""
        if self.compressed:
            raw = eccodes.codes_get_double_array(self.h, f"#{rank}#{name}")
        else:
            arr = self._occurrences(name)
            raw = arr[rank - 1 : rank] if rank <= len(arr) else [eccodes.codes_get_double(self.h, f"#{rank}#{name}")]
        return np.broadcast_to(_missing_to_nan(raw), (self.group_size,))

    def fields(self, plan: dict, positional: bool) -> np.ndarray:
        """The group's roles, shape (group size, len(_ROLES)), NaN where missing; from numericValues when positional."""
        out = np.full((self.group_size, len(_ROLES)), np.nan)
        if positional and not self.compressed:
            out[0, plan["cols"]] = self.nv[plan["positions"]]
            return _missing_to_nan(out)
        for role, (name, rank, _) in plan["fields"].items():
            out[:, _COL[role]] = self.number(name, rank)
        return out

    def numbers(self, name: str, ranks: np.ndarray) -> np.ndarray:
        """Values of occurrences `ranks` (0: absent -> NaN), shape (len(ranks), group size)."""
        out = np.full((len(ranks), self.group_size), np.nan)
        if not (ranks > 0).any():
            return out
        if self.compressed:
            for i, r in enumerate(ranks):
                if r > 0:
                    out[i] = self.number(name, int(r))
            return out
        arr = _missing_to_nan(self._occurrences(name))
        for i, r in enumerate(ranks):
            if r > 0:
                out[i, 0] = arr[r - 1] if r <= len(arr) else self.number(name, int(r))[0]
        return out

    def string(self, name: str, rank: int) -> np.ndarray:
        key = f"#{rank}#{name}"
        if self.compressed:
            values = [s.strip() for s in eccodes.codes_get_string_array(self.h, key)]
        else:
            values = [eccodes.codes_get_string(self.h, key).strip()]
        return np.broadcast_to(np.asarray(values, dtype=object), (self.group_size,))

    def typical(self) -> np.ndarray:
        """Section 1 year, month, day, hour, minute (typicalDate/Time), for reports that lack some."""
        date, clock = eccodes.codes_get_long(self.h, "typicalDate"), eccodes.codes_get_long(self.h, "typicalTime")
        return np.asarray([date // 10000, date // 100 % 100, date % 100, clock // 10000, clock // 100 % 100], float)


# -- phase A: messages -> fields and levels ---------------------------------------------
_TIME_PARTS = ("year", "month", "day", "hour", "minute", "second")
_LEVEL_COLUMNS = (
    "report",
    "level",
    "pressure",
    "derived",
    "dlat",
    "dlon",
    "dt",
    "t",
    "sp",
    "msl",
    "z",
    "speed",
    "direction",
)


class _Acc:
    """A chunk's reports (fields rows, string ids, messages) and levels; a message that fails is rolled back.

    Reports are numbered in the order they are added; `single` lists the reports whose fields
    hold their (single-level) values; `lev` holds TEMP levels as column arrays.
    """

    def __init__(self):
        self.fields: list[np.ndarray] = []  # (group size, len(_ROLES)) per group
        self.strings: list[str] = []  # per report: the first string id it has, or ""
        self.messages: list[int] = []  # per report
        self.single: list[np.ndarray] = []
        self.lev: dict[str, list] = {k: [] for k in _LEVEL_COLUMNS}
        self.message = 0  # index (in the chunk) of the message being read

    def mark(self) -> tuple[int, int, int, int]:
        return len(self.fields), len(self.messages), len(self.single), len(self.lev["report"])

    def rollback(self, mark: tuple[int, int, int, int]) -> None:
        del self.fields[mark[0] :], self.strings[mark[1] :], self.messages[mark[1] :], self.single[mark[2] :]
        for v in self.lev.values():
            del v[mark[3] :]

    def add_reports(self, fields: np.ndarray, strings: list[str]) -> np.ndarray:
        first = len(self.messages)
        self.fields.append(fields)
        self.strings += strings
        self.messages += [self.message] * len(fields)
        return np.arange(first, len(self.messages))

    def add_levels(self, report: np.ndarray, level: np.ndarray, **cols) -> None:
        nan = np.full(len(report), np.nan)
        cols = {"report": report, "level": level, "derived": np.zeros(len(report), dtype=bool), **cols}
        for k in _LEVEL_COLUMNS:
            self.lev[k].append(cols.get(k, nan))


def _reports(m: _Message, plan: dict, f: np.ndarray, acc: _Acc) -> np.ndarray:
    """Add the group's reports to `acc` (date parts they lack from section 1); returns their numbers."""
    times = f[:, _COL["year"] : _COL["minute"] + 1]  # a view: filled in place
    if np.isnan(times).any():
        np.copyto(times, m.typical(), where=np.isnan(times))
    strings = [""] * len(f)
    if plan["strings"] and not (np.isfinite(f[:, _COL["block"]]) & np.isfinite(f[:, _COL["station"]])).all():
        for name, rank, _ in plan["strings"]:
            strings = [s or v for s, v in zip(strings, m.string(name, rank))]
    return acc.add_reports(f, strings)


def _single_level(m: _Message, plan: dict, f: np.ndarray, acc: _Acc, obs_type: str, report: np.ndarray) -> None:
    """Single-level reports: one level each, its values among the report's fields (made rows by `_finish`)."""
    acc.single.append(report)


def _profile(m: _Message, plan: dict, f: dict, acc: _Acc, report: np.ndarray) -> None:
    """TEMP: one level per `pressure` of the subset, with its displacements and time offset."""
    ranks = plan["levels"]
    n_levels, g = len(ranks["pressure"]), m.group_size
    if n_levels == 0:
        return
    get = lambda name: m.numbers(name, ranks[name]).ravel()  # level-major, then subset
    z = get("nonCoordinateGeopotential")
    if (ranks["nonCoordinateGeopotentialHeight"] > 0).any():
        z = np.where(np.isfinite(z), z, G0 * get("nonCoordinateGeopotentialHeight"))
    acc.add_levels(
        np.tile(report, n_levels),
        np.repeat(np.arange(n_levels), g),
        pressure=get("pressure"),
        dlat=get("latitudeDisplacement"),
        dlon=get("longitudeDisplacement"),
        dt=get("timePeriod"),
        t=get("airTemperature"),
        z=z,
        speed=get("windSpeed"),
        direction=get("windDirection"),
    )


def _read_message(message: bytes, acc: _Acc) -> str | None:
    """Unpack one message into `acc`; its obs type, or None for an unsupported category. Raises on bad content."""
    handle = eccodes.codes_new_from_message(message)
    try:
        obs_type = _CATEGORY.get(eccodes.codes_get_long(handle, "dataCategory"))
        if obs_type is None:
            return None
        eccodes.codes_set(handle, "unpack", 1)
        n = eccodes.codes_get_long(handle, "numberOfSubsets")
        compressed = eccodes.codes_get_long(handle, "compressedData") == 1
        layout = _layout(handle, message, obs_type, n, compressed)
        if obs_type == "amv" and "windSpeed" not in layout.names:
            return None
        single = obs_type != "temp"
        m = _Message(handle, n, compressed, numeric_values=single and not compressed and layout.positional is not False)
        if single:
            _check_positions(m, layout)
        for plan in layout.plans:
            f = m.fields(plan, bool(layout.positional))
            report = _reports(m, plan, f, acc)
            if single:
                _single_level(m, plan, f, acc, obs_type, report)
            else:
                _profile(m, plan, f, acc, report)
        return obs_type
    finally:
        eccodes.codes_release(handle)


# -- phase B: a chunk's columns -> rows ------------------------------------------------
@dataclasses.dataclass
class _Part:
    """Decoded messages: `meta[i]` describes message `index[i]` of the file.

    reports: message (position in meta), station, fixed, time, latitude (NaN: no valid position
    or time), longitude, elevation, level_pressure (NaN but for single-level upper-air reports).
    rows: report (position in reports), level (in its message), var (position in `_VARIABLES`),
    value, pressure, latitude, longitude, time, derived.
    """

    index: np.ndarray
    meta: list[dict]
    reports: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]


def _datetimes(parts: dict[str, np.ndarray]) -> np.ndarray:
    """datetime64[s] from date parts; NaT for an impossible date (month 13, day 31 of April, year 0).

    Hours, minutes and seconds out of range carry over (24:00 is the next day's 00:00).
    """
    y, mo, d, h, mi, s = (np.clip(parts[u], -1e6, 1e6).astype(np.int64) for u in _TIME_PARTS)
    ok = (y >= 1) & (y <= 9999) & (mo >= 1) & (mo <= 12) & (d >= 1)
    month = np.where(ok, (y - 1970) * 12 + mo - 1, 0).astype("datetime64[M]")
    first = month.astype("datetime64[D]")
    ok &= d <= ((month + 1).astype("datetime64[D]") - first).astype(np.int64)
    t = first.astype("datetime64[s]") + ((d - 1) * 86400 + h * 3600 + mi * 60 + s)
    return np.where(ok, t, np.datetime64("NaT", "s"))


def _placed(lat: np.ndarray, lon: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows with a usable position and time: |lat| <= 90 (rounding allowed), |lon| <= 360, 1850 <= t < 2200."""
    with np.errstate(invalid="ignore"):
        return (np.abs(lat) <= 90.0 + 1e-6) & (np.abs(lon) <= 360.0) & (t >= _TIME_MIN) & (t < _TIME_MAX)


def _concat(cols: dict[str, list], kinds: dict[str, type]) -> dict[str, np.ndarray]:
    """Concatenated column lists, as float64 unless `kinds` says otherwise."""
    out = {}
    for k, v in cols.items():
        kind = kinds.get(k, np.float64)
        out[k] = np.concatenate(v).astype(kind) if v else np.zeros(0, dtype=kind)
    return out


def _station_ids(fields: np.ndarray, strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Station ids, and whether each is a WMO index (a fixed land station).

    The WMO block and station number; else the string id (ship, flight, registration); else the
    marine platform number, "sat" + the satellite, or the station number alone; else "".
    """
    cols = (fields[:, _COL[r]].tolist() for r in ("block", "station", "platform", "satellite"))
    ids, fixed = [], []
    for block, number, platform, satellite, text in zip(*cols, strings):
        wmo = not (math.isnan(block) or math.isnan(number))
        fixed.append(wmo)
        if wmo:
            ids.append(f"{int(block):02d}{int(number):03d}")
        elif text:
            ids.append(text)
        elif not math.isnan(platform):
            ids.append(str(int(platform)))
        elif not math.isnan(satellite):
            ids.append(f"sat{int(satellite)}")
        else:
            ids.append("" if math.isnan(number) else str(int(number)))
    return np.asarray(ids, dtype=str), np.asarray(fixed, dtype=bool)


def _single_levels(f: np.ndarray, report: np.ndarray, surface: np.ndarray) -> dict[str, np.ndarray]:
    """Level columns of single-level reports from their fields: surface elements, or an upper-air
    pressure (the ISA pressure of the altitude when none is reported: `derived`)."""
    measured = f[:, _COL["pressure"]]
    pressure = np.where(np.isfinite(measured), measured, isa_pressure(f[:, _COL["altitude"]]))
    derived = ~surface & ~np.isfinite(measured) & np.isfinite(pressure)
    nan = np.full(len(report), np.nan)
    return {
        "report": report,
        "level": np.zeros(len(report), dtype=np.int64),
        "pressure": np.where(surface, np.nan, pressure),
        "derived": derived,
        "dlat": nan,
        "dlon": nan,
        "dt": nan,
        "z": nan,
        **{k: f[:, _COL[k]] for k in ("t", "sp", "msl", "speed", "direction")},
    }


def _finish(acc: _Acc, meta: list[dict]) -> _Part:
    """Rows of a chunk: times, ids, position/time checks, winds to (u, v), per-message counts into `meta`."""
    n_msg = len(meta)
    fields = np.concatenate(acc.fields) if acc.fields else np.zeros((0, len(_ROLES)))
    message = np.asarray(acc.messages, dtype=np.int64)
    parts = {u: fields[:, _COL[u]] for u in _TIME_PARTS}
    parts["second"] = np.nan_to_num(parts["second"], nan=0.0)
    t = _datetimes(parts)
    placed = _placed(fields[:, _COL["latitude"]], fields[:, _COL["longitude"]], t)
    lat = np.where(placed, fields[:, _COL["latitude"]], np.nan)  # rows need a finite latitude
    lon = fields[:, _COL["longitude"]]
    station, fixed = _station_ids(fields, acc.strings)
    counts = {"unplaced": np.bincount(message[~placed], minlength=n_msg)}

    surface_message = np.asarray([m["obs_type"] in _SURFACE_TYPES for m in meta], dtype=bool)
    single = np.concatenate(acc.single) if acc.single else np.zeros(0, dtype=np.int64)
    temp = _concat(acc.lev, {"report": np.int64, "level": np.int64, "derived": bool})
    one = _single_levels(fields[single], single, surface_message[message[single]])
    lev = {k: np.concatenate([one[k], temp[k]]) for k in _LEVEL_COLUMNS}
    r = lev["report"]
    row_lat = lat[r] + np.nan_to_num(lev["dlat"], nan=0.0)
    row_lon = lon[r] + np.nan_to_num(lev["dlon"], nan=0.0)
    dt = np.nan_to_num(np.clip(lev["dt"], -1e9, 1e9), nan=0.0).astype(np.int64)
    row_t = t[r] + dt.astype("timedelta64[s]")
    surface = surface_message[message[r]]
    p = lev["pressure"]
    rad = np.deg2rad(lev["direction"])
    calm = lev["speed"] == 0.0  # calm has no direction
    values = {
        "t": lev["t"],
        "sp": lev["sp"],
        "msl": lev["msl"],
        "z": lev["z"],
        "u": np.where(calm, 0.0, -lev["speed"] * np.sin(rad)),
        "v": np.where(calm, 0.0, -lev["speed"] * np.cos(rad)),
    }
    ok_pos = np.isfinite(row_lat) & np.isfinite(row_lon)
    displaced = ok_pos & ~_placed(row_lat, row_lon, row_t)
    good_p = (p > 0.0) & np.isfinite(p)
    keep, dropped, no_p = [], np.zeros(len(r), dtype=np.int64), np.zeros(len(r), dtype=np.int64)
    for code, (key, surface_name, upper_name) in enumerate(_VARIABLES):
        v = values[key]
        ok = np.isfinite(v) & ok_pos & (surface if upper_name is None else ~surface if surface_name is None else True)
        dropped += ok & displaced
        ok &= ~displaced
        bad_p = ok & ~surface & ~good_p  # e.g. a TEMP level reported at 0 Pa: no vertical position
        no_p += bad_p
        ok &= ~bad_p
        idx = np.flatnonzero(ok)
        keep.append((idx, np.full(len(idx), code, dtype=np.int8), v[idx]))
    level_message = message[r]
    counts["dropped"] = np.bincount(level_message, weights=dropped, minlength=n_msg).astype(np.int64)
    counts["no_pressure"] = np.bincount(level_message, weights=no_p, minlength=n_msg).astype(np.int64)
    for i, m in enumerate(meta):
        if m["error"] is None and m["obs_type"] is not None:
            m.update({k: int(c[i]) for k, c in counts.items()})
    li = np.concatenate([k[0] for k in keep])
    var = np.concatenate([k[1] for k in keep])
    order = np.lexsort((var, lev["level"][li], r[li]))  # report (message, subset), level, variable
    li, var = li[order], var[order]
    rows = {
        "report": r[li],
        "level": lev["level"][li],
        "var": var,
        "value": np.concatenate([k[2] for k in keep])[order],
        "pressure": np.where(surface[li], np.nan, p[li]),
        "latitude": row_lat[li],
        "longitude": row_lon[li],
        "time": row_t[li],
        "derived": lev["derived"][li],
    }
    reports = {
        "message": message,
        "station": station,
        "fixed": fixed,
        "time": t,
        "latitude": lat,
        "longitude": lon,
        "elevation": fields[:, _COL["elevation"]],
        "level_pressure": np.full(len(message), np.nan),  # single-level upper-air reports: their pressure
    }
    reports["level_pressure"][single] = one["pressure"]
    return _Part(np.arange(n_msg), meta, reports, rows)


def _decode_chunk(messages: list[bytes], tick=None) -> _Part:
    """Decode messages in this process; a message that raises is failed alone. `tick()` after each message."""
    acc, meta = _Acc(), []
    for i, message in enumerate(messages):
        acc.message = i
        mark = acc.mark()
        try:
            with np.errstate(all="ignore"):
                obs_type = _read_message(message, acc)
            meta.append({"obs_type": obs_type, "error": None})
        except Exception as exc:  # bad content can break any step (ecCodes, numpy); the message alone fails
            acc.rollback(mark)
            meta.append({"obs_type": None, "error": f"{type(exc).__name__}: {exc}"})
        if tick is not None:
            tick()
    with np.errstate(all="ignore"):
        return _finish(acc, meta)


def _failed_part(index: int, error: str) -> _Part:
    empty = _finish(_Acc(), [])
    return _Part(np.asarray([index]), [{"obs_type": None, "error": error}], empty.reports, empty.rows)


# -- process isolation -----------------------------------------------------------------------
_FRAME = struct.Struct(">Q")


def _pack(part: _Part) -> bytes:
    """A part as bytes: a JSON header, then each array in .npy format (no pickles)."""
    arrays = {**{f"r.{k}": v for k, v in part.reports.items()}, **{f"w.{k}": v for k, v in part.rows.items()}}
    head = json.dumps({"meta": part.meta, "arrays": list(arrays), "index": part.index.tolist()}).encode()
    buf = io.BytesIO()
    buf.write(_FRAME.pack(len(head)) + head)
    for v in arrays.values():
        np.lib.format.write_array(buf, np.ascontiguousarray(v), allow_pickle=False)
    return buf.getvalue()


def _unpack(data: bytes) -> _Part:
    buf = io.BytesIO(data)
    (n,) = _FRAME.unpack(buf.read(_FRAME.size))
    head = json.loads(buf.read(n))
    arrays = {k: np.lib.format.read_array(buf, allow_pickle=False) for k in head["arrays"]}
    reports = {k[2:]: v for k, v in arrays.items() if k.startswith("r.")}
    rows = {k[2:]: v for k, v in arrays.items() if k.startswith("w.")}
    return _Part(np.asarray(head["index"], dtype=np.int64), head["meta"], reports, rows)


def _write_frame(f, payload: bytes) -> None:
    f.write(_FRAME.pack(len(payload)))
    f.write(payload)
    f.flush()


def _read_frame(f) -> bytes | None:
    """A frame from a blocking binary stream; None at end of stream."""
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (n,) = _FRAME.unpack(head)
    data = f.read(n)
    return data if len(data) == n else None


def _join(messages: list[bytes]) -> bytes:
    return struct.pack(f">I{len(messages)}Q", len(messages), *map(len, messages)) + b"".join(messages)


def _split(payload: bytes) -> list[bytes]:
    (n,) = struct.unpack_from(">I", payload)
    lengths = struct.unpack_from(f">{n}Q", payload, 4)
    out, pos = [], 4 + 8 * n
    for k in lengths:
        out.append(payload[pos : pos + k])
        pos += k
    return out


def _serve(ticks: int) -> None:
    """Worker loop (child process): a chunk frame in, the packed `_Part` out; one byte on fd `ticks` per message done."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed (ecCodes, logs) goes to stderr, not into the frames
    inp = sys.stdin.buffer
    _write_frame(out, b"ready")
    while (chunk := _read_frame(inp)) is not None:
        part = _decode_chunk(_split(chunk), tick=lambda: os.write(ticks, b"."))
        _write_frame(out, _pack(part))


def _how(rc: int | None) -> str:
    if rc is not None and rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit status {rc}"


_WORKER_CODE = (
    "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_align_bufr_worker', sys.argv[1]); "
    "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod); "
    "mod._serve(int(sys.argv[2]))"
)


class _Worker:
    """A child process unpacking messages, so that an ecCodes crash or hang costs one message, not the caller."""

    def __init__(self):
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.owner = os.getpid()
        self._buf = bytearray()
        self.ticks, tick_w = os.pipe()  # the worker's progress: read only when the chunk ends or at a poll
        os.set_blocking(self.ticks, False)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(Path(__file__).resolve()), str(tick_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                pass_fds=(tick_w,),
            )
        except BaseException:
            os.close(self.ticks)
            raise
        finally:
            os.close(tick_w)
        try:
            ready = self._read(time.monotonic() + _WORKER_START_S)
        except (EOFError, TimeoutError) as exc:
            self.close()
            raise OSError(f"the BUFR decoder process did not start ({type(exc).__name__})") from None
        if ready != b"ready":
            self.close()
            raise OSError("the BUFR decoder process did not start (bad handshake)")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.owner == os.getpid()

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, max(n - len(self._buf), 1 << 16))
            if not chunk:
                raise EOFError
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read(self, deadline: float) -> bytes:
        (n,) = _FRAME.unpack(self._read_exact(_FRAME.size, deadline))
        return self._read_exact(n, deadline)

    def _done(self) -> int:
        """Messages acknowledged since the last call."""
        n = 0
        try:
            while chunk := os.read(self.ticks, 1 << 16):
                n += len(chunk)
        except BlockingIOError:
            pass
        return n

    def decode(self, messages: list[bytes], timeout: float) -> tuple[_Part | None, int, str | None]:
        """(part, done, error): the chunk's part; or None, the messages done before the failure and why.

        The caller sleeps until the reply, waking every `_POLL_S` to see progress: a crash or no
        progress for `timeout` (one message too long) kills the worker (the caller starts another).
        """
        done, since = 0, time.monotonic()
        fd = self.proc.stdout.fileno()
        try:
            _write_frame(self.proc.stdin, _join(messages))
            while not self._buf and not select.select([fd], [], [], min(timeout, _POLL_S))[0]:
                if n := self._done():
                    done, since = done + n, time.monotonic()
                elif time.monotonic() - since > timeout:
                    raise TimeoutError
            reply = self._read(time.monotonic() + timeout)
        except TimeoutError:
            self.close(kill=True)
            return None, done, f"decoding took over {timeout:g} s; stopped"
        except (EOFError, OSError):
            done += self._done()
            self.close()
            return None, done, f"ecCodes crashed the decoder process ({_how(self.proc.returncode)})"
        try:
            return _unpack(reply), done, None
        except Exception as exc:  # a reply we cannot read fails the chunk's messages, whatever produced it
            return None, len(messages), f"unreadable decoder reply: {type(exc).__name__}: {exc}"

    def close(self, kill: bool = False) -> None:
        """Stop the child (end of input, then kill if it lingers; at once with `kill`); safe to call twice."""
        if self.owner != os.getpid():
            return  # a forked copy: the child belongs to the parent process
        if kill and self.proc.poll() is None:
            self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self.ticks >= 0:
            os.close(self.ticks)
            self.ticks = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_worker: _Worker | None = None
_isolation_broken = False  # the worker cannot start here: decode in-process (logged once)
_worker_lock = threading.Lock()


@atexit.register
def _stop_worker() -> None:
    if _worker is not None:
        _worker.close()


def _get_worker() -> _Worker | None:
    """The running worker, started if need be; None when isolation is unavailable here."""
    global _worker, _isolation_broken
    if _worker is not None and not _worker.alive:
        _worker.close()
        _worker = None
    if _worker is None and not _isolation_broken:
        try:
            _worker = _Worker()
        except (OSError, ValueError, TypeError, subprocess.SubprocessError) as exc:
            _isolation_broken = True
            log.warning("bufr_isolation_unavailable", error=str(exc))
    return _worker


def _chunks(indices: list[int], messages: list[bytes]) -> list[list[int]]:
    chunks, size = [[]], 0
    for i in indices:
        if chunks[-1] and (len(chunks[-1]) >= _CHUNK_MESSAGES or size + len(messages[i]) > _CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += len(messages[i])
    return [c for c in chunks if c]


def _decode_isolated(messages: list[bytes]) -> list[_Part]:
    """`_decode_chunk` over all messages in chunks, in the worker process (in-process if none can start).

    A chunk that crashes or hangs at message k fails k alone; the others go again to a new worker.
    """
    parts = []
    with _worker_lock:
        todo = deque(_chunks(list(range(len(messages))), messages))
        while todo:
            idx = todo.popleft()
            worker = _get_worker()
            if worker is None:
                part, done, error = _decode_chunk([messages[i] for i in idx]), len(idx), None
            else:
                part, done, error = worker.decode([messages[i] for i in idx], MESSAGE_TIMEOUT_S)
            if part is not None:
                part.index = np.asarray(idx)[part.index]
                parts.append(part)
                continue
            if not worker.alive:
                log.warning("bufr_decoder_process_lost", problem=error)
            if len(idx) == 1 or done >= len(idx):  # the culprit is unknown: one message at a time
                if len(idx) == 1:
                    parts.append(_failed_part(idx[0], error))
                else:
                    todo.extendleft([i] for i in reversed(idx))
                continue
            parts.append(_failed_part(idx[done], error))
            todo.appendleft(idx[:done] + idx[done + 1 :])
    return parts


# -- files ------------------------------------------------------------------------------------
def _merge(parts: list[_Part], n_messages: int) -> tuple[list[dict], dict, dict]:
    """All parts as file-wide meta (by message), reports (in message order) and rows (in report order)."""
    meta: list[dict] = [{"obs_type": None, "error": "not decoded"} for _ in range(n_messages)]
    reports, rows = {}, {}
    offset = 0
    for part in parts:
        for i, m in zip(part.index, part.meta):
            meta[int(i)] = m
        rep = dict(part.reports, message=part.index[part.reports["message"]]) if len(part.index) else part.reports
        for k, v in rep.items():
            reports.setdefault(k, []).append(v)
        for k, v in dict(part.rows, report=part.rows["report"] + offset).items():
            rows.setdefault(k, []).append(v)
        offset += len(part.reports["message"])
    if not parts:
        empty = _finish(_Acc(), [])
        return meta, empty.reports, empty.rows
    reports = {k: np.concatenate(v) for k, v in reports.items()}
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    order = np.argsort(reports["message"], kind="stable")  # message order, subsets in order within each
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    reports = {k: v[order] for k, v in reports.items()}
    rows["report"] = rank[rows["report"]]
    row_order = np.lexsort((rows["var"], rows["level"], rows["report"]))
    return meta, reports, {k: v[row_order] for k, v in rows.items()}


def _report_numbers(reports: dict, types: np.ndarray) -> tuple[np.ndarray, Counter]:
    """Report number of each report row (first appearance order) and the reports per type.

    Same number: same type, station and time, and for a station that is not a WMO index also
    the same position (and pressure, for single-level upper-air reports: aircraft, AMVs). A
    report without a valid position or time is a report of its own.
    """
    seen: dict[tuple, int] = {}
    by_type: Counter = Counter()
    numbers = np.empty(len(types), dtype=np.int64)
    cols = zip(
        types,
        reports["station"].tolist(),
        reports["fixed"].tolist(),
        reports["time"].astype(np.int64).tolist(),
        reports["latitude"].tolist(),
        reports["longitude"].tolist(),
        np.where(np.isnan(reports["level_pressure"]), -1.0, reports["level_pressure"]).tolist(),
    )
    for i, (typ, station, fixed, t, lat, lon, p) in enumerate(cols):
        if math.isnan(lat):  # no valid position or time
            key = ("unplaced", i)
        else:
            key = (typ, station, t) if fixed else (typ, station, t, lat, lon, p)
        if key not in seen:
            seen[key] = len(seen)
            by_type[typ] += 1
        numbers[i] = seen[key]
    return numbers, by_type


def _rows_batch(rows: dict, reports: dict, numbers: np.ndarray, types: np.ndarray) -> ObsBatch:
    """The checked `ObsBatch` of `rows` (errors from `DEFAULT_ERRORS`)."""
    from align_da_ops.obs.batch import ObsBatch

    r = rows["report"]
    derived = rows["derived"].astype(bool)
    obs_type = np.where(derived, np.char.add(types[r].astype(str), DERIVED_PRESSURE_SUFFIX), types[r].astype(str))
    names = np.asarray([s if s is not None else u for _, s, u in _VARIABLES], dtype=object)
    upper = np.asarray([u if u is not None else s for _, s, u in _VARIABLES], dtype=object)
    surface = np.isnan(rows["pressure"])
    variable = np.where(surface, names[rows["var"]], upper[rows["var"]]).astype(str)
    error = np.full(len(r), np.nan)
    pairs = np.char.add(np.char.add(obs_type, "|"), variable)
    for pair in np.unique(pairs):
        t, v = pair.split("|")
        error[pairs == pair] = DEFAULT_ERRORS.get((t, v), np.nan)
    return ObsBatch.from_columns(
        latitude=rows["latitude"],
        longitude=rows["longitude"],
        pressure=rows["pressure"],
        elevation=reports["elevation"][r],
        time=rows["time"],
        variable=variable,
        value=rows["value"],
        error=error,
        obs_type=obs_type,
        station=reports["station"][r].astype(str),
        report=numbers[r],
    )


def _checked_batch(meta: list[dict], reports: dict, rows: dict) -> tuple[ObsBatch, Counter]:
    """The `ObsBatch` of the decoded messages' rows, and their reports per type.

    A message whose rows break the `ObsBatch` contract is failed alone (its `meta` gets the
    error): never seen, as rows are checked before, but a decoder bug must not cost the file.
    """
    from align_da_ops.obs.batch import ObsBatch

    good = np.asarray([m["error"] is None and m["obs_type"] is not None for m in meta], dtype=bool)
    keep = good[reports["message"]]
    while True:
        rep_idx = np.flatnonzero(keep)
        sub = {k: v[rep_idx] for k, v in reports.items()}
        types = np.asarray([meta[i]["obs_type"] for i in sub["message"]], dtype=object)
        numbers, by_type = _report_numbers(sub, types)
        new_index = np.full(len(keep), -1)
        new_index[rep_idx] = np.arange(len(rep_idx))
        sel = {k: v[keep[rows["report"]]] for k, v in rows.items()}
        sel["report"] = new_index[sel["report"]]
        try:
            return (_rows_batch(sel, sub, numbers, types) if len(sel["report"]) else ObsBatch.empty()), by_type
        except (ObservationError, KeyError, ValueError, TypeError) as exc:
            bad = _first_bad_message(sel, sub, numbers, types)
            meta[bad] = {"obs_type": None, "error": f"{type(exc).__name__}: {exc}"}
            keep &= reports["message"] != bad


def _first_bad_message(rows: dict, reports: dict, numbers: np.ndarray, types: np.ndarray) -> int:
    """The first message whose rows alone do not make a valid `ObsBatch`."""
    row_message = reports["message"][rows["report"]]
    for message in np.unique(row_message):
        sel = row_message == message
        try:
            _rows_batch({k: v[sel] for k, v in rows.items()}, reports, numbers, types)
        except (ObservationError, KeyError, ValueError, TypeError):
            return int(message)
    return int(row_message[0])


def decode_bufr_bytes(data: bytes, source: str = "<bytes>", *, isolate: bool = True) -> Decoded:
    """Decode every BUFR message in `data`; bad messages are counted in the report, never raised.

    `isolate=False` unpacks in this process (faster to start, but an ecCodes crash kills the caller).
    """
    messages, problems, truncated = scan_messages(bytes(data))
    if isolate:
        parts = _decode_isolated(messages)
    else:
        parts = [_decode_chunk(messages)] if messages else []
    meta, reports, rows = _merge(parts, len(messages))
    batch, by_type = _checked_batch(meta, reports, rows)
    decoded = failed = skipped = no_pressure = 0
    for i, m in enumerate(meta, 1):
        if m["error"] is not None:
            failed += 1
            problems.append(f"message {i}: decode failed: {m['error']}")
            continue
        if m["obs_type"] is None:
            skipped += 1
            problems.append(f"message {i}: unsupported data category; skipped")
            continue
        decoded += 1
        no_pressure += m["no_pressure"]
        if m["unplaced"]:
            problems.append(f"message {i}: {m['unplaced']} reports without a valid position or time; skipped")
        if m["dropped"]:
            problems.append(f"message {i}: {m['dropped']} values displaced out of range (position or time); skipped")
    if no_pressure:
        problems.append(f"{no_pressure} upper-air values without a valid pressure (e.g. 0 Pa); skipped")
    report = DecodeReport(
        source,
        len(data),
        len(messages),
        decoded,
        failed,
        skipped,
        sum(by_type.values()),
        len(batch),
        truncated,
        tuple(problems),
        dict(by_type),
        int(np.char.endswith(batch.obs_type, DERIVED_PRESSURE_SUFFIX).sum()) if len(batch) else 0,
    )
    if problems:
        log.info("bufr_problems", source=source, n=len(problems), first=problems[0])
    return Decoded(batch, report)


def _unreadable(path: Path, problem: str) -> Decoded:
    from align_da_ops.obs.batch import ObsBatch

    return Decoded(ObsBatch.empty(), DecodeReport(str(path), 0, 0, 0, 0, 0, 0, 0, False, (problem,)))


def decode_bufr_file(path: Path) -> Decoded:
    """Decode a file; an unreadable path or a non-regular file (FIFO, directory...) is reported, not raised.

    The file is opened non-blocking and checked to be regular before any read, so a FIFO never blocks.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return _unreadable(path, f"cannot read: {exc}")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return _unreadable(path, f"not a regular file (mode {stat.filemode(mode)})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as exc:
        return _unreadable(path, f"cannot read: {exc}")
    finally:
        os.close(fd)
    return decode_bufr_bytes(data, source=str(path))
