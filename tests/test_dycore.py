"""The Held–Suarez core: closed-form forcing, determinism, exact restart round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore
from align_da_ops.data.held_suarez import HeldSuarezForcing
from align_da_ops.data.restarts import SHIPPED_DIR, find_spun_up, load_restart, restart_filename, save_restart
from align_da_ops.errors import InputDataError


@pytest.fixture(scope="module")
def core():
    return HeldSuarezCore(CoreSpec(21, 8), dt_minutes=60)


def test_equilibrium_temperature_closed_form(core):
    forcing = HeldSuarezForcing(core.coords, core.physics, torch.as_tensor(core.t_ref))
    ps = torch.full((1, 64, 32), core._nondim(1.0e5, "pascal"))
    t_eq = core._dim(forcing.equilibrium_temperature(ps), "degK")[..., 0, :]  # (level, lat) at lon 0
    sigma = core.sigma_centers[:, None]
    lat = np.deg2rad(core.latitudes)[None, :]
    kappa = 2.0 / 7.0
    expected = np.maximum(200.0, sigma**kappa * (315.0 - 60.0 * np.sin(lat) ** 2 - 10.0 * np.log(sigma) * np.cos(lat) ** 2))
    np.testing.assert_allclose(t_eq.numpy(), expected, rtol=2e-3)


def test_friction_only_in_boundary_layer(core):
    forcing = HeldSuarezForcing(core.coords, core.physics, torch.as_tensor(core.t_ref))
    k_v = forcing.k_v.flatten().numpy()
    sigma = core.sigma_centers
    assert np.all(k_v[sigma <= 0.7] == 0) and np.all(k_v[sigma > 0.7] > 0)
    assert np.all(np.diff(k_v) >= 0)


def test_advance_is_deterministic_and_finite(core):
    state, _ = load_restart(SHIPPED_DIR / restart_filename(core.spec.signature()), core)
    a = core.advance(state, 6)
    b = core.advance(state, 6)
    for name, value in core.to_arrays(a).items():
        np.testing.assert_array_equal(value, core.to_arrays(b)[name])
        assert np.isfinite(value).all()


def test_restart_round_trip_is_exact(core, tmp_path):
    state = core.rest_state(seed=3, members=2)
    save_restart(tmp_path / "r.npz", core, state, spinup_days=0.0)
    back, meta = load_restart(tmp_path / "r.npz", core)
    assert meta["spinup_days"] == 0.0
    for name, value in core.to_arrays(state).items():
        np.testing.assert_array_equal(core.to_arrays(back)[name], value)


def test_restart_for_another_core_is_refused(core, tmp_path):
    other = HeldSuarezCore(CoreSpec(21, 4), dt_minutes=60)
    save_restart(tmp_path / "r.npz", other, other.rest_state(seed=0))
    with pytest.raises(InputDataError, match="made for core 'held_suarez-T21-L4"):
        load_restart(tmp_path / "r.npz", core)


def test_corrupt_restart_is_a_clear_error(core, tmp_path):
    (tmp_path / "r.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(InputDataError, match="cannot read restart state"):
        load_restart(tmp_path / "r.npz", core)


def test_spin_up_when_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_DA_CACHE", str(tmp_path))
    small = HeldSuarezCore(CoreSpec(21, 4), dt_minutes=60)  # no shipped state for L4
    state, meta = find_spun_up(small, None, spinup_days=1, seed=0)
    cached = tmp_path / "restarts" / restart_filename(small.spec.signature())
    assert cached.exists() and meta["spinup_days"] == 1
    again, _ = find_spun_up(small, None, spinup_days=1, seed=0)  # now read from the cache
    np.testing.assert_array_equal(small.to_arrays(again)["vorticity"], small.to_arrays(state)["vorticity"])


def test_sigma_fields_units_and_shapes(core):
    state, _ = load_restart(SHIPPED_DIR / restart_filename(core.spec.signature()), core)
    f = core.sigma_fields(state)
    assert f["t"].shape == (1, 8, 32, 64)
    assert 180 < float(f["t"].min()) and float(f["t"].max()) < 320
    assert 9.0e4 < float(f["ps"].mean()) < 1.1e5
    # hydrostatic: geopotential decreases downward (pressure increases)
    assert torch.all(f["z"][:, 1:] < f["z"][:, :-1])


def test_unsupported_truncation():
    with pytest.raises(ValueError, match="T30"):
        HeldSuarezCore(CoreSpec(30, 8), dt_minutes=60)
