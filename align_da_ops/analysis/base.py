"""The contract every analysis method meets, and the trivial background-only method.

`AnalysisMethod.analyse(background, obs, operator, generators)` is pure: no I/O,
no global state; randomness only through `generators`, one torch.Generator per
ensemble member, seeded by the engine from (campaign, cycle, member); a method
declares its ensemble size as `members` (1 when absent). Inputs:
- `background`: (channel, lat, lon) tensor in physical units (the schema layout);
- `obs`: the observations to assimilate (all rows passed QC);
- `operator`: H prepared for exactly those rows: `operator(x)` maps
  (*leading, channel, lat, lon) -> (*leading, n_obs), differentiable, linear;
- `generators`: `members` torch.Generators (deterministic methods ignore them).
Output: `AnalysisResult` with the analysis (the ensemble mean where there is an
ensemble), optional members (N, channel, lat, lon) and scalar diagnostics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import PreparedOperator


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    analysis: torch.Tensor
    members: torch.Tensor | None = None
    diagnostics: dict[str, float] = dataclasses.field(default_factory=dict)


@runtime_checkable
class AnalysisMethod(Protocol):
    name: str

    def analyse(
        self, background: torch.Tensor, obs: ObsBatch, operator: PreparedOperator, generators: Sequence[torch.Generator]
    ) -> AnalysisResult: ...


@runtime_checkable
class EnsembleAnalysisMethod(Protocol):
    """A method that updates a cycled ensemble (the LETKF): the engine advances each of its `members`
    with the forecast model and passes the background ensemble (members, channel, lat, lon) to
    `analyse_members`; the result must carry the analysis members (their mean is the analysis)."""

    name: str
    members: int

    def analyse_members(
        self, members: torch.Tensor, obs: ObsBatch, operator: PreparedOperator, generators: Sequence[torch.Generator]
    ) -> AnalysisResult: ...


class BackgroundOnly:
    """No assimilation: the analysis is the background (the free-running reference)."""

    name = "background_only"

    def analyse(self, background, obs, operator, generators) -> AnalysisResult:
        return AnalysisResult(analysis=background.clone(), diagnostics={"n_obs": float(len(obs))})
