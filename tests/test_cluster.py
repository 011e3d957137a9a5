"""dask.distributed: a suite on a 2-worker LocalCluster equals the serial run bit for bit; a worker killed
mid-campaign is replaced and the campaign resumes from its archive; the command-line policy."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from align_da_ops import logs
from align_da_ops.archive import Archive
from align_da_ops.cluster import client_for, local_shape, open_client, run_tasks
from align_da_ops.suite import distinct_runs, execute, load_suite, scoring_runs

from factories import tiny_config_dict


@pytest.fixture(scope="module")
def config(tiny_nature_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    return path


def _suite(config, root, methods, seeds=(0, 1), spinup_days=0.25, test_days=0.5):
    return load_suite(_suite_path(config, root, methods, seeds, spinup_days, test_days)[0])


def _suite_path(config, root, methods, seeds=(0, 1), spinup_days=0.25, test_days=0.5):
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cluster", "config": str(config), "seeds": list(seeds), "spinup_days": spinup_days,
        "test_days": test_days, "leads_hours": [6], "archive_root": str(root / "archives"),
        "cold_start": {"kind": "truth_offset", "offset_days": 0.25}, "forecast_model": {"kind": "persistence"},
        "networks": [{"name": "mask", "networks": [{"kind": "random_mask", "fraction": 0.02, "noise": True}]}],
        "methods": methods,
    }))
    return path, root


FREE = {"name": "free", "analysis": {"kind": "background_only"}}
THREEDVAR = {"name": "3dvar", "analysis": {"kind": "threedvar", "max_iterations": 30}}


def _products(path) -> dict[str, np.ndarray]:
    archive = Archive.open(path)
    out = {"done": np.asarray([c.as_numpy() for c in archive.done_cycles()])}
    for product in ("analysis", "background", "forecast"):
        ds = archive.open_product(product, dask=False)
        out |= {f"{product}/{v}": ds[v].values for v in ds.data_vars}
    return out


def _assert_same_archives(runs_a, runs_b):
    for a, b in zip(distinct_runs(runs_a), distinct_runs(runs_b)):
        pa, pb = _products(a.campaign.archive), _products(b.campaign.archive)
        assert pa.keys() == pb.keys() and len(pa["done"]) > 0
        for key in pa:
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=f"{a.campaign.archive}: {key}")


def test_suite_on_two_workers_equals_the_serial_run_bit_for_bit(config, tmp_path, one_thread):
    from align_da_ops.cli import _truth_norm_climatology
    from align_da_ops.suite_scores import collect

    (tmp_path / "serial").mkdir()
    (tmp_path / "dask").mkdir()
    suite_s, experiment = _suite(config, tmp_path / "serial", [FREE, THREEDVAR])
    suite_d, _ = _suite(config, tmp_path / "dask", [FREE, THREEDVAR])
    serial, parallel = scoring_runs(suite_s, experiment), scoring_runs(suite_d, experiment)
    assert len(distinct_runs(serial)) == 3  # the free run once, 3D-Var per seed
    execute(serial)
    finished = []
    with open_client(workers=2, threads=1) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert set(client.run(torch.get_num_threads).values()) == {1}
        assert set(client.run(lambda: "/".join(logs.current())).values()) == {"/".join(logs.current())}
        execute(parallel, lambda run, i, n: finished.append(run.campaign.name), client=client)
        truth = _truth_norm_climatology(experiment)
        table_d = collect(parallel, *truth, client=client)
    assert sorted(finished) == sorted(r.campaign.name for r in distinct_runs(parallel))
    _assert_same_archives(serial, parallel)
    table_s = collect(serial, *truth)
    assert len(table_s) == len(table_d) > 0
    pd.testing.assert_frame_equal(table_s.drop(columns=["seconds_cycle", "seconds_analysis"]),
                                  table_d.drop(columns=["seconds_cycle", "seconds_analysis"]))


def _kill_worker_of(client, key: str, archive_path, after_done: int, killed: list) -> None:
    """Wait until the campaign's archive has `after_done` done cycles, then SIGKILL the worker running it."""
    deadline = time.monotonic() + 300
    flags = archive_path / "cycles"
    while time.monotonic() < deadline:
        if flags.exists() and len(list(flags.glob("*.json"))) >= after_done:
            for worker, keys in client.processing().items():
                if key in keys:
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    killed.append((pid, len(list(flags.glob("*.json")))))
                    os.kill(pid, signal.SIGKILL)
                    return
        time.sleep(0.05)


