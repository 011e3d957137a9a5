"""The OSSE's dynamical core: dry primitive equations with Held–Suarez forcing.

Built on `dinosaur-torch` (spectral transforms, sigma coordinates, IMEX
integrator, filters). This module owns every conversion between the core's
non-dimensional modal state and physical nodal fields, so nothing else needs
to know dinosaur's units or its (level, lon, lat) array order.

Contracts:
- `HeldSuarezCore.advance(state, steps)` is deterministic on CPU: same state in,
  bitwise same state out. States may carry a leading batch (member) axis.
- `sigma_fields(state)` returns physical SI fields ordered (..., level, lat, lon)
  with latitudes south -> north (Gaussian, no poles), longitudes from 0°.
- `to_arrays` / `from_arrays` round-trip a state exactly (restart files).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from dinosaur_torch import (
    coordinate_systems,
    primitive_equations,
    scales,
    sigma_coordinates,
    spherical_harmonic,
    time_integration,
    units,
)

from align_da_ops.data.held_suarez import HeldSuarezForcing, HeldSuarezParameters

_GAUSSIAN_NODES = {21: 16, 42: 32, 85: 64}
REFERENCE_TEMPERATURE_K = 288.0
REFERENCE_SURFACE_PRESSURE_PA = 1.0e5
GRAVITY = float(scales.GRAVITY_ACCELERATION.magnitude)


def supported_truncations() -> tuple[int, ...]:
    return tuple(_GAUSSIAN_NODES)


@dataclasses.dataclass(frozen=True)
class CoreSpec:
    """What fixes the core's physics and discretisation (and so its restart files)."""

    truncation: int = 21
    layers: int = 8
    forcing: HeldSuarezParameters = HeldSuarezParameters()

    def signature(self) -> str:
        f = self.forcing
        return f"held_suarez-T{self.truncation}-L{self.layers}-" + "-".join(
            f"{v:g}" for v in dataclasses.astuple(f)
        )


