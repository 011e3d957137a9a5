"""Training samples streamed from stores: windows of consecutive states, rows of Zarr arrays, a seeded order.

Contract. `StateWindows(cfg, period, steps, normalization)` is a map-style
`torch.utils.data.Dataset` over one split of `open_states(cfg)`: item i is
`(i, window)` with `window` the float32 states i..i+steps of the split,
(steps + 1, channel, lat, lon), normalised with `normalization` (physical units
when None); exactly `layout.to_tensor` of the loaded split, sliced and
normalised (`forecast.training.load_split` is the same read, whole). The
split must be 6-hourly without gaps (`SchemaError` otherwise).
`ZarrRows(path, names)` gives `(i, *rows i)` of same-length Zarr arrays
(the prior's encoded pairs).

Reads are chunk-aligned: the store's time axis is cut into blocks at its
dask chunk boundaries (for a nature run, the Zarr chunks: `chunk_days` x 4
states, e.g. 20 in config/tiny.yaml; a source without dask chunks gives
one-state blocks); a window reads the whole blocks it touches, one
synchronous dask compute each, through a `BlockCache` of the last
`cache_blocks` blocks (LRU, per process; default `GROUP_BLOCKS` x the blocks
one window can span). Memory is therefore a few blocks per process, whatever
the length of the split. Stores are opened lazily, once per process
(DataLoader workers, forked or spawned, open their own handle; no handle is
ever pickled).

Order. `ChunkShuffleSampler` shuffles the blocks, takes them `GROUP_BLOCKS`
at a time and shuffles the windows within each group, from one generator
seeded by (seed, epoch): reproducible per epoch, different between epochs,
and each block is read about once per epoch instead of about once per window.
Measured on the tiny nature run (January, 120 windows of 5 states, 20-state
blocks of 8.7 MB): one block read takes ~40 ms; an epoch costs 0.7 s grouped
against 5.5 s in a plain permutation with a 2-block cache. A batch still
mixes windows of `GROUP_BLOCKS` blocks (20 days of the tiny run). Under DDP,
rank r of W takes order[r::W] of the order cut to a multiple of W (the last
len % W windows of each epoch's order are skipped): equal, disjoint shares,
and the rank batches of b are the parts of the single-process batches of b x W.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from align_da_ops import grid
from align_da_ops.config import ExperimentConfig
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.errors import SchemaError

GROUP_BLOCKS = 4  # blocks whose windows are shuffled together (and cached together)


def split_positions(states, period) -> slice:
    """Positions along time of the split [period.start, period.end]; it must hold >= 2 states, 6-hourly, no gaps."""
    index = states.get_index(grid.TIME)
    positions = index.slice_indexer(period.start, period.end)
    times = index[positions].values
    if len(times) < 2:
        raise SchemaError(f"split [{period.start}, {period.end}] holds {len(times)} states; need at least 2")
    gaps = np.unique(np.diff(times).astype("timedelta64[h]").astype(int))
    if gaps.tolist() != [6]:
        raise SchemaError(f"split [{period.start}, {period.end}] is not 6-hourly without gaps (steps {gaps.tolist()} h)")
    return positions


def block_bounds(states, names: Sequence[str]) -> np.ndarray:
    """Ascending time positions where some variable's dask chunk starts (and the end); every position if unchunked."""
    n = states.sizes[grid.TIME]
    bounds = {0, n}
    for name in names:
        chunks = states[name].chunksizes.get(grid.TIME)
        bounds.update(np.cumsum(chunks).tolist() if chunks else range(n))
    return np.asarray(sorted(bounds))


class BlockCache:
    """The last `size` blocks read in this process (LRU), and a per-process handle opened on first use."""

    def __init__(self, size: int, open_handle):
        self.size, self._open = size, open_handle
        self._blocks: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()
        self._handle, self._pid = None, None

    def get(self, block: int, read) -> torch.Tensor:
        """Block `block`, from the cache or as `read(handle, block)`."""
        if self._pid != os.getpid():  # first use in this process (a DataLoader worker opens its own handle)
            self._handle, self._pid = self._open(), os.getpid()
            self._blocks.clear()
        if block not in self._blocks:
            self._blocks[block] = read(self._handle, block)
            while len(self._blocks) > self.size:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(block)
        return self._blocks[block]

    def __len__(self) -> int:
        return len(self._blocks)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None, "_blocks": collections.OrderedDict()}


