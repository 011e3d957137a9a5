"""Figures of states and archives, shared by `align-da inspect --png` and `align-da report`.

Every figure is a matplotlib `Figure` rendered by the Agg canvas (no pyplot, no global backend switch)
and written as a PNG. Contracts kept by every map and plot here: colour bars and axes carry units
(`units_of`: the DataArray's `units` attribute, else `grid.VARIABLES`); differences (increments, errors)
use a diverging colour map with a norm centred on zero (`diverging_norm`), full fields a sequential one;
time axes show valid times (cycle time + lead) in UTC.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from align_da_ops import grid

DIVERGING, SEQUENTIAL, SPREAD = "RdBu_r", "viridis", "magma_r"
DEPARTURES = (("omb", "O−B", "tab:blue"), ("oma", "O−A", "tab:orange"))
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


# -- labels ---------------------------------------------------------------------------------
def pretty_units(units: str) -> str:
    """CF-style exponents as superscripts: "m**2 s**-2" -> "m² s⁻²"."""
    return re.sub(r"\*\*(-?\d+)", lambda m: m.group(1).translate(_SUPERSCRIPT), units)


def units_of(variable: str, da: xr.DataArray | None = None) -> str:
    """Display units of a variable: the DataArray's `units` attribute, else the schema's (`grid.VARIABLES`); "" unknown."""
    units = da.attrs.get("units") if da is not None else None
    if not units and variable in grid.VARIABLES:
        units = grid.VARIABLES[variable].units
    return pretty_units(units or "")


def field_label(variable: str, level: int | None = None) -> str:
    """Short name of a field: "z500" for geopotential at 500 hPa, "sp" for surface pressure."""
    short = grid.VARIABLES[variable].short if variable in grid.VARIABLES else variable
    return f"{short}{level}" if level is not None else short


def channel_label(channel: str) -> str:
    """A layout channel name ("geopotential_500", "surface_pressure") as `field_label` writes it."""
    name, _, level = channel.rpartition("_")
    if name in grid.VARIABLES and level.isdigit():
        return field_label(name, int(level))
    return field_label(channel)


def channel_units(channel: str) -> str:
    name, _, level = channel.rpartition("_")
    return units_of(name if name in grid.VARIABLES and level.isdigit() else channel)


# -- colour norms ---------------------------------------------------------------------------
def diverging_norm(values):
    """A norm centred on zero, symmetric about it: vmin = −vmax = −max|values| (1 when all are zero or NaN)."""
    from matplotlib.colors import CenteredNorm

    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    half = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return CenteredNorm(vcenter=0.0, halfrange=half)


def sequential_norm(values, zero_based: bool = False):
    """Linear norm over the finite values (from 0 when `zero_based`, e.g. a spread)."""
    from matplotlib.colors import Normalize

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    return Normalize(vmin=0.0 if zero_based else lo, vmax=hi if hi > lo else lo + 1.0)


# -- maps -----------------------------------------------------------------------------------
LOCATION_STATUS = {"all used": "tab:blue", "some rejected": "tab:orange", "all rejected": "tab:red"}
KINDS = {  # map kind: (colour map, default norm of the values)
    "sequential": (SEQUENTIAL, sequential_norm),
    "diverging": (DIVERGING, diverging_norm),
    "spread": (SPREAD, lambda values: sequential_norm(values, zero_based=True)),
}


def map_png(da: xr.DataArray, path: str | Path, title: str, *, kind: str = "sequential", variable: str | None = None,
            quantity: str = "", points: pd.DataFrame | None = None, norm=None):
    """A latitude–longitude map of a 2-D field; returns the colour norm it used.

    `kind`: "sequential" (full fields), "diverging" (differences: `diverging_norm`, centred on 0) or
    "spread" (sequential from 0); `norm` overrides the kind's norm (e.g. one shared by two error maps).
    The colour bar reads "<quantity> (<units>)" with units from `units_of`. `points` (columns latitude,
    longitude): observation locations drawn as open circles.
    """
    from matplotlib.figure import Figure

    variable = variable or str(da.name)
    lon = np.asarray(da[grid.LON].values, dtype=np.float64)
    lat = np.asarray(da[grid.LAT].values, dtype=np.float64)
    values = np.asarray(da.transpose(grid.LAT, grid.LON).values, dtype=np.float64)
    lon = np.append(lon, lon[0] + 360.0)  # cyclic column so the map spans 0..360 °E
    values = np.concatenate([values, values[:, :1]], axis=1)
    if kind not in KINDS:
        raise ValueError(f"map kind {kind!r}; expected one of {sorted(KINDS)}")
    cmap, default_norm = KINDS[kind]
    norm = norm if norm is not None else default_norm(values)
    fig = Figure(figsize=(9, 4.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(lon, lat, values, shading="nearest", cmap=cmap, norm=norm)
    units = units_of(variable, da)
    fig.colorbar(mesh, ax=ax, shrink=0.9, label=f"{quantity or variable} ({units})" if units else quantity or variable)
    if points is not None and len(points):
        where = points[["latitude", "longitude"]].drop_duplicates()
        ax.scatter(where["longitude"], where["latitude"], s=14, facecolors="none", edgecolors="black", linewidths=0.7,
                   label=f"used observations ({len(where)} locations)")
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    _lat_lon_axes(ax)
    ax.set_title(title, fontsize=11)
    _save(fig, path)
    return norm


def locations_png(obs: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Observation locations, one marker shape per observation type, coloured by QC outcome at that location
    (all used, some rejected, all rejected). `obs` columns: latitude, longitude, obs_type, used (bool)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    sites = obs.groupby(["obs_type", "latitude", "longitude"])["used"].mean().rename("share").reset_index()
    sites["status"] = np.where(sites["share"] == 1.0, "all used", np.where(sites["share"] == 0.0, "all rejected", "some rejected"))
    markers = dict(zip(sorted(sites["obs_type"].unique()), "o^sDvP<>" * 4))
    for obs_type, marker in markers.items():
        for status, colour in LOCATION_STATUS.items():
            part = sites[(sites["obs_type"] == obs_type) & (sites["status"] == status)]
            if len(part):
                ax.scatter(part["longitude"], part["latitude"], s=30, marker=marker, facecolors="none", edgecolors=colour,
                           linewidths=1.2, label=f"{obs_type}, {status} ({len(part)})")
    _lat_lon_axes(ax)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="type, QC (locations)", title_fontsize=8)
    ax.set_title(title, fontsize=11)
    return _save(fig, path)


def _lat_lon_axes(ax) -> None:
    ax.set_xlim(0, 360)
    ax.set_ylim(-90, 90)
    ax.set_xticks(np.arange(0, 361, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_aspect("equal")
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")


# -- time series ----------------------------------------------------------------------------
def score_timeseries_png(scores: pd.DataFrame, channel: str, path: str | Path, title: str) -> Path:
    """WRMSE (top) and bias (bottom) of one channel against the truth per lead, on valid times (cycle + lead).

    `scores`: `evaluation.archive_scores`' table (index cycle_time, lead, method)."""
    from matplotlib.figure import Figure

    units = channel_units(channel)
    fig = Figure(figsize=(9, 5.6), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for lead in sorted(set(scores.index.get_level_values("lead"))):
        sel = scores.xs(lead, level="lead")
        valid = sel.index.get_level_values("cycle_time") + lead
        name = "analysis" if lead == pd.Timedelta(0) else f"+{int(lead.total_seconds() // 3600)} h forecast"
        top.plot(valid, sel[f"wrmse_{channel}"].values, marker=".", label=name)
        bottom.plot(valid, sel[f"bias_{channel}"].values, marker=".", label=name)
    top.set_ylabel(f"WRMSE ({units})")
    bottom.set_ylabel(f"bias, state − truth ({units})")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    top.legend(fontsize=8)
    top.set_title(title, fontsize=11)
    _valid_time_axis(bottom)
    return _save(fig, path)


def spread_skill_png(scores: pd.DataFrame, channel: str, path: str | Path, title: str) -> Path:
    """Ensemble spread against the RMSE of the ensemble mean (both latitude-weighted, lead 0) over cycles:
    a time series (left) and a scatter with the 1:1 line (right; points below it: under-dispersive)."""
    from matplotlib.figure import Figure

    from align_da_ops import verify

    sel = scores.xs(pd.Timedelta(0), level="lead")
    valid = sel.index.get_level_values("cycle_time")
    spread, skill = sel[f"spread_{channel}"].to_numpy(float), sel[f"ensrmse_{channel}"].to_numpy(float)
    units = channel_units(channel)
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1.6, 1))
    left.plot(valid, skill, marker=".", label="RMSE of the ensemble mean")
    left.plot(valid, spread, marker=".", label="ensemble spread")
    left.set_ylabel(f"{channel_label(channel)} ({units})")
    left.legend(fontsize=8)
    _valid_time_axis(left)
    right.scatter(skill, spread, s=18)
    top = float(np.nanmax(np.concatenate([spread, skill]))) * 1.1 if len(sel) else 1.0
    right.plot([0, top], [0, top], color="black", linewidth=0.8, label="spread = RMSE")
    right.set_xlim(0, top)
    right.set_ylim(0, top)
    right.set_aspect("equal")
    right.text(0.97, 0.03, "under-dispersive", transform=right.transAxes, ha="right", va="bottom", fontsize=8, color="0.4")
    right.text(0.03, 0.75, "over-dispersive", transform=right.transAxes, ha="left", va="top", fontsize=8, color="0.4")
    right.set_xlabel(f"RMSE of the ensemble mean ({units})")
    right.set_ylabel(f"spread ({units})")
    ratio = verify.over_cycles(spread, "spread_") / verify.over_cycles(skill, "ensrmse_")
    right.legend(fontsize=8, title=f"spread/RMSE over cycles: {ratio:.2f}", title_fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def departure_rms_timeseries_png(departures: pd.DataFrame, path: str | Path, title: str) -> Path:
    """O−B and O−A RMS per cycle, one panel per (obs_type, variable), from `departures` (see `departure_stats`)."""
    from matplotlib.figure import Figure

    groups = list(departures.groupby(["obs_type", "variable"], sort=True))
    fig, axes = _panel_grid(Figure, len(groups), 3, (4.0, 2.9))
    for ax, ((obs_type, variable), part) in zip(axes, groups):
        for key, label, colour in DEPARTURES:
            rms = part.groupby("cycle")[key].apply(lambda d: float(np.sqrt(np.mean(np.square(d)))))
            ax.plot(rms.index, rms.values, marker=".", color=colour, label=label)
        ax.set_title(f"{obs_type} · {field_label(variable)}", fontsize=9)
        ax.set_ylabel(f"RMS ({units_of(variable)})", fontsize=8)
        _valid_time_axis(ax, label=False)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _valid_time_axis(ax, label: bool = True) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.tick_params(axis="x", labelsize=8)
    if label:
        ax.set_xlabel("valid time (UTC)")


# -- observation departures -------------------------------------------------------------------
def departure_stats(departures: pd.DataFrame) -> pd.DataFrame:
    """Per (obs_type, variable): count and mean/std (ddof 0)/rms of O−B and O−A over the rows of
    `departures` (columns obs_type, variable, omb, oma; the used observations, finite)."""
    g = departures.groupby(["obs_type", "variable"], sort=True)
    out = g.size().rename("count").to_frame()
    for key, _, _ in DEPARTURES:
        out[f"{key}_mean"] = g[key].mean()
        out[f"{key}_std"] = g[key].std(ddof=0)
        out[f"{key}_rms"] = g[key].apply(lambda d: float(np.sqrt(np.mean(np.square(d)))))
    return out


def histograms_png(departures: pd.DataFrame, path: str | Path, title: str) -> pd.DataFrame:
    """O−B and O−A histograms, one panel per (obs_type, variable), each with its units and, in the legend,
    count, mean and std; returns the `departure_stats` the panels show."""
    from matplotlib.figure import Figure

    stats = departure_stats(departures)
    fig, axes = _panel_grid(Figure, len(stats), 3, (4.0, 3.0))
    for ax, ((obs_type, variable), row) in zip(axes, stats.iterrows()):
        part = departures[(departures["obs_type"] == obs_type) & (departures["variable"] == variable)]
        both = np.concatenate([part["omb"], part["oma"]])
        lo, hi = np.percentile(both, [0.5, 99.5])
        bins = np.linspace(lo, hi, 31) if hi > lo else 10
        for key, label, colour in DEPARTURES:
            ax.hist(part[key], bins=bins, alpha=0.55, color=colour,
                    label=f"{label}: n={int(row['count'])}, mean={row[f'{key}_mean']:.3g}, std={row[f'{key}_std']:.3g}")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # headroom for the legend
        units = units_of(variable)
        ax.set_title(f"{obs_type} · {field_label(variable)}", fontsize=9)
        ax.set_xlabel(f"y − H(x) ({units})", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return stats


def profile_stats(departures: pd.DataFrame, levels_hpa) -> pd.DataFrame:
    """Per (obs_type, variable, level): count and bias (mean) / RMS of O−B and O−A, for observations with a
    pressure, each binned to the nearest of `levels_hpa` in ln p."""
    upper = departures[np.isfinite(departures["pressure"])]
    levels = np.asarray(sorted(levels_hpa), dtype=np.float64)
    nearest = np.abs(np.log(upper["pressure"].to_numpy()[:, None] / 100.0) - np.log(levels)[None, :]).argmin(1)
    upper = upper.assign(level=levels[nearest].astype(int))
    g = upper.groupby(["obs_type", "variable", "level"], sort=True)
    out = g.size().rename("count").to_frame()
    for key, _, _ in DEPARTURES:
        out[f"{key}_bias"] = g[key].mean()
        out[f"{key}_rms"] = g[key].apply(lambda d: float(np.sqrt(np.mean(np.square(d)))))
    return out


def profiles_png(profiles: pd.DataFrame, path: str | Path, title: str) -> Path | None:
    """Vertical profiles of O−B/O−A bias (dashed) and RMS (solid) against pressure, one panel per
    (obs_type, variable) with pressure levels; None when no observation has a pressure."""
    from matplotlib.figure import Figure

    groups = list(profiles.groupby(level=["obs_type", "variable"], sort=True))
    if not groups:
        return None
    fig, axes = _panel_grid(Figure, len(groups), 4, (3.2, 5.0))
    for ax, ((obs_type, variable), part) in zip(axes, groups):
        p = part.index.get_level_values("level")
        for key, label, colour in DEPARTURES:
            ax.plot(part[f"{key}_rms"], p, marker="o", markersize=3, color=colour, label=f"{label} RMS")
            ax.plot(part[f"{key}_bias"], p, marker="o", markersize=3, color=colour, linestyle="--", label=f"{label} bias")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        bottom, top = max(1050.0, p.max() * 1.05), p.min() / 1.15
        ax.set_ylim(bottom, top)
        ticks = []
        for level in sorted(set(int(x) for x in p), reverse=True):  # labels at least ~8 % apart in pressure
            if not ticks or ticks[-1] / level > 1.08:
                ticks.append(level)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"{obs_type} · {field_label(variable)} (n={int(part['count'].sum())})", fontsize=9)
        ax.set_xlabel(f"y − H(x) ({units_of(variable)})", fontsize=8)
        ax.set_ylabel("pressure (hPa)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _panel_grid(Figure, n: int, ncol: int, size: tuple[float, float]):
    """A figure with n panels on a grid of at most `ncol` columns (spare axes hidden); returns (fig, axes list)."""
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    fig = Figure(figsize=(size[0] * ncol, size[1] * nrow + 0.5), dpi=100, layout="constrained")
    axes = list(np.ravel(fig.subplots(nrow, ncol, squeeze=False)))
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:max(n, 1)]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- archives ---------------------------------------------------------------------------------
def used_departures(archive, cycles) -> pd.DataFrame:
    """One row per used (QC pass) observation of `cycles` with finite O−B and O−A, from the archived obs files:
    cycle, obs_type, variable, pressure (Pa; NaN at the surface), latitude, longitude, omb, oma."""
    frames = []
    for cycle in cycles:
        batch, ds, _ = archive.read_obs(cycle)
        omb = batch.value - ds["hofx_background"].values
        oma = batch.value - ds["hofx_analysis"].values
        use = batch.passed & np.isfinite(omb) & np.isfinite(oma)
        frames.append(pd.DataFrame({
            "cycle": pd.Timestamp(cycle.value), "obs_type": batch.obs_type[use], "variable": batch.variable[use],
            "pressure": batch.pressure[use], "latitude": batch.latitude[use], "longitude": batch.longitude[use],
            "omb": omb[use], "oma": oma[use],
        }))
    columns = ["cycle", "obs_type", "variable", "pressure", "latitude", "longitude", "omb", "oma"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def cycle_maps(archive, cycle, variable: str, level: int | None, out_dir: Path, truth: xr.Dataset | None = None) -> dict:
    """Maps of one done cycle: analysis (sequential), increment a − b with the cycle's used observations,
    background and analysis errors against `truth` (when it covers the cycle; one shared zero-centred scale)
    and the ensemble spread (ensembles). Returns {name: (path, norm)}."""
    from align_da_ops.inspection import select_map

    t = cycle.as_numpy()
    pick = lambda ds: select_map(ds.sel({grid.TIME: t}), variable, level, 0, 0)  # noqa: E731
    analysis, background = pick(archive.open_product("analysis")), pick(archive.open_product("background"))
    name, when = field_label(variable, level), str(cycle)
    batch, _, _ = archive.read_obs(cycle)
    used = pd.DataFrame({"latitude": batch.latitude[batch.passed], "longitude": batch.longitude[batch.passed]})
    out_dir = Path(out_dir)
    maps = {
        "analysis": (analysis, f"{name} analysis, {when}", "sequential", f"{name} analysis", None, None),
        "increment": (analysis - background, f"{name} increment (analysis − background), {when}", "diverging",
                      f"{name} increment", used, None),
    }
    if truth is not None and t in truth.indexes[grid.TIME]:
        true = pick(truth)
        errors = {"background_error": background - true, "error": analysis - true}
        shared = diverging_norm(np.concatenate([e.values.ravel() for e in errors.values()]))
        maps["background_error"] = (errors["background_error"], f"{name} background error (background − truth), {when}",
                                    "diverging", f"{name} background error", None, shared)
        maps["error"] = (errors["error"], f"{name} analysis error (analysis − truth), {when}", "diverging",
                         f"{name} analysis error", None, shared)
    if archive.ensemble:
        maps["spread"] = (pick(archive.open_product("spread")), f"{name} analysis ensemble spread, {when}", "spread",
                          f"{name} spread (std)", used, None)
    written = {}
    for key, (da, title, kind, quantity, points, norm) in maps.items():
        path = out_dir / f"{key}.png"
        written[key] = (path, map_png(da, path, title, kind=kind, variable=variable, quantity=quantity, points=points, norm=norm))
    return written


def archive_pngs(archive, out_dir: Path, variable: str, level: int | None, truth: xr.Dataset | None = None,
                 scores: pd.DataFrame | None = None) -> list[Path]:
    """`align-da inspect --png`: `cycle_maps` of the last done cycle, the WRMSE/bias time series and, for
    ensembles, the spread–skill plot (both with `scores`), and the last cycle's O−B/O−A histograms."""
    cycle = archive.done_cycles()[-1]
    written = [path for path, _ in cycle_maps(archive, cycle, variable, level, out_dir, truth).values()]
    channel = f"{variable}_{level}" if level is not None else variable
    experiment = archive.meta["experiment"]
    if scores is not None and len(scores):
        written.append(score_timeseries_png(scores, channel, out_dir / "rmse_timeseries.png",
                                            f"{experiment}: {channel_label(channel)} against truth"))
        if f"spread_{channel}" in scores:
            written.append(spread_skill_png(scores, channel, out_dir / "spread_skill.png",
                                            f"{experiment}: {channel_label(channel)} spread–skill (analysis)"))
    departures = used_departures(archive, [cycle])
    if len(departures):
        histograms_png(departures, out_dir / "departure_histograms.png", f"{experiment}: O−B and O−A of the used observations, {cycle}")
        written.append(out_dir / "departure_histograms.png")
    return written
