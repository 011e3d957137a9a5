"""Ensemble cycling (LETKF): every member advanced by the forecast model, members/mean/spread archived,
perturbed cold start, kill -9 resume bitwise, fallback keeps the ensemble."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.campaign import CampaignConfig
from align_da_ops.engine import run_cycle
from align_da_ops.errors import CycleFailedError
from align_da_ops.forecast.base import rollout
from align_da_ops.replaying import replay
from align_da_ops.wiring import build_context

from test_engine import END, START, campaign_dict, world  # noqa: F401  (module fixture)

K = 4
LETKF = {"kind": "letkf", "members": K, "horizontal_length_km": 2500.0, "vertical_length_lnp": 1.0, "rtps": 0.5}


def b_file(world) -> str:  # noqa: F811
    """A parametric B on the world's grid (the 2-day nature run has too few training states for
    climatological perturbations)."""
    from align_da_ops.analysis.threedvar import ThreeDVarConfig, covariance_from_config
    from align_da_ops.data.sources import layout_of, open_states

    path = world[0] / "b-cold-start.npz"
    if not path.exists():
        states = open_states(world[2])
        cov = covariance_from_config(ThreeDVarConfig(), layout_of(world[2]).channels, states.latitude.values, states.longitude.values)
        cov.save(path)
    return str(path)


def letkf_campaign(world, name: str, **kw) -> dict:  # noqa: F811
    root, config, _ = world
    cold = {"kind": "truth_offset", "offset_days": 1, "perturbations": {"kind": "covariance", "covariance": b_file(world)}}
    raw = campaign_dict(root / name, config, analysis=LETKF, forecast_model={"kind": "neural"}, cold_start=cold)
    raw.update(kw)
    return raw


def make(world, name: str, **kw):  # noqa: F811
    return build_context(CampaignConfig.model_validate(letkf_campaign(world, name, **kw)), world[2])


@pytest.fixture(scope="module")
def cycled(world):  # noqa: F811
    ctx = make(world, "letkf-reference")
    assert [o.status for o in replay(ctx, START, END)] == ["done", "done"]
    return ctx


def test_members_mean_and_spread_are_archived_and_the_mean_is_verified(cycled):
    archive = cycled.archive
    assert archive.n_members == K and archive.ensemble
    for cycle in (START, END):
        members = archive.read_state("members", cycle)
        assert members.shape == (K, *archive.read_state("analysis", cycle).shape)
        torch.testing.assert_close(archive.read_state("analysis", cycle), members.mean(0), rtol=1e-6, atol=1e-3)
        torch.testing.assert_close(archive.read_state("spread", cycle), members.std(0), rtol=1e-5, atol=1e-3)
        assert float(members.std(0).mean()) > 0
    prov = archive.provenance(END)
    assert prov["analysis_method"] == "letkf" and prov["diagnostics"]["local_obs_mean"] > 0
    assert prov["diagnostics"]["spread_analysis"] < prov["diagnostics"]["spread_background"]


def test_background_members_are_the_previous_members_advanced_by_the_model(cycled):
    archive = cycled.archive
    advanced = rollout(cycled.model, archive.read_state("members", START), [6])[6]
    # the archived background is the mean of the advanced members (not the forecast of the mean)
    torch.testing.assert_close(archive.read_state("background", END), advanced.mean(0), rtol=0, atol=1e-6 * 1e5)
    assert not torch.equal(archive.read_state("background", END), archive.read_state("forecast", START, lead=6))


def test_cold_start_is_the_offset_truth_plus_centred_seeded_perturbations(cycled, world):  # noqa: F811
    x0 = cycled.initial_state()
    background = cycled.archive.read_state("background", START)
    torch.testing.assert_close(background, x0, rtol=1e-6, atol=1e-2)  # centred perturbations
    again = make(world, "letkf-cold-again")
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    a = again.initial_ensemble(gens)
    b = again.initial_ensemble([torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float((a - x0).std(0).mean()) > 0


def test_covariance_perturbations_have_b_variances(world, tmp_path):  # noqa: F811
    from align_da_ops.analysis.covariance import SpectralCovariance
    from align_da_ops.data.sources import layout_of

    ctx = make(world, "letkf-bfile")
    layout = layout_of(world[2])
    cov = SpectralCovariance.gaussian(layout.channels, ctx.latitudes, ctx.longitudes, np.ones(layout.n_channels), 1.0e6)
    path = cov.save(tmp_path / "b.npz")
    cold = {"kind": "truth_offset", "offset_days": 1, "perturbations": {"kind": "covariance", "covariance": str(path), "scale": 2.0}}
    ctx = make(world, "letkf-bfile", cold_start=cold)
    perts = ctx.initial_ensemble([torch.Generator().manual_seed(s) for s in range(16)]) - ctx.initial_state()
    assert abs(float(perts.std(0).mean()) - 2.0) < 0.3  # unit B variances, scale 2


def test_climatological_perturbations_need_more_training_states_than_members(world):  # noqa: F811
    from align_da_ops.errors import InputDataError

    ctx = make(world, "letkf-clim", cold_start={"kind": "truth_offset", "offset_days": 1, "perturbations": {"kind": "climatological"}})
    with pytest.raises(InputDataError, match="more training-split states than members"):
        ctx.initial_ensemble([torch.Generator().manual_seed(s) for s in range(K)])
    one = ctx.initial_ensemble([torch.Generator().manual_seed(0)]) - ctx.initial_state()  # 2 states, 1 member: ok
    assert one.shape[0] == 1


KILLER = textwrap.dedent(
    """
    import os, signal, sys, yaml
    from align_da_ops import archive, wiring
    from align_da_ops.analysis import letkf
    from align_da_ops.campaign import CampaignConfig
    from align_da_ops.config import load_config
    from align_da_ops.replaying import replay
    from align_da_ops.times import CycleTime
    stage, campaign_file, config_file, threads = sys.argv[1:5]
    import torch
    torch.set_num_threads(int(threads))  # as the parent: float sums depend on the thread count
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "analysis":
        run = letkf.LETKF.analyse_members
        def analyse(self, members, *a, **k):
            if calls.append(1) or len(calls) == 2:
                die()
            return run(self, members, *a, **k)
        calls = []
        letkf.LETKF.analyse_members = analyse
    else:
        write = archive.Archive._write_product
        def write_product(self, product, *a, **k):
            if product == "members" and (calls.append(1) or len(calls) == 2):
                die()
            return write(self, product, *a, **k)
        calls = []
        archive.Archive._write_product = write_product
    campaign = CampaignConfig.model_validate(yaml.safe_load(open(campaign_file)))
    ctx = wiring.build_context(campaign, load_config(config_file))
    replay(ctx, campaign.first, campaign.last)
    """
)


@pytest.mark.parametrize("stage", ["analysis", "members_write"])
def test_kill_9_then_resume_is_bitwise(cycled, world, stage, tmp_path):  # noqa: F811
    raw = letkf_campaign(world, f"letkf-killed-{stage}")
    campaign_file = tmp_path / "campaign.yaml"
    campaign_file.write_text(yaml.safe_dump(raw))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), stage, str(campaign_file), str(world[1]), str(torch.get_num_threads())], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ctx = build_context(CampaignConfig.model_validate(raw), world[2])
    assert ctx.archive.done_cycles() == [START]
    assert [o.status for o in replay(ctx, START, END)] == ["skipped", "done"]
    for product in ("background", "analysis", "spread", "members", "forecast"):
        a, b = cycled.archive.open_product(product).load(), ctx.archive.open_product(product).load()
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{product}/{name}")


class NaNEnsemble:
    name = "nan"
    members = K

    def analyse_members(self, members, obs, operator, generators):
        return AnalysisResult(analysis=members.mean(0), members=members * float("nan"), diagnostics={"n_obs": float(len(obs))})


def test_non_finite_members_fall_back_to_the_background_ensemble_or_fail(world):  # noqa: F811
    ctx = make(world, "letkf-nan")
    ctx.method = NaNEnsemble()
    assert run_cycle(ctx, START).status == "fallback"
    members = ctx.archive.read_state("members", START)
    assert torch.isfinite(members).all() and float(members.std(0).mean()) > 0  # the ensemble survives
    assert "members have NaN" in ctx.archive.provenance(START)["fallback_reason"]
    strict = make(world, "letkf-nan-strict", on_failure="fail")
    strict.method = NaNEnsemble()
    with pytest.raises(CycleFailedError, match="members have NaN"):
        run_cycle(strict, START)
    assert strict.archive.done_cycles() == []
