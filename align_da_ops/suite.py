"""Suites: paired cycling experiments (methods × networks × seeds) tuned on validation, scored on test.

A suite file (cycles/*.suite.yaml) names the experiment, the analysis methods, the
observing networks and the seeds. It expands into ordinary campaigns, one per
(method, network, seed, period), each with its own archive under `archive_root`:

- `validation` campaigns tune: each method's `sweep` (a grid of analysis settings)
  is cycled over the validation split with the `tuning_seeds`, scored by
  `tuning_score` at `tuning_lead`, and the best candidate is reported per network;
  the chosen values are written, with a comment on how they were chosen, into the
  method's `tuned` block of the suite file;
- `test` campaigns score: every method with its `tuned` settings, every network,
  every seed, over the test split.

Each campaign starts `spinup_days` before its scoring window (cold start from the
truth `cold_start.offset_days` earlier still); the spin-up cycles are never scored.
Observations depend on (experiment, seed, cycle, network spec) only, so every method
of one (network, seed) assimilates bitwise-identical observations. A background-only
method (the free run) is not changed by observations: it runs once per (period,
network), with the first seed (for its O−B monitoring), and is paired with every seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from align_da_ops.campaign import (
    AnalysisConfig,
    CampaignConfig,
    ColdStartConfig,
    ForecastConfig,
    NatureRunOffsetStart,
    NeuralForecastConfig,
)
from align_da_ops.config import ExperimentConfig, Frozen, format_validation_errors, load_config, load_yaml_model
from align_da_ops.errors import ConfigError
from align_da_ops.obs.config import NetworkConfig, ObservationsConfig, QCConfig

Period = Literal["validation", "test"]
NAME = r"^[a-z0-9][a-z0-9-]{0,23}$"


class SuiteMethod(Frozen):
    """One analysis method of the suite."""

    name: str = Field(pattern=NAME, description="Short label (tables, archive paths).")
    analysis: AnalysisConfig = Field(description="The campaign `analysis:` block (untuned defaults).")
    tuned: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per network name: analysis settings chosen on the validation period (`align-da suite tune`).",
    )
    sweep: dict[str, list[Any]] | list[dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="Analysis field -> candidate values; their grid is tried on validation on top of `tuned`. "
        "A list of grids: each tried on top of `tuned` (one pass of coordinate descent per `suite tune`).",
    )

    seeded: dict[int, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per suite seed: analysis settings of that seed's model (e.g. `prior:` of an alignment seed), so "
        "seed s cycles the model trained with seed s and the confidence intervals hold the training seeds' spread.",
    )

    def analysis_for(self, network: str, overrides: dict[str, Any] | None = None, seed: int | None = None) -> AnalysisConfig:
        """The analysis block for one network: base ⊕ tuned[network] ⊕ seeded[seed] ⊕ overrides (validated)."""
        raw = {**self.analysis.model_dump(mode="json"), **self.tuned.get(network, {}),
               **self.seeded.get(seed, {}), **(overrides or {})}
        try:
            return type(self.analysis).model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_errors(exc, f"suite method {self.name!r} ({network})")) from None

    def candidates(self) -> list[dict[str, Any]]:
        """Every grid's candidates, one dict of overrides each (empty: no sweep)."""
        grids = self.sweep if isinstance(self.sweep, list) else [self.sweep] if self.sweep else []
        out = []
        for grid in grids:
            keys = sorted(grid)
            out += [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
        return out

    def setting(self, network: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """What identifies a candidate's run: its overrides plus the tuned values they leave in force."""
        return {**self.tuned.get(network, {}), **overrides}

    @property
    def observes(self) -> bool:
        return self.analysis.kind != "background_only"


class SuiteNetwork(Frozen):
    """One observing system of the suite: synthetic networks and their QC."""

    name: str = Field(pattern=NAME)
    networks: tuple[NetworkConfig, ...] = Field(min_length=1)
    qc: QCConfig = Field(default_factory=QCConfig)


class SuiteConfig(Frozen):
    """A paired comparison: methods × networks × seeds, tuned on validation, scored on test."""

    name: str = Field(pattern=NAME)
    config: Path = Field(description="Experiment config YAML (an OSSE: data.kind nature_run).")
    methods: tuple[SuiteMethod, ...] = Field(min_length=1)
    networks: tuple[SuiteNetwork, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field(default=(0, 1, 2), min_length=1, description="Observation and sampler seeds.")
    tuning_seeds: tuple[int, ...] = Field(default=(0,), min_length=1, description="Seeds of the validation sweeps.")
    spinup_days: float = Field(default=5.0, ge=0, description="Cycled before each scoring window, never scored.")
    tuning_days: float | None = Field(
        default=None, gt=0, description="Days of the validation split scored when tuning (from its start); None: all."
    )
    test_days: float | None = Field(
        default=None, gt=0, description="Days of the test split scored (from its start); None: all (smoke runs: less)."
    )
    tuning_score: str = Field(default="mse_normalized", description="Score minimised by the sweeps.")
    tuning_lead: int = Field(default=0, ge=0, description="Lead (h) of the tuning score: 0 = the analysis.")
    forecast_model: ForecastConfig = Field(default_factory=NeuralForecastConfig)
    cold_start: ColdStartConfig = Field(default_factory=NatureRunOffsetStart)
    leads_hours: tuple[int, ...] = (6, 24, 48)
    archive_root: Path = Field(description="Every campaign's archive goes below this directory.")
    block_days: float = Field(default=2.0, gt=0, description="Bootstrap block (≥ the error decorrelation time).")
    resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples.")

    @model_validator(mode="after")
    def _unique(self):
        for what, names in (("method", [m.name for m in self.methods]), ("network", [n.name for n in self.networks])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique; got {names}")
        known = {n.name for n in self.networks}
        for m in self.methods:
            unknown = sorted(set(m.tuned) - known)
            if unknown:
                raise ValueError(f"method {m.name!r} is tuned for unknown networks {unknown}; networks are {sorted(known)}")
            unseeded = sorted(set(m.seeded) - set(self.seeds))
            if unseeded:
                raise ValueError(f"method {m.name!r} has settings for seeds {unseeded} outside the suite's seeds "
                                 f"{list(self.seeds)}")
        return self

    def method(self, name: str) -> SuiteMethod:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"suite {self.name!r} has no method {name!r}; it has {[m.name for m in self.methods]}")


def load_suite(path: str | Path) -> tuple[SuiteConfig, ExperimentConfig]:
    """Read and validate a suite and the experiment config it names (must be an OSSE)."""
    suite = load_yaml_model(path, SuiteConfig, "suite")
    experiment = load_config(suite.config)
    if experiment.data.kind != "nature_run":
        raise ConfigError(f"suite {path}: scoring needs the truth of an OSSE; {suite.config} has data.kind "
                          f"{experiment.data.kind!r}")
    return suite, experiment


# -- expansion into campaigns ---------------------------------------------------------------------
class Run:
    """One campaign of a suite and the window it is scored on."""

    def __init__(self, campaign: CampaignConfig, method: str, network: str, seed: int, score_start, score_end,
                 overrides: dict | None = None):
        self.campaign = campaign
        self.method, self.network, self.seed = method, network, seed
        self.score_start, self.score_end = score_start, score_end
        self.overrides = overrides or {}


def scoring_window(suite: SuiteConfig, experiment: ExperimentConfig, period: Period):
    """(first, last) scored cycle of a period: the split, cut to tuning_days / test_days."""
    split = experiment.splits.validation if period == "validation" else experiment.splits.test
    days = suite.tuning_days if period == "validation" else suite.test_days
    end = split.end if days is None else min(split.end, split.start + timedelta(days=days) - timedelta(hours=6))
    return split.start, end


def _candidate_tag(overrides: dict) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def make_run(
    suite: SuiteConfig, experiment: ExperimentConfig, method: SuiteMethod, network: SuiteNetwork, seed: int,
    period: Period, overrides: dict | None = None,
) -> Run:
    """The campaign of (method, network, seed, period[, sweep candidate])."""
    start, end = scoring_window(suite, experiment, period)
    run_seed = suite.seeds[0] if not method.observes else seed  # the free run is the same for every seed
    parts = [suite.name, method.name, network.name, f"s{run_seed}", period[:4]]
    path = suite.archive_root / period / method.name / network.name / f"s{run_seed}"
    if overrides:
        tag = _candidate_tag(method.setting(network.name, overrides))
        parts.append(tag)
        path = path / f"candidate-{tag}"
    campaign = CampaignConfig(
        name="-".join(parts)[:64].rstrip("-"),
        config=suite.config,
        mode="replay",
        start=start - timedelta(days=suite.spinup_days),
        end=end,
        observations=ObservationsConfig(networks=network.networks, qc=network.qc),
        analysis=method.analysis_for(network.name, overrides, run_seed),
        forecast_model=suite.forecast_model,
        cold_start=suite.cold_start,
        leads_hours=suite.leads_hours,
        archive=path,
        seed=run_seed,
        on_failure="background",
    )
    return Run(campaign, method.name, network.name, seed, start, end, overrides)


def scoring_runs(suite: SuiteConfig, experiment: ExperimentConfig, methods: list[str] | None = None) -> list[Run]:
    """Every (method, network, seed) campaign of the test period; free runs appear once per (network, seed)."""
    chosen = [suite.method(m) for m in methods] if methods else list(suite.methods)
    return [make_run(suite, experiment, m, n, s, "test") for m in chosen for n in suite.networks for s in suite.seeds]


def tuning_runs(suite: SuiteConfig, experiment: ExperimentConfig, methods: list[str] | None = None) -> list[Run]:
    """Every sweep candidate × network × tuning seed on the validation period."""
    chosen = [suite.method(m) for m in methods] if methods else list(suite.methods)
    return [make_run(suite, experiment, m, n, s, "validation", c)
            for m in chosen for n in suite.networks for c in m.candidates() for s in suite.tuning_seeds]


def distinct_runs(runs: list[Run]) -> list[Run]:
    """The runs with distinct archives, first occurrence kept (shared free runs once)."""
    seen, distinct = set(), []
    for run in runs:
        if run.campaign.archive not in seen:
            seen.add(run.campaign.archive)
            distinct.append(run)
    return distinct


def run_campaign(campaign: CampaignConfig) -> int:
    """Replay one campaign over its whole range, resuming what its archive holds; the cycles done.

    Idempotent (a rerun after a kill resumes), so it is safe as a retried cluster task."""
    from align_da_ops.replaying import replay
    from align_da_ops.wiring import build_context

    ctx = build_context(campaign, load_config(campaign.config))
    replay(ctx, campaign.first, campaign.last)
    return len(ctx.archive.done_cycles())


def execute(runs: list[Run], progress: Callable[[Run, int, int], None] | None = None, client=None) -> None:
    """Replay every distinct campaign (resuming what is done; shared free runs once).

    Serially in this process, or with a `distributed.Client` as one task per campaign (`cluster.run_tasks`;
    each campaign holds its own archive and lock). `progress(run, i, n)`: before each serial run, after
    each finished task."""
    distinct = distinct_runs(runs)
    if client is None:
        for i, run in enumerate(distinct):
            if progress:
                progress(run, i, len(distinct))
            run_campaign(run.campaign)
        return
    from align_da_ops.cluster import run_tasks

    keys = [f"campaign-{i}-{run.campaign.name}" for i, run in enumerate(distinct)]
    run_tasks(client, run_campaign, [run.campaign for run in distinct], keys=keys,
              on_done=(lambda i, done, n: progress(distinct[i], done - 1, n)) if progress else None)
