"""Observation benchmarks: BUFR decode time beside a plain ecCodes loop, and H throughput (CPU and CUDA side by side)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from align_da_ops.grid import ERA5_LEVELS, StateLayout, equiangular_latitudes, longitudes
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator

# The paper's 69 channels: z, t, q, u, v on 13 levels + u10, v10, t2m, msl.
PAPER_LAYOUT = StateLayout(
    ("geopotential", "temperature", "specific_humidity", "u_component_of_wind", "v_component_of_wind"),
    ("10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature", "mean_sea_level_pressure"),
    ERA5_LEVELS,
)


# The plain ecCodes loop decoding is compared with: unpack each message, read six keys every report type has.
PLAIN_KEYS = ("latitude", "longitude", "year", "month", "day", "hour")


def plain_eccodes_loop(messages: list[bytes]) -> int:
    """Unpack every message and read `PLAIN_KEYS` (one `codes_get_double_array` each); returns the keys read."""
    import eccodes

    n = 0
    for message in messages:
        h = eccodes.codes_new_from_message(message)
        try:
            eccodes.codes_set(h, "unpack", 1)
            for key in PLAIN_KEYS:
                try:
                    eccodes.codes_get_double_array(h, key)
                    n += 1
                except eccodes.KeyValueNotFoundError:
                    pass
        except eccodes.CodesInternalError:
            pass
        finally:
            eccodes.codes_release(h)
    return n


def synthetic_synop(messages: list[bytes], n: int) -> bytes:
    """`n` SYNOP messages made from the single-subset SYNOP ones among `messages`, taken in turn.

    Each copy is re-encoded with its own WMO block and station number (10000 + its index), so
    that every message is a report of its own, as in a real SYNOP file. Empty when there is no
    such message.
    """
    import eccodes

    handles = []
    for message in messages:
        h = eccodes.codes_new_from_message(message)
        try:
            eccodes.codes_set(h, "unpack", 1)
            single = eccodes.codes_get_long(h, "numberOfSubsets") == 1
            if eccodes.codes_get_long(h, "dataCategory") == 0 and single:
                eccodes.codes_get(h, "#1#blockNumber")
                handles.append(h)
                continue
        except eccodes.CodesInternalError:
            pass
        eccodes.codes_release(h)
    out = []
    try:
        for i in range(n if handles else 0):
            h = handles[i % len(handles)]
            eccodes.codes_set(h, "#1#blockNumber", 10 + i // 1000)
            eccodes.codes_set(h, "#1#stationNumber", i % 1000)
            eccodes.codes_set(h, "pack", 1)
            out.append(eccodes.codes_get_message(h))
    finally:
        for h in handles:
            eccodes.codes_release(h)
    return b"".join(out)


def _decode_row(name: str, data: bytes, repeats: int) -> dict:
    """Our decode and the plain ecCodes loop on the same bytes, best of `repeats` each, side by side."""
    from align_da_ops.obs.bufr import decode_bufr_bytes, scan_messages

    messages = scan_messages(data)[0]
    best, plain, decoded = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        decoded = decode_bufr_bytes(data, source=name)
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_eccodes_loop(messages)
        plain = min(plain, time.perf_counter() - t0)
    r = decoded.report
    return {
        "file": name,
        "messages": r.messages,
        "reports": r.reports,
        "observations": r.observations,
        "seconds": best,
        "eccodes_loop_s": plain,
    }


def bench_decode(files: list[Path], repeats: int = 3, synthetic_messages: int = 3000) -> list[dict]:
    """Decode time per file and on a generated SYNOP file, each beside a plain ecCodes loop on the same bytes.

    Rows: one per file, their total, then (when the files hold single-subset SYNOP messages) a
    file of `synthetic_messages` SYNOP messages made from them (`synthetic_synop`). Times are the
    best of `repeats`, with the decoder process already started; `ratio` = our time / the loop's
    (the loop unpacks each message and reads `PLAIN_KEYS`); reports/s and observations/s are ours.
    """
    from align_da_ops.obs.bufr import decode_bufr_bytes, scan_messages

    blobs = {Path(path).name: Path(path).read_bytes() for path in files}
    decode_bufr_bytes(next(iter(blobs.values()), b""))  # start the decoder process outside the timings
    rows = [_decode_row(name, data, repeats) for name, data in blobs.items()]
    keys = ("messages", "reports", "observations", "seconds", "eccodes_loop_s")
    rows.append({"file": "total", **{k: sum(r[k] for r in rows) for k in keys}})
    messages = [m for data in blobs.values() for m in scan_messages(data)[0]]
    synthetic = synthetic_synop(messages, synthetic_messages) if synthetic_messages > 0 else b""
    if synthetic:
        rows.append(_decode_row(f"generated SYNOP ({synthetic_messages} messages)", synthetic, repeats))
    for r in rows:
        r["ratio"] = r["seconds"] / r["eccodes_loop_s"] if r["eccodes_loop_s"] else float("nan")
        r["reports_per_s"] = r["reports"] / r["seconds"] if r["seconds"] else float("nan")
        r["obs_per_s"] = r["observations"] / r["seconds"] if r["seconds"] else float("nan")
        r["eccodes_loop_s"] = round(r["eccodes_loop_s"], 4)
        r["ratio"] = round(r["ratio"], 2)
    return rows


def random_obs(n: int, layout: StateLayout, seed: int = 0) -> ObsBatch:
    """n observations anywhere on the sphere, variables drawn from the layout, pressures within its levels."""
    rng = np.random.default_rng(seed)
    names = np.asarray(layout.upper_air + layout.surface)
    variable = names[rng.integers(0, len(names), n)]
    surface = np.isin(variable, layout.surface)
    lo, hi = np.log(100.0 * min(layout.levels)), np.log(100.0 * max(layout.levels))
    pressure = np.where(surface, np.nan, np.exp(rng.uniform(lo, hi, n)))
    return ObsBatch.from_columns(
        latitude=np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        longitude=rng.uniform(0, 360, n),
        pressure=pressure,
        time=np.datetime64("2000-01-01T00:00:00", "s"),
        variable=variable,
        value=np.zeros(n),
        error=np.ones(n),
        obs_type="bench",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_operator(
    devices: tuple[str, ...], n_obs: int = 100_000, nlat: int = 128, nlon: int = 256, members: int = 1, repeats: int = 5
) -> list[dict]:
    """Seconds to prepare H for `n_obs`, apply it, and apply + backward, per device (float32 state)."""
    layout = PAPER_LAYOUT
    op = GridInterpolator(layout, equiangular_latitudes(nlat), longitudes(nlon))
    obs = random_obs(n_obs, layout)
    t0 = time.perf_counter()
    op.prepare(obs)
    prepare_s = time.perf_counter() - t0
    rows = []
    for name in devices:
        device = torch.device(name)
        prepared = op.prepare(obs, device)
        state = torch.randn((members, *op.state_shape), device=device, requires_grad=True)
        with torch.no_grad():
            apply_s = _best(lambda p=prepared, x=state: p(x), device, repeats)
        grad_s = _best(lambda p=prepared, x=state: p(x).sum().backward(), device, repeats)
        rows.append(
            {
                "device": name,
                "grid": f"{nlat}x{nlon}x{layout.n_channels}",
                "members": members,
                "n_obs": n_obs,
                "prepare_s": prepare_s,
                "apply_s": apply_s,
                "apply_backward_s": grad_s,
                "obs_per_s": n_obs * members / apply_s,
            }
        )
    for r in rows:
        r["speedup_vs_first"] = rows[0]["apply_s"] / r["apply_s"]
    return rows
