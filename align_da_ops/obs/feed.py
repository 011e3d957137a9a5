"""Directory-drop observation feed: incoming/ -> processed/ or quarantine/, nothing ever deleted.

Contract: writers put a file into `incoming/` by renaming it there when complete
(names starting with "." or ending in .tmp/.part are ignored as in-flight).
`ObsFeed.poll()` decodes each incoming file once:
- usable -> the decoded batch is written beside it as `processed/NAME.ioda.nc`
  (plus `NAME.report.json`), then the file itself moves to `processed/NAME`;
- unusable (empty, garbage, wrong format, truncated, every message bad, or the
  decoder itself failing) -> `quarantine/NAME` with the reason in
  `quarantine/NAME.reason.txt`.
A name already taken in the destination gets a numeric suffix, so nothing is
overwritten. A crash between writing the IODA file and moving the original
only means the file is decoded again next time (same result).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.bufr import Decoded, decode_bufr_file
from align_da_ops.obs.ioda import read_ioda, write_ioda

log = get_logger(__name__)
Decoder = Callable[[Path], Decoded]
_IN_FLIGHT = (".tmp", ".part")


@dataclasses.dataclass(frozen=True)
class FeedResult:
    """What became of one incoming file."""

    name: str
    status: str  # "processed" or "quarantined"
    path: Path  # where the original file now lies
    reason: str | None
    observations: int
    reports: int
    ioda: Path | None


def _unique(directory: Path, name: str) -> Path:
    target = directory / name
    k = 1
    while target.exists() or target.with_name(target.name + ".ioda.nc").exists():
        target = directory / f"{name}.{k}"
        k += 1
    return target


class ObsFeed:
    """A feed rooted at `root` with incoming/, processed/ and quarantine/ (created if absent)."""

    def __init__(self, root: Path, decoder: Decoder = decode_bufr_file):
        self.root = Path(root)
        self.incoming, self.processed, self.quarantine = (
            self.root / d for d in ("incoming", "processed", "quarantine")
        )
        for d in (self.incoming, self.processed, self.quarantine):
            d.mkdir(parents=True, exist_ok=True)
        self.decoder = decoder

    def pending(self) -> list[Path]:
        """Complete files waiting in incoming/, oldest name first."""
        return sorted(
            p
            for p in self.incoming.iterdir()
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_IN_FLIGHT)
        )

    def poll(self) -> list[FeedResult]:
        """Decode every pending file once and move it; never raises for bad content."""
        return [self._take(path) for path in self.pending()]

    def _take(self, path: Path) -> FeedResult:
        try:
            decoded = self.decoder(path)
            reason = decoded.report.unusable_reason()
        except Exception as exc:  # the feed must survive a decoder bug; the file is kept for inspection
            log.exception("decoder_failed", file=str(path))
            return self._quarantine(path, f"decoder failed: {type(exc).__name__}: {exc}")
        if reason is not None:
            return self._quarantine(path, reason)
        target = _unique(self.processed, path.name)
        ioda = target.with_name(target.name + ".ioda.nc")
        batch = decoded.batch
        times = {"time_min": str(batch.time.min()), "time_max": str(batch.time.max())} if len(batch) else {}
        write_ioda(batch, ioda, {"source_file": path.name, **times})
        report = dataclasses.asdict(decoded.report)
        target.with_name(target.name + ".report.json").write_text(json.dumps(report, indent=1, default=str))
        os.replace(path, target)
        log.info("obs_file_processed", file=path.name, reports=decoded.report.reports, observations=len(batch))
        return FeedResult(path.name, "processed", target, None, len(batch), decoded.report.reports, ioda)

    def _quarantine(self, path: Path, reason: str) -> FeedResult:
        target = _unique(self.quarantine, path.name)
        os.replace(path, target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        log.warning("obs_file_quarantined", file=path.name, reason=reason)
        return FeedResult(path.name, "quarantined", target, reason, 0, 0, None)

    def collect(self, start: np.datetime64 | None = None, end: np.datetime64 | None = None) -> ObsBatch:
        """All processed observations from files whose time range meets [start, end] (no QC applied)."""
        batches = []
        for path in sorted(self.processed.glob("*.ioda.nc")):
            batch = read_ioda(path)
            bounded = len(batch) and start is not None and end is not None
            if bounded and (batch.time.max() < np.datetime64(start, "s") or batch.time.min() > np.datetime64(end, "s")):
                continue
            batches.append(batch)
        return ObsBatch.concat(batches)
