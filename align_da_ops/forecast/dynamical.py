"""The nature run's own dynamical core as a forecast model (the "perfect model" OSSE).

The analysed state lives on pressure levels; the core on sigma levels. `step`
maps pressure levels -> sigma (ln p interpolation, values held constant beyond
the outermost pressure levels), u/v -> vorticity/divergence, advances 6 h, and
maps back (as the nature run does). Geopotential is diagnosed hydrostatically
by the core, not read. So the model is perfect up to this vertical round trip:
its error from the truth measures the representativeness of the channel set.
"""

from __future__ import annotations

import torch

from align_da_ops.data.dycore import HeldSuarezCore
from align_da_ops.data.nature_run import pressure_level_tensor
from align_da_ops.errors import SchemaError
from align_da_ops.grid import StateLayout
from align_da_ops.vertical import interp_log_pressure

_NEEDED = ("temperature", "u_component_of_wind", "v_component_of_wind")


class DynamicalCoreModel:
    name = "dynamical_core"
    step_hours = 6

    def __init__(self, core: HeldSuarezCore, layout: StateLayout):
        missing = [v for v in _NEEDED if v not in layout.upper_air]
        if missing or "surface_pressure" not in layout.surface:
            raise SchemaError(f"the dynamical-core model needs {_NEEDED} and surface_pressure; layout lacks {missing or ['surface_pressure']}")
        self.core = core
        self.layout = layout
        self.levels_pa = torch.tensor([100.0 * p for p in layout.levels], dtype=torch.float64)
        n = len(layout.levels)
        self._slices = {v: slice(layout.upper_air.index(v) * n, (layout.upper_air.index(v) + 1) * n) for v in _NEEDED}
        self._ps = layout.channel_index("surface_pressure")

    def to_core(self, state: torch.Tensor):
        """(member, channel, lat, lon) pressure-level state -> core state."""
        ps = state[:, self._ps : self._ps + 1].double()
        sigma = torch.as_tensor(self.core.sigma_centers, dtype=torch.float64, device=state.device)
        lo, hi = float(self.levels_pa[0]), float(self.levels_pa[-1])
        sigma_p = (sigma[None, :, None, None] * ps).clamp(lo, hi)  # constant beyond the outermost levels
        src_p = self.levels_pa.to(state.device)[None, :, None, None].expand(state.shape[0], -1, *state.shape[-2:])
        fields = {}
        for name, sl in self._slices.items():
            values = state[:, sl].double()
            fields[name] = interp_log_pressure(values, src_p, sigma_p, dim=1)
        return self.core.from_sigma_fields(
            fields["u_component_of_wind"], fields["v_component_of_wind"], fields["temperature"], ps
        )

    @torch.no_grad()
    def step(self, state: torch.Tensor) -> torch.Tensor:
        lead = state.shape[:-3]
        flat = state.reshape(-1, *state.shape[-3:])
        core_state = self.to_core(flat)
        core_state = self.core.advance(core_state, self.core.steps_for_hours(self.step_hours))
        out = pressure_level_tensor(self.core, core_state, self.layout).to(state.device, state.dtype)
        return out.reshape(*lead, *out.shape[-3:])

