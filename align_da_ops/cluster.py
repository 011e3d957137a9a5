"""dask.distributed for independent work: suites of campaigns, preference cases, verification, trajectories.

Cycles of one campaign are sequential (each background is the previous cycle's forecast), so the
parallelism is across independent units of work, each a task on a `distributed.Client`:

- `open_client(workers, threads, scheduler)` yields a Client: on a `LocalCluster` of `workers`
  processes × 1 dask thread each by default, or on the running scheduler at `scheduler` (an
  address such as tcp://10.0.0.5:8786, e.g. a dask-jobqueue cluster, deploy/dask-jobqueue.py).
  Every worker's torch is limited to `threads` intra-op threads (a worker plugin, which also sends
  the workers' logs to stderr as configured here), so
  workers × threads never oversubscribes the cores (`local_shape` picks them for a machine).
- `run_tasks(client, fn, items, ...)` maps `fn` over `items` and returns the results in the
  order of `items` (independent of which worker finished first), so a reduction done after it is
  the serial one. A worker that dies mid-task (killed, out of memory) is replaced by its nanny and
  the task is rerun elsewhere, up to `allowed_failures` times (the scheduler's
  `distributed.scheduler.allowed-failures`); tasks therefore must be idempotent: campaigns resume
  from their archive, the other tasks are pure.

Results equal the serial run's bit for bit when both use the same torch thread count per task
(intra-op reductions are the only thing that depends on where a task runs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from distributed import WorkerPlugin

from align_da_ops.logs import get_logger

log = get_logger(__name__)


def available_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_shape(tasks: int, workers: int = 0, threads: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(workers, torch threads per worker) for a LocalCluster: by default one worker per core (at most one
    per task) and the cores shared out among them, so workers × threads ≤ cores."""
    cores = cores or available_cores()
    workers = workers or max(1, min(cores, tasks))
    threads = threads or max(1, cores // workers)
    return workers, threads


class WorkerSetup(WorkerPlugin):
    """Worker plugin, run in every worker (also ones started later): torch limited to `threads` intra-op
    threads, logs as in this process (to stderr, same format and level), and dask computations inside a
    task (xarray's `.load()` of the nature run) run in the task's own thread: by default they would be
    sent back to the cluster and queue behind the long campaign tasks (measured: 36-71 s per cycle's
    observations instead of 0.2 s)."""

    name = "align-da-worker-setup"

    def __init__(self, threads: int):
        from align_da_ops import logs

        self.threads = threads
        self.log_format, self.log_level = logs.current()

    def setup(self, worker) -> None:
        import dask
        import torch

        from align_da_ops import logs

        dask.config.set(scheduler="synchronous")
        torch.set_num_threads(self.threads)
        logs.configure(self.log_format, self.log_level)


@contextlib.contextmanager
def open_client(workers: int = 1, threads: int = 1, scheduler: str | None = None,
                memory_limit: str | None = "auto") -> Iterator[Any]:
    """A distributed.Client on a fresh LocalCluster (`workers` processes, `threads` torch threads each,
    one task at a time per worker) or, with `scheduler`, on that running cluster; closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=None, host="127.0.0.1", env=env)
        client = Client(cluster)
    try:
        client.register_plugin(WorkerSetup(threads), name=WorkerSetup.name)
        log.info("dask_client", scheduler=client.scheduler.address, workers=len(client.scheduler_info()["workers"]),
                 torch_threads=threads)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_tasks(client, fn: Callable, items: Iterable, *args, keys: list[str] | None = None,
              on_done: Callable[[int, int, int], None] | None = None,
              on_result: Callable[[int, Any], None] | None = None, **kwargs) -> list:
    """[fn(item, *args, **kwargs) for item in items] computed on the cluster, in the order of `items`.

    The first task error is raised (after the other tasks are cancelled); `on_result(index, result)`, then
    `on_done(index, done, total)` are called as each task finishes (`index` into `items`), so a caller can
    keep each result as it comes. `keys` name the tasks (dashboard, logs); they must be unique.
    """
    from distributed import as_completed

    items = list(items)
    if not items:
        return []
    names = keys or [None] * len(items)
    futures = [client.submit(fn, item, *args, key=name, pure=False, **kwargs) for item, name in zip(items, names)]
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            if on_result:
                on_result(index[future.key], future.result())
            if on_done:
                on_done(index[future.key], done, len(futures))
        return client.gather(futures)
    finally:
        client.cancel([f for f in futures if not f.done()])


@contextlib.contextmanager
def client_for(tasks: int, workers: int = 0, threads: int = 0, scheduler: str | None = None) -> Iterator[Any]:
    """The command-line policy: a Client on `scheduler` if given; else a LocalCluster shaped by
    `local_shape` when that has more than one worker; else None (run in this process, torch limited to
    `threads` if given). `workers` 0: one per core, at most one per task."""
    if scheduler:
        with open_client(threads=threads or 1, scheduler=scheduler) as client:
            yield client
        return
    workers, per_worker = local_shape(tasks, workers, threads)
    if workers <= 1:
        if threads:
            import torch

            torch.set_num_threads(threads)
        yield None
        return
    with open_client(workers, per_worker) as client:
        yield client
