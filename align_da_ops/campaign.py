"""Campaigns (files in cycles/): which experiment, which period, how to cycle, where to archive.

A campaign names the experiment config (the world: state, data, splits), the
mode (replay: as fast as possible; continuous: on the 6-hourly clock), the
period, the observation sources, the analysis method, the forecast model, the
cold start and the archive. Pydantic v2, frozen, unknown keys refused.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from align_da_ops.analysis.latent_diffusion import LatentDiffusionConfig
from align_da_ops.analysis.letkf import LETKFConfig
from align_da_ops.analysis.threedvar import ThreeDVarConfig
from align_da_ops.config import ExperimentConfig, Frozen, load_config, load_yaml_model
from align_da_ops.obs.config import ObservationsConfig
from align_da_ops.times import CycleTime


class BackgroundOnlyConfig(Frozen):
    """No assimilation: the free-running reference."""

    kind: Literal["background_only"] = "background_only"


AnalysisConfig = Annotated[
    Union[BackgroundOnlyConfig, ThreeDVarConfig, LatentDiffusionConfig, LETKFConfig], Field(discriminator="kind")
]


class DynamicalCoreForecastConfig(Frozen):
    """The nature run's own core (perfect-model OSSE, up to the pressure/sigma round trip)."""

    kind: Literal["dynamical_core"] = "dynamical_core"


class PersistenceForecastConfig(Frozen):
    """Persistence: the forecast equals the analysis."""

    kind: Literal["persistence"] = "persistence"


class NeuralForecastConfig(Frozen):
    """The trained neural 6-h forecast model (`align-da train forecast`)."""

    kind: Literal["neural"] = "neural"
    checkpoint: Path | None = Field(
        default=None, description="Checkpoint (.pt); None: the one packaged for the experiment (e.g. tiny)."
    )


ForecastConfig = Annotated[
    Union[DynamicalCoreForecastConfig, PersistenceForecastConfig, NeuralForecastConfig], Field(discriminator="kind")
]


class ClimatologicalPerturbations(Frozen):
    """Members = start state + scale/√2 × (difference of two random training-split states), centred."""

    kind: Literal["climatological"] = "climatological"
    scale: float = Field(default=1.0, gt=0, le=10, description="Perturbation std in units of the climatological std.")


class CovariancePerturbations(Frozen):
    """Members = start state + scale × B^{1/2} v, v ~ N(0, I), centred (B: an NMC `.npz`, e.g. the shipped one)."""

    kind: Literal["covariance"] = "covariance"
    covariance: Path = Field(description="B file (.npz from `SpectralCovariance.save`).")
    scale: float = Field(default=1.0, gt=0, le=10, description="Multiplies the perturbations (std).")


PerturbationConfig = Annotated[Union[ClimatologicalPerturbations, CovariancePerturbations], Field(discriminator="kind")]


class NatureRunOffsetStart(Frozen):
    """Cold start from the truth `offset_days` earlier: a realistic state unrelated to the truth at start.

    Cycled ensembles (LETKF) start from that state plus `perturbations`, seeded per member."""

    kind: Literal["truth_offset"] = "truth_offset"
    offset_days: float = Field(default=10.0, gt=0, le=36500, description="Days between the start state's valid time and start.")
    perturbations: PerturbationConfig = Field(default_factory=ClimatologicalPerturbations)


ColdStartConfig = Annotated[Union[NatureRunOffsetStart], Field(discriminator="kind")]


class CampaignConfig(Frozen):
    """One cycling campaign."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Short identifier (seeds, paths).")
    config: Path = Field(description="Experiment config YAML (relative to the working directory).")
    mode: Literal["replay", "continuous"] = "replay"
    start: datetime = Field(description="First cycle (cold start).")
    end: datetime | None = Field(default=None, description="Last cycle (inclusive); None: open-ended (continuous).")
    observations: ObservationsConfig = Field(default_factory=ObservationsConfig)
    analysis: AnalysisConfig = Field(default_factory=BackgroundOnlyConfig)
    forecast_model: ForecastConfig = Field(default_factory=DynamicalCoreForecastConfig)
    cold_start: ColdStartConfig = Field(default_factory=NatureRunOffsetStart)
    leads_hours: tuple[int, ...] = Field(default=(6, 24, 48), description="Forecast leads archived (must include 6; at most 30 days).")
    archive: Path = Field(description="Archive directory (not a file, not inside the installed package).")
    seed: int = Field(default=0, ge=0, description="Base of every per-cycle, per-member seed.")
    on_failure: Literal["fail", "background"] = Field(
        default="background", description="A failed analysis: stop (fail) or archive the background, flagged."
    )
    cutoff: timedelta = Field(default=timedelta(hours=1), ge=timedelta(0), description="Observation cut-off after cycle time.")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Timezone-aware times become naive UTC (the engine's convention), so start and end always compare;
        both must be cycle times (00/06/12/18 UTC)."""
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        if value is not None:
            CycleTime(value)  # on the 6-hourly grid
        return value

    @field_validator("archive")
    @classmethod
    def _archive_path(cls, value: Path) -> Path:
        import align_da_ops

        if str(value).strip() in ("", "."):
            raise ValueError("archive must name a directory; got an empty path")
        if value.exists() and not value.is_dir():
            raise ValueError(f"archive {value} exists and is not a directory")
        package = Path(align_da_ops.__file__).resolve().parent
        if value.resolve().is_relative_to(package):
            raise ValueError(f"archive {value} lies inside the installed package {package}")
        return value

    @model_validator(mode="after")
    def _checks(self):
        if self.end is not None:
            if self.end < self.start:
                raise ValueError(f"end={self.end.isoformat()} is before start={self.start.isoformat()}")
        elif self.mode == "replay":
            raise ValueError("a replay campaign needs an end")
        if not timedelta(0) <= self.cutoff < timedelta(hours=6):
            raise ValueError(f"cutoff must be under 6 h; got {self.cutoff}")
        if 6 not in self.leads_hours or any(h <= 0 or h % 6 or h > 720 for h in self.leads_hours):
            raise ValueError(f"leads_hours must be positive multiples of 6 up to 720 (30 days) including 6; got {self.leads_hours}")
        return self

    @property
    def first(self) -> CycleTime:
        return CycleTime(self.start)

    @property
    def last(self) -> CycleTime | None:
        return None if self.end is None else CycleTime(self.end)


def load_campaign(path: str | Path, overrides: Sequence[str] = ()) -> tuple[CampaignConfig, ExperimentConfig]:
    """Read and validate a campaign and the experiment config it names. `overrides` are `key.sub=value`
    assignments: on the campaign, or on its experiment config when the key starts with `experiment.`."""
    on_experiment = [o.removeprefix("experiment.") for o in overrides if o.startswith("experiment.")]
    on_campaign = [o for o in overrides if not o.startswith("experiment.")]
    campaign = load_yaml_model(path, CampaignConfig, "campaign", on_campaign)
    return campaign, load_config(campaign.config, on_experiment)
