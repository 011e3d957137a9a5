"""Training the latent autoencoder on the configured data's train split; reconstruction scores.

`train_autoencoder(cfg, output, settings)` fits `SphereAutoencoder` to the
states of the training split, normalised with the store's training-split
statistics, streamed from the store (`data.streaming`; the PCA start, the
validation scores and the latent statistics stream too: no split is held in
memory whole). Loss: the latitude-weighted MSE of the reconstruction in
normalised units (+ `l1_weight` x the latitude-weighted MAE), on samples
rolled by a random number of longitudes (the Held-Suarez world, like the real
one statistically, has no preferred longitude; seeded per epoch). AdamW, linear
warm-up then cosine decay per optimiser step. After every epoch: validation
MSE and MAE (normalised units, latitude-weighted, mean over channels) into the
history, and an atomic checkpoint with the training state, so rerunning the
same command resumes where it stopped (a larger `epochs` continues with a
longer cosine schedule); deterministic on CPU for a given seed: an interrupted
run resumed with the same settings equals an uninterrupted one bitwise. Under
torchrun (`parallel_training`) each rank trains on its share of every global
batch (the roll of a sample depends on its index, not on the rank), and only
rank 0 validates and writes. The latent standardisation (`latent_mean`,
`latent_std`) does not enter the loss; it is set from the training split's
latents after the last epoch (checkpoints of earlier epochs carry 0 and 1).

The shipped `align_da_ops/checkpoints/autoencoder-tiny.pt` (T21 32x64, 53
channels -> 128 x 8 x 16 latents: 4x per axis, 6.6x fewer numbers; 1.16 M
parameters, 4.5 MB; content hash 876d5b1fbac2824b) was made with the defaults
below on 1 CPU thread (142 s of training, 150 s wall) by

    align-da nature-run config/tiny.yaml
    align-da train autoencoder config/tiny.yaml --threads 1 \
        --export align_da_ops/checkpoints/autoencoder-tiny.pt

Reconstruction error, normalised units, latitude-weighted, mean over the 53
channels: validation (2000-02-01..14) MSE 0.00551, MAE 0.0522; test
(2000-02-15..29) MSE 0.00569, MAE 0.0531 (Align-DA on ERA5: MSE 0.0067). The
patch PCA it starts from scores MSE 0.0082 on validation; 96 latent channels
would give ~0.013, 64 ~0.026 (20-epoch trials). Training MSE falls to 0.0015
while validation stays flat from ~epoch 30: with 124 training states the
limit is data, not epochs.
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
from align_da_ops.data.streaming import ChunkShuffleSampler, StateWindows, batches_of, sample_generator, window_loader
from align_da_ops.errors import ConfigError
from align_da_ops.latent import checkpoint as ckpt_io
from align_da_ops.latent.autoencoder import AutoencoderArchitecture, SphereAutoencoder


@dataclasses.dataclass(frozen=True)
class AutoencoderSettings:
    """Optimisation and architecture settings; defaults: the shipped tiny recipe."""

    epochs: int = 60
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    l1_weight: float = 0.0  # weight of the latitude-weighted MAE added to the MSE loss
    augment: bool = True  # roll each training sample by a random number of longitudes
    latent_channels: int = 128
    downsampling: int = 4
    width: int = 32
    blocks: int = 1
    seed: int = 0

    def architecture(self, channels: int) -> AutoencoderArchitecture:
        try:
            return AutoencoderArchitecture(channels, self.latent_channels, self.downsampling, self.width, self.blocks)
        except ValueError as exc:
            raise ConfigError(f"autoencoder settings: {exc}") from None


def reconstruction_loss(net: SphereAutoencoder, x: torch.Tensor, weights: torch.Tensor, l1_weight: float = 0.0) -> torch.Tensor:
    """Latitude-weighted MSE (+ l1_weight x MAE) of net(x) (= net.reconstruct(x), maybe DDP-wrapped) in normalised
    units; weights (lat, 1)."""
    err = net(x) - x
    loss = (err.pow(2) * weights).mean()
    if l1_weight:
        loss = loss + l1_weight * (err.abs() * weights).mean()
    return loss


def _module_device(net: torch.nn.Module) -> torch.device:
    for t in (*net.parameters(), *net.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def reconstruction_scores(model_or_net, x_norm: torch.Tensor, lat, batch: int = 16) -> dict[str, np.ndarray]:
    """Per-channel latitude-weighted MSE and MAE of decode(encode(x)), normalised units, over samples and grid.

    `model_or_net`: a net with encode/decode on normalised states, or an `AutoencoderModel` (its net is used);
    `x_norm`: (B, C, lat, lon), a tensor or an iterable of such batches (streamed).
    """
    net = getattr(model_or_net, "net", model_or_net)
    device = _module_device(net)
    w = torch.as_tensor(grid.latitude_weights(np.asarray(lat)), dtype=torch.float64, device=device)[:, None]
    sq = ab = 0.0
    n = 0
    was_training = net.training
    net.eval()
    for x in batches_of(x_norm, batch):
        x = x.to(device, torch.float32)
        err = (net.decode(net.encode(x)) - x).double()
        sq = sq + (err.pow(2) * w).mean((-2, -1)).sum(0)
        ab = ab + (err.abs() * w).mean((-2, -1)).sum(0)
        n += x.shape[0]
    net.train(was_training)
    return {"mse": (sq / n).cpu().numpy(), "mae": (ab / n).cpu().numpy()}


def by_variable(values: np.ndarray, layout: grid.StateLayout) -> dict[str, float]:
    """Per-channel values averaged per variable (over its levels), in layout order."""
    names = layout.upper_air + layout.surface
    return {name: float(np.mean([values[i] for i, c in enumerate(layout.channels) if c == name or c.startswith(f"{name}_")]))
            for name in names}


def _roll(batch: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    return torch.stack([x.roll(int(s), dims=-1) for x, s in zip(batch, shifts)])


def _states(data: StateWindows, batch: int = 16):
    """The split's states in order, in batches (B, C, lat, lon)."""
    return (w[:, 0] for _, w in window_loader(data, batch))


