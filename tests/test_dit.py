"""The DiT prior network (`diffusion.dit`): shapes, longitude equivariance, checkpoints (the U-Net's unchanged),
training through `train_prior`, DPS through it, the cost table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from align_da_ops.cli import app
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion.benchmark import random_mask_term
from align_da_ops.diffusion.cost import network_cost
from align_da_ops.diffusion.dit import LatentDiT
from align_da_ops.diffusion.guidance import guidance_of, parse_mode
from align_da_ops.diffusion.network import LatentUNet, PriorArchitecture
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.diffusion.training import PriorSettings, train_prior
from align_da_ops.errors import CheckpointError

from factories import TEST_PRIOR

LAT = np.linspace(-60, 60, 4)
TINY_DIT = PriorArchitecture(4, kind="dit", hidden=16, depth=2, heads=2, patch=2, embedding=16)


def _perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network with every weight moved off its (partly zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _inputs(batch=3, shape=(4, 4, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.rand(batch, generator=g), torch.randn(batch, *shape, generator=g)


@pytest.mark.parametrize("patch", [1, 2])
def test_shapes_and_zero_initial_output(patch):
    net = prior_io.build_network(PriorArchitecture(4, kind="dit", hidden=16, depth=2, heads=2, patch=patch), LAT)
    assert isinstance(net, LatentDiT)
    z, t, cond = _inputs()
    assert torch.equal(net.raw(z, t, cond), torch.zeros_like(z))  # adaLN-Zero and a zero projection: F = 0
    _perturbed(net)
    eps = net(z, t, cond)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    assert net.loss(z, t, torch.randn_like(z), cond).shape == (3,)
    with pytest.raises(ValueError, match="patch"):
        prior_io.build_network(PriorArchitecture(4, kind="dit", hidden=16, heads=2, patch=3), LAT)


def test_equivariant_to_longitude_rolls_by_whole_patches():
    net = _perturbed(prior_io.build_network(TINY_DIT, LAT)).eval()
    z, t, cond = _inputs()
    with torch.no_grad():
        eps = net(z, t, cond)
        for shift in (2, 4, -6):  # multiples of the patch
            torch.testing.assert_close(net(z.roll(shift, -1), t, cond.roll(shift, -1)), eps.roll(shift, -1),
                                       rtol=1e-4, atol=1e-5)
        assert not torch.allclose(net(z.roll(2, -2), t, cond.roll(2, -2)), eps.roll(2, -2), atol=1e-3)  # latitude: no
        assert not torch.allclose(net(z, t, cond.roll(2, -1)), eps, atol=1e-3)  # the background conditions


def _meta(arch: PriorArchitecture) -> dict:
    return {"config": "{}", "config_hash": "c" * 16, "latent_shape": [arch.latent_channels, 4, 8],
            "latent_latitudes": LAT.tolist(), "schedule": {"eta": 1e-3}, "autoencoder": "a" * 16, "forecast_model": "",
            "leads": [6], "lineage": {"kind": "dsm", "reference": "", "preference_data": "", "settings": {}},
            "residual_scale": [1.0] * arch.latent_channels}


def test_checkpoint_round_trip_records_the_kind_and_keeps_the_hash(tmp_path):
    net = _perturbed(prior_io.build_network(TINY_DIT, LAT))
    ckpt = prior_io.build_checkpoint(net, _meta(TINY_DIT))
    assert ckpt["architecture"]["kind"] == "dit" and ckpt["architecture"]["patch"] == 2
    prior_io.checkpoint_io.save(ckpt, tmp_path / "dit.pt")
    loaded = prior_io.load_prior(tmp_path / "dit.pt", "a" * 16)
    assert isinstance(loaded.net, LatentDiT) and loaded.net.arch == TINY_DIT
    assert loaded.content_hash == ckpt["content_hash"]
    again = prior_io.build_checkpoint(loaded.net, _meta(TINY_DIT))
    assert again["content_hash"] == ckpt["content_hash"]
    z, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(z, t, cond), net(z, t, cond))
    forged = {**ckpt, "architecture": {**ckpt["architecture"], "kind": "vit"}}
    forged["content_hash"] = prior_io.checkpoint_io.content_hash(forged, prior_io.META_KEYS)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        prior_io.network_of(forged)


def test_unet_architecture_dicts_and_hashes_are_unchanged():
    old = {"latent_channels": 4, "width": 8, "blocks": 1, "levels": 1, "embedding": 16}  # as written before the DiT
    arch = PriorArchitecture(**old)
    assert arch.kind == "unet" and arch.to_dict() == old
    assert isinstance(prior_io.build_network(arch, LAT), LatentUNet)
    shipped = prior_io.read(prior_io.shipped_prior("tiny"))
    assert "kind" not in shipped["architecture"]
    net = prior_io.network_of(shipped)
    assert isinstance(net, LatentUNet) and net.arch.to_dict() == shipped["architecture"]
    meta = {k: shipped[k] for k in prior_io.META_KEYS if k not in ("format", "architecture")}
    assert prior_io.build_checkpoint(net, meta)["content_hash"] == shipped["content_hash"]


def test_one_dit_epoch_through_train_prior_and_dps_through_it(latent_models, tmp_path, one_thread):
    cfg, _, ae, forecast, _ = latent_models
    settings = PriorSettings(**{**TEST_PRIOR.__dict__, "epochs": 1, "kind": "dit", "hidden": 16, "depth": 1,
                                "heads": 2, "patch": 2})
    path = tmp_path / "dit.pt"
    history = train_prior(cfg, path, ae, forecast, settings)
    assert len(history) == 1 and np.isfinite(history[0]["val_loss"])
    ckpt = prior_io.read(path)
    assert ckpt["architecture"] == {"kind": "dit", "latent_channels": 8, "hidden": 16, "depth": 1, "heads": 2,
                                    "patch": 2, "embedding": 128}
    prior = prior_io.load_prior(path, ae.content_hash)
    assert isinstance(prior.net, LatentDiT)
    with pytest.raises(CheckpointError, match="architecture"):  # resuming with another architecture is refused
        train_prior(cfg, path, ae, forecast, PriorSettings(**{**settings.__dict__, "epochs": 2, "hidden": 32}))
    layout = layout_of(cfg)
    background = layout.to_tensor(open_states(cfg).isel(time=0).load())[0]
    term = random_mask_term(background, ae.normalization.std, fraction=0.05)
    kind, jacobian = parse_mode("dps")  # the likelihood gradient through the DiT (vector-Jacobian product)
    d, _, members = prior.sample(ae, background, Sampler(3), [torch.Generator().manual_seed(m) for m in range(2)],
                                 guidance_of(kind, jacobian=jacobian), term)
    assert members.shape == (2, *background.shape) and torch.isfinite(members).all() and d.abs().sum() > 0


def test_cost_and_cli():
    cost = network_cost(prior_io.build_network(TINY_DIT, LAT), (4, 4, 8), batch=2, repeats=2)
    assert cost["parameters"] > 0 and cost["gflops"] > 0 and cost["ms_eval"] > 0 and cost["ms_train"] > 0
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "prior", "--latent", "4x4x8", "--width", "8", "--hidden", "16,32",
                                 "--heads", "2", "--depth", "1", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert "unet" in result.output and "hidden=32" in result.output
    bad = runner.invoke(app, ["train", "prior", "config/tiny.yaml", "--architecture", "vit"])
    assert bad.exit_code == 2 and "unknown architecture" in bad.output
