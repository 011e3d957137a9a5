"""The state schema: dimension and variable names, units, grids, channel stacking, normalisation.

Everything that names a dimension or a variable lives here (ERA5/WeatherBench2
long names). States cross module boundaries as `xarray.Dataset`s with dims
(*leading, level, latitude, longitude) for upper-air variables and
(*leading, latitude, longitude) for surface variables, latitudes ascending
(south -> north), longitudes ascending in [0, 360). Inside, they are
channel-stacked tensors of shape (*leading, channel, latitude, longitude).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from align_da_ops.errors import SchemaError

TIME, LEVEL, LAT, LON, MEMBER, CHANNEL = "time", "level", "latitude", "longitude", "member", "channel"


@dataclasses.dataclass(frozen=True)
class VariableInfo:
    name: str  # ERA5 / WeatherBench2 long name
    short: str  # ECMWF short name
    units: str
    upper_air: bool
    valid_range: tuple[float, float]  # physical plausibility limits
    standard_name: str  # CF standard name
    long_name: str

    @property
    def cf_attrs(self) -> dict[str, str]:
        """CF attributes of the variable (units in ERA5's udunits spelling)."""
        return {"units": self.units, "standard_name": self.standard_name, "long_name": self.long_name}


VARIABLES: dict[str, VariableInfo] = {
    v.name: v
    for v in (
        VariableInfo("geopotential", "z", "m**2 s**-2", True, (-5.0e3, 3.5e5), "geopotential", "Geopotential"),
        VariableInfo("temperature", "t", "K", True, (150.0, 350.0), "air_temperature", "Temperature"),
        VariableInfo("u_component_of_wind", "u", "m s**-1", True, (-150.0, 150.0), "eastward_wind", "U component of wind"),
        VariableInfo("v_component_of_wind", "v", "m s**-1", True, (-150.0, 150.0), "northward_wind", "V component of wind"),
        VariableInfo("specific_humidity", "q", "kg kg**-1", True, (-1.0e-3, 5.0e-2), "specific_humidity", "Specific humidity"),
        VariableInfo("10m_u_component_of_wind", "u10", "m s**-1", False, (-80.0, 80.0), "eastward_wind", "10 metre U wind component"),
        VariableInfo("10m_v_component_of_wind", "v10", "m s**-1", False, (-80.0, 80.0), "northward_wind", "10 metre V wind component"),
        VariableInfo("2m_temperature", "t2m", "K", False, (170.0, 345.0), "air_temperature", "2 metre temperature"),
        VariableInfo("mean_sea_level_pressure", "msl", "Pa", False, (8.5e4, 1.1e5), "air_pressure_at_mean_sea_level", "Mean sea level pressure"),
        VariableInfo("surface_pressure", "sp", "Pa", False, (4.0e4, 1.1e5), "surface_air_pressure", "Surface pressure"),
    )
}
SHORT_NAMES = {v.short: v.name for v in VARIABLES.values()}
# CF attributes of the schema's coordinates (cf-xarray finds axes and standard names by them)
COORD_ATTRS: dict[str, dict[str, str]] = {
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude", "axis": "Y"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude", "axis": "X"},
    "level": {"units": "hPa", "standard_name": "air_pressure", "long_name": "pressure level", "axis": "Z",
              "positive": "down"},
    "time": {"standard_name": "time", "long_name": "analysis (cycle) time", "axis": "T"},
    "member": {"standard_name": "realization", "long_name": "ensemble member"},
    "prediction_timedelta": {"standard_name": "forecast_period", "long_name": "forecast lead time"},
    "valid_time": {"standard_name": "time", "long_name": "time the forecast is valid at"},
}
UPPER_AIR = tuple(n for n, v in VARIABLES.items() if v.upper_air)
SURFACE = tuple(n for n, v in VARIABLES.items() if not v.upper_air)
# The paper's 13 pressure levels (hPa).
ERA5_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


