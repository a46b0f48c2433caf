"""CPU threads that cope with a busy core: the ``facemogle`` command's OpenMP settings.

torch's CPU kernels run on OpenMP threads, one per core by default, and an OpenMP thread that
finishes its share of a kernel *spins* waiting for the others (GNU OpenMP: about 300,000 polls,
``GOMP_SPINCOUNT``). When another process holds one of the cores, the thread on it runs late at
every kernel and the spinning threads burn the time the late one needs: on 2 cores, generation
beside one busy process ran 20-30x slower. ``OMP_WAIT_POLICY=PASSIVE`` (never spin) fixes that but
costs a quiet machine 40 % (4.2 -> 5.8 s per image here), since every kernel then waits for threads
to wake up.

:func:`configure` (called by ``facemogle`` before torch is imported) does two things instead:

* **threads = idle cores**: the load of each core this process may run on is sampled over
  :data:`SAMPLE_SECONDS` from ``/proc/stat``; cores busier than :data:`BUSY_SHARE` are left out
  (at least one thread). A quiet machine keeps every core.
* **bounded spinning**: ``GOMP_SPINCOUNT`` = :data:`SPIN_COUNT`, short enough that a thread waiting
  on a late one yields its core soon, long enough that a quiet machine's threads still catch the
  next kernel without sleeping.

Both only apply when the user set neither (``OMP_NUM_THREADS`` / ``FACEMOGLE_THREADS``,
``GOMP_SPINCOUNT`` / ``OMP_WAIT_POLICY``); ``--threads`` of a command still wins, and
``FACEMOGLE_THREAD_POLICY=off`` leaves torch's defaults.
``facemogle bench generate --busy-core`` measures the effect.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

#: Seconds over which the cores' load is sampled at start-up.
SAMPLE_SECONDS = 0.1
#: A core busier than this share of the sample is left to whoever uses it.
BUSY_SHARE = 0.5
#: GNU OpenMP's spin polls before a waiting thread sleeps (its default is 300000).
SPIN_COUNT = 20000
#: The user's own thread count, for facemogle only.
THREADS_VARIABLE = "FACEMOGLE_THREADS"
#: "off": leave the OpenMP settings to torch and the user.
POLICY_VARIABLE = "FACEMOGLE_THREAD_POLICY"


@dataclass(frozen=True)
class ThreadPlan:
    """What :func:`configure` decided: ``threads`` (None: left to torch/the user), the cores
    available, those found busy, and the environment variables it set."""

    threads: int | None
    available: int
    busy: int
    set_variables: tuple[str, ...]


def _core_times() -> dict[int, tuple[int, int]]:
    """cpu index -> (busy jiffies, total jiffies) from /proc/stat ({} where it is unreadable)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        values = [int(v) for v in fields[:8]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_cores(cores: set[int], seconds: float = SAMPLE_SECONDS) -> int:
    """How many of ``cores`` were busier than :data:`BUSY_SHARE` over ``seconds`` (0 if unknown)."""
    before = _core_times()
    if not before:
        return 0
    time.sleep(seconds)
    after = _core_times()
    busy = 0
    for core in cores:
        if core not in before or core not in after:
            continue
        work = after[core][0] - before[core][0]
        total = after[core][1] - before[core][1]
        busy += total > 0 and work / total > BUSY_SHARE
    return busy


def available_cores() -> set[int]:
    """The cores this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def configure(environ=None, *, sample_seconds: float = SAMPLE_SECONDS) -> ThreadPlan:
    """Set the OpenMP thread count and spin bound in ``environ`` (default ``os.environ``) as the
    module docstring says, before torch is imported; returns the plan."""
    environ = os.environ if environ is None else environ
    cores = available_cores()
    if environ.get(POLICY_VARIABLE, "").lower() in ("off", "0", "no", "false"):
        return ThreadPlan(None, len(cores), 0, ())
    set_variables = []
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        set_variables.append("GOMP_SPINCOUNT")
    if THREADS_VARIABLE in environ:
        environ["OMP_NUM_THREADS"] = environ[THREADS_VARIABLE]
        return ThreadPlan(int(environ[THREADS_VARIABLE]), len(cores), 0, tuple(set_variables + ["OMP_NUM_THREADS"]))
    if "OMP_NUM_THREADS" in environ:
        return ThreadPlan(None, len(cores), 0, tuple(set_variables))
    busy = busy_cores(cores, sample_seconds) if len(cores) > 1 else 0
    threads = max(1, len(cores) - busy)
    environ["OMP_NUM_THREADS"] = str(threads)
    return ThreadPlan(threads, len(cores), busy, tuple(set_variables + ["OMP_NUM_THREADS"]))
