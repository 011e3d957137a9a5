"""`align-da cycle|replay|serve|status`: running a campaign and watching it (heavy imports inside commands)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from align_da_ops.progress import progress_bar

out = Console(width=None if sys.stdout.isatty() else 140)

OVERRIDES = typer.Option(
    [], "--set", help="Override a campaign value, e.g. analysis.strength=2 (experiment.KEY for its experiment config); repeatable.")


def load(campaign_path: Path, overrides: list[str]):
    """The campaign and its experiment, with `--set` overrides applied and validated."""
    from align_da_ops.campaign import load_campaign

    return load_campaign(campaign_path, overrides)


def context(campaign_path: Path, overrides: list[str] = ()):
    """A cycle context for the campaign file (models loaded), its provenance naming the file and the overrides."""
    from align_da_ops.wiring import build_context

    campaign, experiment = load(campaign_path, list(overrides))
    ctx = build_context(campaign, experiment)
    ctx.provenance["campaign_file"] = str(campaign_path.resolve())
    if overrides:
        ctx.provenance["overrides"] = list(overrides)
    return ctx


def cycle_cmd(
    campaign: Path,
    at: str = typer.Option(..., "--at", help="Cycle time, e.g. 2000-01-11T06 or 2000011106."),
    force: bool = typer.Option(False, help="Redo the cycle even if it is done."),
    overrides: list[str] = OVERRIDES,
):
    """Run one cycle of a campaign (its predecessor must be done, unless it is the first)."""
    from align_da_ops.engine import run_cycle
    from align_da_ops.times import CycleTime

    ctx = context(campaign, overrides)
    with ctx.archive.locked():
        outcome = run_cycle(ctx, CycleTime.parse(at), force=force)
    out.print(f"{outcome.cycle}: {outcome.status} ({sum(outcome.wall_s.values()):.2f} s)")


def replay_cmd(
    campaign: Path,
    start: Optional[str] = typer.Option(None, help="First cycle (default: the campaign's start)."),
    end: Optional[str] = typer.Option(None, help="Last cycle (default: the campaign's end)."),
    force: bool = typer.Option(False, help="Redo cycles already done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cycles that would run; run nothing."),
    overrides: list[str] = OVERRIDES,
):
    """Run a period's cycles back to back; rerun after a crash or Ctrl-C to resume."""
    from align_da_ops.replaying import replay
    from align_da_ops.times import CycleTime, cycle_range

    camp, _ = load(campaign, overrides)
    first = CycleTime.parse(start) if start else camp.first
    last = CycleTime.parse(end) if end else camp.last
    if last is None:
        raise typer.BadParameter("this campaign has no end; give --end")
    if dry_run:
        done = set(_done_cycles(camp.archive))
        _print_plan(camp.name, [c for c in cycle_range(first, last) if force or c not in done], len(done))
        return
    ctx = context(campaign, overrides)
    with progress_bar(ctx.campaign.name) as bar:
        outcomes = replay(ctx, first, last, force=force,
                          progress=lambda o, i, n: bar(i, n, f"{ctx.campaign.name} {o.cycle}"))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "fallback")}
    out.print(f"{ctx.campaign.name}: {counts['done']} cycles run, {counts['skipped']} already done, {counts['fallback']} fallbacks")


def serve_cmd(
    campaign: Path,
    accelerate: float = typer.Option(1.0, help="Simulated seconds per wall second (OSSE demos)."),
    origin: Optional[str] = typer.Option(None, help="Simulated time at start (with --accelerate)."),
    tick: Optional[float] = typer.Option(None, help="Wall seconds between checks (default: the 6-hourly cron)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cycles due now (the catch-up); run nothing."),
    overrides: list[str] = OVERRIDES,
):
    """Continuous cycling at 00/06/12/18 UTC + cut-off; catches up missed cycles; stops on SIGTERM."""
    from align_da_ops.scheduler import Clock, due_cycles, serve

    clock = Clock(factor=accelerate, origin=datetime.fromisoformat(origin) if origin else None)
    if dry_run:
        from align_da_ops.archive import Archive

        camp, _ = load(campaign, overrides)
        archive = Archive.open(camp.archive) if (Path(camp.archive) / "archive.json").exists() else None
        due = due_cycles(camp, archive, clock.now()) if archive else _all_due(camp, clock.now())
        _print_plan(camp.name, due, len(archive.done_cycles()) if archive else 0, f" at {clock.now():%Y-%m-%dT%H:%M}")
        return
    ctx = context(campaign, overrides)
    ran = serve(ctx, clock, tick_seconds=tick if tick is not None else (1.0 if accelerate != 1.0 else None))
    out.print(f"{ctx.campaign.name}: service stopped after {ran} cycles")


