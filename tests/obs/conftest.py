"""Fixtures for observation tests: the OSSE layout and a small grid."""

from __future__ import annotations

import numpy as np
import pytest
from obs_factories import LEVELS

from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes


@pytest.fixture
def layout() -> StateLayout:
    """The OSSE layout: z, t, u, v on 6 levels plus surface pressure."""
    return StateLayout(
        ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"), ("surface_pressure",), LEVELS
    )


@pytest.fixture
def small_grid() -> tuple[np.ndarray, np.ndarray]:
    """An 8 x 16 Gaussian grid (no poles)."""
    return gaussian_latitudes(8), longitudes(16)
