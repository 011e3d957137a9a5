"""`align-da bench scale`: what dask.distributed buys on this machine, and what verification costs in memory.

- `suite_wall`: one tiny suite (3D-Var on two networks × two seeds: four campaigns) replayed serially in
  this process (torch with every core) and, into fresh archives, on a LocalCluster of `workers`
  (cores shared out): wall seconds and their ratio.
- `preference_wall`: preference cases from the training split scored serially and on the cluster.
- `verification_memory`: peak RSS of `evaluation.archive_scores` over synthetic archives of increasing
  length, block by block (the default) and read whole (`block_cycles` = the archive's length), each in a
  fresh process (`ru_maxrss`), after the imports' baseline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.peak_memory import in_fresh_process, peak_rss_mib, serve

LAYOUT = grid.StateLayout(upper_air=("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"),
                          surface=("surface_pressure",), levels=(250, 500, 850))
FIRST = pd.Timestamp("2000-01-01T00")


def _suite_file(config: Path, root: Path, days: float, spinup_days: float) -> Path:
    import yaml

    qc = {"background_sigma": {"geopotential": 400, "temperature": 2.5, "u_component_of_wind": 4,
                               "v_component_of_wind": 4, "surface_pressure": 300}}
    path = root / "scale.suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "scale", "config": str(Path(config).resolve()), "seeds": [0, 1], "spinup_days": spinup_days,
        "test_days": days, "leads_hours": [6, 24], "archive_root": str(root / "archives"),
        "forecast_model": {"kind": "neural"}, "cold_start": {"kind": "truth_offset", "offset_days": 10},
        "networks": [{"name": "mask", "networks": [{"kind": "random_mask", "fraction": 0.01, "noise": False}], "qc": qc},
                     {"name": "stations", "networks": [{"kind": "stations"}], "qc": qc}],
        "methods": [{"name": "3dvar", "analysis": {"kind": "threedvar",
                                                   "covariance": "align_da_ops/checkpoints/b-nmc-neural-tiny.npz"}}],
    }))
    return path


def suite_wall(config: Path, workers: int = 2, days: float = 2.0, spinup_days: float = 1.0) -> dict:
    """Wall seconds of a 4-campaign suite serial vs on `workers` dask workers (fresh archives each)."""
    from align_da_ops.cluster import local_shape, open_client
    from align_da_ops.suite import distinct_runs, execute, load_suite, scoring_runs
    from align_da_ops.times import cycle_range

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        seconds = {}
        for mode in ("serial", "dask"):
            root = Path(tmp) / mode
            root.mkdir()
            suite, experiment = load_suite(_suite_file(config, root, days, spinup_days))
            runs = scoring_runs(suite, experiment)
            t0 = time.perf_counter()
            if mode == "serial":
                execute(runs)
            else:
                shape = local_shape(len(distinct_runs(runs)), workers)
                with open_client(*shape) as client:
                    t0 = time.perf_counter()  # the cluster's start-up is reported apart
                    execute(runs, client=client)
            seconds[mode] = time.perf_counter() - t0
        cycles = sum(len(cycle_range(r.campaign.first, r.campaign.last)) for r in distinct_runs(runs))
    return {"campaigns": len(distinct_runs(runs)), "cycles": cycles, "serial_threads": torch.get_num_threads(),
            "workers": shape[0], "threads_per_worker": shape[1], "serial_s": seconds["serial"], "dask_s": seconds["dask"],
            "speed_up": seconds["serial"] / seconds["dask"]}


def preference_wall(config: Path, workers: int = 2, cases: int = 8, samples: int = 16, steps: int = 8) -> dict:
    """Wall seconds of building preference pairs for `cases` training-split cases serial vs on the cluster
    (identical pairs at equal threads per case: tests/test_cluster.py)."""
    from align_da_ops.align import preferences as prefs
    from align_da_ops.align.commands import _models
    from align_da_ops.cluster import local_shape, open_client
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import open_states

    cfg = load_config(config)
    layout, ae, _, prior, model = _models(cfg, None, None, None, torch.device("cpu"))
    states = open_states(cfg)
    settings = prefs.PreferenceSettings(samples=samples, steps=steps, lead_hours=24, every_hours=24)
    train = cfg.splits.train
    the_cases = list(prefs.cases_from_states(states, layout, model, train.start, train.end, settings))[:cases]
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    t0 = time.perf_counter()
    built = prefs.build(the_cases, ae, prior, model, layout, lat, lon, settings)
    serial_s = time.perf_counter() - t0
    shape = local_shape(len(the_cases), workers)
    with open_client(*shape) as client:
        t0 = time.perf_counter()
        prefs.build(the_cases, ae, prior, model, layout, lat, lon, settings, client=client)
        dask_s = time.perf_counter() - t0
    return {"cases": len(the_cases), "samples": samples, "pairs": built["counts"]["pairs"],
            "serial_threads": torch.get_num_threads(), "workers": shape[0], "threads_per_worker": shape[1],
            "serial_s": serial_s, "dask_s": dask_s, "speed_up": serial_s / dask_s}


# -- verification memory ------------------------------------------------------------------------------
def write_synthetic(root: Path, cycles: int, seed: int = 0) -> tuple[Path, Path]:
    """An archive of `cycles` done cycles (T21 grid, `LAYOUT`, one 6-h lead) written through
    `Archive.write_cycle`, and a truth store covering it: (archive, truth)."""
    from align_da_ops.archive import Archive, CycleRecord
    from align_da_ops.obs.batch import ObsBatch
    from align_da_ops.times import CycleTime

    lat, lon = grid.gaussian_latitudes(32), grid.longitudes(64)
    times = pd.date_range(FIRST, periods=cycles + 1, freq="6h")
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([5e4, 5e4, 5e4, 250, 250, 250, 10, 10, 10, 5, 5, 5, 1e5])[:, None, None]
    truth_path = root / "truth.zarr"
    for start in range(0, len(times), 40):
        block = times[start : start + 40]
        x = scale * (1 + 0.01 * torch.randn(len(block), LAYOUT.n_channels, len(lat), len(lon), generator=gen))
        ds = LAYOUT.from_tensor(x, lat, lon, leading=(grid.TIME,), coords={grid.TIME: block.values})
        ds.to_zarr(truth_path, mode="w" if start == 0 else "a", append_dim=None if start == 0 else grid.TIME,
                   consolidated=False)
    archive = Archive.create_or_open(root / "archive", "synthetic", LAYOUT, lat, lon, (6,), CycleTime(FIRST.to_pydatetime()))
    monitoring = pd.DataFrame(columns=["departure", "obs_type", "variable", "count", "rms"])
    for t in times[:-1]:
        state = lambda: scale * (1 + 0.01 * torch.randn(LAYOUT.n_channels, len(lat), len(lon), generator=gen))  # noqa: E731
        record = CycleRecord(CycleTime(t.to_pydatetime()), state(), state(), {6: state()}, ObsBatch.empty(),
                             np.empty(0), np.empty(0), monitoring, {"cycle": t.isoformat()})
        archive.write_cycle(record)
    return archive.root, truth_path


def _score_in_process(archive: str, truth: str, block_cycles: int) -> dict:
    """Score an archive in this (fresh) process; peak RSS before and after, in MiB."""
    from align_da_ops.archive import Archive
    from align_da_ops.evaluation import archive_scores

    before = peak_rss_mib()
    opened = Archive.open(Path(archive))
    states = xr.open_zarr(truth, consolidated=False)
    t0 = time.perf_counter()
    table = archive_scores(opened, states, "synthetic", block_cycles=block_cycles or len(opened.done_cycles()))
    return {"baseline_mib": before, "peak_mib": peak_rss_mib(),
            "rows": len(table), "seconds": time.perf_counter() - t0}


def verification_memory(lengths=(120, 1460), workdir: Path | None = None) -> list[dict]:
    """Peak RSS of scoring synthetic archives of each length, block by block and read whole."""
    from align_da_ops.evaluation import VERIFY_BLOCK_CYCLES

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=workdir) as tmp:
        for n in lengths:
            root = Path(tmp) / f"n{n}"
            root.mkdir()
            archive, truth = write_synthetic(root, n)
            for mode, block in (("blocks", VERIFY_BLOCK_CYCLES), ("whole", 0)):
                result = in_fresh_process("align_da_ops.scaling_bench",
                                          {"archive": str(archive), "truth": str(truth), "block_cycles": block})
                rows.append({"cycles": n, "read": mode, **result, "added_mib": result["peak_mib"] - result["baseline_mib"]})
    return rows


if __name__ == "__main__":  # one measurement, as `verification_memory` runs it
    serve(_score_in_process)
