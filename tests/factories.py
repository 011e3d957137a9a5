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
