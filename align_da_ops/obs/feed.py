"""Directory-drop observation feed: incoming/ -> processed/ + decoded/, or quarantine/; nothing ever deleted.

Layout under `root` (created if absent):
  incoming/    writers rename complete files in; names starting with "." or ending in .tmp/.part are
               in flight and left alone.
  processed/   KEY: the original of every decoded file, byte for byte.
  decoded/     KEY.ioda.nc (the observations) and KEY.json (manifest: original name, size and SHA-256 of
               the IODA file, its time range, the decoder's report). Only the feed writes here, so no
               input, whatever its name, can pass for a decoded file.
  quarantine/  KEY and KEY.reason.txt: an unusable input (empty, garbage, truncated, no decodable
               message), an entry that is not a regular file (directory, FIFO, socket, device, symbolic
               link: moved aside, never opened or followed), or a decoded file that failed its check.
KEY is the input's name, shortened to fit filesystem limits when needed (head + "~" + 16 hex digits of
the name's SHA-256), with a ".N" suffix when taken, so nothing is overwritten.

Commit point: `poll()` writes decoded/KEY.ioda.nc and KEY.json, then moves the original to
processed/KEY; `collect()` reads decoded/KEY.* only while processed/KEY exists. A kill part-way thus
leaves the original in incoming/, decoded again next time, and no duplicate. `collect()` checks each
IODA file against its manifest before opening it (HDF5 may crash on a corrupt file): one that fails is
moved to quarantine/ with the reason and the other files are still read.

Errors: bad content never raises. A failure of the feed's own storage (permission, disk full, name too
long...) raises `FeedIOError` naming the path and the problem, and leaves the input where it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from align_da_ops.errors import ObservationError
from align_da_ops.logs import get_logger
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.bufr import Decoded, decode_bufr_file
from align_da_ops.obs.ioda import read_ioda_checked, write_ioda

log = get_logger(__name__)
Decoder = Callable[[Path], Decoded]
_IN_FLIGHT = (".tmp", ".part")
_IODA, _MANIFEST, _REASON = ".ioda.nc", ".json", ".reason.txt"
# Bytes of a KEY: derived names add at most ~30 (".N", ".reason.txt", ".ioda.nc", a temporary's "." + ".tmp").
_MAX_KEY = 200


class FeedIOError(ObservationError):
    """The feed's own storage failed (a directory cannot be listed, a file written or moved); exit code 3."""


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


def _printable(name: str) -> str:
    """The name as valid UTF-8 text (bytes that are not UTF-8 as backslash escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def feed_key(name: str) -> str:
    """A safe file name for `name`'s derived files: valid UTF-8 without backslashes or control characters
    (netCDF-C needs that) within `_MAX_KEY` bytes (if longer: head + "~" + 16 hex digits of its SHA-256)."""
    key = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in _printable(name))
    raw = key.encode()
    if len(raw) <= _MAX_KEY:
        return key
    return raw[: _MAX_KEY - 17].decode("utf-8", "ignore") + "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _free(directory: Path, key: str, *suffixes: str) -> str:
    """`key`, or `key.N` for the first N where no `directory/key[.N]{suffix}` exists (links included)."""
    candidate, k = key, 0
    while any(os.path.lexists(directory / (candidate + s)) for s in ("", *suffixes)):
        k += 1
        candidate = f"{key}.{k}"
    return candidate


def _io_error(action: str, path: Path, exc: Exception) -> FeedIOError:
    code = errno.errorcode.get(getattr(exc, "errno", None) or 0)
    problem = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return FeedIOError(f"observation feed: cannot {action} {path}: {problem}" + (f" ({code})" if code else ""))


@contextlib.contextmanager
def _storage(action: str, path: Path, also: tuple[type[Exception], ...] = ()):
    """Re-raise an OS error (or `also`) of `action` on `path` as a `FeedIOError` naming both."""
    try:
        yield
    except (OSError, *also) as exc:
        raise _io_error(action, path, exc) from exc


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8", "backslashreplace"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _sha256_synced(path: Path) -> tuple[str, int]:
    """(SHA-256, size) of the file, flushed to disk first so a committed file survives a power cut."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        data = f.read()
    return hashlib.sha256(data).hexdigest(), len(data)


