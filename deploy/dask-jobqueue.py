"""Run a suite (or any `--scheduler` command) on a Slurm or PBS cluster through dask-jobqueue.

Each batch job is one dask worker process running one campaign at a time with `--cores` torch
threads; the scheduler runs here (a login node or a small job). Campaigns are independent tasks:
a job that dies or hits its wall time loses only the cycle in flight, and the task is rerun on
another worker from its archive (`align_da_ops.cluster`).

Needs `pip install dask-jobqueue` beside align-da-ops in the same environment on every node, and the
repository, the nature run and `archive_root` on a shared filesystem that supports flock (the
archive's writer lock; Lustre needs `-o flock`, NFS v4 locks work).

    python deploy/dask-jobqueue.py cycles/tiny.suite.yaml --system slurm --jobs 12 --cores 4 \
        --memory 16GB --walltime 06:00:00 --account myproject --queue normal

runs `suite run` on 12 jobs; `--tune` runs `suite tune` instead. To keep the cluster for several
commands, use `--serve` and pass the printed address to any `align-da suite ... --scheduler ADDRESS`
or `align-da align ... --scheduler ADDRESS`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def make_cluster(args):
    import dask_jobqueue

    kind = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[args.system]
    env = [f"export OMP_NUM_THREADS={args.cores}", f"export MKL_NUM_THREADS={args.cores}"]
    cluster = kind(
        cores=args.cores,  # cores per job: all of them go to torch in the single worker process
        processes=1,  # one worker per job, one campaign at a time (each campaign is sequential)
        memory=args.memory,
        walltime=args.walltime,
        account=args.account,
        queue=args.queue,
        job_script_prologue=env,
        worker_extra_args=["--nthreads", "1"],  # one task at a time; torch threads are set by align-da
    )
    cluster.scale(jobs=args.jobs)
    return cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="Suite YAML (cycles/*.suite.yaml).")
    parser.add_argument("--system", choices=("slurm", "pbs"), default="slurm")
    parser.add_argument("--jobs", type=int, default=4, help="Batch jobs = dask workers.")
    parser.add_argument("--cores", type=int, default=4, help="Cores per job (torch threads per campaign).")
    parser.add_argument("--memory", default="16GB", help="Memory per job.")
    parser.add_argument("--walltime", default="06:00:00")
    parser.add_argument("--account", default=None)
    parser.add_argument("--queue", default=None)
    parser.add_argument("--tune", action="store_true", help="suite tune instead of suite run.")
    parser.add_argument("--serve", action="store_true", help="Start the cluster, print its address, wait for Ctrl-C.")
    args = parser.parse_args()

    cluster = make_cluster(args)
    address = cluster.scheduler_address
    print(f"dask scheduler at {address}; job script:\n{cluster.job_script()}", flush=True)
    try:
        if args.serve:
            input("press Enter (or Ctrl-C) to stop the cluster\n")
            return 0
        command = ["align-da", "suite", "tune" if args.tune else "run", args.suite,
                   "--scheduler", address, "--threads", str(args.cores)]
        print("running", " ".join(command), flush=True)
        return subprocess.call(command)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
