"""Log-pressure interpolation: exact on profiles linear in ln p (inside and outside), differentiable."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from align_da_ops.vertical import interp_log_pressure


def _columns(n_lev: int, n_col: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ps = 9.0e4 + 2.0e4 * torch.rand(n_col, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.05, 0.95, n_lev, dtype=torch.float64)
    return sigma[:, None] * ps[None, :]  # (level, column), increasing along level


@given(
    n_lev=st.integers(2, 12),
    a=st.floats(-100, 100),
    b=st.floats(-50, 50),
    seed=st.integers(0, 1000),
)
@settings(max_examples=40, deadline=None)
def test_exact_for_linear_in_log_pressure(n_lev, a, b, seed):
    p = _columns(n_lev, 7, seed)
    values = a + b * torch.log(p)
    targets = torch.tensor([1.0e3, 2.0e4, 5.0e4, 8.5e4, 1.0e5, 1.05e5], dtype=torch.float64)  # incl. extrapolation
    out = interp_log_pressure(values, p, targets, dim=0)
    expected = a + b * torch.log(targets)[:, None].expand(-1, 7)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-8)


def test_returns_source_values_at_source_levels_and_keeps_batch_dims():
    p = _columns(5, 6, 0).T.reshape(2, 3, 5).permute(0, 2, 1)  # (batch, level, col)
    values = torch.randn_like(p)
    out = interp_log_pressure(values, p[..., :], p[0, :, 0], dim=1)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out[0, :, 0], values[0, :, 0])


def test_gradcheck():
    p = _columns(4, 3, 1)
    values = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([3.0e4, 7.0e4, 1.0e5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: interp_log_pressure(v, p, targets, dim=0), (values,))


def test_shape_errors():
    import pytest

    with pytest.raises(ValueError, match="shapes differ"):
        interp_log_pressure(torch.zeros(3, 2), torch.ones(3, 3), torch.tensor([1.0]), dim=0)
    with pytest.raises(ValueError, match="at least 2"):
        interp_log_pressure(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([1.0]), dim=0)


def test_per_column_targets_match_shared_targets():
    p = _columns(6, 5, 2)  # (level, column)
    values = torch.randn_like(p)
    shared = torch.tensor([2.0e4, 6.0e4, 9.0e4], dtype=torch.float64)
    per_col = shared[:, None].expand(-1, 5)
    torch.testing.assert_close(
        interp_log_pressure(values, p, per_col, dim=0), interp_log_pressure(values, p, shared, dim=0)
    )