def test_a_worker_killed_mid_campaign_is_replaced_and_the_campaign_resumes(config, tmp_path, one_thread):
    (tmp_path / "serial").mkdir()
    (tmp_path / "dask").mkdir()
    methods = [THREEDVAR]
    suite_s, experiment = _suite(config, tmp_path / "serial", methods, seeds=(0,), spinup_days=0.75, test_days=0.75)
    suite_d, _ = _suite(config, tmp_path / "dask", methods, seeds=(0,), spinup_days=0.75, test_days=0.75)
    serial, parallel = scoring_runs(suite_s, experiment), scoring_runs(suite_d, experiment)
    execute(serial)
    total = len(Archive.open(serial[0].campaign.archive).done_cycles())
    assert total == 6
    killed: list = []
    with open_client(workers=2, threads=1) as client:
        key = f"campaign-0-{parallel[0].campaign.name}"
        watcher = threading.Thread(target=_kill_worker_of, args=(client, key, parallel[0].campaign.archive, 2, killed))
        watcher.start()
        execute(parallel, client=client)
        watcher.join()
    assert killed and 2 <= killed[0][1] < total, killed  # killed mid-campaign, then finished elsewhere
    _assert_same_archives(serial, parallel)


def _scheduler_inside_a_task(_):
    import dask.base

    return dask.base.get_scheduler() is dask.base.named_schedulers["synchronous"]


def test_task_errors_surface_with_their_message_and_results_keep_item_order():
    with open_client(workers=2, threads=1) as client:
        assert run_tasks(client, pow, [3, 1, 2], 2) == [9, 1, 4]
        with pytest.raises(ZeroDivisionError):
            run_tasks(client, divmod, [1, 2], 0)
        # a dask computation inside a task (the nature run's .load()) runs in the task, not back on the busy cluster
        assert run_tasks(client, _scheduler_inside_a_task, [0, 1]) == [True, True]


def test_local_shape_never_oversubscribes_the_cores():
    assert local_shape(tasks=4, cores=2) == (2, 1)
    assert local_shape(tasks=1, cores=16) == (1, 16)
    assert local_shape(tasks=10, cores=16) == (10, 1)
    assert local_shape(tasks=10, workers=4, cores=16) == (4, 4)
    with client_for(tasks=1) as client:  # nothing to share out: this process
        assert client is None


def test_preference_cases_on_two_workers_give_the_serial_pairs(latent_models, one_thread, tmp_path):
    from align_da_ops.align import preferences as prefs
    from align_da_ops.align.journal import CaseJournal
    from align_da_ops.data.sources import layout_of, open_states
    from align_da_ops.diffusion import checkpoint as prior_io

    cfg, _, ae, forecast, prior_path = latent_models
    states, layout = open_states(cfg), layout_of(cfg)
    settings = prefs.PreferenceSettings(variant="m", samples=6, steps=3, lead_hours=6, forecast_hours=6, min_side=1)
    prior = prior_io.load_prior(prior_path, ae.content_hash)
    cases = list(prefs.cases_from_states(states, layout, forecast, states.time.values[1], states.time.values[4], settings))
    lat, lon = states.latitude.values, states.longitude.values
    serial = prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings)
    progress = []
    with open_client(workers=2, threads=1) as client:
        parallel = prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings, client=client,
                               on_case=lambda done, pairs: progress.append(done))
        # a cut-off serial build's journal (cases 0 and 1 kept) is finished on the workers: the same pairs
        journal = CaseJournal(tmp_path / "pairs.zarr.cases", {"test": "resume"})
        for i in (0, 1):
            journal.save(i, prefs._journal_item(prefs.score_case(cases[i], ae, prior, forecast, layout, lat, lon,
                                                                 settings)))
        resumed = prefs.build(cases, ae, prior, forecast, layout, lat, lon, settings, client=client, journal=journal)
    assert journal.done() == [0, 1, 2, 3]
    assert serial["counts"] == parallel["counts"] and serial["counts"]["cases"] == 4 and sorted(progress) == [1, 2, 3, 4]
    for key, value in serial["tensors"].items():
        assert torch.equal(value, parallel["tensors"][key]), key
        assert torch.equal(value, resumed["tensors"][key]), key
    assert prefs.data_hash(serial["tensors"], settings) == prefs.data_hash(parallel["tensors"], settings)


