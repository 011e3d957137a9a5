"""WMO BUFR -> `ObsBatch` through ecCodes: SYNOP, marine surface, TEMP, aircraft and AMVs.

Contract: `decode_bufr_file(path)` / `decode_bufr_bytes(data)` never raise (nor crash
the process) for bad content. Messages are located by their "BUFR" ... "7777"
framing; each one is decoded on its own, and a message that fails is counted and
described in the `DecodeReport`, never fatal for the file: its rows are all
dropped, other messages' rows are untouched. Elements a report does not carry
are not observations and make no rows; reports without a valid position or time
(missing, |lat| > 90, |lon| > 360, a date outside 1850-2200) are skipped and
counted, the other reports of the message are kept.

Isolation: ecCodes is a C library that crashes (SIGSEGV) or may loop on some
malformed messages, so by default messages are unpacked in a child process
(`_Worker`, started on first use and restarted after a crash). A crash or a
message taking over `MESSAGE_TIMEOUT_S` costs that message only. Results come
back as plain arrays (`np.load(allow_pickle=False)`), never as pickles.

How a message is read: ecCodes unpacks it; we walk its data keys in order
("#rank#name"), split into subsets, and take values by rank. Single-level
reports (SYNOP, buoy, aircraft, AMV) use the first occurrence of each element in
the subset (later ones are gusts, intermediate vectors, extremes...). TEMP
profiles are walked level by level: every `pressure` opens a level and the
elements that follow belong to it, so temperature, wind and geopotential
arrays of unequal length (significant levels, wind-only levels) stay on the
right pressures. Winds: (speed, direction from) -> u = -s sin d, v = -s cos d;
geopotential height (gpm) -> geopotential (m2 s-2) with g0 = 9.80665; aircraft
flight level without pressure -> ISA pressure. Values come from ecCodes in SI
units (K, Pa, m s-1), which are the schema's.
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import json
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import eccodes
import numpy as np
import pandas as pd

import align_da_ops
from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES
from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import COLUMNS, ObsBatch

log = get_logger(__name__)
G0 = 9.80665
_MISSING_LONG = eccodes.CODES_MISSING_LONG
MESSAGE_TIMEOUT_S = 60.0  # one message may take this long in the worker before it is stopped
_WORKER_START_S = 120.0  # the worker imports numpy, pandas, torch and ecCodes
# Observation times outside this range are decoding garbage (year 0, 9999...), not observations.
_TIME_MIN, _TIME_MAX = np.datetime64("1850-01-01T00:00:00", "s"), np.datetime64("2200-01-01T00:00:00", "s")
_STOP_KEYS = {"dataPresentIndicator", "operator"}  # quality-information sections follow the data

# Observation error std per (obs_type, variable), schema units. Typical operational values
# (ECMWF/NCEP error tables, rounded); a config may override them.
DEFAULT_ERRORS: dict[tuple[str, str], float] = {
    **{(t, "2m_temperature"): 1.5 for t in ("synop", "marine")},
    **{(t, "surface_pressure"): 100.0 for t in ("synop", "marine")},
    **{(t, "mean_sea_level_pressure"): 100.0 for t in ("synop", "marine")},
    **{(t, v): 2.0 for t in ("synop", "marine") for v in ("10m_u_component_of_wind", "10m_v_component_of_wind")},
    ("temp", "temperature"): 1.0,
    ("temp", "geopotential"): 100.0,
    ("temp", "u_component_of_wind"): 2.0,
    ("temp", "v_component_of_wind"): 2.0,
    ("aircraft", "temperature"): 1.0,
    ("aircraft", "u_component_of_wind"): 2.5,
    ("aircraft", "v_component_of_wind"): 2.5,
    ("amv", "u_component_of_wind"): 3.5,
    ("amv", "v_component_of_wind"): 3.5,
}
# BUFR data category (Common Code Table C-13) -> our observation type.
_CATEGORY = {0: "synop", 1: "marine", 2: "temp", 4: "aircraft", 5: "amv"}


@dataclasses.dataclass(frozen=True)
class DecodeReport:
    """What happened to one file: message and report counts, and the problems met."""

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


# -- one unpacked message -------------------------------------------------------------
class _Message:
    """Unpacked message: subsets as ordered (name, rank) lists and values by rank."""

    def __init__(self, handle):
        self.h = handle
        self.n = int(eccodes.codes_get(handle, "numberOfSubsets"))
        self.compressed = int(eccodes.codes_get(handle, "compressedData")) == 1
        self.groups = self._walk()
        self._all: dict[str, np.ndarray] = {}

    @property
    def group_size(self) -> int:
        return self.n if self.compressed else 1

    def _walk(self) -> list[list[tuple[str, int]]]:
        it = eccodes.codes_bufr_keys_iterator_new(self.h)
        groups: list[list[tuple[str, int]]] = [[]]
        skipping = False
        try:
            while eccodes.codes_bufr_keys_iterator_next(it):
                key = eccodes.codes_bufr_keys_iterator_get_name(it)
                if key == "subsetNumber":
                    if groups[-1]:
                        groups.append([])
                    skipping = False
                    continue
                if skipping or not key.startswith("#") or "->" in key:
                    continue
                _, rank, name = key.split("#", 2)
                if name in _STOP_KEYS:
                    skipping = True
                    continue
                groups[-1].append((name, int(rank)))
        finally:
            eccodes.codes_bufr_keys_iterator_delete(it)
        return [g for g in groups if g]

    def number(self, name: str, rank: int | None) -> np.ndarray:
        """Float values of occurrence `rank` for the group's subsets; NaN where missing or absent."""
        if rank is None:
            return np.full(self.group_size, np.nan)
        if self.compressed:
            raw = np.asarray(eccodes.codes_get_array(self.h, f"#{rank}#{name}"))
        else:
            if name not in self._all:
                self._all[name] = np.asarray(eccodes.codes_get_array(self.h, name))
            arr = self._all[name]
            raw = (
                arr[rank - 1 : rank] if rank <= len(arr) else np.asarray([eccodes.codes_get(self.h, f"#{rank}#{name}")])
            )
        out = raw.astype(np.float64)
        out[(raw == _MISSING_LONG) | (out <= -1e99)] = np.nan
        return np.broadcast_to(out, (self.group_size,)).copy()

    def string(self, name: str, rank: int | None) -> np.ndarray:
        if rank is None:
            return np.full(self.group_size, "")
        key = f"#{rank}#{name}"
        if self.compressed:
            values = [s.strip() for s in eccodes.codes_get_string_array(self.h, key)]
        else:
            values = [eccodes.codes_get_string(self.h, key).strip()]
        return np.broadcast_to(np.asarray(values, dtype=str), (self.group_size,)).copy()

    def header(self, key: str) -> int:
        return int(eccodes.codes_get(self.h, key))


