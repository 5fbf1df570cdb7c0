"""A training worker yields the cores to serving: every thread it has, and every thread it
starts later (torch's pool, loaders), runs at the lowest OS priority."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from train.trainer import NICENESS

WORKER = """
import os, threading, torch
from train.trainer import yield_to_serving
yield_to_serving()
seen = []
later = threading.Thread(
    target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
)
later.start()
later.join()
torch.set_num_threads(2)
torch.ones(512, 512) @ torch.ones(512, 512)  # starts torch's thread pool
every = [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")]
print(seen[0], min(every), max(every), len(every))
"""


def test_a_training_worker_and_the_threads_it_starts_yield_to_serving() -> None:
    # In a process of its own: the test's own process keeps its priority.
    out = subprocess.run(
        [sys.executable, "-c", WORKER], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    later, lowest, highest, threads = (int(v) for v in out)
    assert later == lowest == highest == NICENESS
    assert threads >= 2  # torch's pool was running when the priorities were read
