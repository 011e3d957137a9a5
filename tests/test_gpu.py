"""CUDA checks (run with `pytest -m gpu` on a machine with a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore
from align_da_ops.data.restarts import SHIPPED_DIR, load_restart, restart_filename

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("gpu tests need a CUDA device (deselect with -m 'not gpu')")
    return torch.device("cuda")


def test_core_on_cuda_matches_cpu(cuda):
    cpu = HeldSuarezCore(CoreSpec(21, 8), dt_minutes=60)
    gpu = HeldSuarezCore(CoreSpec(21, 8), dt_minutes=60, device=cuda)
    path = SHIPPED_DIR / restart_filename(cpu.spec.signature())
    s_cpu, _ = load_restart(path, cpu)
    s_gpu, _ = load_restart(path, gpu)
    a = cpu.sigma_fields(cpu.advance(s_cpu, 6))
    b = gpu.sigma_fields(gpu.advance(s_gpu, 6))
    for key in ("u", "t", "z", "ps"):
        np.testing.assert_allclose(b[key].cpu().numpy(), a[key].numpy(), rtol=1e-3, atol=1e-2 * float(a[key].abs().mean()))


def test_nature_run_on_cuda(cuda, tmp_path):
    from align_da_ops.config import ExperimentConfig
    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.plausibility import check_report, climate_report

    from factories import tiny_config_dict

    raw = tiny_config_dict(tmp_path / "gpu.zarr", days=2.0, members=4)
    raw["device"] = "cuda"
    store = nr.generate(ExperimentConfig.model_validate(raw))
    ds = nr.open_nature_run(store)
    assert ds.sizes["member"] == 4
    assert check_report(climate_report(ds)) == []


def test_latent_diffusion_analysis_on_cuda_matches_cpu(cuda):
    """The packaged tiny autoencoder + prior, DPS with a 1 % mask: CUDA and CPU members agree."""
    from align_da_ops.diffusion.benchmark import random_mask_term
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.diffusion.guidance import DPS
    from align_da_ops.diffusion.samplers import Sampler
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    ae_cpu = load_autoencoder(shipped_checkpoint("tiny"))
    with torch.no_grad():
        background = ae_cpu.decode(torch.zeros(1, *ae_cpu.latent_shape(32, 64)))[0]
    results = []
    for device in ("cpu", cuda):
        ae = load_autoencoder(shipped_checkpoint("tiny"), device=device)
        prior = load_prior(shipped_prior("tiny"), ae.content_hash, device)
        term = random_mask_term(background.to(device), ae.normalization.std)
        gens = [torch.Generator().manual_seed(m) for m in range(2)]
        results.append(prior.sample(ae, background.to(device), Sampler(8), gens, DPS(), term)[2].cpu())
    scale = torch.as_tensor(np.asarray(ae_cpu.normalization.std), dtype=torch.float32)[:, None, None]
    assert float(((results[0] - results[1]) / scale).abs().max()) < 1e-2
