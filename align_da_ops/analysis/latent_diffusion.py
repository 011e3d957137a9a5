"""The latent score-based analysis (Align-DA's analysis step): encode, sample p(z | z_b, y), decode.

`LatentDiffusion.analyse(background, obs, operator, generators)`:
1. z_b = E(x_b) with the autoencoder (physical units in, standardised latent out);
   the prior models the standardised background error d = (z - z_b) / scale;
2. the prior's denoiser conditioned on z_b is wrapped by the guidance mode
   (obs_free | repaint | dps, `diffusion/guidance.py`; DPS differentiates
   through the prior network unless `jacobian: gaussian`) with the cycle's
   observations, normalised by the state normalisation's channel std;
3. the sampler draws one latent per generator (one generator per ensemble
   member, seeded by the engine from (campaign, cycle, member)), in one batch,
   plus, with `estimate: central` (default), the central trajectory (zero noise);
4. members x_m = D(z_b + scale d_m) in physical units; the analysis is their mean.
   With `increment: background` the latent analysis is applied as an
   increment, x_m = x_b + D(z_b + scale d_m) - D(z_b): the background keeps its
   own detail and the autoencoder's reconstruction error (t850 ~1 K on tiny)
   does not enter every cycle; cycled 30 days on the tiny OSSE, full-state
   analyses D(z) drifted to z500 errors 2.3-2.5x the free run's. With
   `increment: observation` the reference is the prior's own unguided central
   trajectory, so only what the observations add enters the analysis (the
   prior's systematic correction of the background does not feed back).
Pure: no I/O. Any prior checkpoint (unaligned or aligned) is a drop-in
replacement, as long as it models this autoencoder's latents.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.diffusion.guidance import ObservationTerm, guidance_of
from align_da_ops.diffusion.samplers import Sampler


class LatentDiffusionConfig(BaseModel):
    """Settings of the latent diffusion analysis (campaign `analysis:` block)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["latent_diffusion"] = "latent_diffusion"
    autoencoder: Path | None = Field(default=None, description="Autoencoder checkpoint; None: the packaged one.")
    prior: Path | None = Field(
        default=None, description="Prior checkpoint (unaligned or aligned); None: the packaged unaligned prior."
    )
    guidance: Literal["obs_free", "repaint", "dps"] = Field(default="dps", description="Observation guidance mode.")
    strength: float = Field(
        default=1.0, ge=0,
        description="DPS: multiplier of the likelihood score (1 = Bayes). Repaint: blend weight of inserted observations (1 = replace).",
    )
    gamma: float = Field(default=1.0, gt=0, description="DPS: prior variance per latent behind the likelihood approximation (1: unconditional; the background-error variance in latent units is the Bayes choice).")
    clip: float = Field(default=1.0, gt=0, description="DPS: cap on the RMS of the guidance term per member (eps units).")
    jacobian: Literal["denoiser", "gaussian"] = Field(
        default="denoiser",
        description="DPS: the Jacobian d z0_hat / d z_t of the clean estimate. denoiser: autograd of Tweedie's estimate "
        "through the prior network (the literature's DPS, Chung et al. 2023; one backward pass per evaluation). "
        "gaussian: the scalar gamma mu / (sigma^2 + gamma mu^2) of a prior N(m, gamma I): cheaper, but it drops the "
        "prior's spatial spreading of the increment (biased on correlated priors; see diffusion/guidance.py).",
    )
    insertion: Literal["difference", "state"] = Field(
        default="difference",
        description="Repaint: how inserted observations return to the latent. difference: z0' = z0_hat + E(x0') - "
        "E(x0), which cancels the autoencoder's round trip at every evaluation; state: z0' = E(x0') (DiffDA's; "
        "diverges while cycling on the tiny OSSE).",
    )
    min_obs_error: float = Field(default=0.05, gt=0, description="DPS: floor of the observation-error std (normalised units).")
    steps: int = Field(default=32, ge=1, le=4096, description="Sampler steps (paper: 128).")
    corrections: int = Field(default=0, ge=0, le=16, description="Langevin corrections per step (paper: 2).")
    tau: float = Field(default=0.05, gt=0, description="Langevin step, relative to the score's magnitude.")
    stochasticity: float = Field(default=0.0, ge=0, le=1, description="0: deterministic DDIM predictor; 1: ancestral.")
    estimate: Literal["central", "mean"] = Field(
        default="central",
        description="The analysis: the central trajectory (noise zero; the posterior mean for a Gaussian posterior "
        "under the deterministic sampler) or the mean of the members.",
    )
    increment: Literal["background", "observation", "none"] = Field(
        default="observation",
        description="background: x_b + D(z) - D(z_b); observation: x_b + D(z) - D(z_free), z_free the prior's central "
        "unguided trajectory (the increment is what the observations add; obs_free guidance falls back to background, "
        "it would otherwise return x_b by construction); none: the decoded state D(z) (the paper's).",
    )
    members: int = Field(default=8, ge=1, le=1024, description="Ensemble members drawn per analysis (one batch).")
    store_members: bool = Field(default=True, description="Archive every member (the mean and the spread always are).")