# -- horizontal grids ------------------------------------------------------------
def equiangular_latitudes(n: int, with_poles: bool = False) -> np.ndarray:
    """Equally spaced latitudes (deg, ascending); without poles they sit at cell centres."""
    if with_poles:
        return np.linspace(-90.0, 90.0, n)
    step = 180.0 / n
    return np.linspace(-90.0 + step / 2, 90.0 - step / 2, n)


def gaussian_latitudes(n: int) -> np.ndarray:
    """Gauss–Legendre latitudes (deg, ascending), as used by spectral models."""
    nodes, _ = np.polynomial.legendre.leggauss(n)
    return np.rad2deg(np.arcsin(nodes))


def longitudes(n: int) -> np.ndarray:
    return np.arange(n) * (360.0 / n)


def latitude_weights(lat_deg: np.ndarray) -> np.ndarray:
    """cos(lat) weights normalised to mean 1 (WeatherBench convention)."""
    w = np.cos(np.deg2rad(lat_deg))
    return w / w.mean()


# -- channel layout ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Which variables and levels make up the channel axis, in order.

    Channels: every upper-air variable at every level (variable-major), then
    the surface variables. Names are "<variable>_<level>" or "<variable>".
    """

    upper_air: tuple[str, ...]
    surface: tuple[str, ...]
    levels: tuple[int, ...]

    def __post_init__(self):
        for name in self.upper_air:
            if name not in UPPER_AIR:
                raise SchemaError(f"{name!r} is not an upper-air variable; known: {UPPER_AIR}")
        for name in self.surface:
            if name not in SURFACE:
                raise SchemaError(f"{name!r} is not a surface variable; known: {SURFACE}")
        if self.upper_air and not self.levels:
            raise SchemaError("upper-air variables need at least one level")

    @property
    def channels(self) -> tuple[str, ...]:
        level_channels = tuple(f"{v}_{p}" for v in self.upper_air for p in self.levels)
        return level_channels + self.surface

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def channel_index(self, variable: str, level: int | None = None) -> int:
        key = variable if level is None else f"{variable}_{level}"
        try:
            return self.channels.index(key)
        except ValueError:
            raise SchemaError(f"channel {key!r} not in layout; have {self.channels}") from None

    def to_tensor(self, ds: xr.Dataset, dtype=torch.float32) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Stack a dataset into (*leading, channel, lat, lon); returns the leading dim names too."""
        missing = [v for v in self.upper_air + self.surface if v not in ds.data_vars]
        if missing:
            raise SchemaError(f"dataset lacks variables {missing}; has {sorted(ds.data_vars)}")
        lead = None
        parts = []
        for name in self.upper_air + self.surface:
            da = ds[name]
            tail = (LEVEL, LAT, LON) if name in self.upper_air else (LAT, LON)
            if da.dims[-len(tail):] != tail:
                raise SchemaError(f"{name!r}: expected dims (..., {', '.join(tail)}); got {da.dims}")
            this_lead = da.dims[: -len(tail)]
            if lead is None:
                lead = this_lead
            elif this_lead != lead:
                raise SchemaError(f"{name!r}: leading dims {this_lead} differ from {lead}")
            if name in self.upper_air:
                have = [int(p) for p in da[LEVEL].values]
                absent = [p for p in self.levels if p not in have]
                if absent:
                    raise SchemaError(f"{name!r} lacks levels {absent}; has {have}")
                parts.append(da.sel({LEVEL: list(self.levels)}).values)
            else:
                parts.append(da.values[..., None, :, :])
        stacked = np.concatenate(parts, axis=-3)
        return torch.as_tensor(stacked, dtype=dtype), tuple(lead or ())

    def from_tensor(
        self,
        tensor: torch.Tensor,
        lat: np.ndarray,
        lon: np.ndarray,
        leading: Sequence[str] = (),
        coords: dict | None = None,
    ) -> xr.Dataset:
        """Inverse of `to_tensor`: (*leading, channel, lat, lon) -> Dataset in the schema."""
        expected = len(leading) + 3
        if tensor.ndim != expected:
            raise SchemaError(f"tensor has {tensor.ndim} dims; expected {expected} = leading {tuple(leading)} + (channel, lat, lon)")
        want = (self.n_channels, len(lat), len(lon))
        if tuple(tensor.shape[-3:]) != want:
            raise SchemaError(f"tensor (channel, lat, lon) shape {tuple(tensor.shape[-3:])} != expected {want}")
        arr = tensor.detach().cpu().numpy()
        n_lev = len(self.levels)
        data_vars = {}
        for i, name in enumerate(self.upper_air):
            block = arr[..., i * n_lev : (i + 1) * n_lev, :, :]
            data_vars[name] = ((*leading, LEVEL, LAT, LON), block, VARIABLES[name].cf_attrs)
        offset = n_lev * len(self.upper_air)
        for j, name in enumerate(self.surface):
            data_vars[name] = ((*leading, LAT, LON), arr[..., offset + j, :, :], VARIABLES[name].cf_attrs)
        all_coords = {LAT: (LAT, np.asarray(lat), COORD_ATTRS[LAT]), LON: (LON, np.asarray(lon), COORD_ATTRS[LON])}
        if self.upper_air:
            all_coords[LEVEL] = (LEVEL, np.asarray(self.levels, dtype=np.int64), COORD_ATTRS[LEVEL])
        all_coords.update(coords or {})
        return xr.Dataset(data_vars, coords=all_coords)


