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
        assert len(data.cache) <= 2 and all(t.shape[0] == 2 for t in data.cache._blocks.values())
    clone = pickle.loads(pickle.dumps(data))  # what a spawned DataLoader worker gets: no store handle, empty cache
    assert clone.cache._handle is None and len(clone.cache) == 0
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
    assert {len(s) for s in four} == {7} and len({i for s in four for i in s}) == 28  # 30 % 4 windows skipped this epoch
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


def test_zarr_rows_read_chunk_by_chunk(tmp_path):
    import zarr

    from align_da_ops.data.streaming import ZarrRows

    group = zarr.open_group(tmp_path / "rows.zarr", mode="w")
    a = torch.arange(10 * 6, dtype=torch.float32).reshape(10, 2, 3)
    for name, x in (("a", a), ("b", -a)):
        group.create_array(name, shape=(0, 2, 3), chunks=(4, 2, 3), dtype="float32").append(x.numpy())
    rows = ZarrRows(tmp_path / "rows.zarr", ("a", "b"), cache_blocks=1)
    assert len(rows) == 10 and rows.block_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    for i in (9, 0, 5):
        j, ra, rb = rows[i]
        assert j == i and torch.equal(ra, a[i]) and torch.equal(rb, -a[i]) and len(rows.cache) == 1
    group.create_array("c", shape=(3,), chunks=(4,), dtype="float32")
    with pytest.raises(SchemaError, match="differ in length or chunking"):
        ZarrRows(tmp_path / "rows.zarr", ("a", "c"))


def test_streamed_channel_std_and_per_sample_generators():
    from align_da_ops.data.streaming import channel_std, sample_generator

    x = torch.randn(13, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 5.0, 0.1])[:, None, None] + 7
    want = x.movedim(1, 0).reshape(3, -1).double().std(1, correction=0)
    torch.testing.assert_close(channel_std(x.split(4)), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(channel_std([x]), want, rtol=1e-12, atol=0)
    draw = lambda *key: torch.rand(3, generator=sample_generator(*key))
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1)) and not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


def test_prior_pairs_written_block_by_block_are_the_pairs_of_the_whole_split(setup, tmp_path, monkeypatch):
    from align_da_ops.diffusion import training as prior_training
    from align_da_ops.forecast.base import Persistence

    class Subsample:  # a stand-in autoencoder: a few channels of every 8th grid point
        device = torch.device("cpu")

        def encode(self, x):
            return x[:, :3, ::8, ::8]

    cfg, _, _ = setup
    monkeypatch.setattr(prior_training, "PAIR_BLOCK", 2)  # three blocks of starts over the 6-state split
    store = prior_training.PairStore(tmp_path / "p.zarr")
    assert prior_training.add_forecast_pairs(cfg, cfg.splits.train, Subsample(), Persistence(), (6, 12), store) == 9
    rows = store.rows()
    x = load_split(open_states(cfg), layout_of(cfg), cfg.splits.train)
    whole = [Subsample().encode(p) for p in prior_training.forecast_pairs(x, Persistence(), (6, 12))]
    assert len(rows) == len(whole[0]) == 5 + 4
    key = lambda b, t: b.numpy().tobytes() + t.numpy().tobytes()
    assert sorted(key(b, t) for _, b, t in (rows[i] for i in range(len(rows)))) == sorted(map(key, *whole))


