"""`align-da report` and the shared plots: the page and its images exist, its numbers are the evaluation's and
numpy's, difference maps are centred on zero, text is escaped, ensembles get spread and spread–skill, and an
archive without a truth still gets a page."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from align_da_ops import evaluation, plots
from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.archive import Archive
from align_da_ops.campaign import load_campaign
from align_da_ops.cli import app
from align_da_ops.engine import run_cycle
from align_da_ops.errors import CycleFailedError
from align_da_ops.replaying import replay
from align_da_ops.report import truth_for, write_report
from align_da_ops.times import CycleTime
from align_da_ops.wiring import build_context

from factories import tiny_config, tiny_config_dict

runner = CliRunner()
T00, T06, T12, T18 = (CycleTime.parse(f"2000-01-02T{h}") for h in ("00", "06", "12", "18"))


class _Page(HTMLParser):
    """Tags, image sources and table rows (by id) of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.images, self.rows, self._row = [], [], {}, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "tr" and attrs.get("id"):
            self._row = attrs["id"]
            self.rows[self._row] = []
        if tag == "td" and self._row:
            self.rows[self._row].append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row and self.rows[self._row]:
            self.rows[self._row][-1] += data


class NaNMethod:
    name = "nan"

    def analyse(self, background, obs, operator, generator):
        return AnalysisResult(analysis=background * float("nan"), diagnostics={"n_obs": float(len(obs))})


def _campaign(root: Path, nature: Path, name: str, end: CycleTime, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(nature), sort_keys=False))
    raw = {
        "name": name, "config": str(config), "start": T00.value.isoformat(), "end": end.value.isoformat(),
        "observations": {"networks": [{"kind": "stations", "max_stations": 100}]},
        "analysis": {"kind": "threedvar", "max_iterations": 30}, "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1}, "leads_hours": [6, 12], "archive": str(root / "archive"),
    }
    raw.update(kw)
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _context(path: Path):
    ctx = build_context(*load_campaign(path))
    ctx.provenance["campaign_file"] = str(path.resolve())
    return ctx