class LatentDiffusion:
    """`AnalysisMethod` on an autoencoder and a background-conditioned latent prior."""

    name = "latent_diffusion"

    def __init__(self, config: LatentDiffusionConfig, autoencoder, prior, channel_std):
        self.config = config
        self.autoencoder = autoencoder
        self.prior = prior
        self.channel_std = np.asarray(channel_std, dtype=np.float64)
        self.guidance = guidance_of(config.guidance, config.strength, config.gamma, config.clip, config.jacobian,
                                    config.insertion)
        self.sampler = Sampler(config.steps, config.corrections, config.tau, config.stochasticity)
        self.members = config.members

    def provenance(self) -> dict:
        return {**self.autoencoder.provenance(), **self.prior.provenance()}

    def observation_term(self, obs, operator) -> ObservationTerm:
        """The observations as this analysis' guidance sees them: normalised by the channel std, errors floored
        at `min_obs_error`, on the autoencoder's device (also the preference candidates' guidance)."""
        return ObservationTerm.build(operator, obs.value, obs.error, self.channel_std, self.config.min_obs_error,
                                     self.autoencoder.device)

    def analyse(self, background, obs, operator, generators) -> AnalysisResult:
        if isinstance(generators, torch.Generator):
            generators = [generators]
        t0 = time.perf_counter()
        device = self.autoencoder.device
        term = self.observation_term(obs, operator)
        central = self.config.estimate == "central"
        draws = [None, *generators] if central else list(generators)
        _, z_b, members = self.prior.sample(self.autoencoder, background, self.sampler, draws, self.guidance, term)
        if self.config.increment != "none":
            with torch.no_grad():
                if self.config.increment == "observation" and self.config.guidance != "obs_free":
                    reference = self.prior.sample(self.autoencoder, background, self.sampler, [None])[2][0]
                else:
                    reference = self.autoencoder.decode(z_b)[0]
                members = members - reference + background.to(members.device, members.dtype)
        members = members.to(background.device, background.dtype)
        mean = members[0] if central else members.mean(0)
        members = members[1:] if central else members
        diagnostics = {
            "n_obs": float(len(obs)),
            "members": float(len(generators)),
            "network_evaluations": float(self.sampler.evaluations),
            "seconds_sampling": time.perf_counter() - t0,
        }
        if len(obs):
            with torch.no_grad():
                fit = (term.value - operator(mean.to(device)).float()) / term.scale
            diagnostics["rms_normalised_o_minus_a"] = float(fit.pow(2).mean().sqrt())
        return AnalysisResult(analysis=mean, members=members if len(generators) > 1 else None, diagnostics=diagnostics)
