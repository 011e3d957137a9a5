"""Long checks (run with `pytest -m slow`): the README's main job, 60 days of T21 on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from align_da_ops.data.nature_run import open_nature_run
from align_da_ops.data.plausibility import check_report, climate_report

from factories import REPO

pytestmark = pytest.mark.slow


def test_readme_main_job_gives_a_plausible_60_day_climate(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "align_da_ops.cli", "nature-run", str(REPO / "config" / "tiny.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr
    ds = open_nature_run(tmp_path / "data" / "tiny" / "nature.zarr")
    assert ds.sizes["time"] == 240  # 60 days, 6-hourly
    report = climate_report(ds)
    assert check_report(report) == [], report
