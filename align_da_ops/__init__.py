"""align-da-ops: cycling atmospheric data assimilation with Align-DA.

The Python API (see `align_da_ops.api`), imported on first use so that `import align_da_ops` stays light:
`load_campaign`, `open_campaign`, `run_cycle`, `replay`, `open_archive`, `status`, `cycle_time`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("align-da-ops")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

API = ("load_campaign", "open_campaign", "run_cycle", "replay", "open_archive", "status", "cycle_time")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from align_da_ops import api

        return getattr(api, name)
    raise AttributeError(f"module 'align_da_ops' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
