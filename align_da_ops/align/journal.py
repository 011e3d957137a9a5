"""A journal of finished work items, so that a long build cut off (crash, kill -9, session end) resumes.

`CaseJournal(directory, identity)` keeps one file per finished item (`case-000123.pt`, a dict of tensors,
numbers and lists written with torch.save to a temporary name and renamed, so a file is whole or absent) and
`identity.json`, the build's identity (everything its results depend on). Opening a journal whose identity
differs discards its items: results of other settings, models or cases are never mixed in. Items are read
back with `weights_only=True`. The caller discards the journal once its final product is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from align_da_ops.logs import get_logger

log = get_logger(__name__)


class CaseJournal:
    """Finished items of one build, by index; see the module docstring."""

    def __init__(self, directory: Path, identity: dict):
        self.directory = Path(directory)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        marker = self.directory / "identity.json"
        if self.directory.exists():
            try:
                same = json.loads(marker.read_text()) == self.identity
            except (OSError, ValueError):
                same = False
            if not same:
                log.warning("journal_discarded", directory=str(self.directory), reason="another build's identity")
                shutil.rmtree(self.directory)
        if not self.directory.exists():
            tmp = self.directory.with_name(self.directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "identity.json").write_text(json.dumps(self.identity, sort_keys=True))
            tmp.rename(self.directory)

    def _path(self, index: int) -> Path:
        return self.directory / f"case-{index:06d}.pt"

    def done(self) -> list[int]:
        """Indices of the items kept, ascending."""
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("case-*.pt"))

    def load(self, index: int) -> dict | None:
        """The item kept for `index`, or None (never written, or unreadable: then it is removed and redone)."""
        path = self._path(index)
        if not path.exists():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # a torn or foreign file: redo the item
            log.warning("journal_item_unreadable", path=str(path), error=f"{type(exc).__name__}: {exc}")
            path.unlink(missing_ok=True)
            return None

    def save(self, index: int, item: dict) -> None:
        path = self._path(index)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(item, tmp)
        os.replace(tmp, path)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
