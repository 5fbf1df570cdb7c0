"""The local Ray cluster, started and stopped the way `make serve` does it (the tests too).

    python -m deployments.cluster serve   # Ray head + serve_config.yaml, until Ctrl-C or SIGTERM
    python -m deployments.cluster stop    # stop what an earlier `serve` left (make stop)

A run keeps everything it starts under its own folder (Ray's --temp-dir and HAProxy's files,
`/tmp/handai-<hash of the project folder>`), and finds its processes again by that folder: a
stop touches no other Ray on the machine. `serve` stops a leftover run of the same project
first (after a `kill -9`, say), so it starts cleanly every time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from handai.config import ConfigError, load_settings

log = logging.getLogger("handai.cluster")
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATE_FILE = "cluster.json"
SHUTDOWN_WAIT_S = 20
# Serve has drained the replicas by then; Ray's daemons, told together, wait on each other
# (the GCS, raylet, dashboard and runtime-env agent all outlived 10 s): what is left is killed.
TERM_GRACE_S = 3
# Ctrl-C, `kill`, and the terminal closing all stop the cluster this run started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What Ray and Serve read when the cluster starts; a caller's own values win.
RAY_ENV = {
    # One machine, reached over loopback: Ray's token auth (on by default in 2.60) is off.
    # On a shared or multi-node cluster turn it on: README, Operations.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Serve's high-throughput mode: HAProxy in front, gRPC between replicas (/healthz 4.2 ->
    # 1.0 ms, 32 clients 104 -> 164 reads/s, measured with benchmarks/load.py).
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # No more connections than the Ingress takes requests (its max_ongoing_requests): past
    # that, HAProxy's connects to the replica failed under a flood, it marked the replica
    # down and answered its own 502/503s, which Serve rewrites to a bare 500. A flood now
    # waits in the kernel's accept queue instead, and every answer is the service's own.
    "RAY_SERVE_HAPROXY_MAXCONN": "1024",
    # A stopping Ingress replica stays reachable this long so HAProxy drops it first. Serve's
    # default, 30 s, is for load balancers on other machines; this node's HAProxy reloads in
    # ~0.5 s, and the 30 s held every stop of `make serve` (Ctrl-C included) for 30 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


class StartupError(RuntimeError):
    """The cluster or the Serve application could not start; the message says why."""


@dataclass(frozen=True)
class Ports:
    """Every port a run binds. GCS is not Ray's default 6379: that is Redis's, and the bot's
    Redis may well be on this machine."""

    http: int = 8081
    dashboard: int = 8265
    gcs: int = 6390
    metrics: int = 8080
    client: int = 10001
    agent: int = 52365
    haproxy_stats: int = 8404
    haproxy_metrics: int = 9101
    # HAProxy forwards to the ingress replicas' own ports: the first of a range of 1000 each.
    replica_http: int = 30000
    replica_grpc: int = 40000


@dataclass
class Cluster:
    home: Path = ROOT  # HANDAI_HOME: what relative paths in settings and jobs are relative to
    ports: Ports = field(default_factory=Ports)
    state: Path | None = None  # default: /tmp/handai-<hash of home>, short for Ray's sockets
    cpus: int | None = None  # logical CPUs; None: Ray counts the machine's cores
    env_extra: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)  # the head's custom resources

    def __post_init__(self) -> None:
        if self.state is None:
            digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:8]
            self.state = Path(tempfile.gettempdir()) / f"handai-{digest}"

    @property
    def folder(self) -> Path:
        assert self.state is not None
        return self.state

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports.dashboard}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def env(self) -> dict[str, str]:
        """The environment of the cluster's processes, and of the CLIs that talk to it."""
        haproxy = self.folder / "haproxy"
        return {
            **RAY_ENV,
            **os.environ,
            # `python` in a job's entrypoint is this installation's, whoever started Ray.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HANDAI_HOME": str(self.home.resolve()),
            "RAY_DASHBOARD_URL": self.dashboard,
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(self.ports.haproxy_stats),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.ports.haproxy_metrics),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.ports.replica_http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.ports.replica_http + 1000),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(self.ports.replica_grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(self.ports.replica_grpc + 1000),
            **self.env_extra,
        }

    def cli_env(self) -> dict[str, str]:
        return {**self.env(), "RAY_ADDRESS": self.dashboard}

    def start(self) -> None:
        """A fresh Ray head: whatever an earlier run of this cluster left is stopped first."""
        owner = self.owner()
        if owner is not None and owner != os.getpid() and psutil.pid_exists(owner):
            raise StartupError(
                f"already serving from process {owner} (files in {self.folder}); "
                "stop it first (Ctrl-C there, or `make stop`)"
            )
        self.stop(quiet=True)
        (self.folder / "haproxy").mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={self.ports.gcs}",
            "--dashboard-host=127.0.0.1",  # the Jobs API runs arbitrary code: never exposed
            f"--dashboard-port={self.ports.dashboard}",
            "--include-dashboard=true",
            f"--metrics-export-port={self.ports.metrics}",
            f"--ray-client-server-port={self.ports.client}",
            f"--dashboard-agent-listen-port={self.ports.agent}",
            f"--temp-dir={self.folder / 'ray'}",
            "--disable-usage-stats",
        ]
        if self.cpus is not None:
            command.append(f"--num-cpus={self.cpus}")
        if self.resources:
            command.append(f"--resources={json.dumps(self.resources)}")
        (self.folder / STATE_FILE).write_text(
            json.dumps({"pid": os.getpid(), "ports": asdict(self.ports)})
        )
        done = _ray_start(command, self.env())
        if done.returncode != 0:
            raise StartupError(f"ray start failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def add_node(self, node: Node) -> None:
        """Another Ray node joining this head, as `ray start --address` on a second machine
        does: its own CPUs, custom resources and ports; stopped with the cluster."""
        command = [
            str(BIN / "ray"),
            "start",
            f"--address=127.0.0.1:{self.ports.gcs}",
            f"--num-cpus={node.cpus}",
            f"--resources={json.dumps(node.resources)}",
            f"--node-manager-port={node.node_manager}",
            f"--object-manager-port={node.object_manager}",
            f"--metrics-export-port={node.metrics}",
            f"--dashboard-agent-listen-port={node.agent}",
            f"--dashboard-agent-grpc-port={node.agent_grpc}",
            f"--runtime-env-agent-port={node.runtime_env_agent}",
            f"--temp-dir={self.folder / f'ray-{node.name}'}",  # its own, like another machine
            "--disable-usage-stats",
        ]
        done = _ray_start(command, self.env())
        if done.returncode != 0:
            raise StartupError(f"ray start failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def kill_node(self, node: Node) -> int:
        """SIGKILL a node's raylet and everything under it, as a machine that dies would."""
        marks = {
            f"--node_manager_port={node.node_manager}",
            f"--node-manager-port={node.node_manager}",
        }
        roots = [p for p in self._processes() if marks & set(_cmdline(p))]
        procs: dict[int, psutil.Process] = {p.pid: p for p in roots}
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.update({c.pid: c for c in root.children(recursive=True)})
        for proc in procs.values():
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(list(procs.values()), timeout=10)
        return len(procs)

    def deploy(self, config: Path) -> None:
        done = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "-a", self.dashboard],
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise StartupError(f"serve deploy failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def wait_running(self, names: list[str], timeout: float = 300.0) -> None:
        """Until the service answers ready on its HTTP port; an application that failed stops
        the wait with its reason, instead of waiting on replicas that can never start."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"{self.dashboard}/api/serve/applications/", timeout=10)
                status = reply.json().get("applications", {}) if reply.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                status = {}
            for name in names:
                app = status.get(name, {})
                if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise StartupError(f"application {name!r} failed: {_reason(app)}")
            if self._ready():
                return
            time.sleep(1.0)
        waiting = {n: status.get(n, {}).get("status", "NOT_STARTED") for n in names}
        raise StartupError(f"not ready after {timeout:g} s: {waiting}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, quiet: bool = False) -> int:
        """Stop this cluster's processes, found by its folder; returns how many there were."""
        if (self.folder / STATE_FILE).is_file() and not quiet:
            # Graceful first (replicas finish what they hold), but a stop must not hang on it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [str(BIN / "serve"), "shutdown", "-y", "-a", self.dashboard],
                    env=self.cli_env(),
                    capture_output=True,
                    timeout=SHUTDOWN_WAIT_S,
                    check=False,
                )
        stopped: set[int] = set()
        owner = self.owner()
        if owner is not None and owner != os.getpid():
            # The `make serve` that started it, when `make stop` ends its cluster: left alive,
            # a later signal to it would stop whatever cluster runs from this folder then.
            # Killed, not asked: asked, it would stop "its" processes, and with --state this
            # stop's own command line carries the folder that marks them.
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(owner)
                if any("deployments.cluster" in part for part in proc.cmdline()):
                    proc.kill()
                    stopped.add(owner)
        for _ in range(3):  # a dying Serve proxy can still start an HAProxy: look again
            procs = [p for p in self._processes() if p.pid not in stopped]
            if not procs:
                break
            for proc in procs:
                _signal(proc, signal.SIGTERM)
            _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
            for proc in alive:
                _signal(proc, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=10)
            stopped.update(p.pid for p in procs)
        (self.folder / STATE_FILE).unlink(missing_ok=True)
        return len(stopped)

    def owner(self) -> int | None:
        """The process that started this cluster, as its state file says."""
        try:
            return int(json.loads((self.folder / STATE_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _processes(self) -> list[psutil.Process]:
        """Ray's daemons started with this folder or pointed at this cluster's GCS port (the
        Ray client server carries only the latter), every process under them (workers,
        replicas, HAProxy), and any HAProxy of this folder that lost its parent."""
        mark = str(self.folder)
        gcs = re.compile(rf"^--(address|gcs[-_]address)=[\w.:\[\]-]*:{self.ports.gcs}$")
        roots: list[psutil.Process] = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                args = proc.info["cmdline"] or []
                if any(mark in part or gcs.match(part) for part in args):
                    roots.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())


@dataclass(frozen=True)
class Node:
    """A non-head Ray node on this machine: what `ray start --address` is given."""

    name: str  # its temp dir is ray-<name> in the cluster's folder
    cpus: int
    resources: dict[str, float]
    node_manager: int
    object_manager: int
    metrics: int
    agent: int
    agent_grpc: int
    runtime_env_agent: int


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(sig)


def _reason(app: dict[str, Any]) -> str:
    messages = [app.get("message") or ""]
    for name, deployment in (app.get("deployments") or {}).items():
        if deployment.get("message"):
            messages.append(f"{name}: {deployment['message']}")
    text = "\n".join(m for m in messages if m)
    return text[-3000:] or "no reason given"


def app_names(config: Path) -> list[str]:
    loaded: dict[str, Any] = yaml.safe_load(config.read_text())
    return [str(app["name"]) for app in loaded.get("applications", [])]


def serve(config: Path, cluster: Cluster) -> int:
    """`make serve`: check the settings, start, deploy, wait; stop everything on a signal."""
    try:
        load_settings()  # a bad setting stops here in a second, not in every replica
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    owner = cluster.owner()
    if owner is not None and owner != os.getpid() and psutil.pid_exists(owner):
        print(
            f"error: already serving from process {owner} (files in {cluster.folder}); "
            "stop it first (Ctrl-C there, or `make stop`)",
            file=sys.stderr,
        )
        return 1
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        print(f"starting Ray: dashboard {cluster.dashboard}, files {cluster.folder}", flush=True)
        cluster.start()
        cluster.deploy(_on_port(config, cluster))
        cluster.wait_running(app_names(config))
        print(f"Handai serves on :{cluster.ports.http}; Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in STOP_SIGNALS:  # a second Ctrl-C, or the terminal closing, must not cut it
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        _say("stopped")


def _ray_start(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ray start`, its daemons in a session of their own: a terminal's Ctrl-C goes to its
    whole foreground process group, and Ray's daemons in it died under the orderly stop
    (`make serve` then took ~25 s to stop instead of ~11). They are stopped by `stop`."""
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        start_new_session=True,
    )


def _say(line: str) -> None:
    """Print, unless the reader is gone (Ctrl-C also ends `make serve | tee log`)."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def _on_port(config: Path, cluster: Cluster) -> Path:
    """The config itself, or a copy bound to the cluster's HTTP port when that was moved."""
    loaded: dict[str, Any] = yaml.safe_load(config.read_text())
    if _http_port(config) == cluster.ports.http:
        return config
    loaded.setdefault("http_options", {})["port"] = cluster.ports.http
    moved = cluster.folder / "serve_config.yaml"
    moved.write_text(yaml.safe_dump(loaded))
    return moved


def _http_port(config: Path) -> int:
    loaded: dict[str, Any] = yaml.safe_load(config.read_text())
    return int((loaded.get("http_options") or {}).get("port", 8000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.cluster", description=__doc__)
    parser.add_argument("command", choices=("serve", "stop"))
    parser.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    parser.add_argument("--state", type=Path, help="the run's folder (default: per project)")
    parser.add_argument(
        "--port-offset", type=int, default=0, help="move every port by this: a second instance"
    )
    args = parser.parse_args(argv)
    base = Ports(http=_http_port(args.config))
    ports = Ports(**{k: v + args.port_offset for k, v in asdict(base).items()})
    cluster = Cluster(ports=ports, state=args.state)
    if args.command == "serve":
        return serve(args.config, cluster)
    stopped = cluster.stop()
    print(f"stopped {stopped} process(es)" if stopped else "nothing was running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
