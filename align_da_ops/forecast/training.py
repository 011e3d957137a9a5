"""Training the neural forecast model on the configured data's train/validation splits.

`train(cfg, output, settings)` fits `SphereUNet` on consecutive 6-h pairs (or
windows of `rollout_steps` + 1 states for the multi-step loss, from epoch
`rollout_from_epoch` on) of the training split, normalised with the store's
training-split statistics. Loss: the latitude-weighted MSE of the state error
in units of the per-channel 6-h increment std, averaged over the rollout steps
(backpropagated through the whole rollout). AdamW, linear warm-up then cosine
decay per optimiser step; bf16 autocast on CUDA only. After every epoch: validation WRMSE (z500, t850 at
6 h and 24 h, physical units) and an atomic checkpoint with the training state,
so rerunning the same command resumes where it stopped (a larger `epochs`
extends the schedule). Deterministic on CPU for a given seed.
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
from align_da_ops.data.sources import layout_of, normalization_path, open_states, read_normalization
from align_da_ops.errors import SchemaError
from align_da_ops.forecast import checkpoint as ckpt_io
from align_da_ops.forecast.network import Architecture, SphereUNet

VALIDATION = (("geopotential", 500), ("temperature", 850))
VALIDATION_LEADS = (6, 24)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (architecture ones go into the checkpoint); defaults: the shipped tiny recipe."""

    epochs: int = 22
    batch_size: int = 8
    lr: float = 1.5e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    rollout_steps: int = 4  # states predicted per sample in the loss (1: single-step)
    rollout_from_epoch: int = 16  # epochs of single-step loss before the multi-step loss (curriculum)
    width: int = 64
    blocks: int = 2
    levels: int = 1
    seed: int = 0


def load_split(states, layout: grid.StateLayout, period) -> torch.Tensor:
    """(time, channel, lat, lon) float32 of one split; times must be consecutive 6-hourly."""
    sel = states.sel({grid.TIME: slice(period.start, period.end)})
    times = sel[grid.TIME].values
    if len(times) < 2:
        raise SchemaError(f"split [{period.start}, {period.end}] holds {len(times)} states; need at least 2")
    gaps = np.unique(np.diff(times).astype("timedelta64[h]").astype(int))
    if gaps.tolist() != [6]:
        raise SchemaError(f"split [{period.start}, {period.end}] is not 6-hourly without gaps (steps {gaps.tolist()} h)")
    return layout.to_tensor(sel.load())[0]


def increment_std(x_norm: torch.Tensor, floor: float = 1e-3) -> np.ndarray:
    """Per-channel std of 6-h increments of a normalised series (time, channel, lat, lon)."""
    d = (x_norm[1:] - x_norm[:-1]).movedim(1, 0).reshape(x_norm.shape[1], -1).double()
    return np.maximum(d.std(1, correction=0).numpy(), floor)


