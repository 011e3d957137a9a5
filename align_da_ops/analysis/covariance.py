"""Static background-error covariance B: spectral, homogeneous and isotropic on the sphere.

Model (Courtier et al. 1998; Derber & Bouttier 1999, "non-separable" form):
a state x (channel, lat, lon) is expanded in real, L²-orthonormal spherical
harmonics Y_lm up to a triangular truncation T, and B is diagonal in (l, m)
with a channel-by-channel matrix S_l (C, C) that depends on the total
wavenumber l only:

    B = Y diag_lm(S_l) Yᵀ,   B^{1/2} v = Y (S_l^{1/2} v_lm)   (control variable v ~ N(0, I)).

By the addition theorem Σ_m Y_lm(x) Y_lm(x') = (2l+1)/(4π) P_l(cos γ), so the
covariance between two points depends only on their great-circle distance γ
(homogeneous, isotropic), the variance of channel c is the same everywhere,
σ_c² = Σ_l (2l+1)/(4π) S_l[c, c], and B is symmetric positive semi-definite
by construction (rank = number of retained modes). Off-diagonal entries of
S_l couple channels: the levels of one variable ("vertical correlations") or,
in principle, different variables; estimation keeps only what is asked.

Two ways to get S_l:
- `SpectralCovariance.gaussian`: per channel σ_b and a horizontal length L, with
  the spectral Gaussian (heat-kernel) shape S_l ∝ exp(−l(l+1) L² / (2a²)), whose
  correlation is ≈ exp(−d²/(2L²)) for L ≪ a (Weaver & Courtier 2001), and
  optional vertical correlations exp(−(ln p − ln p')² / (2 L_v²)) between the
  levels of one variable;
- `estimate_nmc` / `NMCAccumulator`: the NMC method (Parrish & Derber 1992),
  sample covariances of the spectral coefficients of background-error proxies
  (e.g. differences of forecasts valid at the same time at two leads),
  averaged over m and samples.

Grids: any ascending latitude set within [-90, 90] (Gaussian, equiangular,
with or without poles) and equally spaced longitudes (nlon > 2T). Synthesis is
exact pointwise evaluation; the forward transform (for estimation) is a
per-m weighted least-squares projection, exact for band-limited fields.
Storage: a small `.npz` read without pickle; `content_hash` for provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from dinosaur_torch import associated_legendre

from align_da_ops.errors import InputDataError, SchemaError
from align_da_ops.grid import VARIABLES

EARTH_RADIUS_M = 6.371e6
FORMAT_VERSION = 1


# -- channel names ------------------------------------------------------------------------
def channel_variable_level(name: str) -> tuple[str, int | None]:
    """("geopotential", 500) for "geopotential_500", ("surface_pressure", None) for a surface channel."""
    if name in VARIABLES:
        return name, None
    variable, _, level = name.rpartition("_")
    if variable in VARIABLES and level.isdigit():
        return variable, int(level)
    raise SchemaError(f"channel name {name!r} is neither a variable nor '<variable>_<level hPa>'")


def variable_groups(channels: Sequence[str]) -> np.ndarray:
    """(C,) int: channels sharing a group id are the levels of one variable."""
    names = [channel_variable_level(c)[0] for c in channels]
    order = list(dict.fromkeys(names))
    return np.asarray([order.index(n) for n in names], dtype=np.int64)


# -- spherical-harmonic basis ---------------------------------------------------------------
class SphericalBasis:
    """Real orthonormal spherical harmonics on a lat/lon grid, triangular truncation T (numpy, float64).

    Modal layout (as dinosaur-torch's `RealSphericalHarmonics`): index k over
    m = [0, +1, -1, +2, -2, ...] (K = 2T+1; +m ↔ cos mλ, −m ↔ sin mλ), index l
    over 0..T; entries with |m| > l are structural zeros (`mask`).
    """

    def __init__(self, latitudes: np.ndarray, longitudes: np.ndarray, truncation: int | None = None):
        lat, lon = _check_grid(latitudes, longitudes)
        nlat, nlon = len(lat), len(lon)
        t_max = min(nlat - 1, (nlon - 1) // 2)
        t = t_max if truncation is None else int(truncation)
        if not 0 <= t <= t_max:
            raise SchemaError(
                f"truncation={t} must lie in 0..{t_max} for a {nlat}x{nlon} grid (T <= nlat-1, 2T < nlon)"
            )
        self.latitudes, self.longitudes, self.truncation = lat, lon, t
        n_l = t + 1
        p = associated_legendre.evaluate(n_m=n_l, n_l=n_l, x=np.sin(np.deg2rad(lat)))  # (M, nlat, L)
        self.legendre = np.repeat(p, 2, axis=0)[1:]  # (K, nlat, L)
        m_abs = np.concatenate([[0], np.repeat(np.arange(1, n_l), 2)])
        self.m_abs = m_abs
        self.mask = m_abs[:, None] <= np.arange(n_l)[None, :]  # (K, L)
        lam = np.deg2rad(lon)
        f = np.empty((nlon, 2 * n_l - 1))
        f[:, 0] = 1.0 / np.sqrt(2 * np.pi)
        f[:, 1::2] = np.cos(np.outer(lam, np.arange(1, n_l))) / np.sqrt(np.pi)
        f[:, 2::2] = np.sin(np.outer(lam, np.arange(1, n_l))) / np.sqrt(np.pi)
        self.fourier = f  # (nlon, K)
        self.fourier_analysis = f * (2 * np.pi / nlon)  # exact inverse for |m| < nlon/2
        self.legendre_analysis = self._legendre_analysis(lat)  # (K, L, nlat)

    def _legendre_analysis(self, lat: np.ndarray) -> np.ndarray:
        """Per m: weighted least-squares inverse of the Legendre synthesis (cell-area weights)."""
        edges = np.concatenate([[-90.0], (lat[1:] + lat[:-1]) / 2, [90.0]])
        w = np.diff(np.sin(np.deg2rad(edges)))
        out = np.zeros((self.legendre.shape[0], self.truncation + 1, len(lat)))
        for k, m in enumerate(self.m_abs):
            pk = self.legendre[k][:, m:]  # (nlat, L - m)
            normal = pk.T @ (w[:, None] * pk)
            out[k, m:, :] = np.linalg.solve(normal, pk.T * w[None, :])
        return out

    @property
    def modal_shape(self) -> tuple[int, int]:
        return self.mask.shape

    def tensors(self, device, dtype) -> dict[str, torch.Tensor]:
        names = ("legendre", "fourier", "fourier_analysis", "legendre_analysis", "mask")
        return {n: torch.as_tensor(np.asarray(getattr(self, n), np.float64), dtype=dtype, device=device) for n in names}


def _check_grid(latitudes, longitudes) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(latitudes, dtype=np.float64)
    lon = np.asarray(longitudes, dtype=np.float64)
    if lat.ndim != 1 or len(lat) < 2 or np.any(np.diff(lat) <= 0) or lat[0] < -90 or lat[-1] > 90:
        raise SchemaError(f"latitudes must be ascending within [-90, 90], >= 2 rows; got {lat[:3]}...{lat[-3:]}")
    if lon.ndim != 1 or len(lon) < 3:
        raise SchemaError(f"longitudes must be 1-D with >= 3 points; got shape {lon.shape}")
    step = 360.0 / len(lon)
    if np.max(np.abs(np.diff(lon) - step)) > 1e-6 * step:
        raise SchemaError(f"longitudes must be equally spaced by 360/{len(lon)} = {step}°; got {lon[:3]}...")
    return lat, lon


# -- the covariance model -------------------------------------------------------------------
class SpectralCovariance:
    """B as per-wavenumber channel covariances `spectra` (L, C, C) on a given grid (see module doc).

    Units: spectra in (physical unit)² per mode of unit-L²-norm harmonics on the unit
    sphere; `variances()` gives the pointwise σ² per channel in physical units².
    """

    def __init__(self, spectra, channels: Sequence[str], latitudes, longitudes):
        s = np.array(spectra, dtype=np.float64)
        channels = tuple(str(c) for c in channels)
        if s.ndim != 3 or s.shape[1] != s.shape[2] or s.shape[1] != len(channels):
            raise SchemaError(f"spectra must be (L, C, C) with C = {len(channels)} channels; got shape {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("spectra contain NaN or Inf")
        scale = max(float(np.abs(s).max()), 1e-300)
        if np.abs(s - s.transpose(0, 2, 1)).max() > 1e-10 * scale:
            asym = np.abs(s - s.transpose(0, 2, 1)).max()
            raise ValueError(f"spectra are not symmetric: max |S - Sᵀ| = {asym:.3g}")
        if np.any(np.diagonal(s, axis1=1, axis2=2) < 0):
            raise ValueError("spectra have negative variances on the diagonal")
        for c in channels:
            channel_variable_level(c)
        self.spectra = (s + s.transpose(0, 2, 1)) / 2
        self.spectra.flags.writeable = False
        self.channels = channels
        self.latitudes, self.longitudes = _check_grid(latitudes, longitudes)
        self.basis = SphericalBasis(self.latitudes, self.longitudes, truncation=s.shape[0] - 1)

    @property
    def truncation(self) -> int:
        return self.spectra.shape[0] - 1

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return (self.n_channels, len(self.latitudes), len(self.longitudes))

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def gaussian(
        cls,
        channels: Sequence[str],
        latitudes,
        longitudes,
        sigma: Sequence[float],
        length_m: Sequence[float] | float,
        truncation: int | None = None,
        vertical_length_lnp: float | None = None,
    ) -> "SpectralCovariance":
        """Parametric B: σ_c² variance, Gaussian correlation of length L_c, optional vertical correlation."""
        basis = SphericalBasis(latitudes, longitudes, truncation)
        c = len(channels)
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (c,))
        length = np.broadcast_to(np.asarray(length_m, dtype=np.float64), (c,))
        if np.any(sigma < 0) or np.any(length <= 0):
            raise ValueError(
                f"sigma must be >= 0 and length > 0; got sigma={sigma.tolist()}, length_m={length.tolist()}"
            )
        l = np.arange(basis.truncation + 1, dtype=np.float64)
        shape = np.exp(-np.outer(l * (l + 1), length**2 / (2 * EARTH_RADIUS_M**2)))  # (L, C)
        point_var = ((2 * l + 1) / (4 * np.pi)) @ shape  # (C,)
        diag = shape * (sigma**2 / point_var)[None, :]
        rho = vertical_correlation(channels, vertical_length_lnp)
        spectra = rho[None] * np.sqrt(diag[:, :, None] * diag[:, None, :])
        return cls(spectra, channels, basis.latitudes, basis.longitudes)

    # -- diagnostics -------------------------------------------------------------------------
    def variances(self) -> np.ndarray:
        """(C,) pointwise variance σ_c² (the same at every grid point)."""
        l = np.arange(self.truncation + 1)
        return ((2 * l + 1) / (4 * np.pi)) @ np.diagonal(self.spectra, axis1=1, axis2=2)

    def length_scales(self) -> np.ndarray:
        """(C,) Daley (1991) length L = sqrt(−1/ρ''(0)) in metres, from σ² and the Laplacian of the correlation."""
        l = np.arange(self.truncation + 1)
        diag = np.diagonal(self.spectra, axis1=1, axis2=2)
        lap = ((2 * l + 1) * l * (l + 1) / (4 * np.pi)) @ diag  # −∇²C(0) · a²
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(lap > 0, EARTH_RADIUS_M * np.sqrt(2 * self.variances() / lap), np.inf)

    def correlation_matrix(self) -> np.ndarray:
        """(C, C) correlation between channels at the same grid point."""
        l = np.arange(self.truncation + 1)
        cov = np.tensordot((2 * l + 1) / (4 * np.pi), self.spectra, axes=1)
        sd = np.sqrt(np.diagonal(cov))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.outer(sd, sd) > 0, cov / np.outer(sd, sd), 0.0)

    def scaled(self, factor: float) -> "SpectralCovariance":
        """B multiplied by `factor` (variance inflation / NMC scaling)."""
        if not factor > 0:
            raise ValueError(f"B scale factor must be > 0; got {factor}")
        return SpectralCovariance(self.spectra * factor, self.channels, self.latitudes, self.longitudes)

    def length_scaled(self, factor: float) -> "SpectralCovariance":
        """B with every horizontal correlation length multiplied by `factor`, pointwise variances and
        inter-channel correlations kept.

        The spectrum is stretched in total wavenumber: S'(l) = D S(l*) D with l*(l*+1) = factor² l(l+1)
        (exact for Gaussian correlations), linear interpolation between wavenumbers, zero beyond the
        truncation, and D diagonal restoring each channel's variance (a congruence, so S' stays PSD).
        """
        if not factor > 0:
            raise ValueError(f"B length factor must be > 0; got {factor}")
        if factor == 1.0:
            return self
        l = np.arange(self.truncation + 1, dtype=np.float64)
        source = (-1.0 + np.sqrt(1.0 + 4.0 * factor**2 * l * (l + 1))) / 2.0
        low = np.floor(source).astype(int)
        frac = (source - low)[:, None, None]
        padded = np.concatenate([self.spectra, np.zeros((2, *self.spectra.shape[1:]))])
        low = np.minimum(low, self.truncation + 1)
        stretched = (1 - frac) * padded[low] + frac * padded[low + 1]
        new_var = ((2 * l + 1) / (4 * np.pi)) @ np.diagonal(stretched, axis1=1, axis2=2)
        old_var = self.variances()
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(new_var > 0, np.sqrt(old_var / new_var), 0.0)
        return SpectralCovariance(stretched * d[None, :, None] * d[None, None, :], self.channels, self.latitudes,
                                  self.longitudes)

    # -- storage -------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 of the format version, channel names, grid and spectra (float64, little-endian)."""
        h = hashlib.sha256()
        meta = {"format": FORMAT_VERSION, "channels": list(self.channels), "shape": list(self.spectra.shape)}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for arr in (self.latitudes, self.longitudes, self.spectra):
            h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write an `.npz` (atomically: temp file then rename); no pickled objects."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    format_version=np.asarray(FORMAT_VERSION),
                    spectra=self.spectra,
                    channels=np.asarray(self.channels, dtype=str),
                    latitudes=self.latitudes,
                    longitudes=self.longitudes,
                    content_hash=np.asarray(self.content_hash()),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SpectralCovariance":
        """Read a file written by `save`; checks the format version and the stored content hash."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # truncated or empty file (BadZipFile, EOFError), not an npz, unreadable
            raise InputDataError(f"cannot read background-error covariance {path}: {type(exc).__name__}: {exc}") from None
        missing = {"format_version", "spectra", "channels", "latitudes", "longitudes"} - set(data)
        if missing:
            raise InputDataError(f"{path} lacks arrays {sorted(missing)}; not a covariance file")
        if int(data["format_version"]) != FORMAT_VERSION:
            raise InputDataError(f"{path} has format_version={int(data['format_version'])}; expected {FORMAT_VERSION}")
        cov = cls(data["spectra"], data["channels"].tolist(), data["latitudes"], data["longitudes"])
        stored = str(data.get("content_hash", ""))
        if stored and stored != cov.content_hash():
            raise InputDataError(
                f"{path}: content hash {stored[:12]}… does not match the data {cov.content_hash()[:12]}…"
            )
        return cov

    def operator(self, device="cpu", dtype=torch.float64) -> "SpectralOperator":
        return SpectralOperator(self, device, dtype)


def vertical_correlation(channels: Sequence[str], length_lnp: float | None) -> np.ndarray:
    """(C, C) ρ = exp(−(ln p − ln p')²/(2 L_v²)) between levels of one variable; identity elsewhere."""
    c = len(channels)
    rho = np.eye(c)
    if length_lnp is None:
        return rho
    if not length_lnp > 0:
        raise ValueError(f"vertical_length_lnp must be > 0; got {length_lnp}")
    parsed = [channel_variable_level(n) for n in channels]
    for i, (vi, pi) in enumerate(parsed):
        for j, (vj, pj) in enumerate(parsed):
            if i != j and vi == vj and pi is not None and pj is not None:
                rho[i, j] = np.exp(-((np.log(pi) - np.log(pj)) ** 2) / (2 * length_lnp**2))
    return rho


def _symmetric_sqrt(spectra: np.ndarray) -> np.ndarray:
    """Per l, the symmetric PSD square root (eigenvalues clipped at 0)."""
    vals, vecs = np.linalg.eigh(spectra)
    vals = np.clip(vals, 0.0, None)
    return np.einsum("lij,lj,lkj->lik", vecs, np.sqrt(vals), vecs)


# -- torch operators -----------------------------------------------------------------------------
class HarmonicTransform:
    """Spherical-harmonic synthesis, its adjoint and the analysis projection in torch (one device/dtype).

    Coefficients have shape (*, C, K, L); grid values (*, C, lat, lon).
    """

    def __init__(self, basis: SphericalBasis, device="cpu", dtype=torch.float64):
        self.basis, self.device, self.dtype = basis, torch.device(device), dtype
        t = basis.tensors(self.device, dtype)
        self._p, self._f, self._fa, self._pa, self._mask = (
            t["legendre"], t["fourier"], t["fourier_analysis"], t["legendre_analysis"], t["mask"]
        )

    def synthesis(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Coefficients (*, C, K, L) -> grid values (*, C, lat, lon)."""
        g = torch.einsum("kjl,...ckl->...ckj", self._p, coeffs * self._mask)
        return torch.einsum("ik,...ckj->...cji", self._f, g)

    def synthesis_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """Transpose of `synthesis`: (*, C, lat, lon) -> (*, C, K, L)."""
        g = torch.einsum("ik,...cji->...ckj", self._f, x)
        return torch.einsum("kjl,...ckj->...ckl", self._p, g) * self._mask

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """(*, C, lat, lon) -> (*, C, K, L): projection onto the retained harmonics (exact if band-limited)."""
        g = torch.einsum("ik,...cji->...ckj", self._fa, x)
        return torch.einsum("klj,...ckj->...ckl", self._pa, g)


class SpectralOperator:
    """B^{1/2} (control -> grid) and its adjoint in torch on one device/dtype.

    Control vectors have shape (*lead, C, K, L) (`control_shape`); states (*lead, C, lat, lon).
    `apply = sqrt ∘ sqrt_adjoint` uses the same matrices, so B is symmetric PSD in any precision.
    """

    def __init__(self, cov: SpectralCovariance, device="cpu", dtype=torch.float64):
        self.cov, self.device, self.dtype = cov, torch.device(device), dtype
        self.transform = HarmonicTransform(cov.basis, device, dtype)
        self._q = torch.as_tensor(_symmetric_sqrt(cov.spectra), dtype=dtype, device=self.device)

    @property
    def control_shape(self) -> tuple[int, int, int]:
        return (self.cov.n_channels, *self.cov.basis.modal_shape)

    def sqrt(self, v: torch.Tensor) -> torch.Tensor:
        """B^{1/2} v: control (*, C, K, L) -> increment (*, C, lat, lon)."""
        _check_trailing(v, self.control_shape, "control vector")
        return self.transform.synthesis(torch.einsum("lcd,...dkl->...ckl", self._q, v))

    def sqrt_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        """(B^{1/2})ᵀ x: state (*, C, lat, lon) -> control (*, C, K, L)."""
        _check_trailing(x, self.cov.grid_shape, "state")
        return torch.einsum("lcd,...ckl->...dkl", self._q, self.transform.synthesis_adjoint(x))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """B x."""
        return self.sqrt(self.sqrt_adjoint(x))


def _check_trailing(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(x.shape[-3:]) != tuple(shape):
        raise SchemaError(f"{what} has trailing shape {tuple(x.shape[-3:])}; B expects {tuple(shape)}")


# -- NMC estimation -------------------------------------------------------------------------------
class NMCAccumulator:
    """Streaming NMC estimate of `SpectralCovariance` from background-error proxies (Parrish & Derber 1992).

    `add(samples)` takes (S, C, lat, lon) proxies (e.g. 48-h minus 24-h forecasts valid
    at the same time); `covariance()` returns S_l[c, c'] = Σ_{samples, m} c_lm c'_lm /
    ((N − ddof)(2l+1)), with the sample mean removed (ddof = 1) when `demean`.
    `couple`: "vertical" keeps covariances between levels of one variable,
    "none" only variances (univariate), "all" every channel pair (multivariate).
    """

    def __init__(self, channels: Sequence[str], latitudes, longitudes, truncation: int | None = None):
        self.channels = tuple(channels)
        self.basis = SphericalBasis(latitudes, longitudes, truncation)
        self._transforms: dict[torch.device, HarmonicTransform] = {}
        self._shift: torch.Tensor | None = None
        n_l, c = self.basis.truncation + 1, len(self.channels)
        self._sum = torch.zeros((c, *self.basis.modal_shape), dtype=torch.float64)
        self._sum_sq = torch.zeros((n_l, c, c), dtype=torch.float64)
        self.count = 0

    def add(self, samples) -> None:
        x = torch.as_tensor(samples).to(dtype=torch.float64)
        want = (len(self.channels), len(self.basis.latitudes), len(self.basis.longitudes))
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise SchemaError(f"NMC samples must be (samples, C, lat, lon) = (S, {want}); got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"NMC samples contain {int((~torch.isfinite(x)).sum())} NaN/Inf values")
        if x.device not in self._transforms:
            self._transforms[x.device] = HarmonicTransform(self.basis, x.device, torch.float64)
        coeffs = self._transforms[x.device].analysis(x).cpu()
        if self._shift is None:  # shifted data: keeps Σc² − n·mean² free of cancellation for large means
            self._shift = coeffs.mean(0)
        coeffs = coeffs - self._shift
        self._sum += coeffs.sum(0)
        per_l = coeffs.permute(3, 1, 0, 2).reshape(coeffs.shape[3], coeffs.shape[1], -1)  # (L, C, S*K)
        self._sum_sq += per_l @ per_l.transpose(1, 2)
        self.count += int(x.shape[0])

    def covariance(self, demean: bool = True, couple: str = "vertical", scale: float = 1.0) -> SpectralCovariance:
        ddof = 1 if demean else 0
        if self.count - ddof < 1:
            raise ValueError(f"NMC needs at least {ddof + 1} samples; got {self.count}")
        if couple not in ("vertical", "none", "all"):
            raise ValueError(f"couple must be 'vertical', 'none' or 'all'; got {couple!r}")
        mean = self._sum / self.count  # of the shifted coefficients
        sq = self._sum_sq - self.count * torch.einsum("ckl,dkl->lcd", mean, mean)  # centred
        if not demean:  # raw second moments: add the mean back
            raw = mean + self._shift
            sq = sq + self.count * torch.einsum("ckl,dkl->lcd", raw, raw)
        l = torch.arange(self.basis.truncation + 1, dtype=torch.float64)
        spectra = (sq / ((self.count - ddof) * (2 * l + 1))[:, None, None]).numpy() * scale
        groups = variable_groups(self.channels)
        keep = {"vertical": groups[:, None] == groups[None, :], "none": np.eye(len(groups), dtype=bool)}.get(couple)
        if keep is not None:
            spectra = spectra * keep[None]
        return SpectralCovariance(spectra, self.channels, self.basis.latitudes, self.basis.longitudes)


def estimate_nmc(
    samples,
    channels: Sequence[str],
    latitudes,
    longitudes,
    *,
    truncation: int | None = None,
    couple: str = "vertical",
    demean: bool = True,
    scale: float = 1.0,
    batch_size: int = 64,
) -> SpectralCovariance:
    """NMC B from proxies (S, C, lat, lon), in batches; see `NMCAccumulator` for the estimator."""
    acc = NMCAccumulator(channels, latitudes, longitudes, truncation)
    for start in range(0, len(samples), batch_size):
        acc.add(samples[start : start + batch_size])
    return acc.covariance(demean=demean, couple=couple, scale=scale)


def forecast_differences(long_lead, short_lead) -> torch.Tensor:
    """NMC proxies: forecasts valid at the same times from two leads (e.g. 48 h − 24 h), (S, C, lat, lon) each.

    Parrish & Derber (1992) scale the difference covariance empirically; if the two
    forecast errors were independent and equally large the factor would be 0.5.
    """
    a, b = torch.as_tensor(long_lead), torch.as_tensor(short_lead)
    if a.shape != b.shape:
        raise SchemaError(f"forecast sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a - b
