"""Training pairs of cycled backgrounds: (archived background, truth) from past cycling campaigns.

A prior trained on truth-started forecasts learns their errors (48-h z500 ~360 m²/s²), but while cycling
it meets backgrounds that are 6-h forecasts from imperfect analyses (errors 700-950): its implicit B is
too small (issue 13). Here each done cycle of a cycling archive gives one pair: the background it archived
and the nature run's state at the cycle's time, on the trajectory the archive cycled against.

Which cycles are read, per split of the training config `cfg`:
- train: cycles whose time lies in `splits.train`, on a train trajectory (`splits.train.members`, else
  `data.member`);
- validation: cycles in `splits.validation` on `data.member` (the validation trajectory).
Cycles anywhere else (the test period above all) are never read, so a prior trained from the archives of
a suite's test campaigns learns nothing of the test period.

The trajectory of an archive is its cycles' provenance `data.member` (recorded since this module), else
the `data.member` of the experiment file its provenance names. The archive must hold the config's
experiment (same name, layout and grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.archive import Archive
from align_da_ops.config import ExperimentConfig
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.errors import InputDataError, SchemaError
from align_da_ops.times import CycleTime

BLOCK = 16  # cycles read and encoded together


def _first_provenance(archive: Archive) -> dict:
    done = archive.done_cycles()
    if not done:
        raise InputDataError(f"archive {archive.root} has no done cycle to train from")
    return archive.provenance(done[0])


def archive_member(archive: Archive) -> int:
    """The nature-run trajectory an archive cycled against (see the module doc)."""
    provenance = _first_provenance(archive)
    data = provenance.get("data")
    if data is not None:
        return int(data.get("member") or 0)
    source = provenance.get("experiment_file")
    if not source or not Path(source).exists():
        raise InputDataError(f"archive {archive.root} does not record its trajectory and its experiment file "
                             f"{source or '(not recorded)'} is not available")
    from align_da_ops.config import load_config

    return load_config(source).data.member


def check_archive(archive: Archive, cfg: ExperimentConfig) -> None:
    """SchemaError unless the archive cycled `cfg`'s experiment (by name) on its grid and layout."""
    experiment = _first_provenance(archive).get("experiment")
    if experiment != cfg.name:
        raise SchemaError(f"archive {archive.root} cycled experiment {experiment!r}, not {cfg.name!r}")
    if archive.layout != layout_of(cfg) or archive.lat.shape != (cfg.state.grid.nlat,) or \
            archive.lon.shape != (cfg.state.grid.nlon,):
        raise SchemaError(f"archive {archive.root} has another layout or grid than experiment {cfg.name!r}")
    if cfg.data.kind != "nature_run":
        raise SchemaError(f"pairs from archives need a nature run as truth; data.kind is {cfg.data.kind!r}")


def split_cycles(archive: Archive, cfg: ExperimentConfig, split: str) -> list[CycleTime]:
    """The archive's done cycles that belong to `split` ('train' or 'validation'; see the module doc)."""
    if split not in ("train", "validation"):
        raise ValueError(f"pairs come from the train or validation split, not {split!r}")
    period = getattr(cfg.splits, split)
    member = archive_member(archive)
    allowed = (period.members or (cfg.data.member,)) if split == "train" else (cfg.data.member,)
    if member not in allowed:
        return []
    return [c for c in archive.done_cycles() if period.start <= c.value <= period.end]


def archive_pairs(cfg: ExperimentConfig, split: str, archives: Sequence[Path], block: int = BLOCK):
    """Yield (backgrounds, truths), (n, C, lat, lon) physical float32, `block` cycles at a time, over every
    archive's cycles of `split` in archive then time order."""
    layout = layout_of(cfg)
    for path in archives:
        archive = Archive.open(path)
        check_archive(archive, cfg)
        cycles = split_cycles(archive, cfg, split)
        if not cycles:
            continue
        truth = open_states(cfg, archive_member(archive))
        for a in range(0, len(cycles), block):
            part = cycles[a : a + block]
            times = np.array([c.as_numpy() for c in part], dtype="datetime64[ns]")
            try:
                x = layout.to_tensor(truth.sel({grid.TIME: times}).load())[0]
            except KeyError:
                raise InputDataError(f"the nature run lacks states at cycles {part[0]}..{part[-1]} of {path}") from None
            yield torch.stack([archive.read_state("background", c) for c in part]), x


def count_pairs(cfg: ExperimentConfig, split: str, archives: Sequence[Path]) -> dict[str, int]:
    """Cycles of `split` per archive (path -> count), for provenance and clear errors."""
    counts = {}
    for path in archives:
        archive = Archive.open(path)
        check_archive(archive, cfg)
        counts[str(path)] = len(split_cycles(archive, cfg, split))
    return counts