def test_memory_benchmark_stores_and_rows(setup, tmp_path):
    from align_da_ops.data import streaming_bench

    cfg, norm, full = setup
    scaled = streaming_bench.synthetic_store(cfg, 3, tmp_path / "x3.zarr")
    x = norm.normalize(load_split(open_states(scaled), layout_of(scaled), scaled.splits.train))
    assert x.shape[0] == 18 and torch.equal(x[:6], full)
    shift = 0.01 / torch.as_tensor(norm.std, dtype=torch.float32)[:, None, None]  # repetition 2 is +0.02
    torch.testing.assert_close(x[12:] - full, (2 * shift).expand_as(full), atol=1e-3, rtol=0)
    rows = [streaming_bench._epoch(scaled, p, batch_size=4, steps=2, workers=0) for p in streaming_bench.PIPELINES]
    assert [(r["states"], r["windows"]) for r in rows] == [(18, 16), (18, 16)]
    result = streaming_bench.run(cfg, factors=(2,), pipelines=("streamed",), batch_size=4, rollout_steps=2, root=tmp_path)
    (row,) = result["rows"]
    assert row["factor"] == 2 and row["windows"] == 10 and row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """A 3-member, 1-day nature run trained on members 0 and 1; validation and test on member 2 (same times)."""
    from align_da_ops.data.nature_run import generate

    raw = tiny_config_dict(tmp_path_factory.mktemp("members") / "nature.zarr", days=1.0, members=3)
    at = lambda hours: (datetime(2000, 1, 1) + timedelta(hours=hours)).isoformat()
    raw["data"] = {"kind": "nature_run", "member": 2}
    raw["splits"] = {"train": {"start": at(0), "end": at(18), "members": [0, 1]},
                     "validation": {"start": at(0), "end": at(6)}, "test": {"start": at(12), "end": at(18)}}
    cfg = ExperimentConfig.model_validate(raw)
    generate(cfg)
    return cfg, raw


def test_a_split_of_several_trajectories_streams_each_without_crossing_members(trajectories):
    from align_da_ops.data.sources import compute_normalization, open_split_trajectories

    cfg, _ = trajectories
    layout = layout_of(cfg)
    data = StateWindows(cfg, cfg.splits.train, 1)
    assert data.members == [0, 1] and data.per_member == 3 and len(data) == 6
    for i in range(len(data)):
        member, j = divmod(i, 3)
        expected = layout.to_tensor(open_states(cfg, member).isel(time=slice(j, j + 2)).load())[0]
        assert torch.equal(data[i][1], expected), i
    assert len(set(data.block_ids[:3]) & set(data.block_ids[3:])) == 0  # blocks are per member
    order = ChunkShuffleSampler(data.block_ids, seed=0).epoch_order(0)
    assert sorted(order.tolist()) == list(range(6))
    stored = read_normalization(normalization_path(cfg))  # the store's statistics are over the train members
    both = compute_normalization(open_split_trajectories(cfg, cfg.splits.train), layout, *[cfg.splits.train.start, cfg.splits.train.end])
    np.testing.assert_allclose(stored.mean, both.mean, rtol=1e-6)
    alone = compute_normalization(open_states(cfg), layout, cfg.splits.train.start, cfg.splits.train.end)
    assert not np.allclose(alone.mean, both.mean, rtol=1e-6)  # member 2 (validation's) is not in them


def test_splits_over_trajectories_are_validated(trajectories):
    _, raw = trajectories
    import copy

    def bad(change, match):
        broken = copy.deepcopy(raw)
        change(broken)
        with pytest.raises(ValueError, match=match):
            ExperimentConfig.model_validate(broken)

    bad(lambda r: r["splits"]["train"].update(members=[0, 2]), "include data.member=2")
    bad(lambda r: r["splits"]["train"].update(members=[0, 3]), "distinct members")
    bad(lambda r: r["splits"]["validation"].update(members=[1]), "same trajectory|scored against data.member")
    bad(lambda r: r["data"].update(member=5), "data.member=5")


def test_single_trajectory_training_work_reads_a_training_member(trajectories, setup):
    """NMC pairs and preference cases read the first training member, never the held-out `data.member`."""
    from align_da_ops.data.sources import training_trajectory

    cfg, _ = trajectories
    t0 = {"time": 0}
    np.testing.assert_array_equal(training_trajectory(cfg)["temperature"].isel(t0).values,
                                  open_states(cfg, 0)["temperature"].isel(t0).values)
    assert not np.array_equal(training_trajectory(cfg)["temperature"].isel(t0).values,
                              open_states(cfg)["temperature"].isel(t0).values)
    plain = setup[0]  # no members listed: data.member's trajectory
    np.testing.assert_array_equal(training_trajectory(plain)["temperature"].isel(t0).values,
                                  open_states(plain)["temperature"].isel(t0).values)
