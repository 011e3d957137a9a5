"""Spun-up core states: shipped with the package, cached, or spun up from rest.

A restart file is an `.npz` of the core's modal state (leading member axis of 1)
plus metadata: the core signature it belongs to, the spin-up length and time
step. Files are looked up by signature, so a state is never used with a core it
does not fit. Loading uses `numpy.load(allow_pickle=False)`: no code is executed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from align_da_ops.data.dycore import HeldSuarezCore
from align_da_ops.errors import InputDataError
from align_da_ops.logs import get_logger

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "restarts"
log = get_logger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("ALIGN_DA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "align-da-ops")
    return Path(root) / "restarts"


def restart_filename(signature: str) -> str:
    digest = hashlib.sha256(signature.encode()).hexdigest()[:12]
    stem = "-".join(signature.split("-")[:3])  # e.g. held_suarez-T21-L8
    return f"{stem}-{digest}.npz"


def save_restart(path: Path, core: HeldSuarezCore, state, **meta) -> None:
    """Atomic write (temp file + rename): a crash never leaves a half-written restart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = core.to_arrays(state)
    arrays["signature"] = np.array(core.spec.signature())
    for key, value in meta.items():
        arrays[key] = np.array(value)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_restart(path: Path, core: HeldSuarezCore) -> tuple[object, dict]:
    """Load a restart made for this core; InputDataError if unreadable or made for another core."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputDataError(f"cannot read restart state {path}: {exc}") from None
    signature = str(arrays.get("signature", ""))
    if signature != core.spec.signature():
        raise InputDataError(
            f"restart {path} was made for core {signature!r}, not {core.spec.signature()!r}"
        )
    try:
        state = core.from_arrays(arrays)
    except ValueError as exc:
        raise InputDataError(f"restart {path}: {exc}") from None
    meta = {k: v.item() for k, v in arrays.items() if v.ndim == 0 and k != "signature"}
    return state, meta


def spin_up(core: HeldSuarezCore, days: float, seed: int, progress=None):
    """Integrate from an isothermal rest state with seeded noise for `days`."""
    state = core.rest_state(seed=seed, members=1)
    steps_per_day = core.steps_for_hours(24)
    whole_days = int(days)
    for day in range(whole_days):
        state = core.advance(state, steps_per_day)
        if progress:
            progress(day + 1, whole_days)
    return state


def find_spun_up(core: HeldSuarezCore, explicit: Path | None, spinup_days: float, seed: int):
    """The explicit file, else the shipped one, else the cache, else spin up now (and cache)."""
    if explicit is not None:
        return load_restart(Path(explicit), core)
    name = restart_filename(core.spec.signature())
    for candidate in (SHIPPED_DIR / name, cache_dir() / name):
        if candidate.exists():
            log.info("restart_found", path=str(candidate))
            return load_restart(candidate, core)
    log.info("spinup_start", days=spinup_days, signature=core.spec.signature())
    state = spin_up(core, spinup_days, seed)
    meta = {"spinup_days": float(spinup_days), "dt_minutes": core.dt_minutes, "seed": int(seed)}
    target = cache_dir() / name
    save_restart(target, core, state, **meta)
    log.info("spinup_cached", path=str(target))
    return state, meta
