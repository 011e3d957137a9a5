"""Training samples streamed from the state store: windows of consecutive states, a chunk-grouped seeded order.

Contract. `StateWindows(cfg, period, steps, normalization)` is a map-style
`torch.utils.data.Dataset` over one split of `open_states(cfg)`: item i is
`(i, window)` with `window` the float32 states i..i+steps of the split,
(steps + 1, channel, lat, lon), normalised with `normalization` (physical units
when None); exactly `layout.to_tensor` of the loaded split, sliced and
normalised (`load_split` in forecast.training is the same read, whole).
The split must be 6-hourly without gaps (`SchemaError` otherwise).

Reads are chunk-aligned: the store's time axis is cut into blocks at its
dask chunk boundaries (for a nature run, the Zarr chunks: `chunk_days` x 4
states; a source without dask chunks gives one-state blocks); a window
reads the whole blocks it touches, one dask compute each, and keeps the
last `cache_blocks` blocks (LRU, per process). Memory is therefore
`cache_blocks` x block size per process, whatever the length of the split.
The store is opened lazily, once per process (DataLoader workers, forked or
spawned, open their own handle; no handle is ever pickled).

Order. `ChunkShuffleSampler` shuffles the blocks, takes them
`GROUP_BLOCKS` at a time and shuffles the windows of each group, from one
generator seeded by (seed, epoch): reproducible per epoch, different
between epochs, and each block is read about once per epoch instead of once per
window (measured on the tiny nature run, 20-state blocks: one block read
~40 ms, a window needing a block ~30 ms, so a plain permutation with a small
cache costs ~0.03 s per window; grouped, ~2 ms). A batch still mixes
windows from `GROUP_BLOCKS` blocks (20 days of the tiny run). Under DDP,
rank r of W takes order[r::W] of the order cut to a multiple of W (the last
len % W windows of each epoch's order are skipped): equal, disjoint shares, and
rank batches of b are the parts of the single-process batches of b x W.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
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


class StateWindows(Dataset):
    """Windows of `steps` + 1 consecutive states of one split; item i -> (i, states i..i+steps). See the module doc."""

    def __init__(self, cfg: ExperimentConfig, period, steps: int, normalization: grid.Normalization | None = None,
                 cache_blocks: int | None = None):
        self.cfg, self.steps, self.normalization = cfg, steps, normalization
        self.layout = layout_of(cfg)
        states = open_states(cfg)
        positions = split_positions(states, period)
        self.start, self.n_states = positions.start, positions.stop - positions.start
        self.bounds = block_bounds(states, self.layout.upper_air + self.layout.surface)
        first = self.start + np.arange(len(self))
        self.block_ids = np.searchsorted(self.bounds, first, side="right") - 1  # block of each window's first state
        span = np.searchsorted(self.bounds, first + steps, side="right") - self.block_ids
        self.cache_blocks = cache_blocks or GROUP_BLOCKS * int(span.max(initial=1))
        self._states, self._pid = None, None
        self._cache: collections.OrderedDict[int, torch.Tensor] = collections.OrderedDict()

    def __len__(self) -> int:
        return max(0, self.n_states - self.steps)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        return i, self.states(i, i + self.steps + 1)

    def states(self, a: int, b: int) -> torch.Tensor:
        """States a..b-1 of the split (a < b), read block by block through the cache."""
        lo, hi = self.start + a, self.start + b
        first = int(np.searchsorted(self.bounds, lo, side="right")) - 1
        last = int(np.searchsorted(self.bounds, hi - 1, side="right")) - 1
        parts = []
        for block in range(first, last + 1):
            b0, b1 = self.bounds[block], self.bounds[block + 1]
            parts.append(self._block(block)[max(lo, b0) - b0 : min(hi, b1) - b0])
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts)

    def _block(self, block: int) -> torch.Tensor:
        if self._pid != os.getpid():  # first use in this process (a DataLoader worker opens its own store)
            self._states, self._pid = open_states(self.cfg), os.getpid()
            self._cache.clear()
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        sel = self._states.isel({grid.TIME: slice(int(self.bounds[block]), int(self.bounds[block + 1]))})
        x = self.layout.to_tensor(sel.load(scheduler="synchronous"))[0]
        if self.normalization is not None:
            x = self.normalization.normalize(x)
        self._cache[block] = x
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return x

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_states": None, "_pid": None, "_cache": collections.OrderedDict()}


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


def batches_of(x, batch: int) -> Iterable[torch.Tensor]:
    """A tensor (B, ...) in batches of `batch` along its first axis; any other iterable of batches as it is."""
    return x.split(batch) if isinstance(x, torch.Tensor) else x


def window_loader(data: Dataset, batch_size: int, sampler: Sampler | None = None, workers: int = 0) -> DataLoader:
    """A DataLoader of `data` in `sampler`'s order (sequential when None); it never draws from torch's global RNG."""
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
