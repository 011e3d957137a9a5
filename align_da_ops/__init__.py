"""align-da-ops: cycling atmospheric data assimilation with Align-DA."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("align-da-ops")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"
