"""Training the background-conditioned latent prior by denoising score matching.

Pairs (background, truth): the neural forecast model is started from every
state of a split and rolled out; its forecast at each lead in `leads` (hours)
is a background, the nature-run state at the valid time its truth. Both are
encoded with the autoencoder; the prior models the background's latent error
d = (z - z_b) / scale (scale: its per-channel std over the training pairs),
conditioned on z_b, so it learns p(z | z_b) under the
forecast model's real error growth; mixing leads from 6 h to 3 days spans the
background errors met while cycling with sparse observations (a cycled
background is a 6-h forecast from an imperfect analysis).

Loss: denoising score matching of the preconditioned network (`LatentUNet.loss`,
the eps error weighted by 1 + sigma^2/mu^2), t ~ U(0, 1), AdamW
with warm-up and cosine decay, gradient clipping, EMA of the weights (sampled
with). Augmentation: each pair is rolled in longitude by a random number of
latent columns (the Held-Suarez forcing is zonally symmetric and the
autoencoder is convolutional with circular padding), which cut the gap between
training and validation loss on the 124 training states. Validation: the same loss on the validation split's pairs with fixed
noise and times (comparable across epochs). Resumable: rerunning continues from
the last epoch's checkpoint; deterministic on CPU for a given seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from align_da_ops import checkpoint_io, grid
from align_da_ops.config import ExperimentConfig, config_hash
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion.network import LatentUNet, PriorArchitecture, latent_latitudes
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.errors import CheckpointError, SchemaError
from align_da_ops.forecast.training import load_split


@dataclasses.dataclass(frozen=True)
class PriorSettings:
    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    augment: bool = True  # roll each pair by a random number of latent columns (the forcing is zonally symmetric)
    width: int = 64
    blocks: int = 2
    levels: int = 1
    leads: tuple[int, ...] = (6, 12, 24, 36, 48, 72)
    eta: float = 1e-3
    seed: int = 0


@torch.no_grad()
def forecast_pairs(x: torch.Tensor, model, leads) -> tuple[torch.Tensor, torch.Tensor]:
    """(backgrounds, truths) from a 6-hourly series x (T, C, lat, lon) in physical units and a ForecastModel."""
    if any(h <= 0 or h % 6 for h in leads):
        raise ValueError(f"leads must be positive multiples of 6 h; got {leads}")
    backgrounds, truths = [], []
    state = x
    for s in range(1, max(leads) // 6 + 1):
        state = model.step(state[:-1])  # forecasts valid at x[s:]
        if 6 * s in leads:
            backgrounds.append(state)
            truths.append(x[s:])
        if state.shape[0] <= 1:
            break
    if not backgrounds:
        raise SchemaError(f"a series of {x.shape[0]} states is too short for leads {tuple(leads)}")
    return torch.cat(backgrounds), torch.cat(truths)


@torch.no_grad()
def encode_all(autoencoder, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([autoencoder.encode(x[i : i + batch].to(autoencoder.device)).cpu() for i in range(0, len(x), batch)])


def latent_pairs(autoencoder, model, x: torch.Tensor, leads) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_background, z_truth) for a physical series x."""
    backgrounds, truths = forecast_pairs(x, model, leads)
    return encode_all(autoencoder, backgrounds), encode_all(autoencoder, truths)