def _first(group: list[tuple[str, int]], *names: str) -> tuple[str, int | None]:
    """(name, rank) of the earliest occurrence in the subset of any of `names`."""
    for name, rank in group:
        if name in names:
            return name, rank
    return names[0], None


# -- headers -----------------------------------------------------------------------------
def _station_ids(m: _Message, group) -> np.ndarray:
    ranks = {name: rank for name, rank in reversed(group)}  # first occurrence wins
    block = m.number("blockNumber", ranks.get("blockNumber"))
    number = m.number("stationNumber", ranks.get("stationNumber"))
    ids = np.asarray(
        [f"{int(b):02d}{int(s):03d}" if np.isfinite(b) and np.isfinite(s) else "" for b, s in zip(block, number)],
        dtype=object,
    )
    for name in (
        "shipOrMobileLandStationIdentifier",
        "aircraftFlightNumber",
        "aircraftRegistrationNumberOrOtherIdentification",
    ):
        if name in ranks:
            ids = np.where(ids == "", m.string(name, ranks[name]), ids)
    for name, prefix in (
        ("marineObservingPlatformIdentifier", ""),
        ("satelliteIdentifier", "sat"),
        ("stationNumber", ""),
    ):
        if name in ranks:
            vals = m.number(name, ranks[name])
            alt = np.asarray([f"{prefix}{int(v)}" if np.isfinite(v) else "" for v in vals], dtype=object)
            ids = np.where(ids == "", alt, ids)
    return ids.astype(str)


