"""What this machine offers. The only module that asks the machine."""

from __future__ import annotations

import os

import psutil


def cpu_cores() -> int:
    """Physical cores this process may use.

    llama.cpp runs best with one thread per physical core; hyper-threads add
    little. Inside a container or under taskset, the affinity mask is smaller.
    """
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        allowed = physical
    return max(1, min(physical, allowed))

