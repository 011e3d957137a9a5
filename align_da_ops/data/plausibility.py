"""Physical plausibility of a nature run: jets, temperature range, eddy energy, NaNs.

`climate_report(ds)` returns plain numbers (SI units) that tests and the CLI
check against the Held–Suarez climate: mid-latitude westerly jets of 20–40 m/s,
temperatures within ~180–320 K, nonzero eddy kinetic energy, no NaN.
"""

from __future__ import annotations

import xarray as xr

from align_da_ops import grid


def climate_report(ds: xr.Dataset, member: int = 0) -> dict:
    if grid.MEMBER in ds.dims:
        ds = ds.isel({grid.MEMBER: member})
    u = ds["u_component_of_wind"].load()
    v = ds["v_component_of_wind"].load()
    t = ds["temperature"].load()
    lat = ds[grid.LAT].values
    weights = xr.DataArray(grid.latitude_weights(lat), dims=[grid.LAT])
    u_zm = u.mean([grid.LON, grid.TIME])  # (level, lat)
    south, north = lat < -20, lat > 20
    eddy_u = u - u.mean(grid.LON)
    eddy_v = v - v.mean(grid.LON)
    eke = (0.5 * (eddy_u**2 + eddy_v**2)).weighted(weights).mean([grid.LAT, grid.LON]).mean(grid.TIME)
    nan_count = sum(int(ds[name].isnull().sum()) for name in ds.data_vars)
    return {
        "jet_max_south_ms": float(u_zm.isel({grid.LAT: south}).max()),
        "jet_max_north_ms": float(u_zm.isel({grid.LAT: north}).max()),
        "jet_lat_south_deg": float(lat[south][int(u_zm.isel({grid.LAT: south}).max(grid.LEVEL).argmax(grid.LAT))]),
        "jet_lat_north_deg": float(lat[north][int(u_zm.isel({grid.LAT: north}).max(grid.LEVEL).argmax(grid.LAT))]),
        "t_min_k": float(t.min()),
        "t_max_k": float(t.max()),
        "eke_m2s2": float(eke.max()),  # the level of most eddy energy
        "nan_count": nan_count,
        "times": int(ds.sizes.get(grid.TIME, 1)),
    }


def check_report(report: dict) -> list[str]:
    """Violations of the Held–Suarez climate (empty list: plausible)."""
    problems = []
    for side in ("south", "north"):
        speed = report[f"jet_max_{side}_ms"]
        if not 20.0 <= speed <= 40.0:
            problems.append(f"{side}ern jet {speed:.1f} m/s outside 20-40 m/s")
        if not 20.0 <= abs(report[f"jet_lat_{side}_deg"]) <= 60.0:
            problems.append(f"{side}ern jet at {report[f'jet_lat_{side}_deg']:.1f}° is not in mid-latitudes")
    if report["t_min_k"] < 175.0 or report["t_max_k"] > 325.0:
        problems.append(f"temperatures [{report['t_min_k']:.1f}, {report['t_max_k']:.1f}] K outside ~180-320 K")
    if not report["eke_m2s2"] > 1.0:
        problems.append(f"eddy kinetic energy {report['eke_m2s2']:.3g} m²/s² is ~zero: no baroclinic eddies")
    if report["nan_count"]:
        problems.append(f"{report['nan_count']} NaN values")
    return problems