def rollout_loss(net: SphereUNet, window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over steps of the lat-weighted MSE in increment-std units; window (B, k+1, C, lat, lon)."""
    state, total = window[:, 0], 0.0
    steps = window.shape[1] - 1
    for s in range(1, steps + 1):
        state = net(state)
        err = (state.float() - window[:, s]) / net.delta_std
        total = total + (err.pow(2) * weights).mean()
    return total / steps


@torch.no_grad()
def validation_scores(
    net: SphereUNet, x_norm: torch.Tensor, norm, layout, lat, stride: int = 2, batch: int = 32
) -> dict[str, float]:
    """Mean WRMSE (physical units) of z500/t850 at 6 and 24 h over starts every `stride` states."""
    device = next(net.parameters()).device
    w = torch.as_tensor(grid.latitude_weights(np.asarray(lat)), dtype=torch.float64, device=device)[:, None]
    chans = {f"{grid.VARIABLES[v].short}{p}": layout.channel_index(v, p) for v, p in VALIDATION}
    max_steps = max(VALIDATION_LEADS) // 6
    starts = list(range(0, x_norm.shape[0] - max_steps, stride))
    sums = {f"{k}_{h}h": 0.0 for k in chans for h in VALIDATION_LEADS}
    was_training = net.training
    net.eval()
    for i in range(0, len(starts), batch):
        idx = starts[i : i + batch]
        state = x_norm[idx].to(device)
        for s in range(1, max_steps + 1):
            state = net(state).float()
            if 6 * s in VALIDATION_LEADS:
                err = norm.denormalize(state.double()) - norm.denormalize(x_norm[[j + s for j in idx]].to(device).double())
                for k, c in chans.items():
                    sums[f"{k}_{6 * s}h"] += float(((err[:, c] ** 2 * w).mean((-2, -1))).sqrt().sum())
    net.train(was_training)
    return {k: (v / len(starts) if starts else float("nan")) for k, v in sums.items()}


def _epoch(net, opt, windows, weights, settings: TrainSettings, epoch: int, total: int, on_step, amp: bool) -> list[float]:
    """One pass over the windows in a seeded order; returns the batch losses."""
    device = weights.device
    n = windows.shape[0]
    per_epoch = math.ceil(n / settings.batch_size)
    net.train()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed * 100003 + epoch))
    losses = []
    for i in range(per_epoch):
        for group in opt.param_groups:
            group["lr"] = checkpoint_io.warmup_cosine(settings.lr, settings.warmup_steps, epoch * per_epoch + i, total)
        batch = windows[order[i * settings.batch_size : (i + 1) * settings.batch_size]].to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            loss = rollout_loss(net, batch, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(epoch, i + 1, per_epoch, losses[-1])
    return losses


def _resume(output: Path, cfg: ExperimentConfig, layout, arch: Architecture):
    ckpt = ckpt_io.read(output)
    ckpt_io.check_compatible(ckpt, layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon, arch.to_dict(), where=f"checkpoint {output}")
    checkpoint_io.check_resumable(ckpt, config_hash(cfg), output)
    return ckpt


def train(
    cfg: ExperimentConfig,
    output: Path,
    settings: TrainSettings = TrainSettings(),
    device: torch.device = torch.device("cpu"),
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train (or resume) into `output`; returns the per-epoch history (loss, validation WRMSE, seconds)."""
    layout = layout_of(cfg)
    states = open_states(cfg)
    lat = states[grid.LAT].values
    norm = read_normalization(normalization_path(cfg))
    x_train = norm.normalize(load_split(states, layout, cfg.splits.train))
    x_val = norm.normalize(load_split(states, layout, cfg.splits.validation))
    arch = Architecture(layout.n_channels, settings.width, settings.blocks, settings.levels)
    resumed = _resume(output, cfg, layout, arch) if Path(output).exists() else None
    delta = np.asarray(resumed["delta_std"]) if resumed else increment_std(x_train)
    torch.manual_seed(settings.seed)
    net = SphereUNet(arch, lat, delta).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    if resumed:
        net.load_state_dict(resumed["state_dict"])
        opt.load_state_dict(resumed["training"]["optimizer"])
        start_epoch, history = int(resumed["training"]["epoch"]), list(resumed["training"]["history"])
    k = settings.rollout_steps
    n_windows = x_train.shape[0] - k
    if n_windows < 1:
        raise SchemaError(f"the training split has {x_train.shape[0]} states; rollout_steps={k} needs at least {k + 1}")
    windows = torch.stack([x_train[i : i + k + 1] for i in range(n_windows)])
    weights = torch.as_tensor(grid.latitude_weights(lat), dtype=torch.float32, device=device)[:, None]
    per_epoch = math.ceil(n_windows / settings.batch_size)
    total = settings.epochs * per_epoch
    amp = device.type == "cuda"
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        steps = k if epoch >= settings.rollout_from_epoch else 1
        losses = _epoch(net, opt, windows[:, : steps + 1], weights, settings, epoch, total, on_step, amp)
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), **validation_scores(net, x_val, norm, layout, lat)}
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        training = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history, "settings": dataclasses.asdict(settings)}
        cfg_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        ckpt_io.save(ckpt_io.build_checkpoint(net, norm, cfg_json, config_hash(cfg), lat, cfg.state.grid.nlon, training), output)
        if on_epoch:
            on_epoch(record)
    return history
