"""Small factories for observation tests (importable as `obs_factories`, like tests/factories.py)."""

from __future__ import annotations

import numpy as np

from align_da_ops.obs.batch import ObsBatch

LEVELS = (200, 300, 500, 700, 850, 1000)


def make_batch(lat, lon, variable, pressure=None, value=None, **kw) -> ObsBatch:
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    n = len(lat)
    pressure = np.full(n, np.nan) if pressure is None else np.broadcast_to(np.asarray(pressure, float), (n,))
    value = np.zeros(n) if value is None else np.broadcast_to(np.asarray(value, float), (n,))
    cols = dict(
        latitude=lat,
        longitude=np.broadcast_to(np.asarray(lon, float), (n,)),
        pressure=pressure,
        time=kw.pop("time", np.full(n, np.datetime64("2000-01-01T00:00:00", "s"))),
        variable=np.broadcast_to(np.asarray(variable), (n,)),
        value=value,
        error=kw.pop("error", np.ones(n)),
        obs_type=kw.pop("obs_type", "test"),
        station=kw.pop("station", np.asarray([f"s{i}" for i in range(n)])),
    )
    cols.update(kw)
    return ObsBatch.from_columns(**cols)
