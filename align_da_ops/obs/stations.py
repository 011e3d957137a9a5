"""The shipped station list (`stations.csv`) for synthetic station networks, and the rule that made it.

Two kinds of rows (column `source`):
- `bufr:<file>`: real WMO stations, their coordinates and elevations exactly as
  decoded from the sample BUFR files in tests/data/bufr (SYNOP and TEMP reports;
  TEMP stations are radiosonde sites);
- `rule`: land-biased points from a documented rule (`generate_rule_stations`):
  a Fibonacci lattice of 1,500 near-equal-area points; points inside coarse
  continental boxes (`LAND_BOXES`) are kept as land stations, every 8th point
  outside them is kept as a ship/island station. Every 4th kept land point also
  launches radiosondes. The boxes are coarse, so "land" is land-biased, not a
  land mask; elevations are unknown.
Regenerate with `python -m align_da_ops.obs.stations tests/data/bufr > align_da_ops/obs/stations.csv`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

STATIONS_CSV = Path(__file__).with_name("stations.csv")
COLUMNS = ("station_id", "latitude", "longitude", "elevation_m", "surface", "upper_air", "source")
# (lat_min, lat_max, lon_min, lon_max), longitudes in [-180, 180): rough continental outlines.
LAND_BOXES = (
    (30.0, 50.0, -125.0, -70.0),  # contiguous United States
    (50.0, 70.0, -165.0, -60.0),  # Canada, Alaska
    (15.0, 30.0, -112.0, -82.0),  # Mexico
    (8.0, 18.0, -92.0, -78.0),  # Central America
    (-20.0, 10.0, -80.0, -36.0),  # northern South America
    (-55.0, -20.0, -73.0, -50.0),  # southern South America
    (36.0, 71.0, -10.0, 40.0),  # Europe
    (5.0, 35.0, -17.0, 50.0),  # northern Africa, Arabia
    (-35.0, 5.0, 10.0, 40.0),  # southern Africa
    (40.0, 75.0, 40.0, 180.0),  # Russia, Central Asia
    (20.0, 40.0, 35.0, 120.0),  # Middle East, Iran, China
    (8.0, 25.0, 70.0, 90.0),  # India
    (30.0, 45.0, 126.0, 145.0),  # Korea, Japan
    (-38.0, -12.0, 115.0, 153.0),  # Australia
    (60.0, 83.0, -55.0, -20.0),  # Greenland
    (-80.0, -68.0, -180.0, 180.0),  # Antarctica (coastal band and plateau edge)
)
_BUFR_FILES = (
    "eccodes_synop.bufr",
    "eccodes_synop_multi_subset.bufr",
    "pdbufr_obs_3day.bufr",
    "pdbufr_syn_new.bufr",
    "eccodes_temp.bufr",
    "pdbufr_temp_small.bufr",
)


def fibonacci_lattice(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n near-equal-area points on the sphere (lat, lon in [-180, 180))."""
    k = np.arange(n) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * k / n))
    lon = np.mod(k * 180.0 * (3.0 - np.sqrt(5.0)) + 180.0, 360.0) - 180.0
    return lat, lon


def in_land_boxes(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lon = np.mod(np.asarray(lon) + 180.0, 360.0) - 180.0
    inside = np.zeros(np.shape(lat), bool)
    for la0, la1, lo0, lo1 in LAND_BOXES:
        inside |= (lat >= la0) & (lat <= la1) & (lon >= lo0) & (lon <= lo1)
    return inside


def generate_rule_stations(n_lattice: int = 1500, ocean_every: int = 8, sonde_every: int = 4) -> pd.DataFrame:
    """The `rule` rows of the station list (see the module docstring)."""
    lat, lon = fibonacci_lattice(n_lattice)
    land = in_land_boxes(lat, lon)
    ocean_idx = np.flatnonzero(~land)[::ocean_every]
    land_idx = np.flatnonzero(land)
    keep = np.sort(np.concatenate([land_idx, ocean_idx]))
    sonde = np.isin(keep, land_idx[::sonde_every])
    return pd.DataFrame(
        {
            "station_id": [f"R{i:04d}" for i in keep],
            "latitude": np.round(lat[keep], 4),
            "longitude": np.round(lon[keep], 4),
            "elevation_m": np.nan,
            "surface": 1,
            "upper_air": sonde.astype(int),
            "source": "rule",
        }
    )


def bufr_stations(bufr_dir: Path) -> pd.DataFrame:
    """SYNOP and TEMP station positions decoded from the sample files (first report per station)."""
    from align_da_ops.obs.bufr import decode_bufr_file

    rows = []
    for name in _BUFR_FILES:
        batch = decode_bufr_file(Path(bufr_dir) / name).batch
        df = pd.DataFrame(
            {
                "station_id": batch.station,
                "latitude": batch.latitude,
                "longitude": batch.longitude,
                "elevation_m": batch.elevation,
            }
        )
        df = df[df.station_id != ""].drop_duplicates("station_id")
        df["longitude"] = np.mod(df["longitude"] + 180.0, 360.0) - 180.0
        sonde = name.endswith("temp.bufr") or "temp_" in name
        df["surface"], df["upper_air"], df["source"] = int(not sonde), int(sonde), f"bufr:{name}"
        rows.append(df)
    out = pd.concat(rows).round({"latitude": 4, "longitude": 4, "elevation_m": 1})
    return out.drop_duplicates("station_id", keep="first")


def load_stations(path: Path = STATIONS_CSV) -> pd.DataFrame:
    """The station table with COLUMNS; surface/upper_air as bool."""
    df = pd.read_csv(path, dtype={"station_id": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        from align_da_ops.errors import ObservationError

        raise ObservationError(f"station list {path} lacks columns {missing}")
    return df.astype({"surface": bool, "upper_air": bool})


def main(argv: list[str]) -> None:
    from align_da_ops import logs

    logs.configure(level="WARNING")  # logs go to stderr; the table to stdout
    table = pd.concat([bufr_stations(Path(argv[0])), generate_rule_stations()])
    table[list(COLUMNS)].to_csv(sys.stdout, index=False, float_format="%.4f")


if __name__ == "__main__":
    main(sys.argv[1:])
