"""Latent autoencoder: shapes, identity oracle, equivariance, gradients, training + resume, checkpoints, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from align_da_ops import grid
from align_da_ops.data import nature_run as nr
from align_da_ops.data.sources import layout_of
from align_da_ops.errors import CheckpointError
from align_da_ops.grid import Normalization, gaussian_latitudes
from align_da_ops.latent import checkpoint as ckpt_io
from align_da_ops.latent.autoencoder import AutoencoderArchitecture, AutoencoderModel, IdentityAutoencoder, SphereAutoencoder
from align_da_ops.latent.training import AutoencoderSettings, by_variable, reconstruction_scores, train_autoencoder

from factories import tiny_config, tiny_config_dict

LAT = gaussian_latitudes(16)
SMALL = dict(width=8, blocks=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(channels=3, latent=5, f=4, seed=0) -> SphereAutoencoder:
    torch.manual_seed(seed)
    return SphereAutoencoder(AutoencoderArchitecture(channels, latent, f, **SMALL), LAT).eval()


def _norm(channels=3, mean=None, std=None) -> Normalization:
    mean = np.arange(channels, dtype=float) if mean is None else mean
    std = np.full(channels, 2.0) if std is None else std
    return Normalization(tuple(f"c{i}" for i in range(channels)), mean, std, ("a", "b"))


@pytest.mark.parametrize("f", [1, 2, 4])
def test_encode_decode_shapes_for_each_downsampling(f):
    net = _net(f=f)
    x = torch.randn(2, 3, 16, 32)
    z = net.encode(x)
    assert z.shape == (2, 5, 16 // f, 32 // f) and net.decode(z).shape == x.shape
    model = AutoencoderModel(net, _norm())
    lead = torch.randn(4, 2, 3, 16, 32, dtype=torch.float64)  # any leading dims; dtype and device follow the input
    zl = model.encode(lead)
    assert zl.shape == (4, 2, *model.latent_shape(16, 32)) == (4, 2, 5, 16 // f, 32 // f) and zl.dtype == torch.float64
    assert model.decode(zl).shape == lead.shape
    torch.testing.assert_close(zl[3, 1], model.encode(lead[3, 1]), atol=1e-5, rtol=1e-5)


def test_architecture_and_grid_are_checked():
    with pytest.raises(ValueError, match="downsampling must be one of"):
        AutoencoderArchitecture(3, downsampling=3)
    with pytest.raises(ValueError, match="multiple of 8"):
        AutoencoderArchitecture(3, width=12)
    with pytest.raises(ValueError, match="not divisible by downsampling=8"):
        SphereAutoencoder(AutoencoderArchitecture(3, 4, 8, **SMALL), gaussian_latitudes(12))
    with pytest.raises(ValueError, match="does not fit"):
        _net().encode(torch.randn(1, 4, 16, 32))


def test_identity_autoencoder_round_trip_is_exact():
    x = torch.randn(2, 3, 3, 8, 16) * 5
    net = IdentityAutoencoder(3)
    assert net.downsampling == 1 and list(net.parameters()) == []
    assert torch.equal(net.encode(x), x) and torch.equal(net.decode(x), x)
    model = AutoencoderModel(net, _norm(mean=np.zeros(3), std=np.array([2.0, 4.0, 0.5])))  # powers of 2: exact
    assert model.latent_shape(8, 16) == (3, 8, 16) and model.provenance() == {"autoencoder": ""}
    z = model.encode(x)
    assert torch.equal(z, x / torch.tensor([2.0, 4.0, 0.5])[:, None, None])
    assert torch.equal(model.decode(z), x)
    assert AutoencoderModel(IdentityAutoencoder(), _norm()).latent_shape(8, 16) == (3, 8, 16)


def test_longitude_shift_by_the_factor_shifts_the_latents_by_one_cell():
    net = _net(f=4)
    x = torch.randn(1, 3, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.encode(x.roll(4, -1)), net.encode(x).roll(1, -1), atol=1e-5, rtol=1e-5)
        z = torch.randn(1, 5, 4, 8)
        torch.testing.assert_close(net.decode(z.roll(1, -1)), net.decode(z).roll(4, -1), atol=1e-5, rtol=1e-5)


def test_decode_encode_is_differentiable():
    model = AutoencoderModel(_net(), _norm())
    z = torch.randn(2, 5, 4, 8, requires_grad=True)
    model.decode(z).pow(2).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    x = torch.randn(2, 3, 16, 32, requires_grad=True)
    model.decode(model.encode(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pca_initialisation_reconstructs_states_in_a_patch_subspace_exactly():
    """States whose 4x4 patches (3 channels x 16 cells) lie in a 5-dim subspace: the PCA start is exact."""
    gen = torch.Generator().manual_seed(1)
    basis = torch.randn(5, 3 * 16, generator=gen, dtype=torch.float64)
    coeffs = torch.randn(6, 4, 8, 5, generator=gen, dtype=torch.float64)  # (sample, patch row, patch col, k)
    x = (coeffs @ basis).reshape(6, 4, 8, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(6, 3, 16, 32).float()
    net = _net(latent=5)
    net.init_from_pca(x)
    with torch.no_grad():
        torch.testing.assert_close(net.reconstruct(x), x, atol=1e-4, rtol=1e-4)
        assert float((net.reconstruct(x + 0.1 * torch.randn(x.shape, generator=gen)) - x).abs().max()) > 1e-3  # not identity


def test_reconstruction_scores_oracle():
    class Offset(IdentityAutoencoder):
        def decode(self, z):
            return z + torch.tensor([0.5, -1.0, 0.0])[:, None, None]

    x = torch.randn(5, 3, 8, 16)
    assert not reconstruction_scores(IdentityAutoencoder(3), x, gaussian_latitudes(8))["mse"].any()
    scores = reconstruction_scores(AutoencoderModel(Offset(3), _norm()), x, gaussian_latitudes(8))
    np.testing.assert_allclose(scores["mse"], [0.25, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(scores["mae"], [0.5, 1.0, 0.0], atol=1e-12)
    layout = grid.StateLayout(("temperature",), ("surface_pressure",), (500, 850))
    assert by_variable(np.array([1.0, 3.0, 7.0]), layout) == {"temperature": 2.0, "surface_pressure": 7.0}


SETTINGS = AutoencoderSettings(epochs=8, batch_size=1, lr=3e-3, warmup_steps=2, latent_channels=8, **SMALL)


@pytest.fixture(scope="module")
def trained(tiny_nature_run, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_nature_run)
    out = tmp_path_factory.mktemp("autoencoder") / "ae.pt"
    history = train_autoencoder(cfg, out, SETTINGS)
    return cfg, out, history


def _normalised_split(cfg, model, split):
    from align_da_ops.data.sources import open_states
    from align_da_ops.forecast.training import load_split

    return model.normalization.normalize(load_split(open_states(cfg), layout_of(cfg), getattr(cfg.splits, split)))


def test_training_lowers_the_validation_error_and_standardises_the_latents(trained):
    cfg, out, history = trained
    assert [r["epoch"] for r in history] == list(range(1, 9))
    model = ckpt_io.load_autoencoder(out)
    lat = gaussian_latitudes(32)
    start = SphereAutoencoder(model.net.arch, lat)  # where training starts: the patch PCA
    start.init_from_pca(_normalised_split(cfg, model, "train"))
    pca = reconstruction_scores(start, _normalised_split(cfg, model, "validation"), lat)
    assert history[-1]["val_mse"] < history[0]["val_mse"]
    assert history[-1]["val_mse"] < 0.97 * pca["mse"].mean() and history[-1]["val_mae"] < pca["mae"].mean()
    ckpt = ckpt_io.read(out)
    assert len(ckpt["reconstruction"]["mse"]) == layout_of(cfg).n_channels
    assert np.mean(ckpt["reconstruction"]["mse"]) == pytest.approx(history[-1]["val_mse"])
    assert not torch.equal(model.net.latent_std, torch.ones(8))
    with torch.no_grad():
        z = model.net.encode(_normalised_split(cfg, model, "train")).double()
    np.testing.assert_allclose(z.mean((0, 2, 3)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std((0, 2, 3), correction=0).numpy(), 1.0, rtol=1e-3)


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_bitwise(trained, tmp_path):
    cfg, out, _ = trained
    resumed = tmp_path / "resumed.pt"

    def stop_after_three(record):
        if record["epoch"] == 3:
            raise Interrupt  # like Ctrl-C right after the epoch's checkpoint was written

    with pytest.raises(Interrupt):
        train_autoencoder(cfg, resumed, SETTINGS, on_epoch=stop_after_three)
    half = ckpt_io.read(resumed)
    assert half["training"]["epoch"] == 3 and torch.equal(half["state_dict"]["latent_std"], torch.ones(8))
    assert len(train_autoencoder(cfg, resumed, SETTINGS)) == 8
    a, b = ckpt_io.read(resumed), ckpt_io.read(out)
    assert a["content_hash"] == b["content_hash"] != half["content_hash"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["training"]["history"][:3] == half["training"]["history"]
    assert [r["val_mse"] for r in a["training"]["history"]] == [r["val_mse"] for r in b["training"]["history"]]


def test_checkpoint_round_trip_and_export_keep_the_hash(trained, tmp_path):
    cfg, out, _ = trained
    layout = layout_of(cfg)
    model = ckpt_io.load_autoencoder(out, layout.channels, 32, 64)
    assert model.latent_shape(32, 64) == (8, 8, 16) and model.provenance() == {"autoencoder": model.content_hash}
    exported = tmp_path / "export.pt"
    assert ckpt_io.strip_training(out, exported) == model.content_hash
    assert "training" not in torch.load(exported, weights_only=True) and exported.stat().st_size < out.stat().st_size
    again = ckpt_io.load_autoencoder(exported, layout.channels, 32, 64)
    x = again.normalization.denormalize(torch.randn(2, layout.n_channels, 32, 64) * 0.1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), again.encode(x), atol=0, rtol=0)
    assert ckpt_io.shipped_checkpoint("tiny").name == "autoencoder-tiny.pt"


def test_incompatible_or_corrupt_checkpoints_are_refused(trained, tmp_path):
    cfg, out, _ = trained
    channels = layout_of(cfg).channels
    with pytest.raises(CheckpointError, match="channels"):
        ckpt_io.load_autoencoder(out, channels[:-1], 32, 64)
    with pytest.raises(CheckpointError, match="32x64 grid, the experiment has 64x128"):
        ckpt_io.load_autoencoder(out, channels, 64, 128)
    ckpt = ckpt_io.read(out)
    ckpt["state_dict"]["project.bias"] += 1.0  # tampered, hash not updated
    ckpt_io.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_io.load_autoencoder(tmp_path / "tampered.pt")
    ckpt = ckpt_io.read(out)
    ckpt["architecture"]["latent_channels"] = 4  # claims another architecture, re-hashed: weights no longer fit
    ckpt["content_hash"] = ckpt_io.content_hash(ckpt)
    ckpt_io.save(ckpt, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="do not fit its recorded architecture"):
        ckpt_io.load_autoencoder(tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="config hash"):
        train_autoencoder(cfg.model_copy(update={"name": "other"}), out, SETTINGS)
    with pytest.raises(CheckpointError, match="architecture"):
        train_autoencoder(cfg, out, dataclasses.replace(SETTINGS, width=16))
    ckpt_io.strip_training(out, tmp_path / "exported.pt")
    with pytest.raises(CheckpointError, match="no training state"):
        train_autoencoder(cfg, tmp_path / "exported.pt", SETTINGS)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.load_autoencoder(tmp_path / "missing.pt")
    from align_da_ops.forecast import checkpoint as forecast_ckpt

    with pytest.raises(CheckpointError, match="is not a align-da-ops/neural-forecast/1 checkpoint"):
        forecast_ckpt.read(out)


def test_cli_train_autoencoder(trained, tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app

    cfg, _, _ = trained
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(cfg.nature_run.output)))
    out, export = tmp_path / "cli.pt", tmp_path / "x.pt"
    args = ["train", "autoencoder", str(path), "--epochs", "1", "--width", "8", "--blocks", "1", "--latent-channels", "4",
            "--threads", "1", "-o", str(out), "--export", str(export)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"hash {ckpt_io.read(out)['content_hash']}" in res.output and export.exists()
    assert "surface_pressure" in res.output and "overall reconstruction MSE" in res.output
    torch.set_num_threads(1)


def test_shipped_checkpoint_fits_the_tiny_config_and_reconstructs(tiny_nature_run):
    cfg = tiny_config(tiny_nature_run)
    layout = layout_of(cfg)
    path = ckpt_io.shipped_checkpoint(cfg.name)
    assert path.stat().st_size < 5 * 2**20 and "training" not in torch.load(path, weights_only=True)
    model = ckpt_io.load_autoencoder(path, layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon)
    assert model.downsampling == 4 and model.latent_shape(32, 64)[1:] == (8, 16)
    assert np.mean(ckpt_io.read(path)["reconstruction"]["mse"]) < 0.01  # validation split, normalised units
    x, _ = layout.to_tensor(nr.open_nature_run(tiny_nature_run).isel(member=0).load())  # = the first 2 days of data/tiny
    with torch.no_grad():
        z = model.encode(x)
        scores = reconstruction_scores(model, model.normalization.normalize(x), gaussian_latitudes(32))
    assert 0.8 < float(z.std()) < 1.25 and abs(float(z.mean())) < 0.2  # standardised latents
    assert scores["mse"].mean() < 0.005