def _times(m: _Message, group) -> np.ndarray:
    """Observation times; date parts the subset lacks come from section 1 (typicalDate/Time)."""
    date, clock = m.header("typicalDate"), m.header("typicalTime")
    typical = {
        "year": date // 10000,
        "month": date // 100 % 100,
        "day": date % 100,
        "hour": clock // 10000,
        "minute": clock // 100 % 100,
    }
    parts = {}
    for unit in ("year", "month", "day", "hour", "minute", "second"):
        vals = m.number(*_first(group, unit))
        parts[unit] = np.clip(np.where(np.isfinite(vals), vals, typical.get(unit, 0)), -1e6, 1e6).astype(np.int64)
    # An impossible date (month 13, year 10**6) makes NaT for that report only.
    return pd.to_datetime(pd.DataFrame(parts), errors="coerce").to_numpy().astype("datetime64[s]")


def _placed(lat: np.ndarray, lon: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rows with a usable position and time: |lat| <= 90 (rounding allowed), |lon| <= 360, 1850 <= t < 2200."""
    with np.errstate(invalid="ignore"):
        return (np.abs(lat) <= 90.0 + 1e-6) & (np.abs(lon) <= 360.0) & (t >= _TIME_MIN) & (t < _TIME_MAX)


def _header(m: _Message, group) -> dict[str, np.ndarray]:
    elevation = m.number(
        *_first(
            group, "heightOfStationGroundAboveMeanSeaLevel", "heightOfStation", "heightOfBarometerAboveMeanSeaLevel"
        )
    )
    return {
        "latitude": m.number(*_first(group, "latitude")),
        "longitude": m.number(*_first(group, "longitude")),
        "time": _times(m, group),
        "station": _station_ids(m, group),
        "elevation": elevation,
    }


# -- element -> rows ------------------------------------------------------------------------
class _Rows:
    """Accumulates observation rows (one scalar per row) column by column."""

    def __init__(self):
        self.no_pressure = 0
        self.dropped = 0  # values moved out of range by a level's displacement or time offset
        self.cols: dict[str, list] = {
            k: []
            for k in (
                "latitude",
                "longitude",
                "pressure",
                "elevation",
                "time",
                "variable",
                "value",
                "obs_type",
                "station",
                "report",
            )
        }

    def add(
        self,
        head: dict,
        index: np.ndarray,
        variable: str,
        values: np.ndarray,
        pressure,
        obs_type: str,
        report: np.ndarray,
    ):
        lat, lon = head["latitude"][index], head["longitude"][index]
        ok = np.isfinite(values) & np.isfinite(lat) & np.isfinite(lon)
        out = ok & ~_placed(lat, lon, head["time"][index])
        self.dropped += int(out.sum())
        ok &= ~out
        p = np.broadcast_to(np.asarray(pressure, dtype=np.float64), values.shape)
        if VARIABLES[variable].upper_air:  # e.g. a TEMP level reported at 0 Pa: no vertical position
            bad = ok & ~((p > 0.0) & np.isfinite(p))
            self.no_pressure += int(bad.sum())
            ok &= ~bad
        if not ok.any():
            return
        idx = index[ok]
        p = p[ok]
        for key in ("latitude", "longitude", "elevation", "time", "station"):
            self.cols[key].append(head[key][idx])
        self.cols["pressure"].append(p)
        self.cols["value"].append(values[ok])
        self.cols["variable"].append(np.full(ok.sum(), variable))
        self.cols["obs_type"].append(np.full(ok.sum(), obs_type))
        self.cols["report"].append(report[ok])

    def add_wind(self, head, index, speed, direction, pressure, obs_type, report, surface: bool):
        """Meteorological (speed, direction-from) -> (u, v); calm (speed 0) has no direction."""
        rad = np.deg2rad(direction)
        calm = speed == 0.0
        u = np.where(calm, 0.0, -speed * np.sin(rad))
        v = np.where(calm, 0.0, -speed * np.cos(rad))
        names = (
            ("10m_u_component_of_wind", "10m_v_component_of_wind")
            if surface
            else ("u_component_of_wind", "v_component_of_wind")
        )
        self.add(head, index, names[0], u, pressure, obs_type, report)
        self.add(head, index, names[1], v, pressure, obs_type, report)

    def columns(self) -> dict[str, np.ndarray] | None:
        """The rows as plain arrays (time as datetime64[s]); None when there are none."""
        if not self.cols["value"]:
            return None
        cols = {k: np.concatenate(v) for k, v in self.cols.items()}
        cols["time"] = cols["time"].astype("datetime64[s]")
        for k in ("variable", "obs_type", "station"):  # plain strings: they cross the process boundary unpickled
            cols[k] = cols[k].astype(str)
        return cols


def isa_pressure(height_m: np.ndarray) -> np.ndarray:
    """ICAO standard-atmosphere pressure (Pa) at a pressure altitude / flight level in metres."""
    h = np.asarray(height_m, dtype=np.float64)
    troposphere = 101325.0 * (1.0 - 2.25577e-5 * np.minimum(h, 11000.0)) ** 5.25588
    return np.where(h <= 11000.0, troposphere, 22632.06 * np.exp(-(h - 11000.0) / 6341.62))


def _single_level(m: _Message, group, head, rows: _Rows, obs_type: str, report: np.ndarray) -> None:
    idx = np.arange(m.group_size)
    surface = obs_type in ("synop", "marine")
    speed = m.number(*_first(group, "windSpeedAt10M", "windSpeed"))
    direction = m.number(*_first(group, "windDirectionAt10M", "windDirection"))
    if surface:
        nan = np.nan
        rows.add(
            head,
            idx,
            "2m_temperature",
            m.number(*_first(group, "airTemperatureAt2M", "airTemperature")),
            nan,
            obs_type,
            report,
        )
        rows.add(
            head, idx, "surface_pressure", m.number(*_first(group, "nonCoordinatePressure")), nan, obs_type, report
        )
        rows.add(
            head,
            idx,
            "mean_sea_level_pressure",
            m.number(*_first(group, "pressureReducedToMeanSeaLevel")),
            nan,
            obs_type,
            report,
        )
        rows.add_wind(head, idx, speed, direction, nan, obs_type, report, surface=True)
        return
    pressure = m.number(*_first(group, "pressure"))
    flight_level = m.number(*_first(group, "flightLevel"))
    pressure = np.where(np.isfinite(pressure), pressure, isa_pressure(flight_level))
    if obs_type == "aircraft":
        rows.add(head, idx, "temperature", m.number(*_first(group, "airTemperature")), pressure, obs_type, report)
    rows.add_wind(head, idx, speed, direction, pressure, obs_type, report, surface=False)


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


def _profile(m: _Message, group, head, rows: _Rows, report: np.ndarray) -> None:
    """TEMP: walk the replicated levels; each `pressure` opens a level."""
    levels: list[dict[str, int]] = []
    pending: dict[str, int] = {}
    for name, rank in group:
        if name == "pressure":
            levels.append({"pressure": rank, **pending})
            pending = {}
        elif name == "timePeriod":  # 309052: the level's time offset precedes its pressure
            pending.setdefault(name, rank)
        elif name in _LEVEL_KEYS and levels:
            levels[-1].setdefault(name, rank)
    idx = np.arange(m.group_size)
    for level in levels:
        p = m.number("pressure", level["pressure"])
        here = dict(head)
        for disp, key in (("latitudeDisplacement", "latitude"), ("longitudeDisplacement", "longitude")):
            if disp in level:
                d = m.number(disp, level[disp])
                here[key] = head[key] + np.where(np.isfinite(d), d, 0.0)
        if "timePeriod" in level:
            dt = np.clip(m.number("timePeriod", level["timePeriod"]), -1e9, 1e9)
            here["time"] = head["time"] + np.where(np.isfinite(dt), dt, 0).astype("timedelta64[s]")
        rows.add(here, idx, "temperature", m.number("airTemperature", level.get("airTemperature")), p, "temp", report)
        z = m.number("nonCoordinateGeopotential", level.get("nonCoordinateGeopotential"))
        if "nonCoordinateGeopotentialHeight" in level:
            z = np.where(
                np.isfinite(z),
                z,
                G0 * m.number("nonCoordinateGeopotentialHeight", level["nonCoordinateGeopotentialHeight"]),
            )
        rows.add(here, idx, "geopotential", z, p, "temp", report)
        speed = m.number("windSpeed", level.get("windSpeed"))
        rows.add_wind(
            here, idx, speed, m.number("windDirection", level.get("windDirection")), p, "temp", report, surface=False
        )


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """One message: its rows (report numbers from 0) and counts, or the error that stopped it."""

    obs_type: str | None = None  # None: unsupported data category (or failed)
    reports: int = 0
    unplaced: int = 0  # reports without a valid position or time
    dropped: int = 0  # values displaced out of range
    no_pressure: int = 0  # upper-air values without a valid pressure
    error: str | None = None
    columns: dict[str, np.ndarray] | None = None


def _decode_message(message: bytes) -> _Outcome:
    """Unpack one message with ecCodes; raises on bad content (the caller counts it)."""
    handle = eccodes.codes_new_from_message(message)
    try:
        eccodes.codes_set(handle, "unpack", 1)
        m = _Message(handle)
        obs_type = _CATEGORY.get(m.header("dataCategory"))
        names = {name for g in m.groups for name, _ in g}
        if obs_type is None or (obs_type == "amv" and "windSpeed" not in names):
            return _Outcome()
        rows = _Rows()
        reports = unplaced = 0
        for group in m.groups:
            head = _header(m, group)
            bad = ~_placed(head["latitude"], head["longitude"], head["time"])
            unplaced += int(bad.sum())
            head["latitude"] = np.where(bad, np.nan, head["latitude"])  # rows need a finite latitude
            report = reports + np.arange(m.group_size)
            if obs_type == "temp":
                _profile(m, group, head, rows, report)
            else:
                _single_level(m, group, head, rows, obs_type, report)
            reports += m.group_size
        return _Outcome(obs_type, reports, unplaced, rows.dropped, rows.no_pressure, None, rows.columns())
    finally:
        eccodes.codes_release(handle)


def _decode_local(message: bytes) -> _Outcome:
    """`_decode_message` in this process, any exception turned into a failed outcome."""
    try:
        with np.errstate(all="ignore"):
            return _decode_message(message)
    except Exception as exc:  # bad content can break any step (ecCodes, pandas, numpy); the message alone fails
        return _Outcome(error=f"{type(exc).__name__}: {exc}")


# -- process isolation -----------------------------------------------------------------------
_FRAME = struct.Struct(">Q")
_META = ("obs_type", "reports", "unplaced", "dropped", "no_pressure", "error")


def _pack(o: _Outcome) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, _meta=np.asarray(json.dumps({k: getattr(o, k) for k in _META})), **(o.columns or {}))
    return buf.getvalue()


def _unpack(data: bytes) -> _Outcome:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["_meta"]))
        columns = {k: z[k] for k in z.files if k != "_meta"} or None
    return _Outcome(**{k: meta[k] for k in _META}, columns=columns)


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


def _serve() -> None:
    """Worker loop (child process): message frames on stdin, one packed `_Outcome` frame per message on stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed (ecCodes, logs) goes to stderr, not into the frames
    inp = sys.stdin.buffer
    _write_frame(out, b"ready")
    while (message := _read_frame(inp)) is not None:
        _write_frame(out, _pack(_decode_local(message)))


def _how(rc: int | None) -> str:
    if rc is not None and rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit status {rc}"


class _Worker:
    """A child process unpacking messages, so that an ecCodes crash or hang costs one message, not the caller."""

    def __init__(self):
        root = str(Path(align_da_ops.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.owner = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from align_da_ops.obs.bufr import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
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
        fd, chunks, got = self.proc.stdout.fileno(), [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read(self, deadline: float) -> bytes:
        (n,) = _FRAME.unpack(self._read_exact(_FRAME.size, deadline))
        return self._read_exact(n, deadline)

    def decode(self, message: bytes, timeout: float) -> _Outcome:
        """The message's outcome; a crash or timeout kills the worker and fails this message only."""
        try:
            _write_frame(self.proc.stdin, message)
            reply = self._read(time.monotonic() + timeout)
        except TimeoutError:
            self.close(kill=True)
            return _Outcome(error=f"decoding took over {timeout:g} s; stopped")
        except (EOFError, OSError):
            self.close()
            return _Outcome(error=f"ecCodes crashed the decoder process ({_how(self.proc.returncode)})")
        try:
            return _unpack(reply)
        except Exception as exc:  # a reply we cannot read is a failed message, whatever produced it
            return _Outcome(error=f"unreadable decoder reply: {type(exc).__name__}: {exc}")

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


def _decode_isolated(messages: list[bytes]) -> list[_Outcome]:
    """`_decode_local` for each message, run in the worker process (in-process if no worker can start)."""
    global _worker, _isolation_broken
    outcomes = []
    with _worker_lock:
        for message in messages:
            if _worker is not None and not _worker.alive:
                _worker.close()
                _worker = None
            if _worker is None and not _isolation_broken:
                try:
                    _worker = _Worker()
                except (OSError, ValueError, TypeError, subprocess.SubprocessError) as exc:
                    _isolation_broken = True
                    log.warning("bufr_isolation_unavailable", error=str(exc))
            if _worker is None:
                outcomes.append(_decode_local(message))
                continue
            outcome = _worker.decode(message, MESSAGE_TIMEOUT_S)
            if outcome.error is not None and not _worker.alive:
                log.warning("bufr_decoder_process_lost", problem=outcome.error)
                _worker = None
            outcomes.append(outcome)
    return outcomes


# -- files ------------------------------------------------------------------------------------
def _message_batch(columns: dict[str, np.ndarray], first_report: int) -> ObsBatch:
    """A checked `ObsBatch` of one message's rows, report numbers shifted to follow the file's earlier reports."""
    errors = np.asarray(
        [DEFAULT_ERRORS.get((t, v), np.nan) for t, v in zip(columns["obs_type"], columns["variable"])], dtype=np.float64
    )
    return ObsBatch.from_columns(**{**columns, "report": columns["report"] + first_report}, error=errors)


def decode_bufr_bytes(data: bytes, source: str = "<bytes>", *, isolate: bool = True) -> Decoded:
    """Decode every BUFR message in `data`; bad messages are counted in the report, never raised.

    `isolate=False` unpacks in this process (faster to start, but an ecCodes crash kills the caller).
    """
    messages, problems, truncated = scan_messages(bytes(data))
    outcomes = _decode_isolated(messages) if isolate else [_decode_local(m) for m in messages]
    batches, by_type = [], Counter()
    decoded = failed = skipped = reports = no_pressure = 0
    for i, o in enumerate(outcomes, 1):
        batch = None
        if o.error is None and o.obs_type is not None and o.columns is not None:
            try:
                batch = _message_batch(o.columns, reports)
            except (ObservationError, KeyError, ValueError, TypeError) as exc:
                o = dataclasses.replace(o, error=f"{type(exc).__name__}: {exc}")
        if o.error is not None:
            failed += 1
            problems.append(f"message {i}: decode failed: {o.error}")
            continue
        if o.obs_type is None:
            skipped += 1
            problems.append(f"message {i}: unsupported data category; skipped")
            continue
        decoded += 1
        reports += o.reports
        by_type[o.obs_type] += o.reports
        no_pressure += o.no_pressure
        if batch is not None:
            batches.append(batch)
        if o.unplaced:
            problems.append(f"message {i}: {o.unplaced} reports without a valid position or time; skipped")
        if o.dropped:
            problems.append(f"message {i}: {o.dropped} values displaced out of range (position or time); skipped")
    if no_pressure:
        problems.append(f"{no_pressure} upper-air values without a valid pressure (e.g. 0 Pa); skipped")
    if batches:
        batch = ObsBatch(**{c: np.concatenate([getattr(b, c) for b in batches]) for c in COLUMNS})
    else:
        batch = ObsBatch.empty()
    report = DecodeReport(
        source,
        len(data),
        len(messages),
        decoded,
        failed,
        skipped,
        reports,
        len(batch),
        truncated,
        tuple(problems),
        dict(by_type),
    )
    if problems:
        log.info("bufr_problems", source=source, n=len(problems), first=problems[0])
    return Decoded(batch, report)


def _unreadable(path: Path, problem: str) -> Decoded:
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
