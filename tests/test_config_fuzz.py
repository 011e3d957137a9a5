"""Hostile campaign configs: meaningless values are refused naming the field (exit 2), and generated
configs either validate or fail with a ConfigError that names the field, never another exception."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from align_da_ops.campaign import CampaignConfig
from align_da_ops.config import load_yaml_model
from align_da_ops.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
VALID = {
    "name": "fuzz",
    "config": "config/tiny.yaml",
    "start": "2000-02-01T00:00:00",
    "end": "2000-02-02T00:00:00",
    "observations": {"networks": [{"kind": "stations", "levels_hpa": [850, 500]}],
                     "qc": {"window_half_width": 10800, "gross_limits": {"temperature": [150.0, 350.0]}}},
    "analysis": {"kind": "latent_diffusion", "guidance": "dps", "strength": 1.0, "members": 4},
    "cold_start": {"kind": "truth_offset", "offset_days": 10},
    "leads_hours": [6, 24],
    "archive": "data/fuzz-archive",
}

HOSTILE = [
    ("strength", {"analysis": {"kind": "latent_diffusion", "strength": float("inf")}}),
    ("b_scale", {"analysis": {"kind": "threedvar", "b_scale": float("nan")}}),
    ("levels_hpa", {"observations": {"networks": [{"kind": "stations", "levels_hpa": [-500]}]}}),
    ("window_half_width", {"observations": {"qc": {"window_half_width": 0}}}),
    ("window_half_width", {"observations": {"qc": {"window_half_width": -3600}}}),
    ("gross_limits", {"observations": {"qc": {"gross_limits": {"temperature": [350.0, 150.0]}}}}),
    ("leads_hours", {"leads_hours": [6, 6_000_000]}),
    ("offset_days", {"cold_start": {"kind": "truth_offset", "offset_days": 1e9}}),
    ("archive", {"archive": ""}),
    ("archive", {"archive": "pyproject.toml"}),
    ("archive", {"archive": "align_da_ops/archives/x"}),
    ("rtps", {"analysis": {"kind": "letkf", "rtps": 2.0}}),
]


@pytest.mark.parametrize("field,change", HOSTILE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(HOSTILE)])
def test_meaningless_values_exit_2_naming_the_field(field, change, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({**VALID, **change}))
    with pytest.raises(ConfigError, match=field):
        load_yaml_model(path, CampaignConfig, "campaign")


def test_exit_code_2_from_the_command_line(tmp_path):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({**VALID, "leads_hours": [6, 6_000_000]}))
    proc = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "config", "validate", str(path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "leads_hours" in proc.stderr and "Traceback" not in proc.stderr


def test_timezone_aware_start_with_naive_end():
    cfg = CampaignConfig.model_validate({**VALID, "start": "2000-02-01T06:00:00+06:00", "end": "2000-02-01T06:00:00"})
    assert cfg.start.tzinfo is None and cfg.start.hour == 0 and cfg.first < cfg.last


def _leaf_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaf_paths(value, (*prefix, i))
    yield prefix


PATHS = [p for p in _leaf_paths(VALID) if p]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.lists(st.integers(-10, 10**7), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=VALUES, drop=st.booleans())
def test_generated_configs_validate_or_name_a_field(path, value, drop, tmp_path_factory):
    raw = copy.deepcopy(VALID)
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    file = tmp_path_factory.mktemp("fuzz") / "campaign.yaml"
    file.write_text(yaml.safe_dump(raw))
    try:
        load_yaml_model(file, CampaignConfig, "campaign")
    except ConfigError as exc:
        assert str(path[0]) in str(exc), str(exc)
