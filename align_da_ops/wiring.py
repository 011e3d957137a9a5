"""Config -> components. The only module that knows which concrete class each `kind` means."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import align_da_ops
from align_da_ops import grid
from align_da_ops.analysis.base import AnalysisMethod, BackgroundOnly, EnsembleAnalysisMethod
from align_da_ops.analysis.covariance import SpectralCovariance
from align_da_ops.analysis.letkf import LETKF
from align_da_ops.analysis.threedvar import ThreeDVar
from align_da_ops.archive import Archive
from align_da_ops.campaign import CampaignConfig
from align_da_ops.config import ExperimentConfig, config_hash
from align_da_ops.data import nature_run as nr
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.devices import resolve_device
from align_da_ops.errors import ConfigError, InputDataError
from align_da_ops.forecast.base import ForecastModel, Persistence
from align_da_ops.forecast.dynamical import DynamicalCoreModel
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.feed import ObsFeed
from align_da_ops.obs.networks import Truth, simulate
from align_da_ops.obs.operators import GridInterpolator
from align_da_ops.times import CycleTime


@dataclasses.dataclass
class CycleContext:
    """Everything `run_cycle` needs, built once per engine."""

    campaign: CampaignConfig
    experiment: ExperimentConfig
    layout: grid.StateLayout
    latitudes: np.ndarray
    longitudes: np.ndarray
    archive: Archive
    model: ForecastModel
    method: AnalysisMethod
    observations: Callable[[CycleTime], ObsBatch]
    interpolator: GridInterpolator
    initial_state: Callable[[], torch.Tensor]
    device: torch.device
    provenance: dict
    initial_ensemble: Callable[[list[torch.Generator]], torch.Tensor] | None = None  # cycled ensembles only

    @property
    def cycles_ensemble(self) -> bool:
        """True when the method updates a cycled ensemble (each member advanced by the forecast model)."""
        return isinstance(self.method, EnsembleAnalysisMethod)


class ObservationSource:
    """Synthetic networks drawn from the truth (OSSE) and/or a directory-drop feed, for one window.

    Synthetic draws are seeded by (experiment config name, campaign seed, cycle, network spec),
    never by the campaign's name or method, so campaigns that differ only in method are paired.
    """

    def __init__(self, campaign: CampaignConfig, experiment: ExperimentConfig, truth: xr.Dataset | None):
        self.cfg = campaign.observations
        self.experiment = experiment.name
        self.seed = campaign.seed
        self.truth = truth
        self.feed = ObsFeed(self.cfg.feed.root) if self.cfg.feed else None
        if self.cfg.networks and truth is None:
            raise ConfigError("synthetic observation networks need a nature run (data.kind: nature_run)")

    def __call__(self, cycle: CycleTime) -> ObsBatch:
        parts = []
        if self.cfg.networks:
            around = self.truth.sel({grid.TIME: slice(cycle.value - timedelta(hours=6), cycle.value + timedelta(hours=6))})
            parts.append(simulate(self.cfg, Truth.from_dataset(around.load()), cycle.as_numpy(), self.experiment, self.seed).batch)
        if self.feed is not None:
            self.feed.poll()
            start, end = cycle.window(self.cfg.qc.window_half_width)
            parts.append(self.feed.collect(np.datetime64(start, "s"), np.datetime64(end, "s")))
        return ObsBatch.concat(parts) if parts else ObsBatch.empty()


def build_model(campaign: CampaignConfig, experiment: ExperimentConfig, layout, device) -> ForecastModel:
    kind = campaign.forecast_model.kind
    if kind == "persistence":
        return Persistence()
    if kind == "neural":
        from align_da_ops.forecast.checkpoint import load_model, shipped_checkpoint

        path = campaign.forecast_model.checkpoint or shipped_checkpoint(experiment.name)
        return load_model(path, layout.channels, experiment.state.grid.nlat, experiment.state.grid.nlon, device)
    if experiment.nature_run is None:
        raise ConfigError("forecast_model 'dynamical_core' needs the experiment's nature_run core")
    return DynamicalCoreModel(nr.build_core(experiment.nature_run, device), layout)


def build_method(campaign: CampaignConfig, experiment: ExperimentConfig, layout, lat, lon, device) -> AnalysisMethod | EnsembleAnalysisMethod:
    cfg = campaign.analysis
    if cfg.kind == "background_only":
        return BackgroundOnly()
    if cfg.kind == "latent_diffusion":
        return build_latent_diffusion(cfg, experiment, layout, device)
    if cfg.kind == "letkf":
        return LETKF(cfg, layout.channels, layout.levels, lat, lon)
    return ThreeDVar.from_config(cfg, layout.channels, lat, lon)


def build_latent_diffusion(cfg, experiment: ExperimentConfig, layout, device):
    """Autoencoder + prior (packaged for the experiment unless paths are given) -> LatentDiffusion."""
    from align_da_ops.analysis.latent_diffusion import LatentDiffusion
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    nlat, nlon = experiment.state.grid.nlat, experiment.state.grid.nlon
    autoencoder = load_autoencoder(cfg.autoencoder or shipped_checkpoint(experiment.name), layout.channels, nlat, nlon, device)
    prior = load_prior(cfg.prior or shipped_prior(experiment.name), autoencoder.content_hash, device)
    return LatentDiffusion(cfg, autoencoder, prior, autoencoder.normalization.std)


def build_context(campaign: CampaignConfig, experiment: ExperimentConfig) -> CycleContext:
    device = resolve_device(experiment.device)
    layout = layout_of(experiment)
    states = open_states(experiment)
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    truth = states if experiment.data.kind == "nature_run" else None
    method = build_method(campaign, experiment, layout, lat, lon, device)
    n_members = getattr(method, "members", 1)
    cycled = isinstance(method, EnsembleAnalysisMethod)  # its members are the next cycle's background: always stored
    stored = n_members if n_members > 1 and (cycled or getattr(campaign.analysis, "store_members", False)) else 0
    archive = Archive.create_or_open(
        campaign.archive, campaign.name, layout, lat, lon, campaign.leads_hours, campaign.first, stored,
        ensemble=n_members > 1,
    )

    def initial_state() -> torch.Tensor:
        when = campaign.start - timedelta(days=campaign.cold_start.offset_days)
        try:
            snap = states.sel({grid.TIME: np.datetime64(when, "ns")}).load()
        except KeyError:
            raise InputDataError(f"cold start needs a state valid at {when.isoformat()}; the data does not have it") from None
        return layout.to_tensor(snap)[0].to(device)

    def initial_ensemble(generators: list[torch.Generator]) -> torch.Tensor:
        perturbations = cold_start_perturbations(campaign, experiment, states, layout, lat, lon, generators)
        return initial_state()[None] + perturbations.to(device)

    model = build_model(campaign, experiment, layout, device)
    provenance = {
        "experiment": experiment.name,
        "campaign": campaign.name,
        "config_hash": config_hash(experiment),
        "campaign_hash": config_hash(campaign),
        "experiment_file": str(Path(campaign.config).resolve()),  # where `report`/`inspect` find the truth
        "data": experiment.data.model_dump(mode="json"),  # the trajectory cycled against (`diffusion.cycled_pairs`)
        "code_version": align_da_ops.__version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "forecast_model": campaign.forecast_model.kind,
        "analysis_method": campaign.analysis.kind,
        # content hashes of everything learned or estimated: B (3D-Var), forecast weights
        "checkpoints": {
            **getattr(method, "provenance", lambda: {})(),
            **getattr(model, "provenance", lambda: {})(),
        },
    }
    return CycleContext(
        campaign, experiment, layout, lat, lon, archive, model, method,
        ObservationSource(campaign, experiment, truth), GridInterpolator(layout, lat, lon), initial_state, device, provenance,
        initial_ensemble if cycled else None,
    )


def cold_start_perturbations(campaign: CampaignConfig, experiment: ExperimentConfig, states: xr.Dataset, layout, lat, lon,
                             generators: list[torch.Generator]) -> torch.Tensor:
    """(members, channel, lat, lon) perturbations with zero mean, one generator per member (see `cold_start`)."""
    cfg = campaign.cold_start.perturbations
    if cfg.kind == "covariance":
        cov = SpectralCovariance.load(cfg.covariance)
        if cov.channels != tuple(layout.channels) or cov.grid_shape[1:] != (len(lat), len(lon)):
            raise ConfigError(f"cold-start covariance {cfg.covariance} is for another state layout or grid")
        op = cov.operator(dtype=torch.float64)
        draws = torch.stack([op.sqrt(torch.randn(op.control_shape, generator=g, dtype=torch.float64)) for g in generators])
        draws = draws * cfg.scale
    else:
        train = experiment.splits.train
        pool = states.sel({grid.TIME: slice(np.datetime64(train.start, "ns"), np.datetime64(train.end, "ns"))})
        n = pool.sizes[grid.TIME]
        if n <= len(generators):
            raise InputDataError(f"climatological cold-start perturbations for {len(generators)} members need more "
                                 f"training-split states than members; the data has {n} (use kind: covariance)")
        draws = []
        for g in generators:
            i, j = torch.randperm(n, generator=g)[:2].tolist()
            pair, _ = layout.to_tensor(pool.isel({grid.TIME: [i, j]}).load(), dtype=torch.float64)
            draws.append((pair[0] - pair[1]) * (cfg.scale / np.sqrt(2.0)))
        draws = torch.stack(draws)
    return (draws - draws.mean(0)).float()


def member_seed(experiment: str, base_seed: int, cycle: CycleTime, member: int) -> int:
    """Seed of one member of one cycle: a hash, so it never depends on order or batching.

    `experiment` is the experiment config's name: methods compared in one suite draw the same
    sampler noise for the same (seed, cycle, member) (common random numbers).
    """
    key = f"{experiment}|{base_seed}|{cycle.compact}|{member}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
