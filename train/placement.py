"""How many CPUs each training worker asks Ray for: what fits beside Serve's replicas.

On the cluster `make serve` starts, Serve holds some of the CPUs; a worker asking for a whole
free CPU more than there is waits for minutes and then fails with a timeout, so jobs and
calibration trials ask for the share that fits, and refuse at once where none does.
"""

from __future__ import annotations

import math

MIN_CPU_SHARE = 0.1  # per worker: less would train, but slower than anyone would wait for


class NoRoomError(RuntimeError):
    """The cluster has too few free CPUs for the workers asked for."""


def cpu_share(workers: int, asked: float | None) -> float:
    """CPUs per worker: what was asked, or the most that lets every worker fit on the nodes'
    free CPUs (a worker runs on one node, so an even split of the cluster's total can fit
    nowhere: 1 and 2 free CPUs do not make room for two workers of 1.5).

    Checked before anything is scheduled: on a cluster that cannot fit the workers, Ray
    Train would wait for them for minutes and then fail with a timeout.
    """
    free = free_cpus_by_node()
    share = asked if asked is not None else widest_share(free, workers)
    if share < MIN_CPU_SHARE or workers_that_fit(free, share) < workers:
        raise NoRoomError(
            f"no room: {workers} worker(s) x {share:.2f} CPU asked, free CPUs per node "
            f"{', '.join(f'{f:.2f}' for f in free) or 'none'} (Serve holds the rest); "
            "ask for fewer workers or free some CPUs"
        )
    return share


def free_cpus_by_node() -> list[float]:
    # Ray's own placement helpers (ray.util.tpu) read the same per-node table.
    from ray._private.state import available_resources_per_node

    nodes = available_resources_per_node().values()
    return sorted((float(r.get("CPU", 0.0)) for r in nodes), reverse=True)


def workers_that_fit(free: list[float], share: float) -> int:
    return sum(math.floor(f / share + 1e-6) for f in free) if share > 0 else 0


def widest_share(free: list[float], workers: int) -> float:
    """The largest per-worker share with which `workers` workers fit: some node's free CPUs
    divided by the workers it then holds. 0.0 when even the smallest does not fit."""
    shares = (f / k for f in free for k in range(1, workers + 1) if f > 0)
    return max((s for s in shares if workers_that_fit(free, s) >= workers), default=0.0)
