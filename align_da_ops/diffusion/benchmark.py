"""`align-da bench sampler`: seconds per analysis against network evaluations and ensemble size.

Two set-ups: the experiment's packaged autoencoder and prior (tiny on CPU), and
the paper's scale, 128x256 with 69 channels and a 32x64 latent, with random
weights (speed does not depend on the weights), on CUDA when present. The
observations are the paper's 1 % random mask (every channel at 1 % of the grid
points, exact grid selection), so DPS pays its real decoder back-propagation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.diffusion.checkpoint import LatentPrior
from align_da_ops.diffusion.guidance import ObservationTerm, guidance_of, parse_mode
from align_da_ops.diffusion.network import LatentUNet, PriorArchitecture, latent_latitudes
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.obs.operators import GridInterpolator, PreparedOperator


@dataclasses.dataclass
class Setup:
    name: str
    device: torch.device
    autoencoder: object
    prior: LatentPrior
    background: torch.Tensor  # (C, lat, lon) physical
    term: ObservationTerm

    @property
    def n_obs(self) -> int:
        return len(self.term)


def random_mask_term(background: torch.Tensor, channel_std, fraction: float = 0.01, seed: int = 0) -> ObservationTerm:
    """Every channel observed at `fraction` of the grid points, values = background + noise."""
    c, nlat, nlon = background.shape
    rng = np.random.default_rng(seed)
    points = rng.choice(nlat * nlon, max(1, int(round(fraction * nlat * nlon))), replace=False)
    flat = (np.arange(c)[:, None] * nlat * nlon + points[None]).reshape(-1)
    index = torch.as_tensor(flat, dtype=torch.int64)[:, None].repeat(1, 8)
    weight = torch.zeros(len(flat), 8, dtype=torch.float64)
    weight[:, 0] = 1.0
    op = PreparedOperator(index, weight, torch.ones(len(flat), dtype=torch.bool), (c, nlat, nlon))
    std = np.repeat(np.asarray(channel_std, dtype=np.float64), len(points))
    value = background.flatten().double().cpu().numpy()[flat] + 0.1 * std * rng.standard_normal(len(flat))
    return ObservationTerm.build(op, value, 0.1 * std, channel_std, device=background.device)


def packaged_setup(config: Path, prior_path: Path | None = None) -> Setup:
    """The experiment's packaged autoencoder and prior (or the prior at `prior_path`) on its first state."""
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of, open_states
    from align_da_ops.devices import resolve_device
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    cfg = load_config(config)
    layout, device = layout_of(cfg), resolve_device(cfg.device)
    ae = load_autoencoder(shipped_checkpoint(cfg.name), layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon, device)
    prior = load_prior(prior_path or shipped_prior(cfg.name), ae.content_hash, device)
    background = layout.to_tensor(open_states(cfg).isel({grid.TIME: 0}).load())[0].to(device)
    return Setup(f"{cfg.name} ({prior_path or 'packaged weights'})", device, ae, prior, background,
                 random_mask_term(background, ae.normalization.std))


def paper_scale_setup(nlat: int = 128, nlon: int = 256, channels: int = 69, compile: bool = False) -> Setup:
    from align_da_ops.latent.autoencoder import AutoencoderArchitecture, AutoencoderModel, SphereAutoencoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    lat = grid.equiangular_latitudes(nlat)
    norm = grid.Normalization(tuple(f"c{i}" for i in range(channels)), np.zeros(channels), np.ones(channels), ("", ""))
    ae = AutoencoderModel(SphereAutoencoder(AutoencoderArchitecture(channels, latent_channels=channels), lat), norm).to(device)
    cz = ae.latent_shape(nlat, nlon)[0]
    net = LatentUNet(PriorArchitecture(cz, width=128, blocks=2, levels=2), latent_latitudes(lat, ae.downsampling))
    prior = LatentPrior(net, CosineSchedule(), {"content_hash": "random", "residual_scale": [0.5] * cz}).to(device)
    background = torch.randn(channels, nlat, nlon, device=device)
    if compile:  # the networks the sampler calls; the first analysis pays the compilation (the warm-up)
        prior.net = torch.compile(prior.net)
        ae.net = torch.compile(ae.net)
    label = " compiled" if compile else ""
    return Setup(f"paper scale {nlat}x{nlon}x{channels} (random weights{label})", device, ae, prior, background,
                 random_mask_term(background, np.ones(channels)))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def _analysis(setup: Setup, sampler: Sampler, members: int, mode: str, dtype: str = "fp32") -> None:
    """One full analysis: encode, guided sampling of `members` in one batch, decode (bf16: under autocast)."""
    gens = [torch.Generator().manual_seed(m) for m in range(members)]
    with torch.autocast(setup.device.type, dtype=DTYPES[dtype], enabled=DTYPES[dtype] is not None):
        kind, jacobian = parse_mode(mode)
        guidance = guidance_of(kind, jacobian=jacobian)
        setup.prior.sample(setup.autoencoder, setup.background, sampler, gens, guidance, setup.term)[2].mean(0)


