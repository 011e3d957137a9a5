"""Neural forecast model: spherical padding, step/rollout contract, training + resume, checkpoints, plug-in."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from align_da_ops import grid
from align_da_ops.campaign import CampaignConfig, NeuralForecastConfig
from align_da_ops.data import nature_run as nr
from align_da_ops.data.sources import layout_of
from align_da_ops.errors import CheckpointError, SchemaError
from align_da_ops.forecast import checkpoint as ckpt_io
from align_da_ops.forecast.base import ForecastModel, Persistence, rollout
from align_da_ops.forecast.benchmark import Climatology, forecast_scores, kinetic_energy, losses_to, starts_for
from align_da_ops.forecast.network import Architecture, NeuralForecastModel, SphereUNet, sphere_pad
from align_da_ops.forecast.training import TrainSettings, increment_std, rollout_loss, train
from align_da_ops.grid import Normalization, gaussian_latitudes
from align_da_ops.verify import wrmse
from align_da_ops.wiring import build_model

from factories import REPO, tiny_config

LAT = gaussian_latitudes(8)
SMALL = dict(width=8, blocks=1, levels=1)


def _net(channels=3, seed=0, lat=LAT) -> SphereUNet:
    torch.manual_seed(seed)
    net = SphereUNet(Architecture(channels, **SMALL), lat, np.full(channels, 0.5))
    torch.nn.init.normal_(net.project.weight, std=0.1)  # untrained nets are persistence; make it do something
    return net


def _model(channels=3, seed=0) -> NeuralForecastModel:
    norm = Normalization(tuple(f"c{i}" for i in range(channels)), np.arange(channels, dtype=float), np.full(channels, 2.0), ("a", "b"))
    return NeuralForecastModel(_net(channels, seed), norm)


def test_sphere_pad_continues_smooth_fields_across_poles_and_the_dateline():
    lon = grid.longitudes(16)
    lat_r, lon_r = np.deg2rad(LAT)[:, None], np.deg2rad(lon)[None, :]
    xyz = lambda la, lo: np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la) + 0 * lo])
    padded = sphere_pad(torch.as_tensor(xyz(lat_r, lon_r)), 2).numpy()
    # the same unit-sphere coordinates on the extended (colatitude-continued, wrapped) grid
    lat_ext = np.concatenate([-180.0 - LAT[:2][::-1], LAT, 180.0 - LAT[-2:][::-1]])
    lon_ext = np.concatenate([lon[-2:] - 360.0, lon, lon[:2] + 360.0])
    expected = xyz(np.deg2rad(lat_ext)[:, None], np.deg2rad(lon_ext)[None, :])
    np.testing.assert_allclose(padded, expected, atol=1e-12)


def test_untrained_model_is_persistence_and_meets_the_contract():
    norm = Normalization(("a", "b"), np.array([5.0, -1.0]), np.array([2.0, 3.0]), ("", ""))
    model = NeuralForecastModel(SphereUNet(Architecture(2, **SMALL), LAT, np.ones(2)), norm)
    x = torch.randn(3, 2, 8, 16) * 4 + 5
    assert isinstance(model, ForecastModel)
    torch.testing.assert_close(model.step(x), x, atol=1e-5, rtol=0)


def test_batched_equals_unbatched_and_rollouts_are_finite():
    model = _model()
    x = torch.randn(2, 3, 3, 8, 16)  # (member, time, channel, lat, lon)
    out = model.step(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, x, atol=1e-3)
    torch.testing.assert_close(out[1, 2], model.step(x[1, 2]), atol=1e-5, rtol=1e-5)
    leads = rollout(model, x[0], [6, 24, 48])
    assert all(v.shape == x[0].shape and torch.isfinite(v).all() for v in leads.values())


def test_longitude_shift_equivariance():
    """Circular padding + even pooling: shifting the input by 2 cells shifts the output by 2 cells."""
    model = _model()
    x = torch.randn(1, 3, 8, 16)
    torch.testing.assert_close(model.step(x.roll(2, -1)), model.step(x).roll(2, -1), atol=1e-5, rtol=1e-5)


def test_increment_std_and_persistence_scores_oracle():
    x = torch.zeros(5, 2, 4, 8)
    x[:, 0] = torch.arange(5.0)[:, None, None]  # +1 each step: increments constant, std 0 -> floor
    x[:, 1] = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])[:, None, None]
    np.testing.assert_allclose(increment_std([torch.stack([x[:-1], x[1:]], 1)]), [1e-3, 1.0])
    batches = [torch.stack([x[i:j], x[i + 1 : j + 1]], 1) for i, j in ((0, 1), (1, 4))]  # streamed in parts
    np.testing.assert_allclose(increment_std(batches), [1e-3, 1.0])
    layout = grid.StateLayout(("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"), (), (500, 850))
    series = torch.arange(6.0)[:, None, None, None].expand(6, 8, 4, 8).contiguous()
    scores = forecast_scores(Persistence(), series, starts_for(6, (6, 24), 6), layout, gaussian_latitudes(4), (6, 24))
    assert scores[6]["z500"] == pytest.approx(1.0) and scores[24]["t850"] == pytest.approx(4.0)
    clim = forecast_scores(Climatology(series.mean(0)), series, [0, 1], layout, gaussian_latitudes(4), (6,))
    assert clim[6]["u500"] == pytest.approx(1.0)  # truths 1, 2 vs the mean 2.5: errors 1.5, 0.5
    winds = torch.zeros(8, 4, 8)
    winds[4:6], winds[6:8] = 3.0, 4.0
    assert float(kinetic_energy(winds, layout, gaussian_latitudes(4))) == pytest.approx(12.5)


def test_rollout_loss_of_persistence_is_the_mean_state_change():
    net = SphereUNet(Architecture(2, **SMALL), LAT, np.array([1.0, 2.0]))  # untrained: persistence
    window = torch.randn(3, 4, 2, 8, 16)  # (batch, 1 + 3 steps, channel, lat, lon)
    w = torch.as_tensor(grid.latitude_weights(LAT), dtype=torch.float32)[:, None]
    scale = torch.tensor([1.0, 2.0])[:, None, None]
    expected = np.mean([float((((window[:, 0] - window[:, s]) / scale) ** 2 * w).mean()) for s in (1, 2, 3)])
    assert rollout_loss(net, window, w).item() == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def trained(tiny_nature_run, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_nature_run)
    out = tmp_path_factory.mktemp("neural") / "forecast.pt"
    settings = TrainSettings(epochs=1, batch_size=1, warmup_steps=1, rollout_steps=1, **SMALL)
    history = train(cfg, out, settings)
    return cfg, out, settings, history


def test_training_writes_a_checkpoint_and_resumes_bitwise(trained, tmp_path):
    cfg, out, settings, history = trained
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    first = ckpt_io.read(out)
    assert first["training"]["epoch"] == 1 and first["config_hash"]
    two = dataclasses.replace(settings, epochs=2)
    resumed = tmp_path / "resumed.pt"
    resumed.write_bytes(out.read_bytes())
    assert len(train(cfg, resumed, two)) == 2
    straight = tmp_path / "straight.pt"
    train(cfg, straight, two)
    a, b = ckpt_io.read(resumed), ckpt_io.read(straight)
    assert a["content_hash"] == b["content_hash"] != first["content_hash"]


def test_checkpoint_round_trip_and_export_keep_the_hash(trained, tmp_path):
    cfg, out, _, _ = trained
    layout = layout_of(cfg)
    model = ckpt_io.load_model(out, layout.channels, 32, 64)
    exported = tmp_path / "export.pt"
    assert ckpt_io.strip_training(out, exported) == model.content_hash
    assert "training" not in torch.load(exported, weights_only=True) and exported.stat().st_size < out.stat().st_size
    again = ckpt_io.load_model(exported, layout.channels, 32, 64)
    x = torch.randn(2, layout.n_channels, 32, 64) * 0.1
    x = again.normalization.denormalize(x)
    torch.testing.assert_close(model.step(x), again.step(x), atol=0, rtol=0)


def test_incompatible_or_corrupt_checkpoints_are_refused(trained, tmp_path):
    cfg, out, settings, _ = trained
    channels = layout_of(cfg).channels
    with pytest.raises(CheckpointError, match="channels"):
        ckpt_io.load_model(out, channels[:-1], 32, 64)
    with pytest.raises(CheckpointError, match="32x64 grid, the experiment has 64x128"):
        ckpt_io.load_model(out, channels, 64, 128)
    ckpt = ckpt_io.read(out)
    with pytest.raises(CheckpointError, match="architecture"):
        ckpt_io.check_compatible(ckpt, architecture={**ckpt["architecture"], "width": 16})
    ckpt["architecture"]["width"] = 16  # claims another architecture, re-hashed: weights no longer fit
    ckpt["content_hash"] = ckpt_io.content_hash(ckpt)
    ckpt_io.save(ckpt, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="do not fit its recorded architecture"):
        ckpt_io.load_model(tmp_path / "arch.pt")
    ckpt = ckpt_io.read(out)
    ckpt["state_dict"]["project.bias"] += 1.0  # tampered, hash not updated
    ckpt_io.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_io.read(tmp_path / "tampered.pt")
    ckpt = ckpt_io.read(out)
    ckpt["state_dict"]["project.bias"][0] = float("nan")  # diverged weights, saved with a valid hash
    ckpt["content_hash"] = ckpt_io.content_hash(ckpt)
    ckpt_io.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN/Inf weights in \\['project.bias'\\]"):
        ckpt_io.load_model(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="config hash"):
        train(cfg.model_copy(update={"name": "other"}), out, settings)
    with pytest.raises(SchemaError, match="rollout_steps=2 needs at least 3"):  # the 2-state train split
        train(cfg, tmp_path / "rollout.pt", dataclasses.replace(settings, rollout_steps=2))
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.read(tmp_path / "missing.pt")


class Payload:
    """Not a tensor/primitive: weights_only loading must refuse to unpickle it."""


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"format": ckpt_io.FORMAT, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        ckpt_io.read(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights-only"):
        ckpt_io.read(tmp_path / "junk.pt")


def test_cli_train_forecast(trained, tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app
    from factories import tiny_config_dict

    cfg, _, _, _ = trained
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(cfg.nature_run.output)))
    out = tmp_path / "cli.pt"
    args = ["train", "forecast", str(path), "--epochs", "1", "--rollout-steps", "1", "--width", "8", "--blocks", "1", "-o", str(out), "--export", str(tmp_path / "x.pt")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"hash {ckpt_io.read(out)['content_hash']}" in res.output and (tmp_path / "x.pt").exists()
    scores = {"neural": {6: {"z500": 1.0}}, "persistence": {6: {"z500": 2.0}}, "climatology": {6: {"z500": 0.5}}}
    assert losses_to(scores) == ["z500 +6 h vs climatology"]


def test_campaign_plug_in_builds_the_neural_model(trained):
    cfg, out, _, _ = trained
    raw = yaml.safe_load((REPO / "cycles" / "tiny-3dvar-neural.yaml").read_text())
    assert CampaignConfig.model_validate(raw).forecast_model == NeuralForecastConfig()
    raw["forecast_model"] = {"kind": "neural", "checkpoint": str(out)}
    campaign = CampaignConfig.model_validate(raw)
    model = build_model(campaign, cfg, layout_of(cfg), torch.device("cpu"))
    assert isinstance(model, NeuralForecastModel) and model.content_hash == ckpt_io.read(out)["content_hash"]


@pytest.mark.gpu
def test_cuda_step_matches_cpu_and_bf16_training_step_runs():
    model = _model(channels=8)
    x = torch.randn(4, 8, 8, 16)
    cpu = model.step(x)
    model.to("cuda")
    gpu = model.step(x)  # inputs follow the weights; the result comes back to the input's device
    assert gpu.device == x.device
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    net = model.net.train()
    window = torch.randn(2, 3, 8, 8, 16, device="cuda")
    w = torch.ones(8, 1, device="cuda")
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        loss = rollout_loss(net, window, w)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_shipped_checkpoint_fits_the_tiny_config_and_beats_persistence(tiny_nature_run):
    cfg = tiny_config(tiny_nature_run)
    layout = layout_of(cfg)
    path = ckpt_io.shipped_checkpoint(cfg.name)
    assert path.stat().st_size < 5 * 2**20
    model = ckpt_io.load_model(path, layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon)
    assert model.normalization.channels == layout.channels and model.net.arch.levels >= 1
    x, _ = layout.to_tensor(nr.open_nature_run(tiny_nature_run).isel(member=0).load())
    lat = gaussian_latitudes(cfg.state.grid.nlat)
    neural, persistence = wrmse(model.step(x[:-1]), x[1:], lat), wrmse(x[:-1], x[1:], lat)
    for var, level in (("geopotential", 500), ("temperature", 850), ("u_component_of_wind", 500)):
        c = layout.channel_index(var, level)
        assert neural[:, c].mean() < 0.7 * persistence[:, c].mean(), var


def test_cycle_provenance_records_the_forecast_checkpoint_hash(tiny_nature_run, tmp_path):
    from align_da_ops.campaign import CampaignConfig
    from align_da_ops.wiring import build_context

    from factories import tiny_config

    raw = {
        "name": "prov", "config": "unused.yaml", "start": "2000-01-02T00:00:00", "end": "2000-01-02T00:00:00",
        "forecast_model": {"kind": "neural"}, "cold_start": {"kind": "truth_offset", "offset_days": 1},
        "archive": str(tmp_path / "archive"),
    }
    ctx = build_context(CampaignConfig.model_validate(raw), tiny_config(tiny_nature_run))
    assert ctx.provenance["checkpoints"]["forecast_model"] == ctx.model.content_hash != ""


def test_small_perturbation_has_the_requested_size_and_is_seeded():
    from align_da_ops.forecast.benchmark import small_perturbation

    series = torch.randn(50, 3, 8, 16, generator=torch.Generator().manual_seed(0)).cumsum(0)
    start = series[:4]
    d = small_perturbation(series, 0.1, seed=1)(start) - start
    std = (series[1:] - series[:-1]).movedim(1, 0).reshape(3, -1).std(1)
    ratio = d.movedim(1, 0).reshape(3, -1).std(1) / std
    assert torch.allclose(ratio, torch.full((3,), 0.1), rtol=0.15)
    assert torch.equal(small_perturbation(series, 0.1, seed=1)(start), start + d)


def test_perturbed_starts_are_b_shaped_seeded_per_window_and_leave_the_targets(trained, tmp_path):
    """Analysis-like starts: only the first state changes, in about `fraction` of the windows, by draws that
    depend on (seed, epoch, window) only, with B's variances (physical units) on average; training uses them."""
    from align_da_ops.analysis.threedvar import ThreeDVarConfig, covariance_from_config
    from align_da_ops.data.sources import normalization_path, open_states, read_normalization
    from align_da_ops.forecast.starts import PerturbedStarts

    cfg, _, settings, history = trained
    states, norm = open_states(cfg), read_normalization(normalization_path(cfg))
    cov = covariance_from_config(ThreeDVarConfig(), layout_of(cfg).channels, states.latitude.values, states.longitude.values)
    b = cov.save(tmp_path / "b.npz")
    starts = PerturbedStarts(b, norm, scale=2.0, fraction=0.5, seed=3)
    windows = torch.zeros(40, 3, len(norm.channels), 32, 64)
    index = torch.arange(40)
    out = starts(windows, index, epoch=1)
    assert torch.equal(out[:, 1:], windows[:, 1:])
    perturbed = out[:, 0].flatten(1).abs().amax(1) > 0
    assert 10 <= int(perturbed.sum()) <= 30
    assert torch.equal(starts(windows.flip(0), index.flip(0), 1).flip(0), out)  # any batch order: same draws
    assert not torch.equal(starts(windows, index, 2), out)  # another epoch: other draws
    physical = out[perturbed, 0].double() * torch.as_tensor(np.asarray(norm.std))[:, None, None]
    ratio = physical.pow(2).mean((0, 2, 3)) / (4.0 * torch.as_tensor(cov.variances().reshape(len(norm.channels), -1).mean(1)))
    assert float(ratio.mean()) == pytest.approx(1.0, rel=0.3)
    with_starts = train(cfg, tmp_path / "starts.pt", dataclasses.replace(settings, start_covariance=str(b), start_fraction=1.0))
    assert np.isfinite(with_starts[0]["loss"]) and with_starts[0]["loss"] != history[0]["loss"]
