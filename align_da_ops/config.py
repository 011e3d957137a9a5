"""The configuration tree (pydantic v2), loaded from YAML. No torch import here.

Every model is frozen and forbids unknown keys; pluggable parts are chosen by a
short `kind` tag. Relative paths are taken relative to the working directory.
`config_hash` is stable across key order and formatting: it hashes the
resolved values, and goes into every product made from the config.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from align_da_ops.errors import ConfigError

UpperAirName = Literal["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity"]
SurfaceName = Literal[
    "10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature", "mean_sea_level_pressure", "surface_pressure"
]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GridConfig(Frozen):
    """Horizontal grid of the state."""

    kind: Literal["gaussian", "equiangular"] = Field(description="Latitude spacing; gaussian for spectral cores.")
    nlat: int = Field(ge=4, le=2048, description="Number of latitudes (no poles).")
    nlon: int = Field(ge=8, le=4096, description="Number of longitudes, from 0° eastwards.")

    @model_validator(mode="after")
    def _shape(self):
        if self.nlon != 2 * self.nlat:
            raise ValueError(f"nlon must be 2*nlat for a global grid; got nlat={self.nlat}, nlon={self.nlon}")
        return self


class StateConfig(Frozen):
    """Variables and levels of the analysed state (the channel axis)."""

    upper_air: tuple[UpperAirName, ...] = Field(description="ERA5/WB2 names of pressure-level variables.")
    surface: tuple[SurfaceName, ...] = Field(default=(), description="ERA5/WB2 names of surface variables.")
    levels: tuple[int, ...] = Field(description="Pressure levels in hPa, strictly increasing (top first).")
    grid: GridConfig

    @model_validator(mode="after")
    def _levels(self):
        if len(set(self.upper_air)) != len(self.upper_air) or len(set(self.surface)) != len(self.surface):
            raise ValueError(f"duplicate variables in upper_air={self.upper_air} or surface={self.surface}")
        if any(not 1 <= p <= 1100 for p in self.levels):
            raise ValueError(f"levels must lie in 1..1100 hPa; got {self.levels}")
        if list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels must be strictly increasing; got {self.levels}")
        if self.upper_air and not self.levels:
            raise ValueError("upper_air variables need at least one level")
        return self


class HeldSuarezConfig(Frozen):
    """OSSE nature run: dinosaur-torch primitive equations + Held–Suarez forcing (Held & Suarez 1994)."""

    kind: Literal["held_suarez"] = "held_suarez"
    truncation: Literal[21, 42, 85] = Field(description="Spectral truncation: T21=32x64, T42=64x128, T85=128x256.")
    layers: int = Field(ge=4, le=60, description="Equidistant sigma layers.")
    dt_minutes: float = Field(gt=0, le=60, description="Model time step; must divide 6 h.")
    start: datetime = Field(description="Calendar label of the first output time (after spin-up).")
    days: float = Field(gt=0, le=36500, description="Simulated days to write.")
    members: int = Field(default=1, ge=1, le=1024, description="Independent trajectories (the `member` dimension).")
    members_per_call: int | None = Field(
        default=None, ge=1, description="Trajectories advanced together in one core call (a group; None: all). Groups "
        "are independent tasks (`nature-run --workers`); batch size changes round-off, so it is part of the run.",
    )
    member_perturbation_k: float = Field(
        default=0.5, ge=0, le=5, description="Std (K) of seeded temperature noise that separates members."
    )
    decorrelation_days: float = Field(
        default=0.0, ge=0, description="Days run (not written) after perturbing, so members diverge."
    )
    seed: int = Field(default=0, ge=0, description="Seed for the perturbations (and spin-up from rest).")
    spinup_days: float = Field(default=200.0, gt=0, description="Days from rest when no spun-up state is at hand.")
    restart: Path | None = Field(default=None, description="Spun-up state (.npz); default: shipped or cached.")
    chunk_days: float = Field(default=5.0, gt=0, description="Days per write chunk (resume granularity).")
    output: Path = Field(description="Zarr store to write.")

    @model_validator(mode="after")
    def _steps(self):
        if abs(360.0 / self.dt_minutes - round(360.0 / self.dt_minutes)) > 1e-9:
            raise ValueError(f"dt_minutes={self.dt_minutes} does not divide 360 minutes (6 h)")
        if abs(self.days * 4 - round(self.days * 4)) > 1e-9 or abs(self.chunk_days * 4 - round(self.chunk_days * 4)) > 1e-9:
            raise ValueError(f"days={self.days} and chunk_days={self.chunk_days} must be multiples of 0.25 (6 h)")
        if self.start.minute or self.start.second or self.start.microsecond or self.start.hour % 6:
            raise ValueError(f"start={self.start.isoformat()} must lie on the 6-hourly grid (00/06/12/18 UTC)")
        return self

    @property
    def end(self) -> datetime:
        """Last output time (inclusive)."""
        return self.start + timedelta(days=self.days) - timedelta(hours=6)

    @property
    def grid(self) -> GridConfig:
        nlat = {21: 32, 42: 64, 85: 128}[self.truncation]
        return GridConfig(kind="gaussian", nlat=nlat, nlon=2 * nlat)


class NatureRunSource(Frozen):
    """States read from the nature-run store this config generates."""

    kind: Literal["nature_run"] = "nature_run"
    member: int = Field(default=0, ge=0, description="Trajectory used as the truth.")


class WeatherBench2Source(Frozen):
    """States read from an ERA5/WeatherBench2-style Zarr store."""

    kind: Literal["wb2_zarr"] = "wb2_zarr"
    path: str = Field(min_length=1, description="Zarr store (local path or fsspec URL such as gs://...) with dims "
                      "(time, level, latitude, longitude); with-pole grids (nlat + 1 latitudes) are accepted for an "
                      "equiangular state grid of nlat.")


class GribSource(Frozen):
    """States read from ERA5 GRIB files through ecCodes/cfgrib."""

    kind: Literal["grib"] = "grib"
    paths: tuple[Path, ...] = Field(min_length=1, description="GRIB files.")
    member: int | None = Field(default=None, description="Ensemble member to select, if the files hold several.")
    filter_by_keys: dict[str, str | int] = Field(default_factory=dict, description="ecCodes keys the messages read "
                                                 "must match, e.g. {typeOfLevel: isobaricInhPa}.")


DataSource = Annotated[Union[NatureRunSource, WeatherBench2Source, GribSource], Field(discriminator="kind")]


class Period(Frozen):
    """A closed interval of 6-hourly times, of the data's trajectory or of the listed nature-run members."""

    start: datetime
    end: datetime
    members: tuple[int, ...] | None = Field(
        default=None, min_length=1,
        description="Nature-run members (trajectories) this split reads; None: `data.member`. Training on members "
        "other than `data.member` keeps validation and test on a trajectory never trained on.",
    )

    @model_validator(mode="after")
    def _order(self):
        if self.end < self.start:
            raise ValueError(f"end={self.end.isoformat()} must not be before start={self.start.isoformat()}")
        return self


