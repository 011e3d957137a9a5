"""Cycle points as values: `CycleTime` on the 6-hourly grid (00/06/12/18 UTC)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import numpy as np

CYCLE = timedelta(hours=6)


@dataclasses.dataclass(frozen=True, order=True)
class CycleTime:
    """A naive-UTC datetime on the 6-hourly grid; arithmetic keeps it there."""

    value: datetime

    def __post_init__(self):
        v = self.value
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc).replace(tzinfo=None)
            object.__setattr__(self, "value", v)
        if v.minute or v.second or v.microsecond or v.hour % 6:
            raise ValueError(f"cycle time {v.isoformat()} is not on the 6-hourly grid (00/06/12/18 UTC)")

    @classmethod
    def parse(cls, text: str) -> "CycleTime":
        """ISO 8601 ('2000-01-01T06', '2000-01-01T06:00:00') or compact 'YYYYMMDDHH'."""
        text = text.strip()
        try:
            if len(text) == 10 and text.isdigit():
                return cls(datetime.strptime(text, "%Y%m%d%H"))
            return cls(datetime.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"cannot read cycle time {text!r}: {exc}") from None

    @classmethod
    def from_numpy(cls, value: np.datetime64) -> "CycleTime":
        return cls(datetime.fromisoformat(str(np.datetime64(value, "s"))))

    @classmethod
    def latest_at_or_before(cls, when: datetime) -> "CycleTime":
        when = when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when
        return cls(when.replace(hour=when.hour - when.hour % 6, minute=0, second=0, microsecond=0))

    @property
    def next(self) -> "CycleTime":
        return CycleTime(self.value + CYCLE)

    @property
    def previous(self) -> "CycleTime":
        return CycleTime(self.value - CYCLE)

    def __add__(self, delta: timedelta) -> "CycleTime":
        return CycleTime(self.value + delta)

    def window(self, half_width: timedelta = timedelta(hours=3)) -> tuple[datetime, datetime]:
        """The assimilation window [t - half_width, t + half_width)."""
        return self.value - half_width, self.value + half_width

    def as_numpy(self) -> np.datetime64:
        return np.datetime64(self.value, "ns")

    @property
    def compact(self) -> str:
        return self.value.strftime("%Y%m%d%H")

    def __str__(self) -> str:
        return self.value.strftime("%Y-%m-%dT%HZ")


def cycle_range(start: CycleTime, end: CycleTime) -> list[CycleTime]:
    """All cycles from start to end inclusive."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    out, t = [], start
    while t <= end:
        out.append(t)
        t = t.next
    return out
