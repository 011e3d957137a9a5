"""Shared fixtures: a short nature run made once per test session, real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import DATA, tiny_config


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test (results that must match across processes bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_nature_run(tmp_path_factory) -> Path:
    """A 2-day, 1-member T21 nature run from the shipped spun-up state (a few seconds)."""
    from align_da_ops.data.nature_run import generate

    out = tmp_path_factory.mktemp("nature") / "nature.zarr"
    return generate(tiny_config(out))


@pytest.fixture(scope="session")
def era5_grib() -> Path:
    return DATA / "era5-levels-members.grib"


@pytest.fixture(scope="session")
def latent_models(tiny_nature_run, tmp_path_factory):
    """A 1-epoch autoencoder and a 2-epoch prior on the 2-day nature run (mechanics, not skill):
    (config, directory, autoencoder model, forecast model, prior path)."""
    import torch

    from align_da_ops.data.sources import layout_of
    from align_da_ops.diffusion.training import train_prior
    from align_da_ops.forecast.checkpoint import load_model, shipped_checkpoint
    from align_da_ops.latent.checkpoint import load_autoencoder
    from align_da_ops.latent.training import AutoencoderSettings, train_autoencoder

    from factories import TEST_PRIOR

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tests that retrain and compare bitwise use one thread too
    try:
        root = tmp_path_factory.mktemp("latent")
        cfg = tiny_config(tiny_nature_run)
        ae_path = root / "autoencoder.pt"
        train_autoencoder(cfg, ae_path, AutoencoderSettings(epochs=1, latent_channels=8, width=8, blocks=1))
        layout = layout_of(cfg)
        ae = load_autoencoder(ae_path, layout.channels, 32, 64)
        forecast = load_model(shipped_checkpoint("tiny"), layout.channels, 32, 64)
        prior_path = root / "prior.pt"
        train_prior(cfg, prior_path, ae, forecast, TEST_PRIOR)
    finally:
        torch.set_num_threads(threads)
    return cfg, root, ae, forecast, prior_path