class SplitsConfig(Frozen):
    """Train / validation / test periods; ordered in time and disjoint."""

    train: Period
    validation: Period
    test: Period

    @model_validator(mode="after")
    def _disjoint(self):
        if self.validation.members != self.test.members:
            raise ValueError(f"validation and test must read the same trajectory; got members {self.validation.members} "
                             f"and {self.test.members}")
        train_apart = self.train.members is not None  # other trajectories: the experiment checks they are
        if not ((train_apart or self.train.end < self.validation.start) and self.validation.end < self.test.start):
            raise ValueError(
                "splits must be ordered and disjoint: train.end < validation.start (unless train reads other members) "
                f"and validation.end < test.start; got train.end={self.train.end.isoformat()}, validation="
                f"[{self.validation.start.isoformat()}, {self.validation.end.isoformat()}], test.start={self.test.start.isoformat()}"
            )
        return self


class ExperimentConfig(Frozen):
    """One experiment: the state it analyses, where states come from, and its periods."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Short identifier used in paths.")
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present.")
    state: StateConfig
    nature_run: HeldSuarezConfig | None = None
    data: DataSource
    splits: SplitsConfig

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.kind != "nature_run" and any(getattr(self.splits, s).members for s in ("train", "validation", "test")):
            raise ValueError("splits.*.members select nature-run trajectories; data.kind is not nature_run")
        if self.data.kind == "nature_run":
            nr = self.nature_run
            if nr is None:
                raise ValueError("data.kind='nature_run' needs a nature_run block")
            if self.state.grid != nr.grid:
                raise ValueError(f"state.grid {self.state.grid.model_dump()} != T{nr.truncation} grid {nr.grid.model_dump()}")
            bad = set(self.state.upper_air) - {"geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"}
            bad |= set(self.state.surface) - {"surface_pressure", "mean_sea_level_pressure"}
            if bad:
                raise ValueError(f"the dry Held–Suarez nature run cannot provide {sorted(bad)}")
            if self.data.member >= nr.members:
                raise ValueError(f"data.member={self.data.member} but the nature run has {nr.members} members")
            if self.splits.validation.members not in (None, (self.data.member,)):
                raise ValueError(f"validation and test are scored against data.member={self.data.member}; got splits."
                                 f"validation.members {self.splits.validation.members}")
            train = self.splits.train.members or ()
            if any(m >= nr.members for m in train) or len(set(train)) != len(train):
                raise ValueError(f"splits.train.members {train} must be distinct members of the {nr.members} of the nature run")
            if self.data.member in train and not self.splits.train.end < self.splits.validation.start:
                raise ValueError(f"splits.train.members {train} include data.member={self.data.member}, the trajectory "
                                 "of validation and test: train must then end before validation starts")
            for split in ("train", "validation", "test"):
                period = getattr(self.splits, split)
                if period.start < nr.start or period.end > nr.end:
                    raise ValueError(
                        f"splits.{split} [{period.start.isoformat()}, {period.end.isoformat()}] lies outside the "
                        f"nature run [{nr.start.isoformat()}, {nr.end.isoformat()}]"
                    )
        return self


def format_validation_errors(err: ValidationError, path: Path) -> str:
    """One line per invalid field: dotted path, rule broken and the value given."""
    lines = [f"invalid config {path}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{…}"
        lines.append(f"  {where}: {e['msg']} (got {shown[:120]})")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """The YAML mapping in `path`; ConfigError naming the file when unreadable, not YAML or not a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping at top level; got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict, overrides: Sequence[str], what: str = "config") -> dict:
    """A copy of `raw` with each `dotted.key=value` set (value parsed as YAML: `2`, `true`, `[1, 2]`, `{a: 1}`);
    ConfigError on an assignment without `=`, an empty key, or a key path through a non-mapping."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} for the {what} must look like key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not YAML ({exc})") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a mapping in the {what}")
        node[parts[-1]] = value
    return out


def load_yaml_model(path: str | Path, model: type[BaseModel], what: str = "config", overrides: Sequence[str] = ()):
    """Read a YAML mapping, apply `overrides` (`key.sub=value`) and validate it as `model`; raise ConfigError
    naming the file, field, value and rule."""
    raw = apply_overrides(read_yaml_mapping(path, what), overrides, what)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, path)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a YAML config (with `key.sub=value` overrides); raise ConfigError naming field, value and rule."""
    return load_yaml_model(path, ExperimentConfig, overrides=overrides)


def resolved(config: BaseModel) -> dict:
    return config.model_dump(mode="json")


def config_hash(config: BaseModel) -> str:
    """sha256 of the canonical JSON of the resolved values (first 16 hex digits)."""
    canonical = json.dumps(resolved(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
