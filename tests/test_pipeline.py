"""`align-da pipeline --quick`: the whole chain runs end to end on a tiny world and resumes as a no-op."""

from __future__ import annotations

import numpy as np
import yaml
from typer.testing import CliRunner

from align_da_ops.archive import Archive
from align_da_ops.cli import app
from align_da_ops.diffusion import checkpoint as prior_io

from factories import tiny_config_dict


def test_quick_chain_runs_every_step_and_cycles_with_the_aligned_prior(tiny_nature_run, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    work = tmp_path / "chain"
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline", str(config), "--workdir", str(work), "--quick", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "7/7 cycling" in res.output and "align-dps-m (chain)" in res.output
    aligned = prior_io.read(work / "prior-aligned-m.pt")
    assert aligned["lineage"]["reference"] == prior_io.read(work / "prior.pt")["content_hash"]
    archive = Archive.open(work / "archive")
    assert len(archive.done_cycles()) == 2
    prov = archive.provenance(archive.done_cycles()[-1])
    assert prov["checkpoints"]["prior"] == aligned["content_hash"]
    # rerun: every step finds its output complete
    again = runner.invoke(app, ["pipeline", str(config), "--workdir", str(work), "--quick", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert prior_io.read(work / "prior-aligned-m.pt")["content_hash"] == aligned["content_hash"]


def test_quick_chain_runs_on_a_world_of_several_trajectories(tmp_path):
    """The tiny-long layout (issue 12): train on some nature-run members; validate, test, cycle and score on another."""
    from align_da_ops import evaluation
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import normalization_path, open_states, read_normalization
    from align_da_ops.pipeline import ChainSettings, run_chain

    raw = tiny_config_dict(tmp_path / "nature.zarr", members=2)
    raw["data"] = {"kind": "nature_run", "member": 1}
    raw["splits"]["train"]["members"] = [0]
    config = tmp_path / "tiny-long.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(config)
    result = run_chain(config, cfg, tmp_path / "chain", ChainSettings.quick(), quick=True, say=lambda m: None)
    archive = Archive.open(result["paths"]["archive"])
    assert len(archive.done_cycles()) == 2
    prov = archive.provenance(archive.done_cycles()[-1])
    assert prov["checkpoints"]["prior"] == prior_io.read(result["paths"]["aligned"])["content_hash"]
    # scored against the trajectory that was cycled (member 1), not the training one
    norm = read_normalization(normalization_path(cfg))
    expected = evaluation.archive_scores(archive, open_states(cfg), "x", norm=norm)
    np.testing.assert_allclose(result["scores"]["mse_normalized"].to_numpy(), expected["mse_normalized"].to_numpy())
    wrong = evaluation.archive_scores(archive, open_states(cfg, 0), "x", norm=norm)
    assert not np.allclose(wrong["mse_normalized"].to_numpy(), expected["mse_normalized"].to_numpy())
