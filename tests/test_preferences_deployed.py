"""Preference data as deployed (issue 13 item 4): DPS candidates with each archived cycle's observations on the
cycled backgrounds of the train split, and Geo-Score against the nature run's climatological imbalance."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from align_da_ops import grid
from align_da_ops.align import preferences as prefs
from align_da_ops.align.climatology import climatological_imbalance
from align_da_ops.align.rewards import geo_score, geostrophic_imbalance, score_samples
from align_da_ops.archive import Archive
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion.guidance import ObservationTerm
from align_da_ops.errors import InputDataError
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator
from align_da_ops.times import CycleTime

from factories import persistence_archive

TRAIN = ["2000-01-01T06", "2000-01-01T12"]  # 01T18's forecast-reward truth (+6 h) is validation's 02T00
SMALL = {"variant": "p", "samples": 6, "top_k": 2, "steps": 3, "lead_hours": 6, "forecast_hours": 6}


@pytest.fixture(scope="module")
def cycled(tiny_nature_run, tmp_path_factory):
    """A persistence, background-only archive with a 1 % random mask cycled over every split of the 2-day run."""
    return persistence_archive(tiny_nature_run, tmp_path_factory.mktemp("deployed"), "deployed-preferences")


@pytest.fixture(scope="module")
def models(latent_models):
    _, root, ae, forecast, prior_path = latent_models
    return ae, forecast, prior_io.load_prior(prior_path, ae.content_hash), prior_path, root / "autoencoder.pt"


def _grid(cfg):
    states = open_states(cfg)
    return states[grid.LAT].values, states[grid.LON].values


def test_archive_cases_are_the_train_cycles_with_their_used_observations(cycled):
    cfg, _, path = cycled
    archive, layout, truth = Archive.open(path), layout_of(cfg), open_states(cfg)
    assert len(archive.done_cycles()) == 7  # 01T06..02T18: validation and test cycles are archived too
    dps = prefs.PreferenceSettings(**SMALL, guidance="dps")
    cases = list(prefs.archive_cases(cfg, [path], dps))
    assert [str(c.time)[:13] for c in cases] == TRAIN
    for case in cases:
        cycle = CycleTime.parse(str(case.time)[:13])
        batch = archive.read_obs(cycle)[0]
        assert 0 < len(case.obs) == int(batch.passed.sum())
        np.testing.assert_array_equal(case.obs.value, batch.value[batch.passed])
        assert torch.equal(case.background, archive.read_state("background", cycle))
        assert torch.equal(case.truth, layout.to_tensor(truth.sel({grid.TIME: case.time}).load())[0])
    # unguided cases carry no observations; a repeated archive gives its cases again
    free = list(prefs.archive_cases(cfg, [path, path], dataclasses.replace(dps, guidance="obs_free")))
    assert [str(c.time)[:13] for c in free] == TRAIN * 2 and all(c.obs is None for c in free)
    # training on other trajectories: the archive's trajectory (member 0) is not train data
    train = cfg.splits.train.model_copy(update={"members": (1,)})
    moved = cfg.model_copy(update={"splits": cfg.splits.model_copy(update={"train": train})})
    assert list(prefs.archive_cases(moved, [path], dps)) == []


def test_dps_candidates_without_observations_are_the_unguided_ones_bit_for_bit(cycled, models, one_thread):
    cfg, _, path = cycled
    ae, forecast, prior, _, _ = models
    lat, lon = _grid(cfg)
    dps = prefs.PreferenceSettings(**SMALL, guidance="dps")
    case = dataclasses.replace(next(prefs.archive_cases(cfg, [path], dps)), obs=ObsBatch.empty())
    interp = GridInterpolator(layout_of(cfg), lat, lon)
    guided = prefs.candidates(case, ae, prior, forecast, dps, interp)
    free = prefs.candidates(case, ae, prior, forecast, dataclasses.replace(dps, guidance="obs_free"))
    for a, b in zip(guided, free):
        assert torch.equal(a, b)


def test_dps_candidates_fit_the_cycle_observations_better_than_unguided_ones(cycled, models, one_thread):
    cfg, _, path = cycled
    ae, forecast, prior, _, _ = models
    lat, lon = _grid(cfg)
    dps = prefs.PreferenceSettings(**SMALL, guidance="dps")
    case = next(prefs.archive_cases(cfg, [path], dps))
    interp = GridInterpolator(layout_of(cfg), lat, lon)
    term = ObservationTerm.build(interp.prepare(case.obs), case.obs.value, case.obs.error, ae.normalization.std)

    def misfit(x):  # (N,) RMS of the normalised departures y - H(x)
        return ((term.value - term.operator(x).float()) / term.scale).pow(2).mean(-1).sqrt()

    free = misfit(prefs.candidates(case, ae, prior, forecast, dataclasses.replace(dps, guidance="obs_free"))[2])
    guided = misfit(prefs.candidates(case, ae, prior, forecast, dps, interp)[2])
    harder = misfit(prefs.candidates(case, ae, prior, forecast, dataclasses.replace(dps, strength=10.0), interp)[2])
    # candidate by candidate (same noise), and more so the harder DPS pulls (the 1-epoch autoencoder's
    # reconstruction error dominates the misfit, so the gains are small but strict)
    assert torch.all(guided < free) and torch.all(harder < guided)
    assert float(harder.mean()) < 0.98 * float(free.mean())
    with pytest.raises(InputDataError, match="need the cycle's observations"):
        prefs.candidates(dataclasses.replace(case, obs=None), ae, prior, forecast, dps, interp)


def test_climatological_reference_is_the_mean_imbalance_of_the_train_truth_states(cycled):
    cfg, _, _ = cycled
    layout, states = layout_of(cfg), open_states(cfg)
    lat, lon = _grid(cfg)
    train = states.sel({grid.TIME: slice(cfg.splits.train.start, cfg.splits.train.end)})
    assert train.sizes[grid.TIME] == 4
    direct = [float(geostrophic_imbalance(layout.to_tensor(train.isel({grid.TIME: i}).load())[0], layout, lat, lon))
              for i in range(4)]
    d_ref = climatological_imbalance(cfg, block=3)  # blocks of 3 and 1: block boundaries do not matter
    assert d_ref == pytest.approx(float(np.mean(direct)), rel=1e-12)
    # Geo-Score against it is 2 sigma(-|D - D_ref|) whatever the truth
    samples = layout.to_tensor(states.isel({grid.TIME: slice(4, 7)}).load())[0]
    truth = layout.to_tensor(states.isel({grid.TIME: 7}).load())[0]
    d = geostrophic_imbalance(samples, layout, lat, lon)
    for reference_truth in (truth, samples[0]):
        geo = score_samples(samples, reference_truth, layout, lat, lon, hydrostatic=False, geo_reference=d_ref)["geo"]
        torch.testing.assert_close(geo, 2 * torch.sigmoid(-(d - d_ref).abs()), rtol=0, atol=0)
    by_truth = score_samples(samples, truth, layout, lat, lon, hydrostatic=False)["geo"]
    torch.testing.assert_close(by_truth, geo_score(d, geostrophic_imbalance(truth, layout, lat, lon)))


def test_store_records_guidance_and_reference_and_old_stores_keep_their_hash(cycled, models, tmp_path, one_thread):
    import zarr

    cfg, _, path = cycled
    ae, forecast, prior, _, _ = models
    layout, (lat, lon) = layout_of(cfg), _grid(cfg)
    d_ref = climatological_imbalance(cfg)
    dps = prefs.PreferenceSettings(**SMALL, guidance="dps", geo_reference="climatology")
    cases = list(prefs.archive_cases(cfg, [path], dps))
    with pytest.raises(ValueError, match="needs its D_ref"):
        prefs.build(cases, ae, prior, forecast, layout, lat, lon, dps)
    built = prefs.build(cases, ae, prior, forecast, layout, lat, lon, dps, d_reference=d_ref)
    store = tmp_path / "deployed.zarr"
    digest = prefs.write_pairs(store, built, dps, {"prior": prior.content_hash, "autoencoder": ae.content_hash})
    data = prefs.read_pairs(store)
    assert data["hash"] == digest and data["settings"]["guidance"] == "dps"
    assert data["settings"]["geo_reference"] == "climatology" and data["geo_reference_imbalance"] == d_ref
    assert data["settings"]["jacobian"] == "denoiser" and data["settings"]["strength"] == 1.0
    assert built["counts"]["cases"] == 2 and len(data["z_winner"]) == 2 * 2
    geo = prefs.REWARDS.index("geo")
    assert torch.all(data["rewards_winner"][:, geo] > data["rewards_loser"][:, geo])

    # the legacy settings (unguided, truth reference) hash as before these options existed, and a store
    # written then (no such keys in its settings) verifies and reads back as unguided / truth-referenced
    legacy = prefs.PreferenceSettings(**SMALL)
    old_fields = ("variant", "samples", "steps", "lead_hours", "forecast_hours", "every_hours", "top_k", "quantile",
                  "min_side", "seed")
    h = hashlib.sha256(json.dumps({k: getattr(legacy, k) for k in old_fields}, sort_keys=True).encode())
    for key in sorted(built["tensors"]):
        h.update(key.encode())
        h.update(built["tensors"][key].contiguous().numpy().tobytes())
    assert prefs.data_hash(built["tensors"], legacy) == h.hexdigest()[:16]
    old = tmp_path / "old.zarr"
    prefs.write_pairs(old, {**built, "geo_reference_imbalance": None}, legacy, {})
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["settings"] = {k: getattr(legacy, k) for k in old_fields}
    del group.attrs["geo_reference_imbalance"]
    back = prefs.read_pairs(old)
    assert back["hash"] == h.hexdigest()[:16] and back["geo_reference_imbalance"] is None
    assert back["settings"]["guidance"] == "obs_free" and back["settings"]["geo_reference"] == "truth"


def test_cli_builds_deployed_preference_data_from_repeated_archives(cycled, models, tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app

    cfg, config, path = cycled
    _, _, _, prior_path, ae_path = models
    pairs, out = tmp_path / "pairs.zarr", tmp_path / "aligned.pt"
    base = ["align", str(config), "--variant", "m", "--samples", "6", "--sample-steps", "2", "--forecast-hours", "6",
            "--steps", "2", "--batch-size", "2", "--prior", str(prior_path), "--autoencoder", str(ae_path),
            "--workers", "1", "--threads", "1", "--pairs", str(pairs), "-o", str(out)]
    res = CliRunner().invoke(app, ["align", str(config), "--guidance", "dps"])
    assert res.exit_code == 2 and "--from-archive" in res.output
    res = CliRunner().invoke(app, [*base, "--from-archive", str(path), "--from-archive", str(path)])
    assert res.exit_code == 0, res.output
    data = prefs.read_pairs(pairs)
    assert data["settings"]["guidance"] == "dps" and data["settings"]["geo_reference"] == "climatology"
    assert data["geo_reference_imbalance"] == pytest.approx(climatological_imbalance(cfg), rel=1e-12)
    assert data["counts"]["cases"] == 4 and data["counts"]["pairs"] > 0
    assert not pairs.with_name("pairs.zarr.cases").exists()  # the build's journal goes once the store is written
    assert data["source"].startswith(f"archives {path}, {path} (train split")
    assert sorted({str(np.datetime64(int(t), "s"))[:13] for t in data["case_time"]}) == TRAIN
    # a second alignment seed reuses the store (same hash) and aligns with other minibatches
    digest = data["hash"]
    out2 = tmp_path / "aligned-s1.pt"
    res = CliRunner().invoke(app, [*base[:-1], str(out2), "--from-archive", str(path), "--from-archive", str(path),
                                   "--align-seed", "1"])
    assert res.exit_code == 0, res.output
    assert "rebuilding" not in res.output and prefs.read_pairs(pairs)["hash"] == digest
    first, second = prior_io.read(out), prior_io.read(out2)
    assert first["lineage"]["preference_data"] == second["lineage"]["preference_data"] == digest
    assert (first["lineage"]["settings"]["seed"], second["lineage"]["settings"]["seed"]) == (0, 1)
    assert any(not torch.equal(a, b) for a, b in zip(first["state_dict"].values(), second["state_dict"].values()))


def test_cut_off_build_resumes_from_its_journal_with_the_same_pairs(cycled, models, tmp_path, monkeypatch, one_thread):
    from align_da_ops.align.journal import CaseJournal

    cfg, _, path = cycled
    ae, forecast, prior, _, _ = models
    layout, (lat, lon) = layout_of(cfg), _grid(cfg)
    settings = prefs.PreferenceSettings(**SMALL, guidance="dps")
    cases = list(prefs.archive_cases(cfg, [path, path], settings))
    assert len(cases) == 4
    clean = prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings)

    def crash(done, pairs):
        if done == 2:
            raise KeyboardInterrupt

    journal = CaseJournal(tmp_path / "p.zarr.cases", {"build": 1})
    with pytest.raises(KeyboardInterrupt):
        prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings, on_case=crash, journal=journal)
    assert journal.done() == [0, 1]
    scored = []
    real = prefs.score_case
    monkeypatch.setattr(prefs, "score_case", lambda case, *a, **k: scored.append(case.time) or real(case, *a, **k))
    resumed = prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings,
                          journal=CaseJournal(tmp_path / "p.zarr.cases", {"build": 1}))
    assert scored == [cases[2].time, cases[3].time]  # only the cases the cut-off build had not kept
    assert resumed["counts"] == clean["counts"]
    for key, value in clean["tensors"].items():
        assert torch.equal(value, resumed["tensors"][key]), key
    # a torn item is redone, another build's journal is discarded, never mixed in
    (tmp_path / "p.zarr.cases" / "case-000000.pt").write_bytes(b"torn")
    assert CaseJournal(tmp_path / "p.zarr.cases", {"build": 1}).load(0) is None
    assert CaseJournal(tmp_path / "p.zarr.cases", {"build": 2}).done() == []
