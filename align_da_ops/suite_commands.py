"""`align-da suite tune|run`: the paired experiment harness on the command line (see `suite`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

suite_app = typer.Typer(no_args_is_help=True, help="Paired experiment suites: tune on validation, score on test.")
out = Console(width=None if sys.stdout.isatty() else 230)
err = Console(stderr=True)


def _truth(experiment):
    from align_da_ops.data.sources import layout_of, open_states, read_normalization
    from align_da_ops.evaluation import acc_climatology

    truth = open_states(experiment)
    train = experiment.splits.train
    return truth, read_normalization(experiment.nature_run.output), acc_climatology(
        truth, layout_of(experiment), train.start, train.end)


WORKERS_HELP = ("dask workers on a LocalCluster, each running one campaign at a time (0: one per core, at most "
                "one per campaign; 1: in this process)")
THREADS_HELP = "torch CPU threads per worker (0: the cores shared out among the workers; in-process: torch's choice)"
SCHEDULER_HELP = "Address of a running dask scheduler (e.g. tcp://host:8786, a dask-jobqueue cluster) instead of a LocalCluster."


def _progress(run, i: int, n: int) -> None:
    c = run.campaign
    err.print(f"[{i + 1}/{n}] {c.name}: {c.first} .. {c.last} -> {c.archive}")


def _on_networks(runs: list, suite, networks: list[str]) -> list:
    """The runs on `networks` (all when empty); an unknown name is a usage error."""
    known = [n.name for n in suite.networks]
    if unknown := sorted(set(networks) - set(known)):
        raise typer.BadParameter(f"unknown network {unknown}; this suite has {known}", param_hint="--network")
    return [r for r in runs if not networks or r.network in networks]


@suite_app.command("tune")
def tune_cmd(
    suite_file: Path = typer.Argument(..., help="Suite YAML (cycles/*.suite.yaml)."),
    method: list[str] = typer.Option([], "--method", "-m", help="Only these methods (repeatable)."),
    network: list[str] = typer.Option([], "--network", "-n", help="Only these observing networks (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="CSV (default ARCHIVE_ROOT/validation/tuning.csv)."),
    workers: int = typer.Option(0, min=0, help=WORKERS_HELP),
    threads: int = typer.Option(0, min=0, help=THREADS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
):
    """Cycle every sweep candidate over the validation period; report the tuning score and the best per network."""
    from rich.table import Table

    from align_da_ops.cluster import client_for
    from align_da_ops.suite import distinct_runs, execute, load_suite, tuning_runs
    from align_da_ops.suite_scores import tuning_table

    suite, experiment = load_suite(suite_file)
    runs = _on_networks(tuning_runs(suite, experiment, method or None), suite, network)
    if not runs:
        out.print("no method of this suite has a sweep")
        return
    with client_for(len(distinct_runs(runs)), workers, threads, scheduler) as client:
        execute(runs, _progress, client)
        table = tuning_table(runs, suite, *_truth(experiment), client=client)
    path = output or suite.archive_root / "validation" / "tuning.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.6g")
    rich = Table(title=f"{suite.name}: validation {suite.tuning_score} at +{suite.tuning_lead} h "
                       f"(seeds {list(suite.tuning_seeds)}; * = chosen)")
    for col in table.columns:
        rich.add_column(col)
    for row in table.itertuples(index=False):
        rich.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    out.print(rich)
    out.print(f"wrote {path}; put the chosen values in each method's `tuned:` block of {suite_file}")


@suite_app.command("run")
def run_cmd(
    suite_file: Path = typer.Argument(..., help="Suite YAML (cycles/*.suite.yaml)."),
    method: list[str] = typer.Option([], "--method", "-m", help="Only these methods (repeatable)."),
    network: list[str] = typer.Option([], "--network", "-n", help="Only these observing networks (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Report directory (default ARCHIVE_ROOT/report)."),
    score_only: bool = typer.Option(False, help="Score what the archives hold; run nothing."),
    workers: int = typer.Option(0, min=0, help=WORKERS_HELP + "; the archives are scored the same way"),
    threads: int = typer.Option(0, min=0, help=THREADS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
):
    """Run what is missing of the test period (resumable), then score: table, CSV and PNG with 95 % CIs."""
    from align_da_ops import suite_report
    from align_da_ops.cluster import client_for
    from align_da_ops.suite import distinct_runs, execute, load_suite, scoring_runs
    from align_da_ops.suite_scores import collect, compare_methods, summarise

    suite, experiment = load_suite(suite_file)
    runs = _on_networks(scoring_runs(suite, experiment, method or None), suite, network)
    with client_for(len(distinct_runs(runs)), workers, threads, scheduler) as client:
        if not score_only:
            execute(runs, _progress, client)
        table = collect(runs, *_truth(experiment), client=client)
    summary = suite_report.with_spread_skill(summarise(table, suite), table)
    comparisons = compare_methods(table, suite)
    suite_report.print_tables(out, suite, summary, comparisons)
    for path in suite_report.write_files(output or suite.archive_root / "report", suite, table, summary, comparisons):
        out.print(f"wrote {path}")
