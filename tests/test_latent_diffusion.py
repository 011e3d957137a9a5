"""Prior training/checkpoints and the `latent_diffusion` analysis method, on real (tiny) networks and cycles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from align_da_ops.analysis.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from align_da_ops.campaign import CampaignConfig
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion.training import PriorSettings, forecast_pairs, train_prior
from align_da_ops.errors import CheckpointError
from align_da_ops.forecast.base import Persistence
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator
from align_da_ops.replaying import replay
from align_da_ops.times import CycleTime
from align_da_ops.wiring import build_context

from factories import TEST_PRIOR as PRIOR
from factories import tiny_config, tiny_config_dict


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Bitwise comparisons with the fixture's models, which were trained on one thread (float sums
    depend on the thread count, and another test may have changed it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(latent_models):
    return latent_models


def test_forecast_pairs_are_forecasts_valid_with_their_truths():
    x = torch.arange(5.0)[:, None, None, None].expand(5, 2, 4, 8).clone()
    backgrounds, truths = forecast_pairs(x, Persistence(), (6, 12))
    # persistence: the 6-h background of truth x[i+1] is x[i], the 12-h one x[i]
    assert backgrounds[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert truths[:, 0, 0, 0].tolist() == [1, 2, 3, 4, 2, 3, 4]
    with pytest.raises(ValueError, match="multiples of 6"):
        forecast_pairs(x, Persistence(), (7,))


def test_prior_checkpoint_lineage_resume_and_refusals(models, tmp_path):
    cfg, root, ae, forecast, prior_path = models
    ckpt = prior_io.read(prior_path)
    assert ckpt["autoencoder"] == ae.content_hash and ckpt["forecast_model"] == forecast.content_hash
    assert ckpt["lineage"]["kind"] == "dsm" and ckpt["leads"] == [6]
    assert len(ckpt["training"]["history"]) == 2 and all(r["val_loss"] > 0 for r in ckpt["training"]["history"])
    # resume: 1 epoch then 2 equals 2 straight (bitwise)
    part = tmp_path / "part.pt"
    train_prior(cfg, part, ae, forecast, PriorSettings(**{**PRIOR.__dict__, "epochs": 1}))
    train_prior(cfg, part, ae, forecast, PRIOR)
    a, b = prior_io.read(part), ckpt
    assert a["content_hash"] == b["content_hash"]
    with pytest.raises(CheckpointError, match="models the latents of autoencoder"):
        prior_io.load_prior(prior_path, autoencoder_hash="0" * 16)
    tampered = dict(ckpt)
    tampered["leads"] = [12]
    prior_io.checkpoint_io.save(tampered, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        prior_io.read(tmp_path / "t.pt")


def _method(models, **kw):
    cfg, root, ae, forecast, prior_path = models
    config = LatentDiffusionConfig(steps=4, members=3, **kw)
    return LatentDiffusion(config, ae, prior_io.load_prior(prior_path, ae.content_hash), ae.normalization.std)


def _world(models):
    """Background (a day before), truth, and 6 sonde-like observations of the truth off the grid."""
    cfg = models[0]
    states = open_states(cfg)
    layout = layout_of(cfg)
    truth = layout.to_tensor(states.isel(time=4).load())[0]
    background = layout.to_tensor(states.isel(time=0).load())[0]
    interp = GridInterpolator(layout, states.latitude.values, states.longitude.values)
    obs = ObsBatch.from_columns(
        latitude=[50.3, -20.1, 10.0] * 2, longitude=[7.1, 181.5, 300.2] * 2,
        pressure=[50000.0] * 3 + [85000.0] * 3, variable=["geopotential"] * 3 + ["temperature"] * 3,
        obs_type="temp", time="2000-01-02T00", value=[0.0] * 6, error=[30.0] * 3 + [0.5] * 3,
    )
    obs = obs.replace(value=interp.prepare(obs)(truth).numpy())
    return interp, background, obs


def _generators(n, offset=0):
    return [torch.Generator().manual_seed(offset + m) for m in range(n)]


@pytest.mark.parametrize("jacobian", ["denoiser", "gaussian"])
def test_analysis_is_seeded_per_member_and_dps_fits_the_observations(models, jacobian):
    interp, background, obs = _world(models)
    op = interp.prepare(obs)
    dps = _method(models, guidance="dps", jacobian=jacobian)
    a = dps.analyse(background, obs, op, _generators(3))
    b = dps.analyse(background, obs, op, _generators(3))
    assert torch.equal(a.analysis, b.analysis) and a.members.shape == (3, *background.shape)
    assert a.analysis.shape == background.shape and not torch.equal(a.analysis, a.members[0])
    assert torch.isfinite(a.members).all() and a.members.std(0).mean() > 0
    two = dps.analyse(background, obs, op, _generators(2))
    torch.testing.assert_close(two.members[0], a.members[0], rtol=1e-4, atol=1e-3)
    free = _method(models, guidance="obs_free").analyse(background, obs, op, _generators(3))
    assert a.diagnostics["rms_normalised_o_minus_a"] < free.diagnostics["rms_normalised_o_minus_a"]
    assert a.diagnostics["network_evaluations"] == 5 and a.diagnostics["n_obs"] == 6


def test_without_observations_every_guidance_equals_obs_free(models):
    interp, background, obs = _world(models)
    empty = obs.select([])
    op = interp.prepare(empty)
    results = [_method(models, guidance=g, increment="none").analyse(background, empty, op, _generators(2)).members
               for g in ("obs_free", "repaint", "dps")]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_latent_diffusion_cycles_in_the_engine(models, tmp_path):
    cfg, root, ae, forecast, prior_path = models
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(cfg.nature_run.output), sort_keys=False))
    ae_path = root / "autoencoder.pt"
    raw = {
        "name": "ld-test", "config": str(config), "start": "2000-01-02T00:00:00", "end": "2000-01-02T06:00:00",
        "observations": {"networks": [{"kind": "random_mask", "fraction": 0.01}]},
        "analysis": {"kind": "latent_diffusion", "autoencoder": str(ae_path), "prior": str(prior_path),
                     "guidance": "dps", "steps": 3, "members": 3, "estimate": "mean"},
        "forecast_model": {"kind": "neural"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1}, "leads_hours": [6, 24],
        "archive": str(tmp_path / "archive"),
    }
    ctx = build_context(CampaignConfig.model_validate(raw), tiny_config(cfg.nature_run.output))
    outcomes = replay(ctx, CycleTime.parse("2000-01-02T00"), CycleTime.parse("2000-01-02T06"))
    assert [o.status for o in outcomes] == ["done", "done"]
    archive = ctx.archive
    assert archive.n_members == 3 and archive.ensemble
    members = archive.open_product("members").load()
    spread = archive.open_product("spread").load()
    analysis = archive.open_product("analysis").load()
    t = members.temperature.isel(time=1)
    np.testing.assert_allclose(t.mean("member"), analysis.temperature.isel(time=1), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(t.std("member", ddof=1), spread.temperature.isel(time=1), rtol=1e-4, atol=1e-3)
    prov = archive.provenance(CycleTime.parse("2000-01-02T06"))
    assert set(prov["checkpoints"]) == {"autoencoder", "prior", "forecast_model"}
    assert len(set(prov["member_seeds"])) == 3
    assert prov["diagnostics"]["members"] == 3.0


def test_observation_increment_without_observations_returns_the_background(models):
    interp, background, obs = _world(models)
    empty = obs.select([])
    method = _method(models, guidance="dps", increment="observation")
    result = method.analyse(background, empty, interp.prepare(empty), _generators(2))
    torch.testing.assert_close(result.analysis, background, rtol=1e-6, atol=1e-3)
    with_obs = method.analyse(background, obs, interp.prepare(obs), _generators(2))
    assert not torch.allclose(with_obs.analysis, background, atol=1e-3)
