"""Configuration of the observation side (pydantic v2, frozen, extra="forbid"; no torch import).

`ObservationsConfig` is the block an experiment config will hold: the synthetic
networks of the OSSE (chosen by `kind`), QC settings and the monitoring level
bands. Defaults live here beside the algorithm they parametrise.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from align_da_ops.config import SurfaceName, UpperAirName

VariableName = Union[UpperAirName, SurfaceName]
PressureHPa = Annotated[int, Field(ge=1, le=1100)]
NonNegative = Annotated[float, Field(ge=0)]

# Observation error std (schema units) for synthetic observations: typical radiosonde/SYNOP values.
DEFAULT_SYNTHETIC_ERRORS: dict[str, float] = {
    "geopotential": 100.0,  # ~10 m of geopotential height
    "temperature": 1.0,
    "u_component_of_wind": 2.0,
    "v_component_of_wind": 2.0,
    "specific_humidity": 1.0e-3,
    "10m_u_component_of_wind": 2.0,
    "10m_v_component_of_wind": 2.0,
    "2m_temperature": 1.5,
    "mean_sea_level_pressure": 100.0,
    "surface_pressure": 100.0,
}


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _NetworkBase(Frozen):
    """Settings every synthetic network shares."""

    name: str = Field(default="", description="Label (seeds and monitoring); empty: the kind.")
    errors: dict[VariableName, float] = Field(
        default_factory=dict, description="Observation error std per variable (schema units); others from the defaults."
    )
    noise: bool = Field(
        default=True, description="Add Gaussian noise with the error std (False: perfect obs, paper default)."
    )
    gross_error_rate: float = Field(default=0.0, ge=0, le=1, description="Fraction of obs given a gross error.")
    gross_error_sigmas: tuple[float, float] = Field(
        default=(8.0, 15.0), description="A gross error is ± U(lo, hi) times the error std."
    )
    missing_rate: float = Field(
        default=0.0, ge=0, le=1, description="Fraction of reports missing (kept, flagged `missing`)."
    )
    time_spread: bool = Field(
        default=True, description="Spread report times uniformly through the window (else: cycle time)."
    )

    @field_validator("errors")
    @classmethod
    def _positive(cls, v):
        bad = {k: x for k, x in v.items() if not x > 0}
        if bad:
            raise ValueError(f"error std must be > 0; got {bad}")
        return v

    @model_validator(mode="after")
    def _sigmas(self):
        lo, hi = self.gross_error_sigmas
        if not 0 < lo <= hi:
            raise ValueError(f"gross_error_sigmas must satisfy 0 < lo <= hi; got {self.gross_error_sigmas}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind

    def error_std(self, variable: str) -> float:
        return float(self.errors.get(variable, DEFAULT_SYNTHETIC_ERRORS[variable]))


class RandomMaskNetwork(_NetworkBase):
    """The paper's network: a random fraction of grid points, every channel observed there (Align-DA §4)."""

    kind: Literal["random_mask"] = "random_mask"
    fraction: float = Field(
        default=0.01, gt=0, le=1, description="Fraction of grid points observed (paper: 0.01 .. 0.10)."
    )
    time_spread: bool = Field(default=False, description="Paper: all obs at the analysis time.")


class StationNetwork(_NetworkBase):
    """Radiosonde profiles and surface stations at the shipped, land-biased, off-grid station list."""

    kind: Literal["stations"] = "stations"
    upper_air_variables: tuple[UpperAirName, ...] = Field(
        default=("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"),
        description="Sonde variables.",
    )
    levels_hpa: tuple[PressureHPa, ...] = Field(
        default=(1000, 925, 850, 700, 500, 400, 300, 250, 200), description="Sonde reporting levels (mandatory levels)."
    )
    surface_variables: tuple[SurfaceName, ...] = Field(
        default=("surface_pressure",), description="Surface-station variables."
    )
    max_stations: int | None = Field(
        default=None, ge=1, description="Use at most this many stations (deterministic subset)."
    )
    sonde_time_jitter: timedelta = Field(
        default=timedelta(hours=1),
        description="Sondes launch within ± this of the cycle time (surface reports spread).",
    )


