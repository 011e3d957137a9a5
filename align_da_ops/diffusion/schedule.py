"""The noise schedule: variance-preserving SDE with the cosine schedule of SDA (Rozet & Louppe 2023).

z_t = mu(t) z_0 + sigma(t) eps, t in [0, 1], with
    mu(t) = cos(arccos(sqrt(eta)) t)^2,   sigma(t) = sqrt(1 - mu(t)^2 + eta^2),
so mu(0) = 1, sigma(0) = eta (almost clean) and mu(1) = eta, sigma(1) = 1 (pure noise).
The denoiser predicts eps; Tweedie's estimate of the clean latent is
z0_hat = (z_t - sigma(t) eps_hat) / mu(t), and the score is -eps_hat / sigma(t).
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
    eta: float = 1e-3

    def mu(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(math.acos(math.sqrt(self.eta)) * t) ** 2

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.mu(t) ** 2 + self.eta**2).sqrt()

    def noise(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_t for clean latents z0 (B, ...), times t (B,), noise eps like z0."""
        shape = (-1,) + (1,) * (z0.dim() - 1)
        return self.mu(t).view(shape) * z0 + self.sigma(t).view(shape) * eps

    def denoised(self, z_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Tweedie's estimate z0_hat from z_t and the predicted noise (t a scalar tensor)."""
        return (z_t - self.sigma(t) * eps) / self.mu(t)
