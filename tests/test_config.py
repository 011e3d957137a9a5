"""Config: shipped files validate, round trip, stable hash, and every error path names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from align_da_ops.cli import app
from align_da_ops.config import ExperimentConfig, config_hash, load_config, resolved
from align_da_ops.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate_and_round_trip(path):
    cfg = load_config(path)
    again = ExperimentConfig.model_validate(resolved(cfg))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_channel_counts_of_shipped_configs():
    era5 = load_config(REPO / "config" / "era5-1p4.yaml")
    assert len(era5.state.upper_air) * len(era5.state.levels) + len(era5.state.surface) == 69
    assert load_config(REPO / "config" / "tiny.yaml").state.grid.nlat == 32


def test_hash_ignores_key_order_and_formatting(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    shuffled = dict(reversed(list(raw.items())))
    p = tmp_path / "shuffled.yaml"
    p.write_text(json.dumps(shuffled, default=str, indent=7))  # JSON is YAML, different layout
    assert config_hash(load_config(p)) == config_hash(load_config(REPO / "config" / "tiny.yaml"))


def test_hash_changes_with_values(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    raw["nature_run"]["seed"] = 7
    p = tmp_path / "seed7.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert config_hash(load_config(p)) != config_hash(load_config(REPO / "config" / "tiny.yaml"))


def _write(tmp_path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    mutate(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


BAD = {
    "unknown_field": (lambda r: r.update(colour="red"), ["colour", "Extra inputs are not permitted"]),
    "bad_truncation": (lambda r: r["nature_run"].update(truncation=30), ["nature_run.truncation", "30"]),
    "levels_not_increasing": (lambda r: r["state"].update(levels=[500, 300]), ["state", "strictly increasing", "500, 300"]),
    "dt_not_dividing_6h": (lambda r: r["nature_run"].update(dt_minutes=7), ["nature_run", "dt_minutes=7.0", "360"]),
    "unknown_variable": (lambda r: r["state"].update(upper_air=["vorticity"]), ["state.upper_air.0", "vorticity"]),
    "overlapping_splits": (
        lambda r: r["splits"]["validation"].update(start="2000-01-20T00:00:00"),
        ["splits", "ordered and disjoint"],
    ),
    "split_outside_run": (
        lambda r: r["splits"]["test"].update(end="2000-06-01T00:00:00"),
        ["splits.test", "outside the nature run"],
    ),
    "grid_mismatch": (lambda r: r["state"].update(grid={"kind": "gaussian", "nlat": 64, "nlon": 128}), ["state.grid", "T21"]),
    "bad_kind": (lambda r: r.update(data={"kind": "ftp"}), ["data", "ftp"]),
    "moist_variable_from_dry_core": (
        lambda r: r["state"].update(upper_air=["specific_humidity"]), ["cannot provide", "specific_humidity"]
    ),
    "start_off_grid": (lambda r: r["nature_run"].update(start="2000-01-01T03:00:00"), ["6-hourly grid"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_config_names_field_and_value(tmp_path, case):
    mutate, needles = BAD[case]
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- list\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(p)


def test_cli_validate_and_show(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "validate", str(REPO / "config" / "tiny.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output
    shown = runner.invoke(app, ["config", "show", str(REPO / "config" / "tiny.yaml")])
    body = json.loads(shown.output)
    assert body["hash"] == config_hash(load_config(REPO / "config" / "tiny.yaml"))
    assert body["config"]["nature_run"]["members"] == 1  # defaults resolved


def test_cli_exit_code_for_bad_config(tmp_path):
    import subprocess
    import sys

    bad = _write(tmp_path, lambda r: r["nature_run"].update(truncation=30))
    before = set(tmp_path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "align_da_ops.cli", "config", "validate", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "nature_run.truncation" in proc.stderr and "30" in proc.stderr
    assert set(tmp_path.iterdir()) == before  # nothing written