def _not_regular(path: Path, mode: int) -> str | None:
    """Why an incoming entry is not taken as a file (None for a regular file); never opens or follows it."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        state = "not followed" if os.path.exists(path) else "dangling"
        return f"not a regular file: symbolic link to {_printable(target)!r} ({state})"
    kinds = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"))
    kinds += ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    kind = next((k for test, k in kinds if test(mode)), f"mode {stat.filemode(mode)}")
    return f"not a regular file: {kind}; moved aside unopened"


class ObsFeed:
    """A feed rooted at `root` with incoming/, processed/, decoded/ and quarantine/ (created if absent)."""

    def __init__(self, root: Path, decoder: Decoder = decode_bufr_file):
        self.root = Path(root)
        self.incoming, self.processed, self.decoded, self.quarantine = (
            self.root / d for d in ("incoming", "processed", "decoded", "quarantine")
        )
        for d in (self.incoming, self.processed, self.decoded, self.quarantine):
            with _storage("create directory", d):
                d.mkdir(parents=True, exist_ok=True)
        self.decoder = decoder

    def _waiting(self) -> list[Path]:
        with _storage("list", self.incoming):
            names = sorted(os.listdir(self.incoming))
        return [self.incoming / n for n in names if not n.startswith(".") and not n.endswith(_IN_FLIGHT)]

    def pending(self) -> list[Path]:
        """Complete regular files waiting in incoming/ (symbolic links excluded), oldest name first."""
        out = []
        for p in self._waiting():
            with contextlib.suppress(OSError):
                if stat.S_ISREG(p.lstat().st_mode):
                    out.append(p)
        return out

    def poll(self) -> list[FeedResult]:
        """Take every waiting entry of incoming/ once: decode it, or quarantine it with the reason.

        Never raises for content; raises `FeedIOError` when the feed's storage fails.
        """
        results = []
        for path in self._waiting():
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # gone since the listing
            except OSError as exc:
                raise _io_error("inspect", path, exc) from exc
            why = _not_regular(path, mode)
            results.append(self._quarantine(path, why) if why else self._take(path))
        return results

    def _take(self, path: Path) -> FeedResult:
        name = _printable(path.name)
        try:
            decoded = self.decoder(path)
            reason = decoded.report.unusable_reason()
        except Exception as exc:  # the feed must survive a decoder bug; the file is kept for inspection
            log.exception("decoder_failed", file=name)
            return self._quarantine(path, f"decoder failed: {type(exc).__name__}: {exc}")
        if reason is not None:
            return self._quarantine(path, reason)
        key = _free(self.processed, feed_key(path.name))
        ioda, manifest, target = self.decoded / (key + _IODA), self.decoded / (key + _MANIFEST), self.processed / key
        batch, report = decoded.batch, decoded.report
        times = {"time_min": str(batch.time.min()), "time_max": str(batch.time.max())} if len(batch) else {}
        try:
            with _storage("write", ioda, also=(RuntimeError,)):  # netCDF-C reports ENOSPC as RuntimeError
                write_ioda(batch, ioda, {"source_file": name, **times})
                sha, size = _sha256_synced(ioda)
            info = {"original_name": name, "ioda_sha256": sha, "ioda_bytes": size, "observations": len(batch)}
            info |= times | {"decode_report": dataclasses.asdict(report)}
            with _storage("write", manifest):
                _write_atomic(manifest, json.dumps(info, indent=1, default=str))
            with _storage(f"move {path} to", target):
                os.replace(path, target)  # the commit point
        except FeedIOError:
            for p in (ioda, manifest):  # not committed: nothing refers to them
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            raise
        log.info("obs_file_processed", file=name, key=key, reports=report.reports, observations=len(batch))
        if report.failed or report.problems:
            log.warning("obs_file_partly_bad", file=name, failed_messages=report.failed, problems=report.problems[:5])
        return FeedResult(path.name, "processed", target, None, len(batch), report.reports, ioda)

    def _quarantine(self, path: Path, reason: str) -> FeedResult:
        """Move `path` (any kind of entry) to quarantine/ beside a reason file written first."""
        key = _free(self.quarantine, feed_key(path.name), _REASON)
        target, note = self.quarantine / key, self.quarantine / (key + _REASON)
        with _storage("write", note):
            _write_atomic(note, f"{reason}\noriginal name: {_printable(path.name)}\n")
        try:
            with _storage(f"move {path} to", target):
                os.replace(path, target)
        except FeedIOError:
            with contextlib.suppress(OSError):
                note.unlink(missing_ok=True)
            raise
        log.warning("obs_file_quarantined", file=_printable(path.name), reason=reason, to=str(target))
        return FeedResult(path.name, "quarantined", target, reason, 0, 0, None)

    def collect(self, start: np.datetime64 | None = None, end: np.datetime64 | None = None) -> ObsBatch:
        """Observations of every committed decoded file whose time range meets [start, end] (no QC applied).

        A decoded file failing its check (manifest, size and SHA-256, content) is quarantined with the
        reason and skipped; rows breaking the ObsBatch contract are dropped and logged.
        """
        with _storage("list", self.decoded):
            names = sorted(os.listdir(self.decoded))
        batches = []
        for name in names:
            if name.startswith(".") or not name.endswith(_IODA):
                continue
            key = name[: -len(_IODA)]
            if not os.path.lexists(self.processed / key):
                continue  # not committed: a poll was stopped before moving the original
            try:
                batch = self._read_decoded(key, start, end)
            except ObservationError as exc:
                self._quarantine(
                    self.decoded / name,
                    f"decoded file failed its check: {exc}\n"
                    f"its original is processed/{_printable(key)}: move it back to incoming/ to decode it again",
                )
                continue
            bounded = batch is not None and len(batch) and start is not None and end is not None
            if bounded and (batch.time.max() < np.datetime64(start, "s") or batch.time.min() > np.datetime64(end, "s")):
                continue
            if batch is not None:
                batches.append(batch)
        return ObsBatch.concat(batches)

    def _read_decoded(self, key: str, start, end) -> ObsBatch | None:
        """The checked batch of decoded/KEY, or None when its manifest puts it outside [start, end]."""
        ioda, manifest = self.decoded / (key + _IODA), self.decoded / (key + _MANIFEST)
        try:
            info = json.loads(manifest.read_bytes())
            want, size = str(info["ioda_sha256"]), int(info["ioda_bytes"])
            tmin, tmax = info.get("time_min"), info.get("time_max")
            if start is not None and end is not None and tmin is not None and tmax is not None:
                s, e = np.datetime64(start, "s"), np.datetime64(end, "s")
                if np.datetime64(tmax, "s") < s or np.datetime64(tmin, "s") > e:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ObservationError(f"manifest {manifest.name} missing or unreadable: {type(exc).__name__}: {exc}")
        try:
            data = ioda.read_bytes()
        except OSError as exc:
            raise ObservationError(f"cannot read {ioda}: {exc.strerror or exc}") from None
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != want:
            raise ObservationError(
                f"{ioda.name} is {len(data)} bytes with SHA-256 {got[:16]}..., but was written as {size} bytes "
                f"with {want[:16]}...: corrupt or truncated"
            )
        batch, problems = read_ioda_checked(ioda)
        if problems:
            log.warning("decoded_rows_dropped", file=str(ioda), problems=problems)
        return batch
