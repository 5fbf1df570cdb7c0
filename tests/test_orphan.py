"""A driver stopped by Ray stops, even when Ray's stop reached only its shell (train.orphan),
and the bot hears a job's end once (train.events)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from train.events import Events
from train.orphan import RAY_JOB_ENV

ROOT = Path(__file__).resolve().parents[1]
# What a driver does: SIGTERM means stopped (it says so in a file here), then it would train
# for minutes.
DRIVER = """
import pathlib, signal, sys, time
from train.orphan import stop_when_orphaned
def stopped(*_):
    pathlib.Path(sys.argv[1]).write_text("stopped")
    sys.exit(3)
signal.signal(signal.SIGTERM, stopped)
stop_when_orphaned(period_s=0.1)
print("training", flush=True)
time.sleep(60)
"""


def start_under_a_shell(
    as_ray_job: bool, said: Path
) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """The entrypoint as Ray's supervisor runs it: `sh -c`, in a session of its own. The
    trailing `; true` keeps the shell from exec'ing Python, as a shell with more to do."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(RAY_JOB_ENV, None)
    if as_ray_job:
        env[RAY_JOB_ENV] = json.dumps({"metadata": {"job_submission_id": "test"}})
    command = f"{sys.executable} -c '{DRIVER}' {said}; true"
    shell = subprocess.Popen(["sh", "-c", command], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = psutil.Process(shell.pid).children()
        if children:
            return shell, children[0]
        time.sleep(0.05)
    raise AssertionError("the driver did not start")


def test_a_driver_whose_shell_was_killed_stops_itself(tmp_path: Path) -> None:
    said = tmp_path / "said"
    shell, driver = start_under_a_shell(as_ray_job=True, said=said)
    time.sleep(1.0)  # it is training
    assert driver.is_running()
    shell.kill()  # Ray's stop found only the shell
    shell.wait(timeout=10)
    driver.wait(timeout=30)  # not its parent's: no exit code here, hence the file
    assert said.read_text() == "stopped"  # it stopped the way `ray job stop` stops it


def test_a_driver_run_by_hand_is_left_alone(tmp_path: Path) -> None:
    """Outside a Ray job (no supervisor) the parent going is not a stop: `nohup python -m
    train.job ... &` from a shell that then exits must go on training."""
    shell, driver = start_under_a_shell(as_ray_job=False, said=tmp_path / "said")
    try:
        time.sleep(1.0)
        shell.kill()
        shell.wait(timeout=10)
        time.sleep(1.5)  # fifteen of the watcher's periods, had it been watching
        assert driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE
        assert not (tmp_path / "said").exists()
    finally:
        driver.send_signal(signal.SIGKILL)


def test_a_jobs_end_is_announced_once(tmp_path: Path) -> None:
    terminal = tmp_path / "terminal.json"
    events = Events(
        request_id="r", user_id=1, model_id="m", run_id="j", redis_url="", terminal_file=terminal
    )
    events.publish("failed", code="stopped", error="stopped before it started training")
    first = terminal.read_text()
    events.publish("completed", val_acc=0.99)  # a driver that ran on after its stop
    assert terminal.read_text() == first
    assert json.loads(first)["code"] == "stopped"
    events.publish("epoch", epoch=1)  # progress is not an end: still published
