"""Shared, real fixtures: one local Ray cluster per session with the Serve graph deployed
by the `serve deploy` CLI from serve_config.yaml, and model files written by the registry."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from handai.model import build_model
from handai.registry import save
from tests.images import DATA

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "test-key-0123456789"


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


@dataclass
class Service:
    url: str  # the open app (no API key)
    secure_url: str  # the same graph with the API key enforced and tiny queues
    tight_url: str  # the same graph with a 1 ms deadline
    metrics_url: str  # Ray's Prometheus export
    dashboard: str
    model_dir: Path
    secure_model_dir: Path
    artifacts: Path
    redis_url: str
    env: dict[str, str]

    def client(self, secure: bool = False, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.secure_url if secure else self.url, timeout=60, **kw)

    def serve_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "serve"), *args, "-a", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def test_config(model_dir: Path, secure_dir: Path, artifacts: Path, port: int) -> dict[str, Any]:
    """serve_config.yaml as shipped, as three apps sized for the test box:
    handai (open, two Model replicas), handai-secure (API key on, 4 reads admitted at once so
    overload shows), handai-tight (a 1 ms deadline so timeouts show)."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"].update({"port": port, "host": "127.0.0.1"})
    base = config["applications"][0]
    secure = {"DIGITS__MODEL_DIR": str(secure_dir), "SECURITY__API_KEY": API_KEY}
    # (name, prefix, environment, deployment name -> options)
    variants: list[tuple[str, str, dict[str, str], dict[str, dict[str, Any]]]] = [
        ("handai", "/", {"DIGITS__MODEL_DIR": str(model_dir)}, {"Model": {"num_replicas": 2}}),
        (
            "handai-secure",
            "/secure",
            secure,
            {"Ingress": {"user_config": {"max_pending_reads": 4, "max_batch_size": 2}}},
        ),
        (
            "handai-tight",
            "/tight",
            {"DIGITS__MODEL_DIR": str(secure_dir), "DIGITS__PREDICT_TIMEOUT_SECONDS": "0.001"},
            {},
        ),
    ]
    apps = []
    for name, prefix, env, options in variants:
        app = copy.deepcopy(base)
        app["name"], app["route_prefix"] = name, prefix
        app["runtime_env"] = {
            "env_vars": {
                "HANDAI_APP_NAME": name,
                "DIGITS__PREDICT_TIMEOUT_SECONDS": "20",
                "APP__ARTIFACTS_ROOT": str(artifacts),
                "APP__DATA_ROOT": str(DATA),
                **env,
            }
        }
        for deployment in app["deployments"]:
            deployment["ray_actor_options"] = {"num_cpus": 0.1}
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


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    import ray

    work = tmp_path_factory.mktemp("service")
    model_dir, secure_dir = work / "models", work / "secure-models"
    artifacts = work / "artifacts"
    for folder in (model_dir, secure_dir):
        make_model(folder, "test-a", seed=0)
    make_model(model_dir, "test-b", seed=1)
    port, dash_port, metrics_port = free_port(), free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash_port}"
    # Workers inherit this environment: jobs publish to this Redis and promote to this app.
    os.environ.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_DASHBOARD_URL": dashboard,
            "RAY_USAGE_STATS_ENABLED": "0",
            # As `make serve` runs it: HAProxy in front, gRPC between replicas.
            "RAY_SERVE_ENABLE_HA_PROXY": os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "1"),
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1"),
            "REDIS_URL": redis_url,
            "DIGITS__MODEL_DIR": str(model_dir),
            "HANDAI_APP_NAME": "handai",
        }
    )
    # Four logical CPUs on two cores: room for a 2-worker training job beside the graph.
    ray.init(
        num_cpus=4,
        include_dashboard=True,
        dashboard_port=dash_port,
        _metrics_export_port=metrics_port,
        namespace="handai-tests",
        log_to_driver=False,
    )
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(test_config(model_dir, secure_dir, artifacts, port)))
    svc = Service(
        url=f"http://127.0.0.1:{port}",
        secure_url=f"http://127.0.0.1:{port}/secure",
        tight_url=f"http://127.0.0.1:{port}/tight",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        dashboard=dashboard,
        model_dir=model_dir,
        secure_model_dir=secure_dir,
        artifacts=artifacts,
        redis_url=redis_url,
        env={**os.environ, "RAY_ADDRESS": dashboard},
    )
    try:
        deployed = svc.serve_cli("deploy", str(config_path))
        assert deployed.returncode == 0, deployed.stderr
        wait_ready(svc.url)
        wait_ready(svc.secure_url)
        wait_ready(svc.tight_url)
        yield svc
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
