"""Training the background-conditioned latent prior by denoising score matching.

Pairs (background, truth): the neural forecast model is started from every
state of a split and rolled out; its forecast at each lead in `leads` (hours)
is a background, the nature-run state at the valid time its truth. Both are
encoded with the autoencoder; the prior models the background's latent error
d = (z - z_b) / scale (scale: its per-channel std over the training pairs),
conditioned on z_b, so it learns p(z | z_b) under the
forecast model's real error growth; mixing leads from 6 h to 3 days spans the
background errors met while cycling with sparse observations (a cycled
background is a 6-h forecast from an imperfect analysis). Those errors are still
smaller than a cycled background's, so pairs can instead (or also) come from
cycling archives (`archives`, `diffusion.cycled_pairs`: each done cycle's archived
background and the truth), which gives the prior the errors it meets while cycling.

Loss: denoising score matching of the preconditioned network (`LatentUNet.loss`,
the eps error weighted by 1 + sigma^2/mu^2), t ~ U(0, 1), AdamW
with warm-up and cosine decay, gradient clipping, EMA of the weights (sampled
with). Augmentation: each pair is rolled in longitude by a random number of
latent columns (the Held-Suarez forcing is zonally symmetric and the
autoencoder is convolutional with circular padding), which cut the gap between
training and validation loss on the 124 training states. Validation: the same loss on the validation split's pairs with fixed
noise and times (comparable across epochs). Resumable: rerunning continues from
the last epoch's checkpoint; deterministic on CPU for a given seed.

Streaming: the pairs of each split are made `PAIR_BLOCK` starts at a time from
the streamed split (`data.streaming.StateWindows`) and written, encoded, to a
temporary Zarr store beside `output` (deleted after training); training reads
them back chunk by chunk (`ZarrRows`, `ChunkShuffleSampler`), so memory does
not grow with the split. The noise, time and roll of a pair are drawn from a
generator seeded by (seed, epoch, pair index), so they do not depend on the
batching. Under torchrun (`parallel_training`) every rank makes the pairs
itself, trains on its share of each global batch, keeps the same EMA, and
only rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from align_da_ops import checkpoint_io, grid, parallel_training
from align_da_ops.config import ExperimentConfig, config_hash
from align_da_ops.data.sources import open_states
from align_da_ops.data.streaming import (
    ChunkShuffleSampler,
    StateWindows,
    ZarrRows,
    channel_std,
    sample_generator,
    window_loader,
)
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion import cycled_pairs
from align_da_ops.diffusion.network import LatentUNet, PriorArchitecture, latent_latitudes
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.errors import CheckpointError, InputDataError, SchemaError

PAIR_BLOCK = 16  # forecast starts rolled out together while the pairs are written
PAIR_CHUNK = 64  # pairs per Zarr chunk of the temporary pair stores
PAIRS = ("background", "truth")


@dataclasses.dataclass(frozen=True)
class PriorSettings:
    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    ema_decay: float = 0.995
    augment: bool = True  # roll each pair by a random number of latent columns (the forcing is zonally symmetric)
    kind: str = "unet"  # the network (PriorArchitecture.kind): unet (width, blocks, levels) or dit (the rest)
    width: int = 64
    blocks: int = 2
    levels: int = 1
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    patch: int = 2
    leads: tuple[int, ...] = (6, 12, 24, 36, 48, 72)
    eta: float = 1e-3
    seed: int = 0


@torch.no_grad()
def forecast_pairs(x: torch.Tensor, model, leads, starts: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(backgrounds, truths) from a 6-hourly series x (T, C, lat, lon) in physical units and a ForecastModel:
    forecasts from x[:starts] (every state by default) at each lead whose valid time lies in x, lead by lead."""
    if any(h <= 0 or h % 6 for h in leads):
        raise ValueError(f"leads must be positive multiples of 6 h; got {leads}")
    backgrounds, truths = [], []
    state = x[:starts]
    for s in range(1, max(leads) // 6 + 1):
        state = state[: len(x) - s]  # forecasts valid at x[s : s + len(state)]
        if not len(state):
            break
        state = model.step(state)
        if 6 * s in leads:
            backgrounds.append(state)
            truths.append(x[s : s + len(state)])
    if not backgrounds:
        raise SchemaError(f"a series of {x.shape[0]} states is too short for leads {tuple(leads)}")
    return torch.cat(backgrounds), torch.cat(truths)


@torch.no_grad()
def encode_all(autoencoder, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([autoencoder.encode(x[i : i + batch].to(autoencoder.device)).cpu() for i in range(0, len(x), batch)])


class PairStore:
    """Encoded (background, truth) pairs appended to the Zarr group at `path` (arrays `PAIRS`,
    (pair, Cz, lat/f, lon/f) float32, chunks of `PAIR_CHUNK` pairs), read back as `ZarrRows`."""

    def __init__(self, path: Path):
        self.path, self.group, self.arrays = Path(path), zarr.open_group(path, mode="w"), None

    def append(self, autoencoder, backgrounds: torch.Tensor, truths: torch.Tensor) -> None:
        """Encode physical (n, C, lat, lon) backgrounds and truths and append them."""
        encoded = [encode_all(autoencoder, x) for x in (backgrounds, truths)]
        if self.arrays is None:
            shape = encoded[0].shape[1:]
            self.arrays = [self.group.create_array(name, shape=(0, *shape), chunks=(PAIR_CHUNK, *shape), dtype="float32")
                           for name in PAIRS]
        for array, z in zip(self.arrays, encoded):
            array.append(z.numpy())

    def __len__(self) -> int:
        return 0 if self.arrays is None else self.arrays[0].shape[0]

    def rows(self) -> ZarrRows:
        return ZarrRows(self.path, PAIRS)


def add_forecast_pairs(cfg: ExperimentConfig, period, autoencoder, model, leads, store: PairStore) -> int:
    """Append every truth-started (background, truth) pair of the split `period` (`forecast_pairs` of the whole
    split, trajectory by trajectory, `PAIR_BLOCK` starts at a time); returns the number of pairs added."""
    states = StateWindows(cfg, period, 0)  # physical units
    steps, before = max(leads) // 6, len(store)
    starts = range(0, states.n_states - min(leads) // 6, PAIR_BLOCK)
    for member, a in ((m, a) for m in range(len(states.members)) for a in starts):
        x = states.states(a, min(a + PAIR_BLOCK + steps, states.n_states), member)
        store.append(autoencoder, *forecast_pairs(x, model, leads, PAIR_BLOCK))
    if len(store) == before:
        raise SchemaError(f"a series of {states.n_states} states is too short for leads {tuple(leads)}")
    return len(store) - before


def add_archive_pairs(cfg: ExperimentConfig, split: str, archives, autoencoder, store: PairStore) -> int:
    """Append the cycled (background, truth) pairs of `split` from cycling archives (`cycled_pairs`); returns
    the number added (InputDataError when the archives hold no cycle of the split)."""
    before = len(store)
    for backgrounds, truths in cycled_pairs.archive_pairs(cfg, split, archives):
        store.append(autoencoder, backgrounds, truths)
    if len(store) == before:
        period = getattr(cfg.splits, split)
        raise InputDataError(f"no archive of {[str(a) for a in archives]} holds a done cycle of the {split} split "
                             f"({period.start:%Y-%m-%d}..{period.end:%Y-%m-%d}) on its trajectory; cycle one over it")
    return len(store) - before


class DenoisingLoss(torch.nn.Module):
    """`net.loss` as a module's forward, so that DDP (which averages gradients through forward) can wrap it."""

    def __init__(self, net: LatentUNet):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net.loss(z, t, eps, cond)


def dsm_loss(net, schedule: CosineSchedule, z: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) denoising score matching loss of the preconditioned network (`LatentUNet.loss`)."""
    return net.loss(z, t, eps, cond)


@torch.no_grad()
def validation_loss(net, schedule, pairs: ZarrRows, scale: torch.Tensor, seed: int = 12345, batch: int = 64) -> float:
    """Mean DSM loss over the pairs' standardised errors with fixed times (stratified, permuted) and noise."""
    n = len(pairs)
    t_all = ((torch.arange(n, dtype=torch.float32) + 0.5) / n)[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    device = next(net.parameters()).device
    total = 0.0
    for idx, z_b, z in window_loader(pairs, batch):
        eps = torch.stack([torch.randn(z.shape[1:], generator=sample_generator(seed, int(i))) for i in idx])
        d = (z - z_b) / scale
        total += float(dsm_loss(net, schedule, d.to(device), z_b.to(device), t_all[idx].to(device), eps.to(device)).sum())
    return total / n


def _pair_noise(seed: int, epoch: int, idx: torch.Tensor, shape, columns: int):
    """Per-pair diffusion time, noise and longitude roll, from a generator seeded by (seed, epoch, pair index)."""
    gens = [sample_generator(seed, epoch, int(i)) for i in idx]
    t = torch.stack([torch.rand((), generator=g) for g in gens])
    eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
    shifts = [int(torch.randint(columns, (), generator=g)) for g in gens]
    return t, eps, shifts


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
    world: parallel_training.World | None = None,
    workers: int = 0,
    archives: Sequence[Path] = (),
    forecast_pairs: bool = True,
    init: Path | None = None,
) -> list[dict]:
    """Train (or resume) the prior into `output`; returns the per-epoch history.

    Pairs of each split: the truth-started forecasts of `forecast_model` at `settings.leads` (`forecast_pairs`)
    and/or the cycled backgrounds of the cycling `archives` (`cycled_pairs`); the residual scale is their
    error std, so it matches whichever backgrounds the prior is trained on. `init`: a prior checkpoint whose
    EMA weights start the training (fine-tuning; its architecture is kept). `world`: this process's rank
    under torchrun (`parallel_training.launch`; default one process on `device`); `settings.batch_size` is
    the global batch. `workers`: DataLoader worker processes per rank.
    """
    if not forecast_pairs and not archives:
        raise ValueError("no training pairs: give cycling archives or keep the truth-started forecast pairs")
    world = world or parallel_training.single(device)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.pairs-", dir=output.parent) as tmp:
        stores, sources = [], {}
        for split in ("train", "validation"):
            store, counts = PairStore(Path(tmp) / f"{split}.zarr"), {}
            if forecast_pairs:
                counts["forecasts"] = add_forecast_pairs(cfg, getattr(cfg.splits, split), autoencoder, forecast_model,
                                                         settings.leads, store)
            if archives:
                counts["archives"] = add_archive_pairs(cfg, split, archives, autoencoder, store)
            stores.append(store.rows())
            sources[split] = counts
        pairs = {"forecast_leads": list(settings.leads) if forecast_pairs else [],
                 "archives": [str(Path(a).resolve()) for a in archives], "counts": sources}
        return _fit(cfg, output, autoencoder, forecast_model, *stores, settings, world, on_step, on_epoch, workers,
                    pairs, init)


def _epoch(loss_of, net, ema, opt, loader, scale, settings: PriorSettings, epoch: int, total: int, device,
           on_step) -> list[float]:
    """One pass over this rank's share of the pairs in the sampler's seeded order (`loss_of`: net's DenoisingLoss,
    maybe DDP-wrapped); returns the batch losses."""
    loader.sampler.set_epoch(epoch)
    net.train()
    losses = []
    for i, (idx, z_b, z) in enumerate(loader):
        for group in opt.param_groups:
            group["lr"] = checkpoint_io.warmup_cosine(settings.lr, settings.warmup_steps, epoch * len(loader) + i, total)
        t, eps, shifts = _pair_noise(settings.seed, epoch, idx, z.shape[1:], z.shape[-1])
        d = (z - z_b) / scale  # the prior models the standardised background error
        if settings.augment:
            d = torch.stack([x.roll(k, -1) for x, k in zip(d, shifts)])
            z_b = torch.stack([x.roll(k, -1) for x, k in zip(z_b, shifts)])
        loss = loss_of(d.to(device), t.to(device), eps.to(device), z_b.to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - settings.ema_decay)
        losses.append(loss.item())
        if on_step:
            on_step(epoch, i + 1, len(loader), losses[-1])
    return losses


def _fit(cfg, output: Path, autoencoder, forecast_model, train: ZarrRows, val: ZarrRows, settings: PriorSettings,
         world: parallel_training.World, on_step, on_epoch, workers: int, pairs: dict, init: Path | None) -> list[dict]:
    device = world.device
    lat = open_states(cfg)[grid.LAT].values
    scale = channel_std(z - z_b for _, z_b, z in window_loader(train, 64)).float().clamp_min(1e-3)[:, None, None]
    shape = train[0][1].shape
    factor = cfg.state.grid.nlat // shape[-2]
    start_from = prior_io.read(init) if init is not None else None
    if start_from is not None and start_from["autoencoder"] != autoencoder.content_hash:
        raise CheckpointError(f"--init {init} models another autoencoder's latents ({start_from['autoencoder']})")
    if start_from is not None and list(start_from["latent_shape"]) != list(shape):
        raise CheckpointError(f"--init {init} models latents of shape {start_from['latent_shape']}, these are {list(shape)}")
    arch = (PriorArchitecture(**start_from["architecture"]) if start_from is not None
            else PriorArchitecture(shape[0], settings.width, settings.blocks, settings.levels, kind=settings.kind,
                                   hidden=settings.hidden, depth=settings.depth, heads=settings.heads,
                                   patch=settings.patch))
    schedule = CosineSchedule(settings.eta)
    torch.manual_seed(settings.seed)
    net = prior_io.build_network(arch, latent_latitudes(lat, factor), settings.eta).to(device)
    ema = prior_io.build_network(arch, latent_latitudes(lat, factor), settings.eta).to(device)
    if start_from is not None:
        net.load_state_dict(start_from["state_dict"])
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    meta = prior_meta(cfg, autoencoder, getattr(forecast_model, "content_hash", ""), latent_latitudes(lat, factor),
                      shape, settings, {"kind": "dsm", "reference": "", "preference_data": "", "settings": {},
                                        "pairs": pairs, "init": start_from["content_hash"] if start_from else ""})
    meta["residual_scale"] = [float(v) for v in scale.flatten()]
    meta["leads"] = pairs["forecast_leads"]
    start, history = 0, []
    if output.exists():
        old = prior_io.read(output)
        if old["config_hash"] != meta["config_hash"] or old["autoencoder"] != meta["autoencoder"] or old["architecture"] != arch.to_dict():
            raise CheckpointError(f"{output} was trained with another config, autoencoder or architecture; give another --output")
        before = old["lineage"].get("pairs") or {"forecast_leads": old["leads"], "archives": []}  # before cycled pairs
        if {k: before.get(k) for k in ("forecast_leads", "archives")} != {k: pairs[k] for k in ("forecast_leads", "archives")}:
            raise CheckpointError(f"{output} was trained on other pairs (leads/archives {before.get('forecast_leads')}, "
                                  f"{before.get('archives')}); give another --output")
        checkpoint_io.check_resumable(old, meta["config_hash"], output)
        net.load_state_dict(old["training"]["weights"])
        ema.load_state_dict(old["state_dict"])
        opt.load_state_dict(old["training"]["optimizer"])
        start, history = int(old["training"]["epoch"]), list(old["training"]["history"])
    sampler = ChunkShuffleSampler(train.block_ids, settings.seed, world.rank, world.world_size)
    loader = window_loader(train, parallel_training.per_rank_batch(settings.batch_size, world), sampler, workers)
    loss_of = parallel_training.wrap(DenoisingLoss(net), world)
    total = settings.epochs * len(loader)
    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        losses = _epoch(loss_of, net, ema, opt, loader, scale, settings, epoch, total, device, on_step)
        record = {"epoch": epoch + 1, "loss": parallel_training.mean_over_ranks(float(np.mean(losses)), world)}
        history.append(record)
        if not world.is_main:
            continue
        record.update(val_loss=validation_loss(ema, schedule, val, scale), seconds=time.perf_counter() - t0)
        training = {"epoch": epoch + 1, "weights": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                    "optimizer": opt.state_dict(), "history": history,
                    "settings": {**dataclasses.asdict(settings), "leads": list(settings.leads)}}
        checkpoint_io.save(prior_io.build_checkpoint(ema, meta, training), output)
        if on_epoch:
            on_epoch(record)
    return history
