"""Schedule, samplers and guidance against closed-form answers (linear-Gaussian, identity codec)."""

import numpy as np
import pytest
import torch

from align_da_ops.diffusion.guidance import DPS, IdentityCodec, ObservationTerm, ObsFree, Repaint
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.obs.operators import PreparedOperator

SCHEDULE = CosineSchedule(1e-3)
SHAPE = (1, 4, 8)


class GaussianPrior:
    """Exact eps for z0 ~ N(mean, var) (independent components): eps = sigma (z - mu m) / (mu^2 v + sigma^2)."""

    def __init__(self, mean, var):
        self.mean, self.var = mean, var

    def __call__(self, z, t):
        mu, sigma = SCHEDULE.mu(t), SCHEDULE.sigma(t)
        return sigma * (z - mu * self.mean) / (mu**2 * self.var + sigma**2)


def point_operator(points, shape=SHAPE) -> PreparedOperator:
    """H picks the flat grid values `points` (weight exactly 1)."""
    index = torch.tensor(points, dtype=torch.int64)[:, None].repeat(1, 8)
    weight = torch.zeros(len(points), 8, dtype=torch.float64)
    weight[:, 0] = 1.0
    return PreparedOperator(index, weight, torch.ones(len(points), dtype=torch.bool), shape)


def observations(points, values, error):
    op = point_operator(points)
    return ObservationTerm.build(op, values, np.full(len(points), error), [1.0], min_error=1e-6)


def generators(n, offset=0):
    return [torch.Generator().manual_seed(offset + m) for m in range(n)]


def prior():
    torch.manual_seed(0)
    return GaussianPrior(torch.randn(SHAPE), torch.ones(SHAPE))


def test_schedule_end_points():
    zero, one = torch.tensor(0.0), torch.tensor(1.0)
    assert float(SCHEDULE.mu(zero)) == 1.0 and float(SCHEDULE.sigma(zero)) == pytest.approx(1e-3, rel=1e-4)
    assert float(SCHEDULE.mu(one)) == pytest.approx(1e-3, rel=1e-4) and float(SCHEDULE.sigma(one)) == pytest.approx(1.0)
    t = torch.linspace(0, 1, 11)
    assert (SCHEDULE.mu(t).diff() < 0).all() and (SCHEDULE.sigma(t).diff() > 0).all()


@pytest.mark.parametrize("sampler", [Sampler(steps=64), Sampler(steps=96, stochasticity=1.0), Sampler(steps=24, corrections=1)])
def test_unguided_sampler_draws_the_prior(sampler):
    p = GaussianPrior(prior().mean, torch.linspace(0.3, 2.0, 32).reshape(SHAPE))
    z = sampler.sample(p, SCHEDULE, SHAPE, generators(1500))
    assert torch.allclose(z.mean(0), p.mean, atol=0.12)
    ratio = z.var(0) / p.var
    assert 0.85 < float(ratio.mean()) < 1.15 and float(ratio.min()) > 0.7


@pytest.mark.parametrize("jacobian", ["denoiser", "gaussian"])
def test_dps_matches_the_kalman_posterior(jacobian):
    p = prior()
    points, y, r = [3, 10, 17, 30], torch.tensor([1.5, -2.0, 0.5, 3.0]), 0.5
    obs = observations(points, y, r)
    guided = DPS(jacobian=jacobian).wrap(p, SCHEDULE, IdentityCodec(), obs)
    z = Sampler(steps=128).sample(guided, SCHEDULE, SHAPE, generators(1500)).flatten(1)
    post_var = 1 / (1 / 1.0 + 1 / r**2)
    post_mean = post_var * (p.mean.flatten()[points] + y / r**2)
    assert torch.allclose(z[:, points].mean(0), post_mean, atol=0.06)
    assert torch.allclose(z[:, points].var(0), torch.full((4,), post_var), rtol=0.2)
    others = [i for i in range(32) if i not in points]
    assert torch.allclose(z[:, others].mean(0), p.mean.flatten()[others], atol=0.12)
    assert 0.85 < float(z[:, others].var(0).mean()) < 1.15


def test_dps_with_a_stochastic_pc_sampler_also_matches():
    p = prior()
    points, y, r = [5, 20], torch.tensor([2.0, -1.0]), 0.3
    guided = DPS().wrap(p, SCHEDULE, IdentityCodec(), observations(points, y, r))
    z = Sampler(steps=48, corrections=1, tau=0.01).sample(guided, SCHEDULE, SHAPE, generators(800)).flatten(1)
    post_var = 1 / (1 + 1 / r**2)
    post_mean = post_var * (p.mean.flatten()[points] + y / r**2)
    assert torch.allclose(z[:, points].mean(0), post_mean, atol=0.08)
    assert torch.allclose(z[:, points].var(0), torch.full((2,), post_var), rtol=0.3)