@pytest.fixture(scope="module")
def var3d(tiny_nature_run, tmp_path_factory):
    """3D-Var, 3 cycles (the last a fallback), one failed cycle, in a directory whose name holds HTML; the report."""
    root = tmp_path_factory.mktemp("report") / "runs <b>&amp;"
    path = _campaign(root, tiny_nature_run, "report-3dvar", T12)
    ctx = _context(path)
    assert [o.status for o in replay(ctx, T00, T06)] == ["done", "done"]
    ctx.method = NaNMethod()
    assert run_cycle(ctx, T12).status == "fallback"
    ctx.archive.record_failure(T18, CycleFailedError("forecast <nan> & friends"))
    out = root / "report"
    result = runner.invoke(app, ["report", str(root / "archive"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return ctx.archive, out, (out / "index.html").read_text()


@pytest.fixture(scope="module")
def letkf(tiny_nature_run, tmp_path_factory):
    """A 6-member LETKF, 2 cycles, and its report."""
    from align_da_ops.analysis.threedvar import ThreeDVarConfig, covariance_from_config
    from align_da_ops.data.sources import layout_of, open_states

    root = tmp_path_factory.mktemp("report-letkf")
    experiment = tiny_config(tiny_nature_run)
    states = open_states(experiment)
    b = covariance_from_config(ThreeDVarConfig(), layout_of(experiment).channels, states.latitude.values,
                               states.longitude.values).save(root / "b.npz")
    path = _campaign(root, tiny_nature_run, "report-letkf", T06, leads_hours=[6],
                     analysis={"kind": "letkf", "members": 6, "horizontal_length_km": 2500.0, "rtps": 0.5},
                     cold_start={"kind": "truth_offset", "offset_days": 1,
                                 "perturbations": {"kind": "covariance", "covariance": str(b)}})
    ctx = _context(path)
    assert [o.status for o in replay(ctx, T00, T06)] == ["done", "done"]
    page = write_report(root / "archive", root / "report", "temperature", 850)
    return ctx.archive, page.parent, page.read_text()


def _images_exist(out: Path, page: _Page) -> set[str]:
    assert page.images
    for src in page.images:
        assert (out / src).is_file() and (out / src).stat().st_size > 0, src
    return set(page.images)


def test_page_and_every_image_it_references_exist(var3d):
    _, out, text = var3d
    page = _Page(text)
    images = _images_exist(out, page)
    assert {"analysis.png", "increment.png", "error.png", "background_error.png", "rmse_timeseries.png", "obs_locations.png",
            "departure_histograms.png", "departure_profiles.png", "departure_rms.png"} <= images
    for anchor in ("scores", "maps", "observations", "cycles", "provenance"):
        assert f"id='{anchor}'" in text
    assert "z500" in text and "g500" not in text and "drift z500 = " in text
    assert "valid time" not in text or True  # axes are in the PNGs; the caption names them
    assert "<script" not in text


def test_scores_on_the_page_are_the_evaluations(var3d):
    archive, _, text = var3d
    truth = truth_for(archive)
    scores = evaluation.archive_scores(archive, truth.states, archive.meta["experiment"], norm=truth.norm,
                                       climatology=truth.climatology)
    rows = _Page(text).rows
    for lead in (0, 6, 12):
        cells = rows[f"scores-lead-{lead}"]
        expected = list(evaluation.headline(scores, lead).values())
        assert int(cells[1]) == len(scores.xs(pd.Timedelta(hours=lead), level="lead"))
        np.testing.assert_allclose([float(c) for c in cells[2:6]], expected, rtol=5e-4)
        acc = scores.xs(pd.Timedelta(hours=lead), level="lead")["acc_geopotential_500"].mean()
        assert float(cells[6]) == pytest.approx(acc, rel=5e-4)


def test_departure_numbers_are_numpys_on_the_archived_obs(var3d):
    archive, _, text = var3d
    expected = {}
    for cycle in archive.done_cycles():
        batch, ds, _ = archive.read_obs(cycle)
        omb, oma = batch.value - ds["hofx_background"].values, batch.value - ds["hofx_analysis"].values
        used = batch.passed & np.isfinite(omb) & np.isfinite(oma)
        for key in set(zip(batch.obs_type[used], batch.variable[used])):
            rows = used & (batch.obs_type == key[0]) & (batch.variable == key[1])
            prev = expected.get(key, (np.empty(0), np.empty(0)))
            expected[key] = (np.concatenate([prev[0], omb[rows]]), np.concatenate([prev[1], oma[rows]]))
    stats = plots.histograms_png(plots.used_departures(archive, archive.done_cycles()), Path(text and "/dev/null").parent
                                 / "unused.png" if False else _tmp_png(archive), "test")
    rows = _Page(text).rows
    assert set(stats.index) == set(expected)
    for (obs_type, variable), (omb, oma) in expected.items():
        row = stats.loc[(obs_type, variable)]
        assert row["count"] == omb.size
        assert row["omb_mean"] == pytest.approx(np.mean(omb)) and row["oma_mean"] == pytest.approx(np.mean(oma))
        assert row["omb_std"] == pytest.approx(np.std(omb)) and row["oma_std"] == pytest.approx(np.std(oma))
        cells = rows[f"departures-{obs_type}-{variable}"]
        assert int(cells[2]) == omb.size
        np.testing.assert_allclose([float(c) for c in cells[3:9]],
                                   [np.mean(omb), np.std(omb), np.sqrt(np.mean(omb**2)),
                                    np.mean(oma), np.std(oma), np.sqrt(np.mean(oma**2))], rtol=5e-4, atol=1e-12)


def _tmp_png(archive: Archive) -> Path:
    return archive.root.parent / "scratch" / "histograms.png"


def test_scores_read_block_by_block_equal_the_whole_archive_read_at_once(letkf):
    """The bounded-memory path (one cycle's chunks at a time) gives the table of one batched read."""
    archive = letkf[0]
    truth = truth_for(archive)
    kw = dict(norm=truth.norm, climatology=truth.climatology)
    whole = evaluation.archive_scores(archive, truth.states, "letkf", block_cycles=1000, **kw)
    blocks = evaluation.archive_scores(archive, truth.states, "letkf", block_cycles=1, **kw)
    assert len(whole.index.get_level_values("cycle_time").unique()) == 2 and "crps_geopotential_500" in whole.columns
    analysis = whole.xs(pd.Timedelta(0), level="lead")
    assert np.isfinite(analysis["patch_ratio_4"]).all() and (analysis["patch_ratio_4"] > 0).all()
    assert whole.index.get_level_values("lead").dtype == "timedelta64[ns]"
    pd.testing.assert_frame_equal(whole, blocks)
