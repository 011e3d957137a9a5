"""Peak memory of a piece of work, measured alone: in a fresh Python process, read from `ru_maxrss`.

`in_fresh_process(module, job)` runs `python -m module` with `job` as JSON on stdin and returns the JSON
object the module prints last; the module's `__main__` calls `serve(fn)`, which runs `fn(**job)` and prints
its result. `peak_rss_mib()` is this process's peak resident set so far.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(module: str, job: dict) -> dict:
    """`serve`'s result of `job` in a new `python -m module` (its own peak RSS)."""
    done = subprocess.run([sys.executable, "-m", module], input=json.dumps(job), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve(fn: Callable[..., dict]) -> None:
    """The `__main__` of a measured module: `fn(**job)` for the JSON job on stdin, its result on stdout."""
    print(json.dumps(fn(**json.loads(sys.stdin.read()))))
