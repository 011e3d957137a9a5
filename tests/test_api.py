"""The Python API: a notebook's cycle, archive and status from `import align_da_ops as ada`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

import align_da_ops as ada
from align_da_ops.times import CycleTime

from factories import tiny_config_dict


def assert_cf_readable(tree, grid_store):
    """cf-xarray finds the axes and standard names; plain xarray opens every group from the consolidated root."""
    import cf_xarray  # noqa: F401  (registers the .cf accessor)
    import xarray as xr

    analysis = tree["analysis"].to_dataset()
    assert analysis.attrs["Conventions"].startswith("CF-")
    axes = analysis.cf.axes
    assert axes["X"] == ["longitude"] and axes["Y"] == ["latitude"] and axes["Z"] == ["level"] and axes["T"] == ["time"]
    names = analysis.cf.standard_names
    assert names["air_temperature"] == ["temperature"] and names["geopotential"] == ["geopotential"]
    assert names["eastward_wind"] == ["u_component_of_wind"]
    assert analysis.cf["air_temperature"].attrs["units"] == "K"
    assert tree["forecast"].to_dataset().cf.standard_names["forecast_period"] == ["prediction_timedelta"]
    for name, da in analysis.variables.items():
        assert "long_name" in da.attrs, name
    plain = xr.open_datatree(grid_store, engine="zarr")  # consolidated metadata: one read of the root
    assert {"analysis", "background", "forecast"} <= set(plain.children)
    assert plain["analysis"].sizes["time"] >= analysis.sizes["time"]


def test_import_stays_light():
    code = "import sys, align_da_ops; assert 'torch' not in sys.modules and 'xarray' not in sys.modules; print(align_da_ops.__all__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "open_archive" in proc.stdout


def test_api_names_survive_importing_every_submodule():
    """A submodule named like an API function would replace it on the package once imported."""
    code = (
        "import importlib, pkgutil, align_da_ops\n"
        "for m in pkgutil.walk_packages(align_da_ops.__path__, 'align_da_ops.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [n for n in align_da_ops.API if not callable(getattr(align_da_ops, n))]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_notebook_cycles_reads_and_plots_z500(tiny_nature_run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump({
        "name": "api-test", "config": str(config), "start": "2000-01-02T00:00:00", "end": "2000-01-02T12:00:00",
        "observations": {"networks": [{"kind": "stations", "max_stations": 100}]},
        "analysis": {"kind": "threedvar", "max_iterations": 30}, "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1}, "leads_hours": [6, 12], "archive": str(tmp_path / "archive"),
    }))
    ctx = ada.open_campaign(campaign, overrides=["seed=3"])
    assert ctx.campaign.seed == 3
    outcomes = ada.replay(ctx, end="2000010206")
    assert [o.status for o in outcomes] == ["done", "done"]
    assert ada.run_cycle(ctx, "2000-01-02T06").status == "skipped"
    tree = ada.open_archive(ctx.archive.root)
    assert {"analysis", "background", "forecast"} <= set(tree.children)
    analysis = tree["analysis"].to_dataset()
    assert analysis["done"].values.tolist() == [True, True]
    z500 = analysis["geopotential"].sel(level=500, time="2000-01-02T06")
    expected = ctx.archive.read_state("analysis", CycleTime.parse("2000-01-02T06"))
    channel = ctx.archive.layout.channels.index("geopotential_500")
    np.testing.assert_array_equal(z500.values, expected[channel].numpy())
    forecast = tree["forecast"].to_dataset()
    assert list(forecast["prediction_timedelta"].values) == [np.timedelta64(6, "h"), np.timedelta64(12, "h")]
    valid = forecast["valid_time"].sel(time="2000-01-02T06").values
    assert list(valid) == [np.datetime64("2000-01-02T12"), np.datetime64("2000-01-02T18")]
    assert_cf_readable(tree, ctx.archive.grid_store)
    obs = tree["observations/2000010206"]  # the cycle's IODA v3 file, group by group
    assert {"MetaData", "ObsValue", "PreQC", "EffectiveQC", "hofx0", "hofx1", "ombg", "oman"} <= set(obs.children)
    t = "airTemperature"
    np.testing.assert_allclose(obs["ombg"][t].values, obs["ObsValue"][t].values - obs["hofx0"][t].values, equal_nan=True)
    z500.plot()
    matplotlib.pyplot.savefig(tmp_path / "z500.png")
    assert (tmp_path / "z500.png").stat().st_size > 0
    report = ada.status(campaign)
    assert report["health"] == "behind" and report["counts"]["done"] == 2
    with pytest.raises(ValueError, match="6-hourly"):
        ada.cycle_time("2000-01-02T03")
