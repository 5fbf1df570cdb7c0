"""`make serve` as users run it (`python -m deployments.cluster serve`): it starts cleanly after
Ctrl-C, after `kill -9` and after `make stop`, leaves nothing behind, and a bad setting stops
it at once. Each run is shifted to its own ports and folder, beside the session's cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.cluster import Ports
from tests.conftest import ROOT


def free_offset() -> int:
    """A shift that puts every default port of `make serve` on a free one, below Ray's range
    of worker ports (10002-19999), which a moved port must not fall into."""
    for offset in range(-1000, -6000, -97):
        ports = [p + offset for p in asdict(Ports()).values()]
        if all(_free(p) for p in ports):
            return offset
    raise RuntimeError("no free set of ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _held(port: int) -> bool:
    """Whether something still listens on the port: what a next run could not bind past.
    Any other socket with that local port is not the run's: a connection it closed lingers
    in TIME_WAIT, owned by no process, and a port in the kernel's ephemeral range (the
    agent's 52365 moved down lands there) may be the client end of anyone's connection,
    the session cluster's included (CI stop 27 failed on such a one)."""
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


class Run:
    """One `python -m deployments.cluster ...` with its own ports and folder."""

    def __init__(self, state: Path, offset: int) -> None:
        self.state, self.offset = state, offset
        self.http = Ports().http + offset

    def command(self, verb: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "deployments.cluster",
            verb,
            "--state",
            str(self.state),
            "--port-offset",
            str(self.offset),
        ]

    def serve(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.command("serve"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "serves on" in line:
                break
            assert proc.poll() is None, "".join(seen)
        else:
            raise AssertionError("".join(seen))
        assert httpx.get(f"http://127.0.0.1:{self.http}/readyz", timeout=30).status_code == 200
        return proc

    def leftovers(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(str(self.state) in part for part in proc.info["cmdline"] or []):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def assert_clean(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (self.leftovers() or _held(self.http)):
            time.sleep(1)
        assert self.leftovers() == []
        ports = [p + self.offset for p in asdict(Ports()).values()]
        assert [p for p in ports if _held(p)] == []


def ctrl_c(proc: subprocess.Popen[str]) -> None:
    """A terminal's Ctrl-C: SIGINT to the whole foreground process group, not one process
    (Ray's daemons in that group died under the orderly stop and slowed it)."""
    os.killpg(proc.pid, signal.SIGINT)


@pytest.fixture
def run() -> Run:
    return Run(Path(tempfile.mkdtemp(prefix="handai-c")), free_offset())


def test_ctrl_c_kill_9_and_make_stop_all_leave_a_clean_start(run: Run) -> None:
    first = run.serve()
    ctrl_c(first)
    assert first.wait(timeout=120) == 0
    run.assert_clean()

    second = run.serve()
    second.kill()  # kill -9: Ray's daemons outlive it
    second.wait(timeout=30)
    assert run.leftovers()
    stopped = subprocess.run(run.command("stop"), cwd=ROOT, capture_output=True, text=True)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    run.assert_clean()

    third = run.serve()
    third.kill()
    third.wait(timeout=30)
    fourth = run.serve()  # straight after a kill -9, without make stop: it cleans up first
    fourth.send_signal(signal.SIGTERM)
    assert fourth.wait(timeout=120) == 0
    run.assert_clean()


def test_beside_a_running_serve_a_second_is_refused_and_make_stop_ends_it(run: Run) -> None:
    """A second `make serve` of the same project is refused and leaves the first serving;
    `make stop` ends the running one too (left alive, the old `make serve` would stop the next
    cluster from this folder when a later signal, its terminal closing, reached it)."""
    first = run.serve()
    try:
        second = subprocess.run(
            run.command("serve"), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0 and "already serving" in second.stderr
        assert httpx.get(f"http://127.0.0.1:{run.http}/readyz", timeout=30).status_code == 200
        stopped = subprocess.run(run.command("stop"), cwd=ROOT, capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        first.wait(timeout=30)  # killed: it does not linger asleep
    finally:
        if first.poll() is None:
            ctrl_c(first)
            first.wait(timeout=120)
    run.assert_clean()


def test_a_bad_setting_stops_serve_at_once_with_the_key_named(run: Run) -> None:
    started = time.monotonic()
    done = subprocess.run(
        run.command("serve"),
        cwd=ROOT,
        env={**os.environ, "SECURITY__SURPRISE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "security.surprise" in done.stderr
    assert time.monotonic() - started < 30
    run.assert_clean()
