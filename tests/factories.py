"""Tiny-config factories shared by tests (import as `from factories import ...`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml

from align_da_ops.config import ExperimentConfig

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
