"""Training the neural forecast model on the configured data's train/validation splits.

`train(cfg, output, settings)` fits `SphereUNet` on consecutive 6-h pairs (or
windows of `rollout_steps` + 1 states for the multi-step loss, from epoch
`rollout_from_epoch` on) of the training split, normalised with the store's
training-split statistics. Windows are streamed from the store
(`data.streaming.StateWindows`, chunk-grouped seeded order): neither split is
ever held in memory whole. Loss: the latitude-weighted MSE of the state error
in units of the per-channel 6-h increment std, averaged over the rollout steps
(backpropagated through the whole rollout). AdamW, linear warm-up then cosine
decay per optimiser step; bf16 autocast on CUDA only. After every epoch:
validation WRMSE (z500, t850 at 6 h and 24 h, physical units) and an atomic
checkpoint with the training state, so rerunning the same command resumes
where it stopped (a larger `epochs` extends the schedule). Deterministic on
CPU for a given seed and number of processes. Under torchrun
(`parallel_training`) each rank trains on its share of every global batch,
and only rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from align_da_ops import checkpoint_io, grid, parallel_training
from align_da_ops.config import ExperimentConfig, config_hash
from align_da_ops.data.sources import layout_of, normalization_path, open_states, read_normalization
from align_da_ops.data.streaming import ChunkShuffleSampler, StateWindows, channel_std, split_positions, window_loader
from align_da_ops.errors import SchemaError
from align_da_ops.forecast import checkpoint as ckpt_io
from align_da_ops.forecast.network import Architecture, SphereUNet
from align_da_ops.forecast.starts import PerturbedStarts

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
    start_covariance: str | None = None  # B (.npz): perturb training starts like analyses (`forecast.starts`)
    start_scale: float = 1.0  # perturbation std in units of B^{1/2}
    start_fraction: float = 0.5  # share of windows whose start is perturbed


def load_split(states, layout: grid.StateLayout, period) -> torch.Tensor:
    """(time, channel, lat, lon) float32 of one split, all in memory; times must be consecutive 6-hourly."""
    return layout.to_tensor(states.isel({grid.TIME: split_positions(states, period)}).load())[0]


def increment_std(windows, floor: float = 1e-3) -> np.ndarray:
    """Per-channel std of the 6-h increments w[:, 1] - w[:, 0] of normalised windows (B, >=2, channel, lat, lon)
    given batch by batch."""
    return np.maximum(channel_std(w[:, 1] - w[:, 0] for w in windows).numpy(), floor)


def rollout_loss(net: SphereUNet, window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over steps of the lat-weighted MSE in increment-std units; window (B, k+1, C, lat, lon)."""
    state, total = window[:, 0], 0.0
    steps = window.shape[1] - 1
    scale = parallel_training.unwrap(net).delta_std  # net may be DDP-wrapped
    for s in range(1, steps + 1):
        state = net(state)
        err = (state.float() - window[:, s]) / scale
        total = total + (err.pow(2) * weights).mean()
    return total / steps


@torch.no_grad()
def validation_scores(
    net: SphereUNet, windows: StateWindows, norm, layout, lat, stride: int = 2, batch: int = 32
) -> dict[str, float]:
    """Mean WRMSE (physical units) of z500/t850 at 6 and 24 h from every `stride`-th window (normalised,
    `max(VALIDATION_LEADS) // 6` steps), streamed in order."""
    device = next(net.parameters()).device
    w = torch.as_tensor(grid.latitude_weights(np.asarray(lat)), dtype=torch.float64, device=device)[:, None]
    chans = {f"{grid.VARIABLES[v].short}{p}": layout.channel_index(v, p) for v, p in VALIDATION}
    starts = list(range(0, len(windows), stride))
    sums = {f"{k}_{h}h": 0.0 for k in chans for h in VALIDATION_LEADS}
    was_training = net.training
    net.eval()
    for _, window in window_loader(torch.utils.data.Subset(windows, starts), batch):
        window = window.to(device)
        state = window[:, 0]
        for s in range(1, window.shape[1]):
            state = net(state).float()
            if 6 * s in VALIDATION_LEADS:
                err = norm.denormalize(state.double()) - norm.denormalize(window[:, s].double())
                for k, c in chans.items():
                    sums[f"{k}_{6 * s}h"] += float(((err[:, c] ** 2 * w).mean((-2, -1))).sqrt().sum())
    net.train(was_training)
    return {k: (v / len(starts) if starts else float("nan")) for k, v in sums.items()}


