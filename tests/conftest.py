"""Shared fixtures: a short nature run made once per test session, real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from factories import DATA, tiny_config


@pytest.fixture(scope="session")
def tiny_nature_run(tmp_path_factory) -> Path:
    """A 2-day, 1-member T21 nature run from the shipped spun-up state (a few seconds)."""
    from align_da_ops.data.nature_run import generate

    out = tmp_path_factory.mktemp("nature") / "nature.zarr"
    return generate(tiny_config(out))


@pytest.fixture(scope="session")
def era5_grib() -> Path:
    return DATA / "era5-levels-members.grib"
