"""Streamed training windows: exact slices of the loaded split, chunk-aligned reads, seeded order split across ranks."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from align_da_ops.config import ExperimentConfig
from align_da_ops.data.sources import layout_of, normalization_path, open_states, read_normalization
from align_da_ops.data.streaming import ChunkShuffleSampler, StateWindows, split_positions, window_loader
from align_da_ops.errors import SchemaError
from align_da_ops.forecast.training import load_split

from factories import tiny_config_dict


@pytest.fixture(scope="module")
def setup(tiny_nature_run):
    """A 6-state train split (0..30 h) of the 2-day nature run (2-state chunks) and its loaded, normalised copy."""
    raw = tiny_config_dict(tiny_nature_run)
    at = lambda hours: (datetime(2000, 1, 1) + timedelta(hours=hours)).isoformat()
    raw["splits"] = {"train": {"start": at(0), "end": at(30)}, "validation": {"start": at(36), "end": at(36)},
                     "test": {"start": at(42), "end": at(42)}}
    cfg = ExperimentConfig.model_validate(raw)
    norm = read_normalization(normalization_path(cfg))
    full = norm.normalize(load_split(open_states(cfg), layout_of(cfg), cfg.splits.train))
    return cfg, norm, full


def test_windows_are_exact_slices_of_the_loaded_normalised_split(setup):
    cfg, norm, full = setup
    data = StateWindows(cfg, cfg.splits.train, 2, norm)
    assert len(data) == 4 and data.n_states == 6 == full.shape[0]
    assert data.bounds.tolist() == [0, 2, 4, 6, 8]  # the store's time chunks (chunk_days 0.5)
    assert data.block_ids.tolist() == [0, 0, 1, 1]
    for i in range(len(data)):
        j, window = data[i]
        assert j == i and torch.equal(window, full[i : i + 3])
    physical = StateWindows(cfg, cfg.splits.train, 0)[5][1]  # no statistics: physical units
    assert torch.equal(physical, load_split(open_states(cfg), layout_of(cfg), cfg.splits.train)[5:6])
    with pytest.raises(IndexError):
        data[4]


def test_reads_stay_within_the_cache(setup):
    cfg, norm, _ = setup
    data = StateWindows(cfg, cfg.splits.train, 2, norm, cache_blocks=2)
    for i in range(len(data)):
        data[i]
        assert len(data._cache) <= 2 and all(t.shape[0] == 2 for t in data._cache.values())
    clone = pickle.loads(pickle.dumps(data))  # what a spawned DataLoader worker gets: no store handle, empty cache
    assert clone._states is None and not clone._cache
    assert torch.equal(clone[1][1], data[1][1])


def test_order_is_seeded_per_epoch_grouped_by_chunk_and_shared_out_across_ranks():
    blocks = np.repeat(np.arange(6), 5)  # 30 windows, 5 per chunk
    order = ChunkShuffleSampler(blocks, seed=3).epoch_order(0)
    assert sorted(order.tolist()) == list(range(30))
    assert torch.equal(order, ChunkShuffleSampler(blocks, seed=3).epoch_order(0))
    assert not torch.equal(order, ChunkShuffleSampler(blocks, seed=3).epoch_order(1))
    assert not torch.equal(order, ChunkShuffleSampler(blocks, seed=4).epoch_order(0))
    one = ChunkShuffleSampler(blocks, seed=3, group_blocks=1).epoch_order(2)
    runs = [int(b) for k, b in enumerate(blocks[one]) if k == 0 or b != blocks[one][k - 1]]
    assert sorted(runs) == list(range(6))  # one chunk after another
    for world in (1, 2, 3):
        shares = []
        for rank in range(world):
            sampler = ChunkShuffleSampler(blocks, seed=3, rank=rank, world_size=world)
            sampler.set_epoch(5)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == 30 // world
        merged = [shares[r][m] for m in range(30 // world) for r in range(world)]  # batches of b x world
        assert merged == ChunkShuffleSampler(blocks, seed=3).epoch_order(5).tolist()
    four = [list(ChunkShuffleSampler(blocks, seed=3, rank=r, world_size=4)) for r in range(4)]
    assert {len(s) for s in four} == {7} and len(set(sum(four, []))) == 28  # 30 % 4 windows skipped this epoch
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        ChunkShuffleSampler(blocks, rank=2, world_size=2)


def test_loader_with_workers_and_ranks_covers_the_split_exactly(setup):
    cfg, norm, full = setup
    data = StateWindows(cfg, cfg.splits.train, 2, norm)  # 4 windows
    seen = {}
    for rank in range(2):
        sampler = ChunkShuffleSampler(data.block_ids, seed=0, rank=rank, world_size=2)
        sampler.set_epoch(1)
        for index, batch in window_loader(data, 2, sampler, workers=2):
            for i, window in zip(index.tolist(), batch):
                assert i not in seen
                seen[i] = window
    assert sorted(seen) == list(range(4))
    assert all(torch.equal(w, full[i : i + 3]) for i, w in seen.items())


def test_splits_must_be_six_hourly_without_gaps():
    times = pd.date_range("2000-01-01", periods=6, freq="6h").delete(3)
    ds = xr.Dataset(coords={"time": times})
    period = type("Period", (), {"start": times[0], "end": times[-1]})
    with pytest.raises(SchemaError, match=r"not 6-hourly without gaps \(steps \[6, 12\] h\)"):
        split_positions(ds, period)
    period.end = times[0]
    with pytest.raises(SchemaError, match="holds 1 states; need at least 2"):
        split_positions(ds, period)
    period.end = times[2]
    assert split_positions(ds, period) == slice(0, 3)
