"""Tiny-config factories shared by tests (import as `from factories import ...`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml

from align_da_ops.config import ExperimentConfig
from align_da_ops.diffusion.training import PriorSettings

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def tiny_config_dict(output: Path, days: float = 2.0, members: int = 1, chunk_days: float = 0.5) -> dict:
    """The shipped tiny config, shortened: `days` of output, splits inside it."""
    raw = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    raw["nature_run"].update(days=days, members=members, chunk_days=chunk_days, output=str(output))
    hours = int(days * 24)
    third = max(6, (hours // 3) // 6 * 6)
    t0 = datetime(2000, 1, 1)
    raw["splits"] = {
        "train": {"start": t0.isoformat(), "end": (t0 + timedelta(hours=third - 6)).isoformat()},
        "validation": {"start": (t0 + timedelta(hours=third)).isoformat(), "end": (t0 + timedelta(hours=2 * third - 6)).isoformat()},
        "test": {"start": (t0 + timedelta(hours=2 * third)).isoformat(), "end": (t0 + timedelta(hours=hours - 6)).isoformat()},
    }
    return raw


def tiny_config(output: Path, **kw) -> ExperimentConfig:
    return ExperimentConfig.model_validate(tiny_config_dict(output, **kw))


# a prior small enough to train in a second on the 2-day test nature run (mechanics, not skill)
TEST_PRIOR = PriorSettings(epochs=2, batch_size=2, width=8, blocks=1, levels=1, leads=(6,), warmup_steps=1)


CYCLED_START, CYCLED_END = "2000-01-01T06", "2000-01-02T18"


def split_config_dict(nature: Path) -> dict:
    """The 2-day tiny config with 6-hourly splits for archive-reading tests: train 01T00-18, validation
    02T00-06, test 02T12-18."""
    raw = tiny_config_dict(nature)
    raw["splits"] = {
        "train": {"start": "2000-01-01T00:00:00", "end": "2000-01-01T18:00:00"},
        "validation": {"start": "2000-01-02T00:00:00", "end": "2000-01-02T06:00:00"},
        "test": {"start": "2000-01-02T12:00:00", "end": "2000-01-02T18:00:00"},
    }
    return raw


def persistence_archive(nature: Path, root: Path, name: str):
    """A background-only, persistence campaign with a 1 % random mask cycled from 01T06 (cold start: the truth
    at 01T00) to 02T18 over `split_config_dict`'s splits: every archived background is the cold start.
    Returns (config, config file, archive path)."""
    from align_da_ops.campaign import CampaignConfig
    from align_da_ops.replaying import replay
    from align_da_ops.times import CycleTime
    from align_da_ops.wiring import build_context

    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(split_config_dict(nature), sort_keys=False))
    cfg = ExperimentConfig.model_validate(split_config_dict(nature))
    raw = {
        "name": name, "config": str(config), "start": CYCLED_START + ":00:00", "end": CYCLED_END + ":00:00",
        "observations": {"networks": [{"kind": "random_mask", "fraction": 0.01}]},
        "analysis": {"kind": "background_only"}, "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 0.25}, "leads_hours": [6],
        "archive": str(root / "archive"),
    }
    ctx = build_context(CampaignConfig.model_validate(raw), cfg)
    outcomes = replay(ctx, CycleTime.parse(CYCLED_START), CycleTime.parse(CYCLED_END))
    assert all(o.status == "done" for o in outcomes)
    return cfg, config, root / "archive"