class StateWindows(Dataset):
    """Windows of `steps` + 1 consecutive states of one split; item i -> (i, states of window i). With the split's
    `members` (nature-run trajectories) the windows of each member follow those of the one before, never
    crossing members: window i is member i // per_member, first state i % per_member. See the module doc."""

    def __init__(self, cfg: ExperimentConfig, period, steps: int, normalization: grid.Normalization | None = None,
                 cache_blocks: int | None = None):
        self.cfg, self.steps, self.normalization = cfg, steps, normalization
        self.layout = layout_of(cfg)
        self.members = list(period.members) if getattr(period, "members", None) else [None]
        states = open_states(cfg, self.members[0])  # every member shares the time axis and its chunks
        positions = split_positions(states, period)
        self.start, self.n_states = positions.start, positions.stop - positions.start
        self.bounds = block_bounds(states, self.layout.upper_air + self.layout.surface)
        self.n_blocks = len(self.bounds) - 1
        self.per_member = max(0, self.n_states - steps)
        first = self.start + np.arange(self.per_member)
        local = np.searchsorted(self.bounds, first, side="right") - 1  # block of each window's first state
        self.block_ids = np.concatenate([local + k * self.n_blocks for k in range(len(self.members))])
        span = np.searchsorted(self.bounds, first + steps, side="right") - local
        self.cache = BlockCache(cache_blocks or GROUP_BLOCKS * int(span.max(initial=1)), self._open)

    def __len__(self) -> int:
        return self.per_member * len(self.members)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        member, j = divmod(i, self.per_member)
        return i, self.states(j, j + self.steps + 1, member)

    def states(self, a: int, b: int, member: int = 0) -> torch.Tensor:
        """States a..b-1 of the split (a < b) of its `member`-th trajectory, read block by block through the cache."""
        lo, hi = self.start + a, self.start + b
        first = int(np.searchsorted(self.bounds, lo, side="right")) - 1
        last = int(np.searchsorted(self.bounds, hi - 1, side="right")) - 1
        parts = []
        for block in range(first, last + 1):
            b0, b1 = self.bounds[block], self.bounds[block + 1]
            parts.append(self._block(member * self.n_blocks + block)[max(lo, b0) - b0 : min(hi, b1) - b0])
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts)

    def _block(self, block: int) -> torch.Tensor:
        return self.cache.get(block, self._read)

    def _open(self):
        return [open_states(self.cfg, m) for m in self.members]

    def _read(self, handles, block: int) -> torch.Tensor:
        member, local = divmod(block, self.n_blocks)
        sel = handles[member].isel({grid.TIME: slice(int(self.bounds[local]), int(self.bounds[local + 1]))})
        x = self.layout.to_tensor(sel.load(scheduler="synchronous"))[0]
        return x if self.normalization is None else self.normalization.normalize(x)


class ZarrRows(Dataset):
    """Rows of equally long arrays `names` of the Zarr group at `path`: item i -> (i, *(array[i] for each name)),
    float32 tensors, read chunk by chunk along the first axis through a `BlockCache` (opened lazily per process)."""

    def __init__(self, path: Path, names: Sequence[str], cache_blocks: int = GROUP_BLOCKS):
        self.path, self.names = Path(path), tuple(names)
        arrays = [zarr.open_group(self.path, mode="r")[name] for name in self.names]
        shapes = {(a.shape[0], a.chunks[0]) for a in arrays}
        if len(shapes) != 1:
            raise SchemaError(f"arrays {self.names} of {self.path} differ in length or chunking: {sorted(shapes)}")
        (self.n, self.chunk), = shapes
        self.block_ids = np.arange(self.n) // self.chunk
        self.cache = BlockCache(cache_blocks, self._open)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} of {self.n}")
        rows = self.cache.get(i // self.chunk, self._read)
        return (i, *(r[i % self.chunk].clone() for r in rows))

    def _open(self):
        return zarr.open_group(self.path, mode="r")

    def _read(self, group, block: int) -> tuple[torch.Tensor, ...]:
        rows = slice(block * self.chunk, (block + 1) * self.chunk)
        return tuple(torch.as_tensor(np.asarray(group[name][rows], dtype=np.float32)) for name in self.names)


class ChunkShuffleSampler(Sampler[int]):
    """Seeded per-epoch order of window indices, grouped by block, and this rank's share of it (module doc)."""

    def __init__(self, block_ids: Sequence[int], seed: int = 0, rank: int = 0, world_size: int = 1,
                 group_blocks: int = GROUP_BLOCKS):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.block_ids = torch.as_tensor(np.asarray(block_ids), dtype=torch.long)
        self.seed, self.rank, self.world_size, self.group_blocks = seed, rank, world_size, group_blocks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """All ranks' order for `epoch`: a permutation of the window indices."""
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        blocks, block_of = torch.unique(self.block_ids, return_inverse=True)
        place = torch.empty(len(blocks), dtype=torch.long)
        place[torch.randperm(len(blocks), generator=gen)] = torch.arange(len(blocks))
        group = place[block_of] // self.group_blocks
        shuffled = torch.randperm(len(self.block_ids), generator=gen)
        return shuffled[torch.argsort(group[shuffled], stable=True)]

    def __len__(self) -> int:
        return len(self.block_ids) // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(self.epoch)[: len(self) * self.world_size]
        return iter(order[self.rank :: self.world_size].tolist())


def sample_generator(*key: int) -> torch.Generator:
    """A generator seeded from non-negative ints, e.g. (seed, epoch, sample index): per-sample randomness that
    does not depend on batching, order or ranks."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))


def channel_std(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-channel (axis 1) population std over every other axis of batches (B, C, ...), float64, streamed
    (Chan's pairwise update of the mean and the sum of squared deviations)."""
    n, mean, m2 = 0, 0.0, 0.0
    for x in batches:
        d = x.movedim(1, 0).reshape(x.shape[1], -1).double()
        k, batch_mean = d.shape[1], d.mean(1)
        delta = batch_mean - mean
        m2 = m2 + (d - batch_mean[:, None]).pow(2).sum(1) + delta.pow(2) * n * k / (n + k)
        mean = mean + delta * k / (n + k)
        n += k
    if not n:
        raise ValueError("no values to take the std of")
    return (m2 / n).sqrt()


def batches_of(x, batch: int) -> Iterable[torch.Tensor]:
    """A tensor (B, ...) in batches of `batch` along its first axis; any other iterable of batches as it is."""
    return x.split(batch) if isinstance(x, torch.Tensor) else x


def window_loader(data: Dataset, batch_size: int, sampler: Sampler | None = None, workers: int = 0) -> DataLoader:
    """A DataLoader of `data` in `sampler`'s order (sequential when None); it never draws from torch's global RNG."""
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
