"""Memory of the forecast trainer's data pipeline as the training data grows: streamed against loaded.

`run(config, factors=(1, 8))` writes, for each factor f, a synthetic nature-run
store of the config's schema whose training split is f times the config's
(its states repeated in order, the r-th repetition shifted by r x 0.01 in
every variable, times continuing 6-hourly, the same Zarr chunks and
normalisation statistics), then measures, each in a fresh Python process,
one epoch of batches of rollout windows over that split:

- "streamed": `StateWindows` + `ChunkShuffleSampler` + `window_loader`, what
  `forecast.training.train` iterates;
- "loaded": the pipeline before streaming (the split loaded and normalised,
  every window stacked, batches indexed from a permutation).

Each row reports the process's peak resident set (`ru_maxrss`), the same
after imports and set-up (`baseline_rss_mib`), the split's size in memory
(`split_mib`) and the seconds of the epoch. Streamed, the peak stays flat
while the split grows; loaded, it grows with the split. No timing is asserted.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.config import ExperimentConfig, load_config
from align_da_ops.data.sources import layout_of, normalization_path, read_normalization, write_normalization
from align_da_ops.data.streaming import ChunkShuffleSampler, StateWindows, split_positions, window_loader
from align_da_ops.peak_memory import in_fresh_process, peak_rss_mib, serve

PIPELINES = ("streamed", "loaded")


def synthetic_store(cfg: ExperimentConfig, factor: int, path: Path) -> ExperimentConfig:
    """Write a nature-run store holding the training split `factor` times over (see the module doc); returns the
    config reading it: the training split covers the whole store, validation and test (never read) follow it."""
    src = xr.open_zarr(cfg.nature_run.output, consolidated=False)
    positions = split_positions(src, cfg.splits.train)
    source = src.isel({grid.TIME: positions})
    n, chunk = source.sizes[grid.TIME], source.chunksizes[grid.TIME][0]
    start = source[grid.TIME].values[0]
    for g in range(0, factor * n, chunk):
        p = np.arange(g, min(g + chunk, factor * n))
        block = source.isel({grid.TIME: p % n}).load()
        shift = xr.DataArray(0.01 * (p // n), dims=grid.TIME).astype(np.float32)
        block = (block + shift).assign_coords({grid.TIME: start + p * np.timedelta64(6, "h")})
        block.attrs = src.attrs
        if g == 0:
            block.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
        else:
            block.drop_vars([c for c in block.coords if c != grid.TIME]).to_zarr(path, append_dim=grid.TIME, consolidated=False)
    write_normalization(read_normalization(normalization_path(cfg)), path)
    raw = cfg.model_dump(mode="json")
    first = cfg.splits.train.start
    at = lambda k: (first + timedelta(hours=6 * k)).isoformat()
    raw["splits"] = {"train": {"start": at(0), "end": at(factor * n - 1)},
                     "validation": {"start": at(factor * n), "end": at(factor * n)},
                     "test": {"start": at(factor * n + 1), "end": at(factor * n + 1)}}
    days = (first - cfg.nature_run.start + timedelta(hours=6 * (factor * n + 2))) / timedelta(days=1)
    raw["nature_run"].update(output=str(path), days=float(np.ceil(days)))
    return ExperimentConfig.model_validate(raw)


def _epoch(cfg: ExperimentConfig, pipeline: str, batch_size: int, steps: int, workers: int) -> dict:
    """One epoch of batches in this process; the row of the module doc."""
    norm = read_normalization(normalization_path(cfg))
    if pipeline == "streamed":
        data = StateWindows(cfg, cfg.splits.train, steps, norm)
        sampler = ChunkShuffleSampler(data.block_ids)
        batches = (b for _, b in window_loader(data, batch_size, sampler, workers))
        n_states = data.n_states
    else:
        from align_da_ops.data.sources import open_states
        from align_da_ops.forecast.training import load_split

        x = norm.normalize(load_split(open_states(cfg), layout_of(cfg), cfg.splits.train))
        windows = torch.stack([x[i : i + steps + 1] for i in range(x.shape[0] - steps)])
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))
        batches = (windows[order[i : i + batch_size]] for i in range(0, len(windows), batch_size))
        n_states = x.shape[0]
    baseline = peak_rss_mib()
    t0 = time.perf_counter()
    count = sum(len(b) for b in batches)
    state_mib = layout_of(cfg).n_channels * cfg.state.grid.nlat * cfg.state.grid.nlon * 4 / 2**20
    return {"pipeline": pipeline, "states": n_states, "windows": count, "split_mib": round(n_states * state_mib, 1),
            "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
            "seconds": round(time.perf_counter() - t0, 2)}


def _measure(cfg: ExperimentConfig, pipeline: str, batch_size: int, steps: int, workers: int) -> dict:
    """`_epoch` in a fresh Python process (its own peak RSS)."""
    return in_fresh_process("align_da_ops.data.streaming_bench", {"config": cfg.model_dump(mode="json"), "pipeline": pipeline,
                                       "batch_size": batch_size, "steps": steps, "workers": workers})


def _job(config: dict, **job) -> dict:
    return _epoch(ExperimentConfig.model_validate(config), **job)


def run(config: Path | ExperimentConfig = Path("config/tiny.yaml"), factors=(1, 8), pipelines=PIPELINES,
        batch_size: int = 8, rollout_steps: int = 4, workers: int = 0, root: Path | None = None) -> dict:
    """Peak RSS of one epoch of each pipeline at each factor x the config's training split; stores in a temporary
    directory under `root` (default: the system's), deleted afterwards. Returns {"rows": [...], settings...}."""
    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="streaming-bench-", dir=root) as tmp:
        for factor in factors:
            scaled = synthetic_store(cfg, factor, Path(tmp) / f"x{factor}.zarr")
            rows.extend({"factor": factor, **_measure(scaled, p, batch_size, rollout_steps, workers)} for p in pipelines)
    return {"config": cfg.name, "batch_size": batch_size, "rollout_steps": rollout_steps, "workers": workers, "rows": rows}


if __name__ == "__main__":  # one measurement, as `_measure` runs it
    serve(_job)
