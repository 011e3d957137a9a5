"""Samplers: from noise to a clean latent with a `Denoiser`; they know nothing about observations.

`Sampler(steps, corrections, tau, stochasticity)` walks t from 1 to 0 on a
uniform grid of `steps` intervals:
- predictor: the DDIM step z_s = mu_s z0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi,
  with c^2 = stochasticity^2 (sigma_s^2 / sigma_t^2)(1 - mu_t^2 / mu_s^2)
  (stochasticity 0: deterministic DDIM; 1: ancestral, DDPM-like);
- corrector: `corrections` Langevin steps at s, each
  z <- z - delta sigma_s eps_hat + sqrt(2 delta) sigma_s xi with the
  score-relative step delta = tau / max(mean(eps_hat^2), 1) (SDA's corrector; the
  floor keeps the step bounded on the noise-free central trajectory, where
  eps_hat -> 0 and SDA's step diverged: DPS MSE 2.4 with one correction);
- finally z0 = Tweedie's estimate at t = 0 (removes the last eta-sized noise).
Network evaluations: steps * (1 + corrections) + 1. The paper's sampler is
`PAPER` (128 steps, 2 corrections); `FAST` is a few deterministic DDIM steps.

Ensembles: one torch.Generator per member; member m's noise is drawn from its
own generator only, so a member is reproducible whatever the ensemble size. A
None generator makes the *central* trajectory (all noise zero): with the
deterministic predictor it is the probability-flow image of the noise mean,
which for a Gaussian posterior is exactly its mean.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from align_da_ops.diffusion.network import Denoiser
from align_da_ops.diffusion.schedule import CosineSchedule


def member_noise(shape: Sequence[int], generators: Sequence[torch.Generator | None], device, dtype) -> torch.Tensor:
    """Standard normal (len(generators), *shape): member m drawn from generators[m] (on CPU, then moved);
    a None generator gives zeros (the central trajectory)."""
    draws = [torch.zeros(tuple(shape)) if g is None else torch.randn(tuple(shape), generator=g, dtype=torch.float32)
             for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class Sampler:
    steps: int = 32
    corrections: int = 0
    tau: float = 0.05
    stochasticity: float = 0.0

    def __post_init__(self):
        if self.steps < 1 or self.corrections < 0 or not 0 <= self.stochasticity <= 1 or self.tau <= 0:
            raise ValueError(f"invalid sampler {self}")

    @property
    def evaluations(self) -> int:
        return self.steps * (1 + self.corrections) + 1

    def sample(
        self,
        denoiser: Denoiser,
        schedule: CosineSchedule,
        shape: Sequence[int],
        generators: Sequence[torch.Generator],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Clean latents (len(generators), *shape)."""
        z = member_noise(shape, generators, device, dtype) * schedule.sigma(torch.tensor(1.0, dtype=dtype))
        times = torch.linspace(1.0, 0.0, self.steps + 1, dtype=dtype, device=device)
        for t, s in zip(times[:-1], times[1:]):
            eps = denoiser(z, t)
            mu_t, sigma_t, mu_s, sigma_s = schedule.mu(t), schedule.sigma(t), schedule.mu(s), schedule.sigma(s)
            z0 = (z - sigma_t * eps) / mu_t
            c2 = self.stochasticity**2 * (sigma_s**2 / sigma_t**2) * (1 - mu_t**2 / mu_s**2)
            z = mu_s * z0 + (sigma_s**2 - c2).clamp_min(0).sqrt() * eps
            if self.stochasticity > 0:
                z = z + c2.sqrt() * member_noise(shape, generators, device, dtype)
            for _ in range(self.corrections):
                eps = denoiser(z, s)
                delta = self.tau / eps.square().mean(dim=tuple(range(1, eps.dim())), keepdim=True).clamp_min(1.0)
                xi = member_noise(shape, generators, device, dtype)
                z = z - delta * sigma_s * eps + (2 * delta).sqrt() * sigma_s * xi
        zero = times[-1]
        return schedule.denoised(z, zero, denoiser(z, zero))


PAPER = Sampler(steps=128, corrections=2)
FAST = Sampler(steps=16, corrections=0)
