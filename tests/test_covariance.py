"""Spectral B: symmetry/positivity, homogeneity, transforms, storage and the NMC estimate (oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_da_ops.analysis.covariance import (
    EARTH_RADIUS_M,
    NMCAccumulator,
    SpectralCovariance,
    channel_variable_level,
    estimate_nmc,
    forecast_differences,
    variable_groups,
)
from align_da_ops.errors import InputDataError, SchemaError
from align_da_ops.grid import equiangular_latitudes, gaussian_latitudes, longitudes

CHANNELS = ("geopotential_500", "geopotential_850", "temperature_500", "surface_pressure")
SIGMA = np.array([100.0, 80.0, 1.0, 50.0])


def small_cov(nlat=8, lat=None, vertical=0.5, length=2.5e6) -> SpectralCovariance:
    lat = gaussian_latitudes(nlat) if lat is None else lat
    return SpectralCovariance.gaussian(CHANNELS, lat, longitudes(2 * nlat), SIGMA, length, vertical_length_lnp=vertical)


def dense(cov: SpectralCovariance) -> torch.Tensor:
    n = int(np.prod(cov.grid_shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *cov.grid_shape)
    return cov.operator().apply(eye).reshape(n, n)


@pytest.mark.parametrize(
    "lat", [gaussian_latitudes(8), equiangular_latitudes(8), equiangular_latitudes(8, with_poles=True)]
)
def test_dense_b_is_symmetric_psd_and_homogeneous(lat):
    cov = small_cov(lat=lat)
    b = dense(cov)
    assert torch.allclose(b, b.T, rtol=0, atol=1e-12 * b.abs().max())
    # PSD: B + 1e-10 max(diag) I has a Cholesky factor, so every eigenvalue > -1e-10 max(diag).
    # (Cholesky, not eigvalsh: LAPACK eigensolvers stall for seconds on a busy 2-core machine.)
    shift = 1e-10 * b.diagonal().max() * torch.eye(b.shape[0], dtype=b.dtype)
    assert torch.linalg.cholesky_ex(b + shift).info == 0
    # rank-deficient (fewer modes than grid points): not positive definite beyond a small shift
    assert torch.linalg.cholesky_ex(b - 1e3 * shift).info != 0
    diag = b.diagonal().reshape(cov.grid_shape)
    # Same variance at every grid point (addition theorem), equal to sigma^2.
    np.testing.assert_allclose(diag.amin((1, 2)).numpy(), SIGMA**2, rtol=1e-10)
    np.testing.assert_allclose(diag.amax((1, 2)).numpy(), SIGMA**2, rtol=1e-10)
    np.testing.assert_allclose(cov.variances(), SIGMA**2, rtol=1e-12)


def test_correlation_is_isotropic_and_vertical_as_specified():
    cov = small_cov(nlat=12, length=2.0e6)
    b = dense(cov).reshape(*cov.grid_shape, *cov.grid_shape)
    lat, lon = np.deg2rad(cov.latitudes), np.deg2rad(cov.longitudes)
    # Covariance depends only on great-circle distance: compare two point pairs at the same distance.
    j, i = 3, 5
    same_row = b[0, j, i, 0, j, (i + 2) % 24]
    shifted = b[0, j, i + 7, 0, j, (i + 9) % 24]
    assert torch.isclose(same_row, shifted, rtol=1e-10)
    mirrored = b[0, 11 - j, i, 0, 11 - j, (i + 2) % 24]  # mirror latitude: same distance
    assert torch.isclose(same_row, mirrored, rtol=1e-10)
    # Correlation decays with distance, Gaussian-like at L = 2000 km.
    gamma = np.arccos(np.sin(lat[j]) ** 2 + np.cos(lat[j]) ** 2 * np.cos(lon[2]))
    rho = float(same_row) / SIGMA[0] ** 2
    assert abs(rho - np.exp(-((EARTH_RADIUS_M * gamma) ** 2) / (2 * 2.0e6**2))) < 0.1
    # Vertical correlation exp(-(ln 850/500)^2 / (2 * 0.5^2)) between the geopotential levels, none across variables.
    corr = cov.correlation_matrix()
    assert corr[0, 1] == pytest.approx(np.exp(-np.log(850 / 500) ** 2 / 0.5), rel=1e-12)
    assert corr[0, 2] == 0.0 and corr[0, 3] == 0.0


def test_sqrt_adjoint_and_transform_roundtrip():
    cov = small_cov()
    op = cov.operator()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(op.control_shape, generator=g, dtype=torch.float64)
    x = torch.randn(cov.grid_shape, generator=g, dtype=torch.float64)
    assert float((op.sqrt(v) * x).sum()) == pytest.approx(float((v * op.sqrt_adjoint(x)).sum()), rel=1e-12)
    coeffs = v * op.transform._mask
    back = op.transform.analysis(op.transform.synthesis(coeffs))
    assert torch.allclose(back, coeffs, atol=1e-12)


def test_save_load_roundtrip_and_hash(tmp_path):
    cov = small_cov()
    path = cov.save(tmp_path / "b" / "nmc.npz")
    loaded = SpectralCovariance.load(path)
    assert loaded.content_hash() == cov.content_hash()
    assert loaded.channels == CHANNELS
    np.testing.assert_array_equal(loaded.spectra, cov.spectra)
    assert cov.scaled(2.0).content_hash() != cov.content_hash()
    assert len(cov.content_hash()) == 64
    with np.load(path, allow_pickle=False) as z:
        assert z["spectra"].dtype == np.float64


def test_load_rejects_bad_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputDataError, match="cannot read"):
        SpectralCovariance.load(junk)
    good = small_cov().save(tmp_path / "good.npz")
    for name, data in (("empty.npz", b""), ("truncated.npz", good.read_bytes()[: good.stat().st_size // 2])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputDataError, match="cannot read"):
            SpectralCovariance.load(tmp_path / name)
    partial = tmp_path / "partial.npz"
    np.savez(partial, spectra=np.zeros((2, 1, 1)))
    with pytest.raises(InputDataError, match="lacks arrays"):
        SpectralCovariance.load(partial)
    cov = small_cov()
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, format_version=np.asarray(1), spectra=cov.spectra * 2, channels=np.asarray(CHANNELS),
             latitudes=cov.latitudes, longitudes=cov.longitudes, content_hash=np.asarray(cov.content_hash()))
    with pytest.raises(InputDataError, match="content hash"):
        SpectralCovariance.load(tampered)


def test_bad_inputs_name_values():
    lat, lon = gaussian_latitudes(8), longitudes(16)
    with pytest.raises(SchemaError, match="truncation=9"):
        SpectralCovariance.gaussian(CHANNELS, lat, lon, SIGMA, 2e6, truncation=9)
    with pytest.raises(ValueError, match="not symmetric"):
        SpectralCovariance(np.array([[[1.0, 0.5], [0.0, 1.0]]]), ("temperature_500", "temperature_850"), lat, lon)
    with pytest.raises(SchemaError, match="equally spaced"):
        SpectralCovariance.gaussian(CHANNELS, lat, lon[[0, 1, 3, 4, 5, 6]], SIGMA, 2e6)
    with pytest.raises(SchemaError, match="'foo_500'"):
        channel_variable_level("foo_500")
    with pytest.raises(SchemaError, match="state has trailing shape"):
        small_cov().operator().apply(torch.zeros(4, 8, 15, dtype=torch.float64))
    assert variable_groups(CHANNELS).tolist() == [0, 0, 1, 2]


def test_nmc_recovers_variance_length_and_vertical_correlation():
    """Samples drawn from a known B: NMC estimates its σ², Daley length and level correlation."""
    lat, lon = gaussian_latitudes(16), longitudes(32)
    channels = ("temperature_500", "temperature_850", "surface_pressure")
    sigma, length = np.array([1.5, 2.0, 120.0]), np.array([1.5e6, 1.5e6, 2.0e6])
    truth = SpectralCovariance.gaussian(channels, lat, lon, sigma, length, vertical_length_lnp=0.6)
    op = truth.operator()
    g = torch.Generator().manual_seed(1)
    offset = torch.tensor([250.0, 280.0, 1.0e5], dtype=torch.float64)[:, None, None]  # a mean, removed by NMC
    samples = op.sqrt(torch.randn(300, *op.control_shape, generator=g, dtype=torch.float64)) + offset
    est = estimate_nmc(samples, channels, lat, lon, batch_size=128)
    np.testing.assert_allclose(est.variances(), sigma**2, rtol=0.06)
    np.testing.assert_allclose(est.length_scales(), truth.length_scales(), rtol=0.05)
    np.testing.assert_allclose(truth.length_scales(), length, rtol=0.10)  # Daley length ≈ nominal L when resolved
    assert est.correlation_matrix()[0, 1] == pytest.approx(truth.correlation_matrix()[0, 1], abs=0.05)
    assert est.correlation_matrix()[0, 2] == 0.0  # couple="vertical": nothing across variables
    univariate = estimate_nmc(samples, channels, lat, lon, couple="none")
    assert univariate.correlation_matrix()[0, 1] == 0.0
    np.testing.assert_allclose(univariate.variances(), est.variances(), rtol=1e-12)


def test_nmc_streaming_equals_batch_and_forecast_differences():
    lat, lon = gaussian_latitudes(8), longitudes(16)
    channels = ("geopotential_500", "surface_pressure")
    g = torch.Generator().manual_seed(2)
    long_lead = torch.randn(10, 2, 8, 16, generator=g, dtype=torch.float64)
    short_lead = torch.randn(10, 2, 8, 16, generator=g, dtype=torch.float64)
    proxies = forecast_differences(long_lead, short_lead)
    acc = NMCAccumulator(channels, lat, lon)
    acc.add(proxies[:3])
    acc.add(proxies[3:])
    once = estimate_nmc(proxies, channels, lat, lon, scale=0.5)
    np.testing.assert_allclose(acc.covariance(scale=0.5).spectra, once.spectra, rtol=1e-10, atol=1e-14)
    # demean=False: raw second moments / (N (2l+1)), computed directly from the coefficients.
    coeffs = SpectralCovariance(np.zeros((8, 2, 2)), channels, lat, lon).operator().transform.analysis(proxies + 3.0)
    l = np.arange(8)
    direct = torch.einsum("sckl,sdkl->lcd", coeffs, coeffs).numpy() / (10 * (2 * l + 1))[:, None, None]
    raw = estimate_nmc(proxies + 3.0, channels, lat, lon, demean=False, couple="all", batch_size=4)
    np.testing.assert_allclose(raw.spectra, direct, rtol=1e-10)
    with pytest.raises(SchemaError, match="differ in shape"):
        forecast_differences(long_lead, short_lead[:5])
    with pytest.raises(ValueError, match="at least 2 samples"):
        estimate_nmc(proxies[:1], channels, lat, lon)


def test_length_scaled_gaussian_matches_the_longer_gaussian():
    """Stretching a Gaussian B's spectrum by factor a reproduces the Gaussian B of length a·L (oracle),
    keeps variances and inter-channel correlations, and 1 is the identity."""
    from align_da_ops.analysis.covariance import SpectralCovariance
    from align_da_ops.grid import gaussian_latitudes, longitudes

    lat, lon = gaussian_latitudes(32), longitudes(64)
    channels = ["temperature_500", "temperature_850"]
    base = SpectralCovariance.gaussian(channels, lat, lon, [1.0, 2.0], 1000e3, vertical_length_lnp=0.5)
    assert base.length_scaled(1.0) is base
    for factor in (0.7, 1.5):
        stretched = base.length_scaled(factor)
        oracle = SpectralCovariance.gaussian(channels, lat, lon, [1.0, 2.0], factor * 1000e3, vertical_length_lnp=0.5)
        np.testing.assert_allclose(stretched.variances(), base.variances(), rtol=1e-12)
        np.testing.assert_allclose(stretched.correlation_matrix(), base.correlation_matrix(), atol=1e-12)
        np.testing.assert_allclose(stretched.length_scales(), oracle.length_scales(), rtol=0.01)
        assert np.abs(stretched.spectra - oracle.spectra).max() < 0.01 * np.abs(oracle.spectra).max()