class SwathNetwork(_NetworkBase):
    """A polar-orbiter-like swath (sounder retrievals) whose ground track moves with time."""

    kind: Literal["swath"] = "swath"
    variables: tuple[UpperAirName, ...] = Field(default=("temperature",), description="Retrieved variables.")
    levels_hpa: tuple[PressureHPa, ...] = Field(default=(850, 500, 300), description="Retrieval pressures.")
    swath_width_km: float = Field(default=2000.0, gt=0, le=6000, description="Full cross-track width.")
    across_track: int = Field(default=9, ge=1, le=101, description="Footprints across the swath.")
    along_track_km: float = Field(default=250.0, gt=0, description="Footprint spacing along the track.")
    orbit_minutes: float = Field(default=101.0, gt=80, le=200, description="Orbital period.")
    inclination_deg: float = Field(default=98.7, gt=0, lt=180, description="Orbit inclination (sun-synchronous ~98.7).")
    satellites: int = Field(default=1, ge=1, le=8, description="Satellites, phased evenly along the orbit.")


NetworkConfig = Annotated[RandomMaskNetwork | StationNetwork | SwathNetwork, Field(discriminator="kind")]


class QCConfig(Frozen):
    """Quality control: which checks run and their thresholds."""

    window_half_width: timedelta = Field(
        default=timedelta(hours=3), gt=timedelta(0), le=timedelta(hours=12), description="Obs in (t - w, t + w] are used."
    )
    gross_limits: dict[VariableName, tuple[float, float]] = Field(
        default_factory=dict, description="Override grid.VARIABLES[...].valid_range per variable (low < high)."
    )
    thinning_km: float | None = Field(default=None, gt=0, description="Box size; None: no thinning.")
    thinning_log_p: float = Field(default=0.1, gt=0, description="Vertical bin width in ln p for thinning.")
    thinning_types: tuple[str, ...] = Field(default=("amv", "amv_isa", "aircraft", "aircraft_isa", "swath"),
                                            description="Obs types thinned (`_isa`: pressure derived from an altitude).")
    blacklist_stations: tuple[str, ...] = Field(default=(), description="Station ids never used.")
    blacklist_types: tuple[str, ...] = Field(default=(), description="Observation types never used.")
    background_k: float = Field(default=5.0, gt=0, description="Reject |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2).")
    background_sigma: dict[VariableName, NonNegative] = Field(
        default_factory=dict, description="Background error std per variable when no ensemble spread is given."
    )
    use_ensemble_spread: bool = Field(
        default=True, description="sigma_b from the background ensemble when there is one."
    )
    level_tolerance_log_p: float = Field(
        default=0.05, ge=0, description="Upper-air obs this far (ln p) outside the state's levels are `outside_domain`."
    )


    @field_validator("gross_limits")
    @classmethod
    def _limits_ordered(cls, value):
        bad = {k: v for k, v in value.items() if not v[0] < v[1]}
        if bad:
            raise ValueError(f"gross_limits need low < high; got {bad}")
        return value


class FeedConfig(Frozen):
    """Directory-drop observation feed."""

    root: Path = Field(description="Holds incoming/, processed/ (raw originals), decoded/ (the feed's own IODA files) and quarantine/.")


class ObservationsConfig(Frozen):
    """The observation block of an experiment."""

    networks: tuple[NetworkConfig, ...] = Field(
        default=(RandomMaskNetwork(),), description="Synthetic networks (OSSE)."
    )
    qc: QCConfig = Field(default_factory=QCConfig)
    feed: FeedConfig | None = Field(default=None, description="Real observations from a directory drop.")
    level_bands_hpa: tuple[float, ...] = Field(
        default=(1100.0, 700.0, 300.0, 0.0), description="Edges (hPa, descending) of monitoring level bands."
    )

    @model_validator(mode="after")
    def _bands(self):
        b = self.level_bands_hpa
        if len(b) < 2 or any(x <= y for x, y in zip(b, b[1:])):
            raise ValueError(f"level_bands_hpa must be strictly descending with >= 2 edges; got {b}")
        return self
