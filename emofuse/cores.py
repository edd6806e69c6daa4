"""How many cores this process may keep busy (no torch, no h5py: the store and the pipelines use it)."""

from __future__ import annotations

import os


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> float:
    """The cores this process may keep busy: those it may run on (its affinity: a Slurm job's
    cpuset), capped by a cgroup v2 CPU quota (a container limited to 2 CPUs on a 64-core node sees
    64 cores but gets 2)."""
    try:
        n: float = len(os.sched_getaffinity(0))
    except AttributeError:   # no sched_getaffinity (macOS, Windows)
        n = os.cpu_count() or 1
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return n
