"""Observation config: defaults, kind tags, and cross-field errors that name the values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from align_da_ops.obs.config import DEFAULT_SYNTHETIC_ERRORS, ObservationsConfig, StationNetwork, SwathNetwork


def test_defaults_are_the_paper_network():
    cfg = ObservationsConfig()
    (net,) = cfg.networks
    assert (net.kind, net.fraction, net.time_spread, net.label) == ("random_mask", 0.01, False, "random_mask")
    assert net.error_std("temperature") == DEFAULT_SYNTHETIC_ERRORS["temperature"]


def test_networks_are_chosen_by_kind_and_errors_override():
    cfg = ObservationsConfig.model_validate(
        {"networks": [{"kind": "stations", "errors": {"temperature": 0.5}, "name": "raob"}, {"kind": "swath"}]}
    )
    assert isinstance(cfg.networks[0], StationNetwork) and isinstance(cfg.networks[1], SwathNetwork)
    assert cfg.networks[0].error_std("temperature") == 0.5 and cfg.networks[0].label == "raob"


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"networks": [{"kind": "radar"}]}, "radar"),
        ({"networks": [{"kind": "stations", "errors": {"temperature": 0.0}}]}, "error std must be > 0"),
        ({"networks": [{"kind": "stations", "gross_error_sigmas": [9.0, 3.0]}]}, "(9.0, 3.0)"),
        ({"networks": [{"kind": "random_mask", "fraction": 0.01, "spam": 1}]}, "spam"),
        ({"level_bands_hpa": [300.0, 700.0]}, "strictly descending"),
        ({"networks": [{"kind": "stations", "errors": {"humidity": 1.0}}]}, "humidity"),
    ],
)
def test_invalid_settings_name_the_problem(raw, needle):
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ObservationsConfig.model_validate(raw)