def _epoch(net, opt, loader, weights, nlon: int, settings: AutoencoderSettings, epoch: int, total: int,
           on_step) -> list[float]:
    """One pass over this rank's share of the states in the sampler's seeded order, each rolled by a
    longitude shift seeded by (seed, epoch) and drawn per state index; returns the batch losses."""
    device = weights.device
    per_epoch = len(loader)
    loader.sampler.set_epoch(epoch)
    shifts = torch.randint(0, nlon, (len(loader.dataset),), generator=sample_generator(settings.seed, epoch))
    net.train()
    losses = []
    for i, (idx, window) in enumerate(loader):
        for group in opt.param_groups:
            group["lr"] = checkpoint_io.warmup_cosine(settings.lr, settings.warmup_steps, epoch * per_epoch + i, total)
        batch = window[:, 0]
        if settings.augment:
            batch = _roll(batch, shifts[idx])
        loss = reconstruction_loss(net, batch.to(device), weights, settings.l1_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step:
            on_step(epoch, i + 1, per_epoch, losses[-1])
    return losses


def _resume(output: Path, cfg: ExperimentConfig, layout, arch: AutoencoderArchitecture):
    ckpt = ckpt_io.read(output)
    ckpt_io.check_compatible(ckpt, layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon, arch.to_dict(),
                             where=f"checkpoint {output}")
    checkpoint_io.check_resumable(ckpt, config_hash(cfg), output)
    return ckpt


def train_autoencoder(
    cfg: ExperimentConfig,
    output: Path,
    settings: AutoencoderSettings = AutoencoderSettings(),
    device: torch.device = torch.device("cpu"),
    on_step: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    world: parallel_training.World | None = None,
    workers: int = 0,
) -> list[dict]:
    """Train (or resume) into `output`; returns the per-epoch history (loss, val_mse, val_mae, seconds).

    `world`: this process's rank under torchrun (`parallel_training.launch`; default one process on `device`);
    `settings.batch_size` is the global batch. `workers`: DataLoader worker processes per rank.
    """
    world = world or parallel_training.single(device)
    device = world.device
    layout = layout_of(cfg)
    arch = settings.architecture(layout.n_channels)
    nlat, nlon = cfg.state.grid.nlat, cfg.state.grid.nlon
    if nlat % arch.downsampling or nlon % arch.downsampling:
        raise ConfigError(f"grid {nlat}x{nlon} is not divisible by downsampling={arch.downsampling}")
    lat = open_states(cfg)[grid.LAT].values
    norm = read_normalization(normalization_path(cfg))
    train_states = StateWindows(cfg, cfg.splits.train, 0, norm)
    val_states = StateWindows(cfg, cfg.splits.validation, 0, norm)
    sampler = ChunkShuffleSampler(train_states.block_ids, settings.seed, world.rank, world.world_size)
    loader = window_loader(train_states, parallel_training.per_rank_batch(settings.batch_size, world), sampler, workers)
    resumed = _resume(output, cfg, layout, arch) if Path(output).exists() else None
    torch.manual_seed(settings.seed)
    net = SphereAutoencoder(arch, lat).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    if resumed:
        net.load_state_dict(resumed["state_dict"])
        net.reset_latent_statistics()  # set again after the last epoch; the loss never uses them
        opt.load_state_dict(resumed["training"]["optimizer"])
        start_epoch, history = int(resumed["training"]["epoch"]), list(resumed["training"]["history"])
    else:
        net.init_from_pca(_states(train_states, 64))  # start from the patch PCA (see SphereAutoencoder.init_from_pca)
    model = parallel_training.wrap(net, world)
    weights = torch.as_tensor(grid.latitude_weights(lat), dtype=torch.float32, device=device)[:, None]
    total = settings.epochs * len(loader)
    cfg_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        losses = _epoch(model, opt, loader, weights, nlon, settings, epoch, total, on_step)
        record = {"epoch": epoch + 1, "loss": parallel_training.mean_over_ranks(float(np.mean(losses)), world)}
        history.append(record)
        if not world.is_main:
            continue
        if epoch + 1 == settings.epochs:
            net.set_latent_statistics(_states(train_states))
        scores = reconstruction_scores(net, _states(val_states), lat)
        record.update(val_mse=float(scores["mse"].mean()), val_mae=float(scores["mae"].mean()),
                      seconds=time.perf_counter() - t0)
        training = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history,
                    "settings": dataclasses.asdict(settings)}
        ckpt = ckpt_io.build_checkpoint(net, norm, cfg_json, config_hash(cfg), lat, nlon, scores, training)
        ckpt_io.save(ckpt, output)
        if on_epoch:
            on_epoch(record)
    return history


def split_scores(cfg: ExperimentConfig, model, splits=("validation", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Per-channel reconstruction MSE/MAE (normalised units, lat-weighted) of an AutoencoderModel on named splits
    (streamed)."""
    lat = open_states(cfg)[grid.LAT].values
    return {name: reconstruction_scores(model, _states(StateWindows(cfg, getattr(cfg.splits, name), 0, model.normalization)), lat)
            for name in splits}
