"""Held–Suarez (1994) forcing for the dinosaur-torch primitive equations.

Newtonian relaxation of temperature to a zonally symmetric equilibrium profile
and Rayleigh friction in the boundary layer (sigma > sigma_b). Written from the
published recipe (Held & Suarez 1994, BAMS 75, 1825-1830); all parameters are
in SI on input and non-dimensionalised through the core's `SimUnits`.

Contract: an explicit-only ODE term, `explicit_terms(state) -> State` with the
same modal shapes as `state`, `sim_time=0.0` and no surface-pressure tendency.
"""

from __future__ import annotations

import dataclasses

import torch
from dinosaur_torch import coordinate_systems, primitive_equations, scales, units

DAY_S = 86400.0


@dataclasses.dataclass(frozen=True)
class HeldSuarezParameters:
    """Forcing constants (Held & Suarez 1994, table 1)."""

    sigma_b: float = 0.7  # top of the frictional boundary layer
    k_f_per_day: float = 1.0  # Rayleigh friction rate at the surface
    k_a_per_day: float = 1.0 / 40.0  # free-atmosphere thermal relaxation
    k_s_per_day: float = 1.0 / 4.0  # surface thermal relaxation at the equator
    delta_t_y: float = 60.0  # equator-to-pole temperature difference, K
    delta_theta_z: float = 10.0  # static stability parameter, K
    t_max: float = 315.0  # equatorial surface equilibrium temperature, K
    t_min: float = 200.0  # stratospheric floor, K
    p0_pa: float = 1.0e5  # reference pressure


class HeldSuarezForcing(torch.nn.Module):
    """Explicit Held–Suarez tendencies on the modal primitive-equation state."""

    def __init__(
        self,
        coords: coordinate_systems.CoordinateSystem,
        physics: units.SimUnits,
        reference_temperature: torch.Tensor,
        params: HeldSuarezParameters = HeldSuarezParameters(),
    ):
        super().__init__()
        self.coords = coords
        self.kappa = float(physics.kappa)
        ref = coords.horizontal.cos_lat
        as_t = lambda x: torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
        per_day = lambda rate: physics.nondimensionalize(rate / (DAY_S * scales.units.s))
        self.p0 = float(physics.nondimensionalize(params.p0_pa * scales.units.pascal))
        self.t_max = float(physics.nondimensionalize(params.t_max * scales.units.degK))
        self.t_min = float(physics.nondimensionalize(params.t_min * scales.units.degK))
        self.dty = float(physics.nondimensionalize(params.delta_t_y * scales.units.degK))
        self.dthz = float(physics.nondimensionalize(params.delta_theta_z * scales.units.degK))
        sigma = as_t(coords.vertical.coordinates.centers)[:, None, None]
        _, sin_lat = coords.horizontal.spec.nodal_axes
        sin_lat = as_t(sin_lat)[None, None, :]
        cos2 = 1.0 - sin_lat**2
        boundary = torch.clamp((sigma - params.sigma_b) / (1.0 - params.sigma_b), min=0.0)
        k_a, k_s = per_day(params.k_a_per_day), per_day(params.k_s_per_day)
        self.register_buffer("sigma", sigma, persistent=False)
        self.register_buffer("sin2_lat", sin_lat**2, persistent=False)
        self.register_buffer("cos2_lat", cos2, persistent=False)
        self.register_buffer("k_v", per_day(params.k_f_per_day) * boundary, persistent=False)
        self.register_buffer("k_t", k_a + (k_s - k_a) * boundary * cos2**2, persistent=False)
        self.register_buffer(
            "t_ref", as_t(reference_temperature).reshape(-1, 1, 1), persistent=False
        )

    def equilibrium_temperature(self, surface_pressure: torch.Tensor) -> torch.Tensor:
        """T_eq(lat, p) from nodal (non-dimensional) surface pressure [..., 1, lon, lat]."""
        p_over_p0 = self.sigma * surface_pressure / self.p0
        t_eq = p_over_p0**self.kappa * (
            self.t_max - self.dty * self.sin2_lat - self.dthz * torch.log(p_over_p0) * self.cos2_lat
        )
        return torch.clamp(t_eq, min=self.t_min)

    def explicit_terms(self, state: primitive_equations.State) -> primitive_equations.State:
        grid = self.coords.horizontal
        aux = primitive_equations.compute_diagnostic_state(state, self.coords)
        u_cos, v_cos = aux.cos_lat_u
        # Rayleigh friction on (u, v); grid.cos_lat_vector gives u·cosθ, so
        # dividing by cos²θ yields u/cosθ, the input curl/div_cos_lat expect.
        sec2 = grid.sec2_lat
        fu = grid.to_modal(-self.k_v * u_cos * sec2)
        fv = grid.to_modal(-self.k_v * v_cos * sec2)
        temperature = self.t_ref + aux.temperature_variation
        surface_pressure = torch.exp(grid.to_nodal(state.log_surface_pressure))
        dtemp = -self.k_t * (temperature - self.equilibrium_temperature(surface_pressure))
        return primitive_equations.State(
            vorticity=grid.curl_cos_lat((fu, fv)),
            divergence=grid.div_cos_lat((fu, fv)),
            temperature_variation=grid.to_modal(dtemp),
            log_surface_pressure=torch.zeros_like(state.log_surface_pressure),
            tracers={},
            sim_time=0.0,
        )