def analysis_seconds(setup: Setup, sampler: Sampler, members: int, mode: str, dtype: str = "fp32") -> float:
    """Wall seconds of one full analysis (see `_analysis`)."""
    _sync(setup.device)
    t0 = time.perf_counter()
    _analysis(setup, sampler, members, mode, dtype)
    _sync(setup.device)
    return time.perf_counter() - t0


def analysis_flops(setup: Setup, sampler: Sampler, members: int, mode: str, dtype: str = "fp32") -> int:
    """Floating-point operations of one full analysis as torch counts them (matmuls and convolutions, forward
    and the backward passes of the guidance): the numerator of the achieved-FLOP/s comparison with the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # its per-module backward hooks break autograd.grad through the prior (DPS)
    with counter:
        _analysis(setup, sampler, members, mode, dtype)
    return int(counter.get_total_flops())


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to "Global" only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def time_sampler(setup: Setup, steps, members, corrections: int, modes, dtypes=("fp32",), flops: bool = False) -> list[dict]:
    """One row per (guidance, dtype, members, steps): seconds per analysis, evaluations, peak CUDA memory
    (bytes, 0 on CPU) and, with `flops`, the counted FLOPs of that analysis."""
    rows = []
    for dtype in dtypes:
        analysis_seconds(setup, Sampler(2), 1, modes[0], dtype)  # warm-up (allocations, kernels, compilation)
        for mode in modes:
            for n in members:
                for k in steps:
                    sampler = Sampler(k, corrections)
                    if setup.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(setup.device)
                    seconds = analysis_seconds(setup, sampler, n, mode, dtype)
                    peak = torch.cuda.max_memory_allocated(setup.device) if setup.device.type == "cuda" else 0
                    row = {"setup": setup.name, "device": str(setup.device), "guidance": mode, "dtype": dtype,
                           "steps": k, "corrections": corrections, "evaluations": sampler.evaluations, "members": n,
                           "seconds": seconds, "peak_memory_bytes": int(peak)}
                    if flops:
                        row["flops"] = analysis_flops(setup, sampler, n, mode, dtype)
                        row["achieved_tflops"] = row["flops"] / seconds / 1e12
                    rows.append(row)
    return rows


def profile_summary(setup: Setup, sampler: Sampler, members: int, mode: str, dtype: str = "fp32", top: int = 20) -> str:
    """torch.profiler table (top operators by device time, or CPU time on CPU) of one analysis."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _analysis(setup, sampler, members, mode, dtype)
        _sync(setup.device)
    key = "cuda_time_total" if setup.device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


def quality_vs_evaluations(config: Path, samplers, mode: str = "dps", n_cases: int = 6, members: int = 4,
                           prior_path: Path | None = None, analysis: dict | None = None) -> list[dict]:
    """Analysis quality against network evaluations on held-out cases (48-h backgrounds, 1 % mask, noise-free).

    For each Sampler: mean normalised MSE and z500 WRMSE of the ensemble-mean analysis, and seconds per analysis.
    `prior_path`: the prior checkpoint to score (default: the packaged one); `analysis`: further
    LatentDiffusionConfig fields (e.g. {"increment": "none"}).
    """
    from align_da_ops.align import benchmark as ab
    from align_da_ops.analysis.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of, normalization_path, open_states, read_normalization
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.forecast.checkpoint import load_model
    from align_da_ops.forecast.checkpoint import shipped_checkpoint as shipped_forecast
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    cfg = load_config(config)
    layout, states = layout_of(cfg), open_states(cfg)
    nlat, nlon = cfg.state.grid.nlat, cfg.state.grid.nlon
    ae = load_autoencoder(shipped_checkpoint(cfg.name), layout.channels, nlat, nlon)
    prior = load_prior(prior_path or shipped_prior(cfg.name), ae.content_hash)
    model = load_model(shipped_forecast(cfg.name), layout.channels, nlat, nlon)
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    norm = read_normalization(normalization_path(cfg))
    test = cfg.splits.test
    cases = ab.cases(states, layout, model, test.start, test.end, 48, 48)[:n_cases]
    interp = GridInterpolator(layout, lat, lon)
    rows = []
    for sampler in samplers:
        kind, jacobian = parse_mode(mode)
        ld = LatentDiffusionConfig(guidance=kind, jacobian=jacobian, steps=sampler.steps, corrections=sampler.corrections,
                                   stochasticity=sampler.stochasticity, members=members, **(analysis or {}))
        t0 = time.perf_counter()
        r = ab.evaluate(lambda ld=ld: LatentDiffusion(ld, ae, prior, ae.normalization.std), cases, [0], model, layout,
                        norm, lat, lon, interp, members=members)
        rows.append({"steps": sampler.steps, "corrections": sampler.corrections, "evaluations": sampler.evaluations,
                     "mse": r["mse"][0], "z500": r["z500"][0], "seconds": (time.perf_counter() - t0) / len(cases)})
    return rows
