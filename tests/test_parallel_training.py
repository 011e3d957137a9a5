"""Training beyond one process: the single-process default, DDP gradient averaging, torchrun parity and resume."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import torch
import torch.distributed as dist
import yaml

from align_da_ops import parallel_training as pt
from align_da_ops.errors import ConfigError


def test_without_torchrun_one_plain_process(monkeypatch):
    for name in pt.ENV:
        monkeypatch.delenv(name, raising=False)
    net = torch.nn.Linear(3, 2)
    with pt.launch(torch.device("cpu")) as world:
        assert world == pt.single() and world.is_main and not world.distributed
        assert not dist.is_initialized()
        assert pt.wrap(net, world) is net and pt.unwrap(net) is net
        assert pt.mean_over_ranks(2.5, world) == 2.5 and pt.per_rank_batch(8, world) == 8
    assert pt.per_rank_batch(8, pt.World(1, 4, 1, torch.device("cpu"))) == 2
    with pytest.raises(ConfigError, match="batch size 8 is not divisible by the 3 training processes"):
        pt.per_rank_batch(8, pt.World(0, 3, 0, torch.device("cpu")))


def _toy_batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=gen), torch.randn(8, 1, generator=gen)


def _toy_rank(rank: int, port: int, out: str) -> None:
    """One rank of a torchrun-like world of 2: DDP gradient of the mean loss over its half of the batch."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with pt.launch(torch.device("cpu")) as world:
        torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's
        net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        model = pt.wrap(net, world)
        x, y = _toy_batch()
        mine = slice(rank * 4, rank * 4 + 4)
        loss = (model(x[mine]) - y[mine]).pow(2).mean()
        loss.backward()
        mean = pt.mean_over_ranks(loss.item(), world)
        torch.save({"weights": pt.unwrap(model).state_dict(), "grads": [p.grad for p in net.parameters()], "loss": mean},
                   f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    torch.multiprocessing.spawn(_toy_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net.load_state_dict(ranks[0]["weights"])
    assert list(ranks[0]["weights"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # no "module." prefix
    x, y = _toy_batch()
    loss = (net(x) - y).pow(2).mean()
    loss.backward()
    for r in ranks:
        for got, want in zip(r["grads"], (p.grad for p in net.parameters())):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-6)


@pytest.fixture(scope="module")
def three_days(tmp_path_factory):
    """A 3-day nature run (12 states, 2-state chunks) and a config whose train split holds 8 states (0..42 h)."""
    from align_da_ops.config import ExperimentConfig
    from align_da_ops.data.nature_run import generate

    from factories import tiny_config_dict

    root = tmp_path_factory.mktemp("ddp")
    raw = tiny_config_dict(root / "nature.zarr", days=3)
    at = lambda hours: (datetime(2000, 1, 1) + timedelta(hours=hours)).isoformat()
    raw["splits"] = {"train": {"start": at(0), "end": at(42)}, "validation": {"start": at(48), "end": at(54)},
                     "test": {"start": at(60), "end": at(66)}}
    generate(ExperimentConfig.model_validate(raw))
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


FORECAST_ARGS = ["--rollout-steps", "2", "--rollout-from-epoch", "1", "--batch-size", "2", "--width", "8", "--blocks", "1"]


def _torchrun(kind: str, config, output, epochs: int, args, cwd) -> str:
    """`align-da train KIND` on 2 CPU processes, as the parallel_training docstring launches it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "align_da_ops.cli", "train", kind, str(config), "--epochs", str(epochs), *args, "-o", str(output)]
    res = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_resume(three_days, tmp_path, one_thread):
    """Forecast model: 6 windows, global batch 2 (1 per rank), 3 AdamW steps per epoch; from epoch 2 the
    2-step rollout loss (two forward passes through DDP before one backward).

    Tolerance: the two runs take the same global batches, so their weights differ only by float32 summation
    order (the gradient all-reduce, per-rank convolutions): measured ~3e-7 after 6 steps at lr 1.5e-3;
    atol 1e-5 leaves 30x margin, while a wrong batch or order moves weights by ~lr (1e-3) per step.
    """
    from align_da_ops.config import load_config
    from align_da_ops.forecast import checkpoint as ckpt_io
    from align_da_ops.forecast.training import TrainSettings, train

    ddp, single = tmp_path / "ddp" / "forecast.pt", tmp_path / "single" / "forecast.pt"
    stdout = _torchrun("forecast", three_days, ddp, 2, FORECAST_ARGS, tmp_path)
    assert stdout.count("wrote ") == 1 and sorted(p.name for p in ddp.parent.iterdir()) == ["forecast.pt"]  # rank 0 only
    cfg = load_config(three_days)
    settings = TrainSettings(epochs=2, batch_size=2, rollout_steps=2, rollout_from_epoch=1, width=8, blocks=1)
    train(cfg, single, settings)
    a, b = ckpt_io.read(ddp), ckpt_io.read(single)  # weights_only loads with verified hashes
    _assert_match(a, b)
    ckpt_io.load_model(ddp, a["channels"], 32, 64)
    _torchrun("forecast", three_days, ddp, 3, FORECAST_ARGS, tmp_path)  # resumes from the 2-epoch checkpoint
    train(cfg, single, dataclasses.replace(settings, epochs=3))
    a, b = ckpt_io.read(ddp), ckpt_io.read(single)
    assert a["training"]["epoch"] == 3
    _assert_match(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["autoencoder", "prior"])
def test_torchrun_trains_the_autoencoder_and_prior_like_one_process(kind, three_days, tmp_path, one_thread):
    """Autoencoder: 8 states, global batch 2; prior: 7 + 6 + 5 pairs at leads 6/12/18 h from the packaged models,
    global batch 2; 2 epochs each. Same tolerance as the forecast model (same argument)."""
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of
    from align_da_ops.diffusion import checkpoint as prior_io
    from align_da_ops.diffusion.training import PriorSettings, train_prior
    from align_da_ops.forecast.checkpoint import load_model
    from align_da_ops.forecast.checkpoint import shipped_checkpoint as shipped_forecast
    from align_da_ops.latent import checkpoint as ae_io
    from align_da_ops.latent.training import AutoencoderSettings, train_autoencoder

    cfg = load_config(three_days)
    ddp, single = tmp_path / "ddp" / f"{kind}.pt", tmp_path / "single" / f"{kind}.pt"
    if kind == "autoencoder":
        _torchrun(kind, three_days, ddp, 2, ["--batch-size", "2", "--width", "8", "--latent-channels", "8"], tmp_path)
        train_autoencoder(cfg, single, AutoencoderSettings(epochs=2, batch_size=2, width=8, latent_channels=8))
        a, b = ae_io.read(ddp), ae_io.read(single)
    else:
        _torchrun(kind, three_days, ddp, 2, ["--batch-size", "2", "--width", "8", "--blocks", "1", "--leads", "6,12,18"],
                  tmp_path)
        channels = layout_of(cfg).channels
        ae = ae_io.load_autoencoder(ae_io.shipped_checkpoint("tiny"), channels, 32, 64)
        forecast = load_model(shipped_forecast("tiny"), channels, 32, 64)
        train_prior(cfg, single, ae, forecast, PriorSettings(epochs=2, batch_size=2, width=8, blocks=1, leads=(6, 12, 18)))
        a, b = prior_io.read(ddp), prior_io.read(single)
        for k, v in b["training"]["weights"].items():  # the raw weights, beside the EMA in state_dict
            torch.testing.assert_close(a["training"]["weights"][k], v, atol=1e-5, rtol=0, msg=k)
    assert sorted(p.name for p in ddp.parent.iterdir()) == [f"{kind}.pt"]  # no pair stores left behind
    _assert_match(a, b)


def _assert_match(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and list(a["state_dict"]) == list(b["state_dict"])
    assert not any(k.startswith("module.") for k in a["state_dict"])
    assert a["training"]["optimizer"].keys() == b["training"]["optimizer"].keys()
    for k, v in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][k], v, atol=1e-5, rtol=0, msg=k)
    for ra, rb in zip(a["training"]["history"], b["training"]["history"], strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
