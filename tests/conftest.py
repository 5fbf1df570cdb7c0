"""Shared, real fixtures: one local Ray cluster per session, started by deployments.cluster as
`make serve` starts it, with serve_config.yaml deployed by the `serve deploy` CLI, a real
redis-server, and model files written by the registry."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
import yaml

from deployments.cluster import Cluster, Ports
from handai.model import build_model
from handai.registry import save, set_active
from tests.images import DATA
from train.events import CHANNEL

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "test-key-0123456789"  # the read key (the bot's)
ADMIN_KEY = "test-admin-key-0123456789"  # uploads, activations, training jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_model(model_dir: Path, model_id: str, seed: int, val_acc: float = 0.1) -> None:
    """A real model file with random weights (val_acc 0.1 is honest: it guesses)."""
    torch.manual_seed(seed)
    save(model_dir / model_id, build_model(), model_id=model_id, val_acc=val_acc, temperature=1.0)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the Makefile installs it) for the training events channel."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed: run `make test`, which installs it"
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Listener:
    """Collects every event published on the bot's channel."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub()
        self.pubsub.subscribe(CHANNEL)
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                self.events.append(json.loads(message["data"]))

    def of(self, model_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["model_id"] == model_id]


@dataclass
class Service:
    url: str  # the app as make serve deploys it (no API key)
    secure_url: str  # the same graph with the API key enforced and tiny queues
    tight_url: str  # the same graph with a 1 ms deadline
    metrics_url: str  # Ray's Prometheus export
    dashboard: str
    model_dir: Path
    secure_model_dir: Path
    artifacts: Path
    redis_url: str
    env: dict[str, str]
    cluster: Cluster

    def client(self, secure: bool = False, timeout: float = 60, **kw: Any) -> httpx.Client:
        """The open app with the operator's admin key (reads there need none), or the
        secure app with no key at all."""
        if secure:
            return httpx.Client(base_url=self.secure_url, timeout=timeout, **kw)
        headers = {"X-Api-Key": ADMIN_KEY, **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers, **kw)

    def serve_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "serve"), *args, "-a", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def test_config(secure_storage: Path, port: int) -> dict[str, Any]:
    """serve_config.yaml as shipped, on a free port, beside two variants of it.

    `handai` is exactly what `make serve` deploys: its resources, replicas and settings.
    The variants exist only to show what the shipped settings cannot: handai-secure (read key
    on, 4 reads admitted at once so overload shows, a 1 MB model limit, two Model replicas
    so a replica can die with another standing) and handai-tight (a
    1 ms deadline so timeouts show, and no admin key, as shipped). They claim no logical
    CPU, so the cluster's CPUs are shared out exactly as under `make serve`: what a training
    job can get is what a user's job can get."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"].update({"port": port, "host": "127.0.0.1"})
    base = config["applications"][0]
    # (name, prefix, environment, deployment name -> options)
    variants: list[tuple[str, str, dict[str, str], dict[str, dict[str, Any]]]] = [
        (
            "handai-secure",
            "/secure",
            {
                "STORAGE__ROOT": str(secure_storage),
                "SECURITY__API_KEY": API_KEY,
                "DIGITS__MAX_MODEL_MB": "1",
            },
            {
                "Ingress": {"user_config": {"max_pending_reads": 4, "max_batch_size": 2}},
                "Model": {"num_replicas": 2},  # a killed replica's reads go to the other
            },
        ),
        (
            "handai-tight",
            "/tight",
            {
                "STORAGE__ROOT": str(secure_storage),
                "DIGITS__PREDICT_TIMEOUT_SECONDS": "0.001",
                "SECURITY__ADMIN_KEY": "",  # admin off, as shipped
            },
            {},
        ),
    ]
    apps = [base]
    for name, prefix, env, options in variants:
        app = copy.deepcopy(base)
        app["name"], app["route_prefix"] = name, prefix
        app["runtime_env"] = {"env_vars": {"HANDAI_APP_NAME": name, **env}}
        for deployment in app["deployments"]:
            deployment["ray_actor_options"] = {"num_cpus": 0}
            extra = dict(options.get(deployment["name"], {}))  # popped below: leave variants be
            user_config = {**deployment.get("user_config", {}), **extra.pop("user_config", {})}
            if user_config:  # only deployments with reconfigure() take one
                deployment["user_config"] = user_config
            deployment.update(extra)
        apps.append(app)
    config["applications"] = apps
    return config


def wait_ready(url: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} was not ready within {timeout} s")


def registry_with(storage: Path, *model_ids: str) -> Path:
    """A registry of random-weight models, the first one recorded as active."""
    models = storage / "models"
    for seed, model_id in enumerate(model_ids):
        make_model(models, model_id, seed=seed)
    set_active(models, model_ids[0])
    return models


def free_ports(replica_http: int = 21000, replica_grpc: int = 22000) -> Ports:
    """Free ports for a test cluster, its replicas' port ranges given: by default apart from
    make serve's (30000, 40000) and from tests/test_cluster.py's (shifted down by 1000-6000)."""
    ranges = {"replica_http": replica_http, "replica_grpc": replica_grpc}
    return Ports(**{name: ranges.get(name) or free_port() for name in Ports.__dataclass_fields__})


@contextlib.contextmanager
def started(cluster: Cluster, work: Path) -> Iterator[None]:
    """A test cluster from `ray start` to its processes stopped and its folders removed,
    whatever happens in between."""
    try:
        cluster.start()
        yield
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """The cluster as `make serve` starts it (deployments.cluster, the same Ray settings and
    CPU count), with the service's storage and data in a temporary folder."""
    work = tmp_path_factory.mktemp("service")
    storage, secure_storage = work / "storage", work / "secure-storage"
    model_dir = registry_with(storage, "test-a", "test-b")
    secure_dir = registry_with(secure_storage, "test-a")
    ports = free_ports()
    cluster = Cluster(
        ports=ports,
        state=Path(tempfile.mkdtemp(prefix="handai-t")),  # short: Ray's socket paths
        env_extra={
            "REDIS_URL": redis_url,
            "STORAGE__ROOT": str(storage),
            "APP__DATA_ROOT": str(DATA),
            "HANDAI_APP_NAME": "handai",
            "SECURITY__ADMIN_KEY": ADMIN_KEY,  # as an operator sets it to upload or train
        },
    )
    config_path = work / "serve_config.yaml"
    config = test_config(secure_storage, ports.http)
    config_path.write_text(yaml.safe_dump(config))
    svc = Service(
        url=cluster.url,
        secure_url=f"{cluster.url}/secure",
        tight_url=f"{cluster.url}/tight",
        metrics_url=f"http://127.0.0.1:{ports.metrics}/metrics",
        dashboard=cluster.dashboard,
        model_dir=model_dir,
        secure_model_dir=secure_dir,
        artifacts=storage / "artifacts",
        redis_url=redis_url,
        env=cluster.cli_env(),
        cluster=cluster,
    )
    with started(cluster, work):
        cluster.deploy(config_path)
        cluster.wait_running([app["name"] for app in config["applications"]])
        for url in (svc.url, svc.secure_url, svc.tight_url):
            wait_ready(url)
        yield svc
