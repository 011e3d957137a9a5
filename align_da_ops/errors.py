"""Expected failures, each mapped to a CLI exit code. Bugs are not errors here: they crash."""

from __future__ import annotations


class AlignDAError(Exception):
    """Base of every expected, user-facing failure."""

    exit_code = 1


class ConfigError(AlignDAError):
    """A configuration file is missing, unparsable or invalid."""

    exit_code = 2


class InputDataError(AlignDAError):
    """An input file (state store, GRIB, BUFR, restart) is missing or unreadable."""

    exit_code = 3


class SchemaError(InputDataError):
    """Data is readable but does not match the expected state schema (dims, variables, levels)."""

    exit_code = 4


class StoreError(AlignDAError):
    """An output store cannot be created or resumed safely (e.g. it belongs to another run)."""

    exit_code = 5


class DeviceError(AlignDAError):
    """A requested compute device is not available."""

    exit_code = 6


class ObservationError(InputDataError):
    """Observations are unreadable or inconsistent (bad file, bad column, unknown variable)."""

    exit_code = 3


class ArchiveError(AlignDAError):
    """The archive cannot be written as asked (already done, locked by another engine, mismatched)."""

    exit_code = 7


class ArchiveLockedError(ArchiveError):
    """Another engine holds the archive's lock."""

    exit_code = 10


class ArchiveCorruptError(ArchiveError):
    """A done cycle's data is missing or does not match the checksums its done flag recorded."""

    exit_code = 11


class ArchiveWriteError(ArchiveError):
    """The operating system refused a write (disk full, file too large, permissions); nothing was marked done."""

    exit_code = 12


class CycleFailedError(AlignDAError):
    """A cycle's analysis failed its checks (NaN/Inf, collapsed ensemble) and no fallback was allowed."""

    exit_code = 8


class CheckpointError(AlignDAError):
    """A model checkpoint is missing, corrupt, not weights-only, or made for another grid/channel set/architecture."""

    exit_code = 9
