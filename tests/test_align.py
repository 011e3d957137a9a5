"""Align-DA: DPO/IPO losses, winner/loser selection, preference data, alignment as a drop-in prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align_da_ops.align import preferences as prefs
from align_da_ops.align.dpo import AlignSettings, align, preference_loss
from align_da_ops.analysis.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion.network import LatentUNet, PriorArchitecture
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.errors import InputDataError
from align_da_ops.obs.operators import GridInterpolator


def _nets():
    torch.manual_seed(0)
    arch = PriorArchitecture(latent_channels=4, width=8, blocks=1, levels=1, embedding=16)
    model = LatentUNet(arch, np.linspace(-60, 60, 4))
    torch.nn.init.normal_(model.project.weight, std=0.1)  # a reference that predicts something
    reference = LatentUNet(arch, np.linspace(-60, 60, 4))
    reference.load_state_dict(model.state_dict())
    return model, reference.requires_grad_(False)


def _batch(n=6):
    g = torch.Generator().manual_seed(1)
    shape = (n, 4, 4, 8)
    return (torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g),
            torch.rand(n, generator=g), torch.randn(shape, generator=g))


def test_dpo_loss_is_log2_and_ipo_a_quarter_at_initialisation():
    model, reference = _nets()
    z_w, z_l, cond, t, eps = _batch()
    schedule = CosineSchedule()
    loss, margin = preference_loss(model, reference, schedule, z_w, z_l, cond, t, eps, beta=8000.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and torch.all(margin == 0)
    ipo, _ = preference_loss(model, reference, schedule, z_w, z_l, cond, t, eps, beta=8000.0, kind="ipo")
    assert ipo.item() == pytest.approx(0.25, abs=1e-6)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_a_gradient_step_lowers_winners_error_relative_to_losers(kind):
    model, reference = _nets()
    z_w, z_l, cond, t, eps = _batch()
    schedule = CosineSchedule()
    loss, _ = preference_loss(model, reference, schedule, z_w, z_l, cond, t, eps, beta=100.0, kind=kind)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad
    _, margin = preference_loss(model, reference, schedule, z_w, z_l, cond, t, eps, beta=100.0, kind=kind)
    # margin = -(Delta_w - Delta_l): the winners' denoising error fell relative to the losers'
    assert margin.mean().item() > 0


def test_physics_variant_picks_top_and_bottom_by_geo_score():
    geo = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])
    rewards = {"geo": geo, "accuracy": torch.rand(10), "forecast": torch.rand(10)}
    w, l, _ = prefs.select(rewards, prefs.PreferenceSettings(variant="p", samples=10, top_k=3))
    assert w == [1, 5, 3] and l == [6, 2, 9]


def test_multi_reward_variant_needs_every_reward_and_widens_the_quantile():
    n = 20
    good = torch.arange(n, dtype=torch.float32)  # sample 19 best, 0 worst on all three
    rewards = {"accuracy": good, "forecast": good.clone(), "geo": good.clone()}
    settings = prefs.PreferenceSettings(variant="m", samples=n, quantile=0.1, min_side=2)
    w, l, q = prefs.select(rewards, settings)
    assert sorted(w) == [18, 19] and sorted(l) == [0, 1] and q == pytest.approx(0.1)
    rewards["forecast"] = good.flip(0)  # forecast disagrees completely: no sample is good on all three
    w, l, q = prefs.select(rewards, settings)  # -> mean rank over the rewards (accuracy and geo win 2:1)
    assert q != q and sorted(w) == [18, 19] and sorted(l) == [0, 1]


def test_pairing_is_balanced():
    pairs = prefs.pair_up([1, 2], [7, 8, 9, 10], np.random.default_rng(0))
    assert len(pairs) == 4 and sorted(l for _, l in pairs) == [7, 8, 9, 10]
    assert sorted(w for w, _ in pairs) == [1, 1, 2, 2]


@pytest.fixture(scope="module")
def pairs_store(latent_models, tmp_path_factory):
    cfg, root, ae, forecast, prior_path = latent_models
    states, layout = open_states(cfg), layout_of(cfg)
    settings = prefs.PreferenceSettings(variant="p", samples=6, top_k=2, steps=3, lead_hours=6, forecast_hours=6)
    prior = prior_io.load_prior(prior_path, ae.content_hash)
    cases = prefs.cases_from_states(states, layout, forecast, states.time.values[1], states.time.values[3], settings)
    built = prefs.build(cases, ae, prior, forecast, layout, states.latitude.values, states.longitude.values, settings)
    path = tmp_path_factory.mktemp("prefs") / "pairs.zarr"
    digest = prefs.write_pairs(path, built, settings, {"prior": prior.content_hash, "autoencoder": ae.content_hash,
                                                       "forecast_model": forecast.content_hash})
    return path, digest, built


def test_preference_data_round_trip_and_winners_beat_losers(pairs_store):
    path, digest, built = pairs_store
    pairs = prefs.read_pairs(path)
    assert pairs["hash"] == digest and built["counts"]["cases"] == 3 and len(pairs["z_winner"]) == 3 * 2
    geo = prefs.REWARDS.index("geo")
    assert torch.all(pairs["rewards_winner"][:, geo] > pairs["rewards_loser"][:, geo])
    assert torch.equal(pairs["z_winner"], built["tensors"]["z_winner"])


def test_tampered_preference_data_is_refused(pairs_store, tmp_path):
    import shutil

    import zarr

    path, _, _ = pairs_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["z_winner"][0, 0, 0, 0] = 123.0
    with pytest.raises(InputDataError, match="corrupt"):
        prefs.read_pairs(copy)


def test_aligned_prior_records_lineage_and_drops_into_every_guidance_mode(latent_models, pairs_store, tmp_path):
    cfg, root, ae, forecast, prior_path = latent_models
    path, digest, _ = pairs_store
    out = tmp_path / "aligned.pt"
    settings = AlignSettings(steps=4, batch_size=4, lr=1e-3, beta=50.0, checkpoint_every=2)
    history = align(prior_path, prefs.read_pairs(path), out, settings)
    assert len(history) == 4 and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    ckpt = prior_io.read(out)
    assert ckpt["lineage"]["reference"] == prior_io.read(prior_path)["content_hash"]
    assert ckpt["lineage"]["preference_data"] == digest and ckpt["lineage"]["kind"] == "dpo"
    assert ckpt["autoencoder"] == ae.content_hash
    # resuming a finished alignment changes nothing
    again = align(prior_path, prefs.read_pairs(path), out, settings)
    assert len(again) == 4 and prior_io.read(out)["content_hash"] == ckpt["content_hash"]
    states, layout = open_states(cfg), layout_of(cfg)
    background = layout.to_tensor(states.isel(time=2).load())[0]
    obs_op = GridInterpolator(layout, states.latitude.values, states.longitude.values)
    from align_da_ops.obs.batch import ObsBatch

    obs = ObsBatch.from_columns(latitude=[45.0], longitude=[10.0], pressure=[50000.0], variable="geopotential",
                                obs_type="temp", time="2000-01-01T12", value=[float(background[3, 5, 5])], error=[20.0])
    aligned = prior_io.load_prior(out, ae.content_hash)
    for guidance in ("obs_free", "repaint", "dps"):
        method = LatentDiffusion(LatentDiffusionConfig(guidance=guidance, steps=3, members=2), ae, aligned, ae.normalization.std)
        result = method.analyse(background, obs, obs_op.prepare(obs), [torch.Generator().manual_seed(m) for m in range(2)])
        assert torch.isfinite(result.analysis).all()
        assert method.provenance()["prior"] == ckpt["content_hash"]