def test_jobqueue_example_runs_the_suite_command_on_its_scheduler(config, tmp_path, monkeypatch):
    """deploy/dask-jobqueue.py with its batch cluster stood in for by a LocalCluster: the command it runs
    (`align-da suite run ... --scheduler ADDRESS --threads N`) replays and scores the suite there."""
    import importlib.util
    import sys

    from distributed import LocalCluster
    from typer.testing import CliRunner

    from align_da_ops.cli import app

    from factories import REPO

    spec = importlib.util.spec_from_file_location("dask_jobqueue_example", REPO / "deploy" / "dask-jobqueue.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    suite_path, _ = _suite_path(config, tmp_path, [FREE, THREEDVAR], seeds=(0,))
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1")
    cluster.job_script = lambda: "#!/bin/sh (stand-in)"
    monkeypatch.setattr(example, "make_cluster", lambda args: cluster)
    commands = []

    def call(command):
        commands.append(command)
        result = CliRunner().invoke(app, command[1:])
        assert result.exit_code == 0, (result.output, result.exception)
        return 0

    monkeypatch.setattr(example.subprocess, "call", call)
    monkeypatch.setattr(sys, "argv", ["dask-jobqueue.py", str(suite_path), "--cores", "1"])
    assert example.main() == 0
    assert commands[0][:4] == ["align-da", "suite", "run", str(suite_path)]
    assert commands[0][4:] == ["--scheduler", cluster.scheduler_address, "--threads", "1"]
    assert (tmp_path / "archives" / "report" / "summary.csv").is_file()
    for method in ("free", "3dvar"):
        assert len(Archive.open(tmp_path / "archives" / "test" / method / "mask" / "s0").done_cycles()) == 3


def test_nature_run_member_groups_on_two_workers_equal_the_serial_run_and_resume(tmp_path, one_thread):
    """Groups of 2 of 4 members: serial, on 2 workers, and killed inside the second group then resumed
    give the same store bit for bit; each group holds its own progress record."""
    from align_da_ops.data import nature_run as nr

    from factories import tiny_config

    class Killed(BaseException):
        pass

    def cfg(name):
        c = tiny_config(tmp_path / name, days=1.0, members=4)
        return c.model_copy(update={"nature_run": c.nature_run.model_copy(update={"members_per_call": 2})})

    assert nr.member_groups(cfg("a").nature_run) == [(0, 2), (2, 4)]
    serial = nr.generate(cfg("serial.zarr"))
    with open_client(workers=2, threads=1) as client:
        parallel = nr.generate(cfg("dask.zarr"), client=client)
    calls = []

    def die(done):
        calls.append(done)
        if len(calls) == 3:  # the second group's first chunk is on disk, its progress not recorded
            raise Killed

    with pytest.raises(Killed):
        nr.generate(cfg("resumed.zarr"), before_commit=die)
    assert nr.progress_file(tmp_path / "resumed.zarr", (0, 2)).exists()
    assert not nr.progress_file(tmp_path / "resumed.zarr", (2, 4)).exists()
    resumed = nr.generate(cfg("resumed.zarr"))
    a = nr.open_nature_run(serial).load()
    assert a["temperature"].shape[0] == 4 and a.attrs["members_per_call"] == 2
    assert np.abs(a["temperature"].values[2] - a["temperature"].values[1]).max() > 0.1  # distinct members
    for other in (parallel, resumed):
        b = nr.open_nature_run(other).load()
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{other}: {name}")