def _epoch(net, opt, loader, weights, settings: TrainSettings, epoch: int, total: int, steps: int, on_step, amp: bool,
           starts: PerturbedStarts | None = None) -> list[float]:
    """One pass over this rank's share of the windows in the sampler's seeded order (starts perturbed by `starts`);
    returns the batch losses."""
    device = weights.device
    per_epoch = len(loader)
    loader.sampler.set_epoch(epoch)
    net.train()
    losses = []
    for i, (index, batch) in enumerate(loader):
        if starts is not None:
            batch = starts(batch, index, epoch)
        for group in opt.param_groups:
            group["lr"] = checkpoint_io.warmup_cosine(settings.lr, settings.warmup_steps, epoch * per_epoch + i, total)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            loss = rollout_loss(net, batch[:, : steps + 1].to(device), weights)
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
    world: parallel_training.World | None = None,
    workers: int = 0,
) -> list[dict]:
    """Train (or resume) into `output`; returns the per-epoch history (loss, validation WRMSE, seconds).

    `world`: this process's rank under torchrun (`parallel_training.launch`; default one process on `device`);
    `settings.batch_size` is the global batch. `workers`: DataLoader worker processes per rank.
    """
    world = world or parallel_training.single(device)
    device = world.device
    layout = layout_of(cfg)
    lat = open_states(cfg)[grid.LAT].values
    norm = read_normalization(normalization_path(cfg))
    k = settings.rollout_steps
    train_windows = StateWindows(cfg, cfg.splits.train, k, norm)
    if len(train_windows) < 1:
        raise SchemaError(f"the training split has {train_windows.n_states} states; rollout_steps={k} needs at least {k + 1}")
    val_windows = StateWindows(cfg, cfg.splits.validation, max(VALIDATION_LEADS) // 6, norm)
    batch = parallel_training.per_rank_batch(settings.batch_size, world)
    sampler = ChunkShuffleSampler(train_windows.block_ids, settings.seed, world.rank, world.world_size)
    loader = window_loader(train_windows, batch, sampler, workers)
    arch = Architecture(layout.n_channels, settings.width, settings.blocks, settings.levels)
    resumed = _resume(output, cfg, layout, arch) if Path(output).exists() else None
    if resumed:
        delta = np.asarray(resumed["delta_std"])
    else:
        delta = increment_std(w for _, w in window_loader(StateWindows(cfg, cfg.splits.train, 1, norm), 16))
    torch.manual_seed(settings.seed)
    net = SphereUNet(arch, lat, delta).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    if resumed:
        net.load_state_dict(resumed["state_dict"])
        opt.load_state_dict(resumed["training"]["optimizer"])
        start_epoch, history = int(resumed["training"]["epoch"]), list(resumed["training"]["history"])
    model = parallel_training.wrap(net, world)
    starts = (PerturbedStarts(settings.start_covariance, norm, settings.start_scale, settings.start_fraction, settings.seed)
              if settings.start_covariance else None)
    weights = torch.as_tensor(grid.latitude_weights(lat), dtype=torch.float32, device=device)[:, None]
    total = settings.epochs * len(loader)
    amp = device.type == "cuda"
    cfg_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        steps = k if epoch >= settings.rollout_from_epoch else 1
        losses = _epoch(model, opt, loader, weights, settings, epoch, total, steps, on_step, amp, starts)
        loss = parallel_training.mean_over_ranks(float(np.mean(losses)), world)
        record = {"epoch": epoch + 1, "loss": loss}
        history.append(record)
        if not world.is_main:
            continue
        record.update(validation_scores(net, val_windows, norm, layout, lat))
        record["seconds"] = time.perf_counter() - t0
        training = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history, "settings": dataclasses.asdict(settings)}
        ckpt_io.save(ckpt_io.build_checkpoint(net, norm, cfg_json, config_hash(cfg), lat, cfg.state.grid.nlon, training), output)
        if on_epoch:
            on_epoch(record)
    return history
