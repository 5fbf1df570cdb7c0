"""A training driver whose Ray job has been stopped stops too, even when Ray's stop missed it.

`ray job stop` (and DELETE on the API) reaches a driver through Ray's job supervisor, which
signals the entrypoint's shell and the children it has *at that moment*. A stop that lands
while the job is still starting can find the shell before it has started Python: the shell
is killed, the job is marked STOPPED, and the driver it had just forked trains on as an
orphan. Measured on a loaded 2-core machine: a job stopped at once (tests/test_training.py)
held the CPU for 10 minutes after it was reported stopped, so the next job could not
schedule. A driver started by Ray's supervisor therefore watches its parent, and sends
itself the SIGTERM Ray meant for it when the parent goes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

# Set by Ray's job supervisor in every driver it starts (ray._private.runtime_env.constants).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
PERIOD_S = 1.0
log = logging.getLogger(__name__)


def stop_when_orphaned(period_s: float = PERIOD_S) -> None:
    """Watch the parent of a driver Ray's supervisor started; nothing for one run by hand."""
    if RAY_JOB_ENV not in os.environ:
        return  # run by hand: a terminal closing is the shell's business, not ours
    parent = os.getppid()
    if parent == 1:  # the shell was killed before this process even started
        _stop(parent)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        _stop(parent)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _stop(parent: int) -> None:
    log.warning("the job's supervisor is gone (parent %d exited): stopping as Ray asked", parent)
    os.kill(os.getpid(), signal.SIGTERM)  # the handler the driver set for `ray job stop`
