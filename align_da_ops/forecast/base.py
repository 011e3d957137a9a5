"""The forecast-model contract and rollouts built from it.

`ForecastModel.step(state) -> state` advances a channel-stacked physical state
(*leading, channel, lat, lon) by `step_hours` (6 h); it is deterministic and
works on any leading (ensemble) dims, on the state's device. Multi-step
forecasts are only ever built from `step` (`rollout`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ForecastModel(Protocol):
    name: str
    step_hours: int

    def step(self, state: torch.Tensor) -> torch.Tensor: ...


def rollout(model: ForecastModel, state: torch.Tensor, leads_hours: list[int]) -> dict[int, torch.Tensor]:
    """States at each requested lead (multiples of the model step), from repeated `step`s."""
    for lead in leads_hours:
        if lead <= 0 or lead % model.step_hours:
            raise ValueError(f"lead {lead} h is not a positive multiple of the {model.step_hours} h step")
    out, current, hours = {}, state, 0
    for lead in sorted(set(leads_hours)):
        while hours < lead:
            current = model.step(current)
            hours += model.step_hours
        out[lead] = current
    return out


class Persistence:
    """Tomorrow equals today: the simplest reference forecast."""

    name = "persistence"
    step_hours = 6

    def step(self, state: torch.Tensor) -> torch.Tensor:
        return state.clone()