def status_cmd(
    target: Path = typer.Argument(..., help="Campaign file (cycles/*.yaml) or archive directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
    last: int = typer.Option(8, help="Cycles shown in the per-cycle table."),
    now: Optional[str] = typer.Option(None, help="Wall time to judge lag against (default: now, UTC); for OSSE demos."),
):
    """Cycles by state, gaps, last done cycle, lag, fallbacks, failures and per-cycle O−B/O−A.

    Exit code: 0 healthy, 13 behind, 14 failing (usable as a health check)."""
    from align_da_ops.cycle_status import campaign_status, expectation_for

    archive, expect = expectation_for(target)
    report = campaign_status(archive, expect, datetime.fromisoformat(now) if now else None, last_n=last)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        _print_status(report)
    raise typer.Exit(report["exit_code"])


# -- helpers --------------------------------------------------------------------------------------
def _done_cycles(archive_path: Path) -> list:
    from align_da_ops.archive import Archive

    return Archive.open(archive_path).done_cycles() if (Path(archive_path) / "archive.json").exists() else []


def _all_due(camp, now: datetime) -> list:
    """Due cycles of a campaign whose archive does not exist yet."""
    from align_da_ops.times import CycleTime, cycle_range

    latest = CycleTime.latest_at_or_before(now - camp.cutoff)
    if camp.last is not None and latest > camp.last:
        latest = camp.last
    return cycle_range(camp.first, latest) if latest >= camp.first else []


def _print_plan(name: str, cycles: list, n_done: int, when: str = "") -> None:
    out.print(f"{name}: {len(cycles)} cycles would run{when} ({n_done} already done)")
    if cycles:
        shown = [str(c) for c in cycles[:3]] + (["..."] if len(cycles) > 6 else []) + [str(c) for c in cycles[max(3, len(cycles) - 3):]]
        out.print("  " + ", ".join(shown))


SHORT = {"geopotential": ("z", "m²/s²"), "temperature": ("t", "K"), "u_component_of_wind": ("u", "m/s"),
         "v_component_of_wind": ("v", "m/s"), "surface_pressure": ("sp", "Pa"), "specific_humidity": ("q", "kg/kg")}


def _print_status(r: dict) -> None:
    colour = {"healthy": "green", "behind": "yellow", "failing": "red"}[r["health"]]
    c = r["counts"]
    out.print(f"[bold]{r['campaign']}[/bold] ({r['mode']}) archive {r['archive']}: [{colour}]{r['health']}[/{colour}]")
    out.print(f"  expected {r['expected']} cycles {r['first']} .. {r['last']}: {c['done']} done, {c['fallback']} fallback, "
              f"{c['failed']} failed, {c['pending']} pending")
    out.print(f"  last done {r['last_done'] or '-'}" + (f"; latest due {r['latest_due']}, lag {r['lag_hours']:g} h" if r["latest_due"] else ""))
    if r["gaps"]:
        out.print("  gaps: " + ", ".join(f"{g['from']} .. {g['to']} ({g['cycles']})" for g in r["gaps"][:5])
                  + (f" and {len(r['gaps']) - 5} more" if len(r["gaps"]) > 5 else ""))
    for f in r["fallbacks"][-5:]:
        out.print(f"  [yellow]fallback[/yellow] {f['cycle']}: {f['reason']}")
    for f in r["failures"][-5:]:
        out.print(f"  [red]failed[/red] {f['cycle']} ({f['error']}, exit {f['exit_code']}, {f['at']}): {f['message']}")
    if not r["cycles"]:
        return
    variables = sorted({v for row in r["cycles"] for v in row.get("omb_rms", {})})
    table = Table(title="last cycles: O−B / O−A RMS of the used observations",
                  caption="RMS pooled over observation types and levels; Jo/n = mean((d/σo)²), "
                          "≈ 1 + σb²/σo² for O−B when the error statistics are consistent")
    heads = [f"{SHORT.get(v, (v, ''))[0]} ({SHORT.get(v, ('', '?'))[1]})" for v in variables]
    table.add_column("cycle", no_wrap=True, min_width=14)
    for col in ("state", "obs used", "Jo/n O−B", "Jo/n O−A", *heads, "s", "note"):
        table.add_column(col)
    for row in r["cycles"]:
        pairs = [f"{row['omb_rms'][v]:.3g} / {row['oma_rms'][v]:.3g}" if v in row.get("omb_rms", {}) and v in row.get("oma_rms", {})
                 else "" for v in variables]
        table.add_row(row["cycle"], row["state"], str(row.get("n_obs_used", "")),
                      f"{row['omb_jo_per_n']:.3g}" if "omb_jo_per_n" in row else "",
                      f"{row['oma_jo_per_n']:.3g}" if "oma_jo_per_n" in row else "", *pairs,
                      f"{row['seconds']:.2f}" if "seconds" in row else "", row.get("reason", ""))
    out.print(table)