@pytest.mark.parametrize("insertion", ["state", "difference"])
def test_repaint_with_every_point_observed_returns_the_observations(insertion):
    p = prior()
    y = torch.randn(32, generator=torch.Generator().manual_seed(7))
    guided = Repaint(insertion=insertion).wrap(p, SCHEDULE, IdentityCodec(), observations(list(range(32)), y, 1e-9))
    z = Sampler(steps=16, corrections=1).sample(guided, SCHEDULE, SHAPE, generators(3))
    assert torch.allclose(z.flatten(1), y.expand(3, 32), atol=1e-5)


class LossyCodec:
    """A linear codec whose round trip is not the identity: E(D(z)) = 0.8 z + 0.1."""

    def encode(self, x):
        return 0.8 * x + 0.1

    def decode(self, z):
        return z


def test_repaint_difference_insertion_cancels_the_codec_round_trip():
    p, points, strength = prior(), [3, 17], 0.5
    y = torch.tensor([2.0, -1.0])
    z_t, t = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3)), torch.tensor(0.4)
    mu, sigma = SCHEDULE.mu(t), SCHEDULE.sigma(t)
    z0_prior = ((z_t - sigma * p(z_t, t)) / mu).flatten(1)

    def clean(insertion):
        guided = Repaint(strength, insertion).wrap(p, SCHEDULE, LossyCodec(), observations(points, y, 0.1))
        return ((z_t - sigma * guided(z_t, t)) / mu).flatten(1)

    unobserved = [i for i in range(32) if i not in points]
    difference, state = clean("difference"), clean("state")
    # unobserved latents keep the prior's estimate exactly; observed ones move by E's slope times the blend
    assert torch.allclose(difference[:, unobserved], z0_prior[:, unobserved], atol=1e-5)
    expected = z0_prior[:, points] + 0.8 * strength * (y - z0_prior[:, points])
    assert torch.allclose(difference[:, points], expected, atol=1e-5)
    # DiffDA's state insertion applies the round trip everywhere
    assert torch.allclose(state[:, unobserved], 0.8 * z0_prior[:, unobserved] + 0.1, atol=1e-5)


def test_repaint_refuses_an_unknown_insertion():
    with pytest.raises(ValueError, match="insertion"):
        Repaint(insertion="latent")


def test_repaint_averages_observations_that_share_a_grid_point():
    obs = observations([4, 4, 9], torch.tensor([1.0, 3.0, -1.0]), 0.1)
    points, values = obs.gridded()
    assert points.tolist() == [4, 9] and values.tolist() == [2.0, -1.0]


@pytest.mark.parametrize("mode", [ObsFree(), Repaint(), DPS()])
def test_without_observations_every_mode_is_obs_free(mode):
    p = prior()
    empty = observations([], torch.zeros(0), 1.0)
    sampler = Sampler(steps=8, corrections=1, stochasticity=0.5)
    a = sampler.sample(mode.wrap(p, SCHEDULE, IdentityCodec(), empty), SCHEDULE, SHAPE, generators(4))
    b = sampler.sample(ObsFree().wrap(p, SCHEDULE, IdentityCodec(), empty), SCHEDULE, SHAPE, generators(4))
    assert torch.equal(a, b)


def test_a_member_does_not_depend_on_the_ensemble_size():
    p = prior()
    sampler = Sampler(steps=8, corrections=1, stochasticity=1.0)
    small = sampler.sample(p, SCHEDULE, SHAPE, generators(2))
    large = sampler.sample(p, SCHEDULE, SHAPE, generators(5))
    assert torch.allclose(small, large[:2], atol=1e-6)
    assert not torch.allclose(large[0], large[1])


def test_observation_term_normalises_by_channel_std():
    op = PreparedOperator(
        torch.tensor([[0] * 8, [32] * 8]), torch.tensor([[1.0] + [0.0] * 7] * 2, dtype=torch.float64),
        torch.ones(2, dtype=torch.bool), (2, 4, 8),
    )
    term = ObservationTerm.build(op, [1.0, 2.0], [5.0, 0.001], [10.0, 100.0], min_error=0.01)
    assert term.scale.tolist() == [10.0, 100.0]
    assert term.error.tolist() == pytest.approx([0.5, 0.01])


def test_the_central_trajectory_is_the_kalman_posterior_mean():
    p = prior()
    points, y, r = [3, 10, 17, 30], torch.tensor([1.5, -2.0, 0.5, 3.0]), 0.5
    guided = DPS().wrap(p, SCHEDULE, IdentityCodec(), observations(points, y, r))
    z = Sampler(steps=128).sample(guided, SCHEDULE, SHAPE, [None]).flatten()
    post_var = 1 / (1 / 1.0 + 1 / r**2)
    post_mean = post_var * (p.mean.flatten()[points] + y / r**2)
    assert torch.allclose(z[points], post_mean, atol=0.02)
    others = [i for i in range(32) if i not in points]
    assert torch.allclose(z[others], p.mean.flatten()[others], atol=0.02)