class HeldSuarezCore:
    """A ready-to-step Held–Suarez world at one resolution on one device."""

    def __init__(
        self,
        spec: CoreSpec,
        dt_minutes: float,
        device: torch.device | str = "cpu",
        filter_tau_s: float = 120.0,
        filter_order: float = 1.5,
        filter_cutoff: float = 0.8,
    ):
        if spec.truncation not in _GAUSSIAN_NODES:
            raise ValueError(
                f"unsupported truncation T{spec.truncation}; choose one of {supported_truncations()}"
            )
        self.spec = spec
        self.device = torch.device(device)
        self.physics = units.SimUnits.from_si()
        grid_spec = spherical_harmonic.GridSpec.construct(
            max_wavenumber=spec.truncation,
            gaussian_nodes=_GAUSSIAN_NODES[spec.truncation],
            radius=self.physics.radius,
        )
        sigma = sigma_coordinates.SigmaCoordinates.equidistant(spec.layers)
        self.coords = coordinate_systems.CoordinateSystem(
            horizontal=spherical_harmonic.Grid(grid_spec, device=self.device),
            vertical=sigma_coordinates.SigmaLevels(sigma, device=self.device),
        )
        self.t_ref = np.full((spec.layers,), self._nondim(REFERENCE_TEMPERATURE_K, "degK"))
        orography = torch.zeros(self.coords.horizontal.modal_shape, device=self.device)
        dynamics = primitive_equations.PrimitiveEquations(
            self.t_ref, orography, self.coords, self.physics
        )
        forcing = HeldSuarezForcing(self.coords, self.physics, torch.as_tensor(self.t_ref), spec.forcing)
        equation = time_integration.compose_equations([dynamics, forcing])
        self.dt_minutes = float(dt_minutes)
        dt = self._nondim(self.dt_minutes * 60.0, "s")
        tau = self._nondim(filter_tau_s, "s")
        step = time_integration.imex_rk_sil3(equation, dt)
        filt = time_integration.exponential_step_filter(
            self.coords.horizontal, dt, tau=tau, order=filter_order, cutoff=filter_cutoff
        )
        self._step = time_integration.step_with_filters(step, [filt])
        self._geopotential_weights = torch.as_tensor(
            primitive_equations.get_geopotential_weights(sigma, self.physics.R),
            dtype=torch.float32,
            device=self.device,
        )
        self._sigma_centers = torch.as_tensor(sigma.centers, dtype=torch.float32, device=self.device)

    # -- units ------------------------------------------------------------------
    def _nondim(self, value: float, unit: str) -> float:
        return float(self.physics.nondimensionalize(value * scales.units(unit)))

    def _dim(self, value: torch.Tensor, unit: str) -> torch.Tensor:
        return value * float(self.physics.dimensionalize(1.0, scales.units(unit)).magnitude)

    # -- grid -------------------------------------------------------------------
    @property
    def latitudes(self) -> np.ndarray:
        """Gaussian latitudes in degrees, south -> north."""
        return np.rad2deg(self.coords.horizontal.spec.latitudes)

    @property
    def longitudes(self) -> np.ndarray:
        return np.rad2deg(self.coords.horizontal.spec.longitudes)

    @property
    def sigma_centers(self) -> np.ndarray:
        return self._sigma_centers.cpu().numpy()

    def steps_for_hours(self, hours: float) -> int:
        steps = hours * 60.0 / self.dt_minutes
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"{hours=} is not a multiple of the time step {self.dt_minutes=} min")
        return int(round(steps))

    # -- states -----------------------------------------------------------------
    def rest_state(self, seed: int, members: int = 1, amplitude_k: float = 0.1):
        """Isothermal atmosphere at rest plus seeded small temperature noise."""
        grid = self.coords.horizontal
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        nodal = (members, self.spec.layers) + grid.nodal_shape
        noise = torch.randn(nodal, generator=gen) * self._nondim(amplitude_k, "degK")
        temperature = grid.to_modal(noise.to(self.device))
        log_ps_nodal = torch.full(
            (members, 1) + grid.nodal_shape,
            float(np.log(self._nondim(REFERENCE_SURFACE_PRESSURE_PA, "pascal"))),
            device=self.device,
        )
        zeros = torch.zeros((members,) + self.coords.modal_shape, device=self.device)
        return primitive_equations.State(
            vorticity=zeros.clone(),
            divergence=zeros.clone(),
            temperature_variation=temperature,
            log_surface_pressure=grid.to_modal(log_ps_nodal),
            tracers={},
            sim_time=0.0,
        )

    def perturb(self, state, seed: int, amplitude_k: float):
        """Adds seeded nodal temperature noise (std `amplitude_k`) to every member."""
        grid = self.coords.horizontal
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        shape = state.temperature_variation.shape[:-2] + grid.nodal_shape
        noise = torch.randn(shape, generator=gen) * self._nondim(amplitude_k, "degK")
        return dataclasses.replace(
            state, temperature_variation=state.temperature_variation + grid.to_modal(noise.to(self.device))
        )

    def replicate(self, state, members: int):
        """Repeats a single-member state along the member axis."""
        rep = lambda t: t.expand((members,) + t.shape[1:]).clone()
        return dataclasses.replace(
            state,
            vorticity=rep(state.vorticity),
            divergence=rep(state.divergence),
            temperature_variation=rep(state.temperature_variation),
            log_surface_pressure=rep(state.log_surface_pressure),
        )

    @torch.no_grad()
    def advance(self, state, steps: int):
        for _ in range(steps):
            state = self._step(state)
        return state

    # -- physical fields --------------------------------------------------------
    @torch.no_grad()
    def sigma_fields(self, state) -> dict[str, torch.Tensor]:
        """Physical fields on sigma levels: u, v [m/s], t [K], z [m²/s²], pressure [Pa], ps [Pa]."""
        grid = self.coords.horizontal
        u, v = grid.vor_div_to_uv_nodal(state.vorticity, state.divergence)
        t_variation = grid.to_nodal(state.temperature_variation)
        t_ref = torch.as_tensor(self.t_ref, dtype=t_variation.dtype, device=self.device)
        temperature = t_ref[:, None, None] + t_variation
        geopotential = torch.einsum("gh,...hml->...gml", self._geopotential_weights, temperature)
        ps = torch.exp(grid.to_nodal(state.log_surface_pressure))
        ps_pa = self._dim(ps, "pascal")
        pressure = self._sigma_centers[:, None, None] * ps_pa
        to_latlon = lambda x: x.transpose(-1, -2)  # (…, lon, lat) -> (…, lat, lon)
        return {
            "u": to_latlon(self._dim(u, "m/s")),
            "v": to_latlon(self._dim(v, "m/s")),
            "t": to_latlon(self._dim(temperature, "degK")),
            "z": to_latlon(self._dim(geopotential, "m**2/s**2")),
            "pressure": to_latlon(pressure),
            "ps": to_latlon(ps_pa),
        }

    @torch.no_grad()
    def from_sigma_fields(self, u: torch.Tensor, v: torch.Tensor, t: torch.Tensor, ps: torch.Tensor):
        """Inverse of `sigma_fields` (SI, (member, level, lat, lon); ps (member, 1, lat, lon)) -> modal state."""
        grid = self.coords.horizontal
        to_lonlat = lambda x: x.transpose(-1, -2).to(self.device, torch.float32)
        scale_v = self._nondim(1.0, "m/s")
        vorticity, divergence = grid.uv_nodal_to_vor_div_modal(to_lonlat(u) * scale_v, to_lonlat(v) * scale_v)
        t_ref = torch.as_tensor(self.t_ref, dtype=torch.float32, device=self.device)[:, None, None]
        t_variation = to_lonlat(t) * self._nondim(1.0, "degK") - t_ref
        log_ps = torch.log(to_lonlat(ps) * self._nondim(1.0, "pascal"))
        return primitive_equations.State(
            vorticity=vorticity,
            divergence=divergence,
            temperature_variation=grid.to_modal(t_variation),
            log_surface_pressure=grid.to_modal(log_ps),
            tracers={},
            sim_time=0.0,
        )

    # -- restart serialisation --------------------------------------------------
    @staticmethod
    def to_arrays(state) -> dict[str, np.ndarray]:
        return {
            "vorticity": state.vorticity.cpu().numpy(),
            "divergence": state.divergence.cpu().numpy(),
            "temperature_variation": state.temperature_variation.cpu().numpy(),
            "log_surface_pressure": state.log_surface_pressure.cpu().numpy(),
        }

    def from_arrays(self, arrays: dict[str, np.ndarray]):
        expected = (self.coords.modal_shape, (1,) + self.coords.horizontal.modal_shape)
        for name in ("vorticity", "divergence", "temperature_variation", "log_surface_pressure"):
            if name not in arrays:
                raise ValueError(f"restart state lacks {name!r}")
            want = expected[1] if name == "log_surface_pressure" else expected[0]
            got = tuple(arrays[name].shape[1:])
            if got != tuple(want):
                raise ValueError(f"restart {name!r} has shape {got}; this core expects {tuple(want)}")
        t = lambda k: torch.as_tensor(np.asarray(arrays[k]), dtype=torch.float32, device=self.device)
        return primitive_equations.State(
            vorticity=t("vorticity"),
            divergence=t("divergence"),
            temperature_variation=t("temperature_variation"),
            log_surface_pressure=t("log_surface_pressure"),
            tracers={},
            sim_time=0.0,
        )