def dsm_loss(net, schedule: CosineSchedule, z: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) denoising score matching loss of the preconditioned network (`LatentUNet.loss`)."""
    return net.loss(z, t, eps, cond)


@torch.no_grad()
def validation_loss(net, schedule, z, cond, seed: int = 12345, batch: int = 64) -> float:
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(len(z), dtype=torch.float32) + 0.5) / len(z)
    t = t[torch.randperm(len(z), generator=g)]
    eps = torch.randn(z.shape, generator=g)
    device = next(net.parameters()).device
    total = 0.0
    for i in range(0, len(z), batch):
        sl = slice(i, i + batch)
        total += float(dsm_loss(net, schedule, z[sl].to(device), cond[sl].to(device), t[sl].to(device), eps[sl].to(device)).sum())
    return total / len(z)


def prior_meta(cfg: ExperimentConfig, autoencoder, forecast_hash: str, lat_latent, latent_shape, settings, lineage) -> dict:
    return {
        "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        "config_hash": config_hash(cfg),
        "latent_shape": list(latent_shape),
        "latent_latitudes": [float(v) for v in lat_latent],
        "schedule": {"eta": settings.eta},
        "autoencoder": autoencoder.content_hash,
        "forecast_model": forecast_hash,
        "leads": list(settings.leads),
        "lineage": lineage,
    }


def train_prior(
    cfg: ExperimentConfig,
    output: Path,
    autoencoder,
    forecast_model,
    settings: PriorSettings = PriorSettings(),
    device: torch.device = torch.device("cpu"),
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train (or resume) the prior into `output`; returns the per-epoch history."""
    layout, states = layout_of(cfg), open_states(cfg)
    lat = states[grid.LAT].values
    x_train = load_split(states, layout, cfg.splits.train)
    x_val = load_split(states, layout, cfg.splits.validation)
    z_b, z = latent_pairs(autoencoder, forecast_model, x_train, settings.leads)
    vz_b, vz = latent_pairs(autoencoder, forecast_model, x_val, settings.leads)
    scale = (z - z_b).movedim(1, 0).reshape(z.shape[1], -1).std(1).clamp_min(1e-3)[:, None, None]
    z, vz = (z - z_b) / scale, (vz - vz_b) / scale  # the prior models the standardised background error
    factor = cfg.state.grid.nlat // z.shape[-2]
    arch = PriorArchitecture(z.shape[1], settings.width, settings.blocks, settings.levels)
    schedule = CosineSchedule(settings.eta)
    torch.manual_seed(settings.seed)
    net = LatentUNet(arch, latent_latitudes(lat, factor), settings.eta).to(device)
    ema = LatentUNet(arch, latent_latitudes(lat, factor), settings.eta).to(device)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    meta = prior_meta(cfg, autoencoder, getattr(forecast_model, "content_hash", ""), latent_latitudes(lat, factor),
                      z.shape[1:], settings, {"kind": "dsm", "reference": "", "preference_data": "", "settings": {}})
    meta["residual_scale"] = [float(v) for v in scale.flatten()]
    start, history = 0, []
    if Path(output).exists():
        old = prior_io.read(output)
        if old["config_hash"] != meta["config_hash"] or old["autoencoder"] != meta["autoencoder"] or old["architecture"] != arch.to_dict():
            raise CheckpointError(f"{output} was trained with another config, autoencoder or architecture; give another --output")
        checkpoint_io.check_resumable(old, meta["config_hash"], output)
        net.load_state_dict(old["training"]["weights"])
        ema.load_state_dict(old["state_dict"])
        opt.load_state_dict(old["training"]["optimizer"])
        start, history = int(old["training"]["epoch"]), list(old["training"]["history"])
    n = len(z)
    per_epoch = math.ceil(n / settings.batch_size)
    total = settings.epochs * per_epoch
    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
        order = torch.randperm(n, generator=g)
        net.train()
        losses = []
        for i in range(per_epoch):
            for group in opt.param_groups:
                group["lr"] = checkpoint_io.warmup_cosine(settings.lr, settings.warmup_steps, epoch * per_epoch + i, total)
            idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            t = torch.rand(len(idx), generator=g)
            eps = torch.randn((len(idx), *z.shape[1:]), generator=g)
            zi, ci = z[idx], z_b[idx]
            if settings.augment:
                shifts = torch.randint(z.shape[-1], (len(idx),), generator=g).tolist()
                zi = torch.stack([x.roll(k, -1) for x, k in zip(zi, shifts)])
                ci = torch.stack([x.roll(k, -1) for x, k in zip(ci, shifts)])
            loss = dsm_loss(net, schedule, zi.to(device), ci.to(device), t.to(device), eps.to(device)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(pn, 1 - settings.ema_decay)
            losses.append(loss.item())
            if on_step:
                on_step(epoch, i + 1, per_epoch, losses[-1])
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_loss": validation_loss(ema, schedule, vz, vz_b),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        training = {"epoch": epoch + 1, "weights": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                    "optimizer": opt.state_dict(), "history": history,
                    "settings": {**dataclasses.asdict(settings), "leads": list(settings.leads)}}
        checkpoint_io.save(prior_io.build_checkpoint(ema, meta, training), output)
        if on_epoch:
            on_epoch(record)
    return history
