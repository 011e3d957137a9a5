"""The Geo-Score's truth-free reference: the nature run's climatological geostrophic imbalance.

Geo-Score rewards a candidate whose geostrophic imbalance D is close to a reference D_ref
(`rewards.geo_score`). Against the truth's D at the candidate's time the physics reward needs the
truth; against the climatological D_ref it needs only the nature run's long-term balance, computed
once: D_ref = the mean over states of `rewards.geostrophic_imbalance` (the score's own levels,
latitude band and polar rows, so one scalar as the score uses it).

`climatological_imbalance(cfg)` takes that mean over the truth states of the experiment's train
split, on every trajectory the split reads (`splits.train.members`, else `data.member`); never a
validation or test time.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.align.rewards import geostrophic_imbalance
from align_da_ops.errors import InputDataError


def mean_imbalance(blocks: Iterable[torch.Tensor], layout, latitudes, longitudes) -> float:
    """Mean of the per-state geostrophic imbalance over states given in blocks (n, C, lat, lon), float64."""
    total, count = 0.0, 0
    for block in blocks:
        d = geostrophic_imbalance(block, layout, latitudes, longitudes)
        total += float(d.sum())
        count += d.numel()
    if count == 0:
        raise InputDataError("no states to take the climatological geostrophic imbalance over")
    return total / count


def train_states(cfg, block: int = 32):
    """The train split's truth states, (n <= block, C, lat, lon) physical float32, trajectory by trajectory."""
    from align_da_ops.data.sources import layout_of, open_states

    layout, period = layout_of(cfg), cfg.splits.train
    for member in period.members or (None,):
        states = open_states(cfg, member).sel({grid.TIME: slice(period.start, period.end)})
        times = states[grid.TIME].values
        for a in range(0, len(times), block):
            yield layout.to_tensor(states.sel({grid.TIME: times[a : a + block]}).load())[0]


def climatological_imbalance(cfg, block: int = 32) -> float:
    """D_ref: the mean geostrophic imbalance of the train split's truth states (see the module doc)."""
    from align_da_ops.data.sources import layout_of, open_states

    coords = open_states(cfg)
    lat, lon = np.asarray(coords[grid.LAT].values), np.asarray(coords[grid.LON].values)
    return mean_imbalance(train_states(cfg, block), layout_of(cfg), lat, lon)