def canonicalise(ds: xr.Dataset) -> xr.Dataset:
    """Latitudes ascending, longitudes in [0, 360) ascending, integer hPa levels ascending (top first)."""
    for dim in (LAT, LON):
        if dim not in ds.dims:
            raise SchemaError(f"dataset lacks dimension {dim!r}; has {tuple(ds.dims)}")
    lon = ds[LON].values % 360.0
    ds = ds.assign_coords({LON: lon}).sortby(LON).sortby(LAT)
    if LEVEL in ds.coords:
        ds = ds.assign_coords({LEVEL: ds[LEVEL].values.round().astype(np.int64)})
        if LEVEL in ds.dims:
            ds = ds.sortby(LEVEL)
    return ds


# -- normalisation -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel z-score statistics, computed over a training period."""

    channels: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    period: tuple[str, str]

    @classmethod
    def from_tensor(cls, x: torch.Tensor, channels: Sequence[str], period: tuple[str, str]) -> "Normalization":
        """Statistics of x (*, channel, lat, lon), latitude-unweighted, over all other axes."""
        c = x.shape[-3]
        flat = x.movedim(-3, 0).reshape(c, -1).double()
        mean = flat.mean(1).numpy()
        std = flat.std(1, correction=0).numpy()
        std = np.where(std > 0, std, 1.0)
        return cls(tuple(channels), mean, std, period)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self._as(x)
        return (x - m) / s

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self._as(x)
        return x * s + m

    def _as(self, x: torch.Tensor):
        if x.shape[-3] != len(self.channels):
            raise SchemaError(f"tensor has {x.shape[-3]} channels; statistics have {len(self.channels)}")
        m = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        s = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return m, s

    def to_dataset(self) -> xr.Dataset:
        # Channel names live in attrs: Zarr v3 has no stable string dtype.
        return xr.Dataset(
            {"mean": ((CHANNEL,), self.mean), "std": ((CHANNEL,), self.std)},
            coords={CHANNEL: np.arange(len(self.channels))},
            attrs={"channels": list(self.channels), "period_start": self.period[0], "period_end": self.period[1]},
        )

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "Normalization":
        for key in ("mean", "std"):
            if key not in ds:
                raise SchemaError(f"normalisation dataset lacks {key!r}")
        names = ds.attrs.get("channels")
        if names is None or len(names) != ds.sizes[CHANNEL]:
            raise SchemaError(f"normalisation dataset names {names!r} do not match {ds.sizes[CHANNEL]} channels")
        return cls(
            tuple(str(c) for c in names),
            ds["mean"].values.astype(np.float64),
            ds["std"].values.astype(np.float64),
            (str(ds.attrs.get("period_start", "")), str(ds.attrs.get("period_end", ""))),
        )
