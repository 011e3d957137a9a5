"""A prior of cycled background errors: pairs read from cycling archives (`train prior --from-archive`)."""

from __future__ import annotations

import pytest
import torch

from align_da_ops import grid
from align_da_ops.archive import Archive
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.diffusion import checkpoint as prior_io
from align_da_ops.diffusion import cycled_pairs
from align_da_ops.diffusion.training import PairStore, PriorSettings, add_archive_pairs, train_prior
from align_da_ops.errors import CheckpointError, InputDataError, SchemaError

from factories import TEST_PRIOR, persistence_archive



@pytest.fixture(scope="module")
def cycled(tiny_nature_run, tmp_path_factory):
    """A background-only, persistence archive over the 2-day run: every background is the cold start (the truth
    at 2000-01-01T00), so each pair is known exactly."""
    cfg, _, archive = persistence_archive(tiny_nature_run, tmp_path_factory.mktemp("cycled"), "cycled-pairs")
    return cfg, archive


def test_pairs_are_the_split_cycles_backgrounds_and_truths(cycled):
    cfg, archive = cycled
    layout, truth = layout_of(cfg), open_states(cfg)
    state = lambda t: layout.to_tensor(truth.sel({grid.TIME: t}).load())[0]
    assert cycled_pairs.archive_member(Archive.open(archive)) == 0
    for split, times in (("train", ["2000-01-01T06", "2000-01-01T12", "2000-01-01T18"]),
                         ("validation", ["2000-01-02T00", "2000-01-02T06"])):
        (backgrounds, truths), = cycled_pairs.archive_pairs(cfg, split, [archive])
        assert len(backgrounds) == len(times)  # the test cycles (01-02T12, 18) are never read
        cold = state("2000-01-01T00")
        for b, x, t in zip(backgrounds, truths, times):
            torch.testing.assert_close(b, cold, rtol=1e-6, atol=1e-3)  # persistence of the cold start
            assert torch.equal(x, state(t))
    assert cycled_pairs.count_pairs(cfg, "train", [archive]) == {str(archive): 3}


def test_archives_of_other_experiments_or_trajectories_are_refused(cycled, tmp_path):
    cfg, archive = cycled
    other = cfg.model_copy(update={"name": "other"})
    with pytest.raises(SchemaError, match="cycled experiment 'tiny', not 'other'"):
        list(cycled_pairs.archive_pairs(other, "train", [archive]))
    # a config whose training trajectories exclude the archive's member 0 reads nothing from it
    train = cfg.splits.train.model_copy(update={"members": (1,)})
    moved = cfg.model_copy(update={"splits": cfg.splits.model_copy(update={"train": train})})
    assert cycled_pairs.split_cycles(Archive.open(archive), moved, "train") == []
    with pytest.raises(InputDataError, match="no archive .* holds a done cycle of the train split"):
        add_archive_pairs(moved, "train", [archive], None, PairStore(tmp_path / "p.zarr"))
    with pytest.raises(ValueError, match="train or validation split, not .test."):
        cycled_pairs.split_cycles(None, cfg, "test")


def test_prior_trained_on_cycled_pairs_records_them_and_matches_their_scale(cycled, latent_models, tmp_path, one_thread):
    cfg, archive = cycled
    _, _, ae, forecast, prior_path = latent_models
    out = tmp_path / "cycled.pt"
    train_prior(cfg, out, ae, forecast, TEST_PRIOR, archives=[archive], forecast_pairs=False)
    ckpt = prior_io.read(out)
    pairs = ckpt["lineage"]["pairs"]
    assert pairs["counts"] == {"train": {"archives": 3}, "validation": {"archives": 2}}
    assert pairs["forecast_leads"] == [] and ckpt["leads"] == [] and pairs["archives"] == [str(archive.resolve())]
    # the residual scale is the per-channel std of the cycled latent errors E(truth) - E(background)
    (backgrounds, truths), = cycled_pairs.archive_pairs(cfg, "train", [archive])
    with torch.no_grad():
        d = ae.encode(truths) - ae.encode(backgrounds)
    expected = d.movedim(1, 0).reshape(d.shape[1], -1).double().std(1, unbiased=False).float().clamp_min(1e-3)
    torch.testing.assert_close(torch.tensor(ckpt["residual_scale"]), expected, rtol=1e-4, atol=1e-6)
    # both sources together: the truth-started pairs (6-h leads) then the cycled ones
    both = tmp_path / "both.pt"
    train_prior(cfg, both, ae, forecast, TEST_PRIOR, archives=[archive], forecast_pairs=True)
    counts = prior_io.read(both)["lineage"]["pairs"]["counts"]
    assert counts["train"]["archives"] == 3 and counts["train"]["forecasts"] == 3  # 4 train states: 3 6-h pairs
    # resuming onto other pairs is refused; no pairs at all is an error
    with pytest.raises(CheckpointError, match="trained on other pairs"):
        train_prior(cfg, out, ae, forecast, TEST_PRIOR, archives=[archive], forecast_pairs=True)
    with pytest.raises(ValueError, match="no training pairs"):
        train_prior(cfg, tmp_path / "none.pt", ae, forecast, TEST_PRIOR, forecast_pairs=False)


def test_fine_tuning_starts_from_the_given_prior(cycled, latent_models, tmp_path, one_thread):
    cfg, archive = cycled
    _, _, ae, forecast, prior_path = latent_models
    start = prior_io.read(prior_path)
    out = tmp_path / "tuned.pt"
    frozen = PriorSettings(**{**TEST_PRIOR.__dict__, "epochs": 1, "lr": 0.0, "width": 16})  # width ignored: init's kept
    train_prior(cfg, out, ae, forecast, frozen, archives=[archive], forecast_pairs=False, init=prior_path)
    tuned = prior_io.read(out)
    assert tuned["architecture"] == start["architecture"] and tuned["lineage"]["init"] == start["content_hash"]
    for k, v in start["state_dict"].items():  # lr 0: no step moves the weights, so the EMA is the init's
        torch.testing.assert_close(tuned["state_dict"][k], v)


def test_cli_trains_a_prior_from_an_archive(cycled, tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app

    cfg, archive = cycled
    config = archive.parent / "tiny.yaml"
    out = tmp_path / "cli.pt"
    base = ["train", "prior", str(config), "-o", str(out), "--epochs", "1", "--width", "8", "--blocks", "1",
            "--batch-size", "2", "--threads", "1"]
    res = CliRunner().invoke(app, base + ["--from-archive", str(archive)])
    assert res.exit_code == 0, res.output
    assert "pairs: train 3 from archives; validation 2 from archives" in res.output
    assert prior_io.read(out)["lineage"]["pairs"]["archives"] == [str(archive.resolve())]
    res = CliRunner().invoke(app, base[:4] + [str(tmp_path / "x.pt"), "--no-forecast-pairs"])
    assert res.exit_code == 2 and "--from-archive" in res.output
